//! Corral's exactly-once stream runtime, the base of every stateful service.
//!
//! A service supplies a [`Processor`] (its transform) and a [`RuntimeConfig`] (topics, stores);
//! [`StreamRuntime::run`] does the rest, Kafka Streams style (the
//! commit protocol is in `thread`):
//!
//! - stream threads that each own a group consumer (`read_committed`, static membership;
//!   cooperative-sticky with one input, range with co-partitioned inputs so a task's partitions
//!   stay together), a transactional producer with a stable `transactional.id`, their partitions and
//!   their stores;
//! - input offsets committed inside the transaction with fresh group metadata, every commit
//!   interval;
//! - RocksDB stores whose open writes sit in an overlay, reach the changelog inside the
//!   transaction, and reach RocksDB with their changelog offset only after the commit;
//! - restore on assignment from the stored offset (full restore when the store is missing);
//! - commit on revoke, abort when the assignment was lost, rewind after every abort;
//! - records the processor rejects go to the dead-letter topic with reason and origin;
//! - `Processor::punctuate` every `punctuate_interval` per task, inside the transaction (timers);
//! - `/metrics`, `/healthz`, `/readyz` on the admin port; SIGTERM finishes the batch, commits and
//!   closes.
//!
//! Around it: [`service`] is the scaffold every service's `main` uses (flags, topic names,
//! definitions, internal topics, query listeners, signals, shutdown); [`definitions`] reads,
//! follows and applies the compacted `definitions` topic; [`follow`] follows a store's changelog
//! into an in-memory read replica; [`reader`] makes every other `read_committed` reader (replays,
//! backfill). The guarantees and the processor API are in `docs/runtime.md`.
//!
//! Guarantee: killing an instance at any moment never loses an input's effect and never applies
//! it twice, in state or in output read with `read_committed`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod definitions;
pub mod error;
pub mod follow;
pub mod metrics;
pub mod partitions;
pub mod processor;
pub mod produce;
pub mod reader;
pub mod service;
pub mod store;
mod thread;
pub mod topics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Every binary that links the runtime (the services, corralctl, the tests' tools) allocates
/// with mimalloc: decoding, validating and encoding a record allocate dozens of small blocks,
/// and glibc's malloc and free were a quarter of the validator's CPU in a profile under load
/// (BENCHMARKS.md). RocksDB and librdkafka keep the C allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use corral_telemetry::Health;
use prometheus::Registry;
use tracing::{error, info};

pub use cli::{KafkaArgs, RuntimeArgs, TopicArgs, TopicNames};
pub use config::{Fault, FaultPoint, RuntimeConfig, StoreLog, StoreSpec};
pub use error::{classify, RuntimeError, TxnAction};
pub use processor::{
    InputRecord, Output, ProcessContext, ProcessError, Processor, Store, StoreRef,
};
pub use service::{Service, ServiceError};
pub use store::{Entry, StateStore, StoreError};

use crate::metrics::RuntimeMetrics;
use crate::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};

/// A configured runtime, ready to run a processor.
pub struct StreamRuntime {
    cfg: Arc<RuntimeConfig>,
    registry: Registry,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
}

impl StreamRuntime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        cfg.validate()?;
        partitions::register(&cfg.bootstrap_servers, &cfg.kafka);
        let registry = corral_telemetry::registry(&cfg.application_id);
        // Registering build info twice (a second runtime in one test process) is harmless.
        let _ = corral_telemetry::register_build_info(&registry, env!("CARGO_PKG_VERSION"));
        Ok(Self {
            cfg: Arc::new(cfg),
            registry,
            health: Health::new(),
            shutdown: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The registry services add their own metrics to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Setting this flag makes the runtime commit and stop (SIGTERM and SIGINT set it too).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Creates the changelog topics that are missing, compacted, with the partition count of the
    /// first input topic (the tasks' count), as Kafka Streams does for its internal topics.
    fn ensure_changelogs(&self) -> Result<(), RuntimeError> {
        if self.cfg.stores.is_empty() {
            return Ok(());
        }
        let admin = TopicAdmin::connect(&self.cfg.bootstrap_servers, &self.cfg.kafka)?;
        let input = &self.cfg.input_topics[0];
        let partitions = admin.partitions(input)?.ok_or_else(|| {
            RuntimeError::Admin(format!(
                "input topic {input} does not exist; create it first (`corralctl topics apply`)"
            ))
        })?;
        // A task is partition N of every input: they must be co-partitioned.
        for other in &self.cfg.input_topics[1..] {
            match admin.partitions(other)? {
                Some(n) if n == partitions => {}
                Some(n) => {
                    return Err(RuntimeError::Admin(format!(
                        "input topics must be co-partitioned: {input} has {partitions} partitions but {other} has {n}"
                    )))
                }
                None => {
                    return Err(RuntimeError::Admin(format!(
                        "input topic {other} does not exist; create it first (`corralctl topics apply`)"
                    )))
                }
            }
        }
        for s in &self.cfg.stores {
            if let StoreLog::Output { .. } = s.log {
                // Each task writes the entries to its own partition of the output topic.
                let log = self.cfg.store_log_topic(s);
                match admin.partitions(&log)? {
                    Some(n) if n == partitions => continue,
                    Some(n) => {
                        return Err(RuntimeError::Admin(format!(
                            "store {} is logged by {log}, which has {n} partitions but input {input} has {partitions}; they must match",
                            s.name
                        )))
                    }
                    None => {
                        return Err(RuntimeError::Admin(format!(
                            "topic {log}, which logs store {}, does not exist; create it first (`corralctl topics apply`)",
                            s.name
                        )))
                    }
                }
            }
            let topic = DesiredTopic {
                name: self.cfg.changelog_topic(&s.name),
                partitions,
                replication_factor: self.cfg.replication_factor,
                cleanup_policy: CleanupPolicy::Compact,
                retention_ms: None,
                configs: Default::default(),
            };
            match admin.partitions(&topic.name)? {
                None => {
                    if admin.create(&topic)? {
                        info!(topic = %topic.name, partitions, "created changelog topic");
                    }
                    // Restores read its watermarks right away.
                    admin.shape_once_visible(&topic.name)?;
                }
                Some(have) if have != partitions => {
                    return Err(RuntimeError::Admin(format!(
                        "changelog {} has {have} partitions but input {input} has {partitions}; they must match",
                        topic.name
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Runs the stream thread with processors from `factory` until shutdown. Blocks.
    pub fn run<F, P>(self, factory: F) -> Result<(), RuntimeError>
    where
        F: Fn() -> P + Send + Sync + 'static,
        P: Processor + 'static,
    {
        self.ensure_changelogs()?;
        let metrics = RuntimeMetrics::new(&self.registry)
            .map_err(|e| RuntimeError::Config(format!("registering metrics: {e}")))?;
        let admin = self.spawn_admin()?;

        let factory: Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync> =
            Arc::new(move || Box::new(factory()) as Box<dyn Processor>);
        let cfg = self.cfg.clone();
        let mut streams = Vec::new();
        for thread_index in 0..self.cfg.threads.max(1) {
            let setup = thread::ThreadSetup {
                cfg: cfg.clone(),
                thread_index,
                metrics: metrics.clone(),
                health: self.health.clone(),
                shutdown: self.shutdown.clone(),
                processor_factory: factory.clone(),
            };
            // Every thread counts as not ready until its first assignment is restored.
            self.health.set_part_not_ready(&setup.part(), "starting");
            let shutdown = self.shutdown.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("stream-{thread_index}"))
                .spawn(move || {
                    let stopped = thread::run_thread(setup);
                    // One thread stopping (an error, or shutdown) stops the others.
                    shutdown.store(true, Ordering::SeqCst);
                    stopped
                });
            match spawned {
                Ok(handle) => streams.push(handle),
                Err(source) => {
                    self.shutdown.store(true, Ordering::SeqCst);
                    return Err(RuntimeError::Io {
                        path: "stream thread".into(),
                        source,
                    });
                }
            }
        }
        // The first error is the runtime's.
        let mut result = Ok(());
        for stream in streams {
            let stopped = stream
                .join()
                .unwrap_or_else(|_| Err(RuntimeError::Processor("stream thread panicked".into())));
            if let (Err(e), Ok(())) = (stopped, &result) {
                error!(error = %e, "stream thread stopped");
                self.health.set_dead(e.to_string());
                result = Err(e);
            }
        }
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(handle) = admin {
            let _ = handle.join();
        }
        info!("runtime stopped");
        result
    }

    /// The admin endpoint and the signal handlers, on a small tokio runtime of their own.
    fn spawn_admin(&self) -> Result<Option<std::thread::JoinHandle<()>>, RuntimeError> {
        let shutdown = self.shutdown.clone();
        let router = corral_telemetry::admin_router(self.registry.clone(), self.health.clone());
        let addr = self.cfg.admin_addr;
        let handle = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        error!(error = %e, "cannot start the admin runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let stop = shutdown.clone();
                    let stopped = async move {
                        loop {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    };
                    let signals = async {
                        use tokio::signal::unix::{signal, SignalKind};
                        let (Ok(mut term), Ok(mut int)) = (
                            signal(SignalKind::terminate()),
                            signal(SignalKind::interrupt()),
                        ) else {
                            std::future::pending::<()>().await;
                            return;
                        };
                        tokio::select! {
                            _ = term.recv() => info!("SIGTERM: finishing the batch and committing"),
                            _ = int.recv() => info!("SIGINT: finishing the batch and committing"),
                        }
                        shutdown.store(true, Ordering::SeqCst);
                    };
                    let server = async {
                        match addr {
                            Some(addr) => {
                                if let Err(e) =
                                    corral_telemetry::serve_admin(addr, router, stopped).await
                                {
                                    error!(error = %e, "admin endpoint failed");
                                }
                            }
                            None => stopped.await,
                        }
                    };
                    tokio::select! {
                        _ = server => {},
                        _ = async { signals.await; std::future::pending::<()>().await } => {},
                    }
                });
            })
            .map_err(|source| RuntimeError::Io {
                path: "admin thread".into(),
                source,
            })?;
        Ok(Some(handle))
    }
}
