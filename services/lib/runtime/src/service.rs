//! The service scaffold: everything a Corral service does around its processors, written once so
//! that each binary's `main` is its own wiring only.
//!
//! ```text
//! let mut svc = Service::start("validator", args.common)?;       // logging, flags, signals
//! svc.follow_definitions("tracking plans", move |ev| plans.apply(ev))?; // waits for the set
//! let mut cfg = svc.config();                                    // topics, client settings
//! cfg.input_topics = vec![svc.topics().of::<RawEvent>()];
//! cfg.stores = vec![DEDUP.into()];
//! let runtime = svc.runtime(cfg)?;
//! svc.add(runtime, move || ValidatorProcessor::new(/* … */));
//! svc.run()                                                     // until SIGTERM
//! ```
//!
//! What it guarantees:
//!
//! - the same flags and `CORRAL_*` variables ([`RuntimeArgs`]) mean the same in every service,
//!   and topic names come from one place ([`TopicNames`]);
//! - processing starts only once the `definitions` topic was read to its end (a missing topic
//!   counts as empty and is followed once created), so no record meets a partial set of
//!   definitions; while it loads, a line says so every 30 s, and SIGTERM stops the wait;
//! - one shutdown flag: SIGTERM or SIGINT, or any part stopping (a stream runtime, a follower),
//!   stops every part; each runtime commits its batch first; `run` returns the first error;
//! - Kafka unreachable or refusing the login at start (broker down, wrong password, untrusted
//!   certificate) is not a crash: the admin endpoint is up from the start, `/readyz` says what
//!   start-up waits for, and it tries again with a growing pause.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::auth::{protect, ApiTokens};
use crate::cli::{names, QueryAuth, RuntimeArgs, TopicNames};
use crate::definitions::DefinitionEvent;
use crate::error::RuntimeError;
use crate::follow::{follow_topic, ChangelogRecord};
use crate::processor::{Processor, Store};
use crate::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use crate::{RuntimeConfig, StreamRuntime};

/// Why a service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    #[error(transparent)]
    Listener(#[from] corral_telemetry::TelemetryError),
    #[error("{part} stopped: {source}")]
    Part {
        part: String,
        source: Box<RuntimeError>,
    },
}

impl From<RuntimeError> for ServiceError {
    fn from(e: RuntimeError) -> Self {
        ServiceError::Runtime(Box::new(e))
    }
}

type Factory = Box<dyn Fn() -> Box<dyn Processor> + Send + Sync>;

/// A stream runtime and the processors it runs.
struct Part {
    name: String,
    runtime: StreamRuntime,
    factory: Factory,
}

/// A running service's shared set-up; see the module doc.
pub struct Service {
    args: RuntimeArgs,
    fault: Option<crate::Fault>,
    app: String,
    topics: TopicNames,
    kafka: BTreeMap<String, String>,
    shutdown: Arc<AtomicBool>,
    edges: Vec<JoinHandle<()>>,
    parts: Vec<Part>,
    /// Query tokens, followed with the definitions (see [`crate::auth`]).
    tokens: Arc<ApiTokens>,
    /// The admin endpoint until the runtimes serve it: `/readyz` says what start-up waits for.
    early_admin: Option<EarlyAdmin>,
}

/// `/healthz` and `/readyz` while the service starts (Kafka unreachable, a wrong password...).
struct EarlyAdmin {
    health: Arc<corral_telemetry::Health>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Start-up waits for Kafka with this back-off between attempts, at most.
const KAFKA_RETRY_MAX: Duration = Duration::from_secs(30);

impl Service {
    /// Starts logging, reads the shared flags and handles SIGTERM/SIGINT. `name` is the
    /// service's name and its application id unless `--app` gives another.
    pub fn start(name: &str, args: RuntimeArgs) -> Result<Self, ServiceError> {
        corral_telemetry::init_tracing(args.log_json);
        let kafka = args.kafka_properties()?;
        let fault = args.fault()?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let signals = spawn_signal_handler(shutdown.clone())?;
        let early_admin = match args.admin {
            Some(addr) => {
                let health = corral_telemetry::Health::new();
                health.set_not_ready("starting: connecting to Kafka");
                let registry = corral_telemetry::registry(&args.app_or(name));
                let stop = Arc::new(AtomicBool::new(false));
                let thread = corral_telemetry::serve_in_thread(
                    "admin-start",
                    addr,
                    corral_telemetry::admin_router(registry, health.clone()),
                    stop.clone(),
                )?;
                Some(EarlyAdmin {
                    health,
                    stop,
                    thread,
                })
            }
            None => None,
        };
        Ok(Self {
            app: args.app_or(name),
            topics: args.topic_names(),
            kafka,
            fault,
            args,
            shutdown,
            edges: vec![signals],
            parts: Vec::new(),
            tokens: ApiTokens::new(),
            early_admin,
        })
    }

    /// The application id: consumer group, transactional id prefix, changelog prefix.
    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn args(&self) -> &RuntimeArgs {
        &self.args
    }

    pub fn topics(&self) -> &TopicNames {
        &self.topics
    }

    pub fn bootstrap(&self) -> &str {
        &self.args.kafka.bootstrap
    }

    /// librdkafka properties for every client (`--kafka`).
    pub fn kafka(&self) -> &BTreeMap<String, String> {
        &self.kafka
    }

    /// Set by SIGTERM, SIGINT or any part stopping.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// A runtime config for the service's application id with every shared flag applied; the
    /// caller sets inputs, stores and timers.
    pub fn config(&self) -> RuntimeConfig {
        self.config_for(&self.app)
    }

    /// [`Service::config`] for another application id (a second runtime in the process).
    pub fn config_for(&self, application_id: &str) -> RuntimeConfig {
        self.args
            .runtime_config_with(application_id, self.kafka.clone(), self.fault)
    }

    /// A stream runtime for `cfg` that shares the service's shutdown flag.
    pub fn runtime(&self, cfg: RuntimeConfig) -> Result<StreamRuntime, ServiceError> {
        let mut runtime = StreamRuntime::new(cfg)?;
        runtime.shutdown = self.shutdown.clone();
        Ok(runtime)
    }

    /// Runs `factory`'s processors on `runtime` when [`Service::run`] is called.
    pub fn add<F, P>(&mut self, runtime: StreamRuntime, factory: F)
    where
        F: Fn() -> P + Send + Sync + 'static,
        P: Processor + 'static,
    {
        self.parts.push(Part {
            name: runtime.cfg.application_id.clone(),
            runtime,
            factory: Box::new(move || Box::new(factory()) as Box<dyn Processor>),
        });
    }

    /// Follows the `definitions` topic, calling `on_event` for every record in order, and
    /// returns once it was read to its end (see the module doc). `what` names the definitions
    /// the service uses, for the log.
    pub fn follow_definitions<F>(&mut self, what: &str, mut on_event: F) -> Result<(), ServiceError>
    where
        F: FnMut(DefinitionEvent<'_>) + Send + 'static,
    {
        let tokens = self.tokens.clone();
        let on_event = move |event: DefinitionEvent<'_>| {
            tokens.apply(&event);
            on_event(event)
        };
        let topic = self.topics.name(names::DEFINITIONS);
        let caught_up = Arc::new(AtomicBool::new(false));
        if self.wait_for_kafka(&topic)?.1.is_none() {
            warn!(topic, "definitions topic does not exist: starting with no {what}, following it once it is created");
            caught_up.store(true, Ordering::SeqCst);
        }
        let mut kafka = self.kafka.clone();
        kafka
            .entry("group.id".into())
            .or_insert_with(|| format!("{}-definitions", self.app));
        let handle = crate::definitions::follow(
            self.bootstrap(),
            &kafka,
            &topic,
            caught_up.clone(),
            self.shutdown.clone(),
            on_event,
        )?;
        self.edges.push(handle);
        if let Some(early) = &self.early_admin {
            early
                .health
                .set_not_ready(format!("starting: loading {what} from {topic}"));
        }
        let started = Instant::now();
        let mut next_note = Duration::from_secs(10);
        while !caught_up.load(Ordering::SeqCst) {
            if self.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            if started.elapsed() >= next_note {
                info!(
                    topic,
                    waited_s = started.elapsed().as_secs(),
                    "still loading {what}"
                );
                next_note += Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        info!(topic, "{what} loaded");
        Ok(())
    }

    /// Follows the changelog of `store` of the runtime configured by `cfg` (all partitions,
    /// from the beginning) until shutdown, handing over each poll's records: a read replica
    /// for a query interface. `caught_up` turns true once it reached the end once.
    pub fn follow_store<F>(
        &mut self,
        cfg: &RuntimeConfig,
        store: Store,
        caught_up: Arc<AtomicBool>,
        on_batch: F,
    ) -> Result<(), ServiceError>
    where
        F: FnMut(Vec<ChangelogRecord>) + Send + 'static,
    {
        let group = format!("{}-view-{}", cfg.application_id, self.args.instance);
        let handle = follow_topic(
            self.bootstrap(),
            &self.kafka,
            &cfg.changelog_topic(store.name()),
            &group,
            caught_up,
            self.shutdown.clone(),
            on_batch,
        )?;
        self.edges.push(handle);
        Ok(())
    }

    /// Creates `topic` like `like` (its partition count, so the two are co-partitioned) when it
    /// is missing: a service's internal topic. Returns its partition count.
    pub fn ensure_topic_like(
        &self,
        topic: &str,
        like: &str,
        cleanup_policy: CleanupPolicy,
        retention_ms: Option<i64>,
    ) -> Result<i32, ServiceError> {
        let (admin, like_partitions) = self.wait_for_kafka(like)?;
        let partitions = like_partitions.ok_or_else(|| {
            RuntimeError::Admin(format!(
                "topic {like} does not exist; create it with `corralctl topics apply`"
            ))
        })?;
        if let Some(have) = admin.partitions(topic)? {
            return Ok(have);
        }
        let created = admin.create(&DesiredTopic {
            name: topic.to_string(),
            partitions,
            replication_factor: self.args.replication_factor,
            cleanup_policy,
            retention_ms,
            configs: Default::default(),
        })?;
        if created {
            info!(topic, partitions, "created internal topic");
        }
        // The runtimes that read it check its partitions at start: wait until it shows.
        let (have, _) = admin.shape_once_visible(topic)?;
        Ok(have)
    }

    /// An admin client once Kafka answers a metadata request for `topic`. Until then (broker
    /// down, wrong password, untrusted certificate) the service stays up and not ready, its
    /// `/readyz` and log saying why, and tries again with a growing pause (no crash loop);
    /// SIGTERM meanwhile ends the process cleanly.
    /// Returns the admin client and `topic`'s partition count (`None`: it does not exist).
    fn wait_for_kafka(&self, topic: &str) -> Result<(TopicAdmin, Option<i32>), ServiceError> {
        let mut pause = Duration::from_secs(1);
        loop {
            let attempt = TopicAdmin::connect(self.bootstrap(), &self.kafka).and_then(|admin| {
                let partitions = admin.partitions(topic)?;
                Ok((admin, partitions))
            });
            let error = match attempt {
                Ok(found) => {
                    if let Some(early) = &self.early_admin {
                        early
                            .health
                            .set_not_ready("starting: Kafka answers; loading");
                    }
                    return Ok(found);
                }
                Err(e @ RuntimeError::Config(_)) => return Err(e.into()),
                Err(e) => e,
            };
            let why = format!("cannot use Kafka at {}: {error}", self.bootstrap());
            warn!(retry_in_s = pause.as_secs(), "{why}");
            if let Some(early) = &self.early_admin {
                early.health.set_not_ready(why);
            }
            let until = Instant::now() + pause;
            while Instant::now() < until {
                if self.shutdown.load(Ordering::SeqCst) {
                    // Nothing has run yet, so nothing needs committing: SIGTERM while Kafka is
                    // unreachable is a clean stop, as it is once running.
                    info!("stopped while waiting for Kafka");
                    std::process::exit(0);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            pause = (pause * 2).min(KAFKA_RETRY_MAX);
        }
    }

    /// Serves `router` on `addr` (a query interface) until shutdown; nothing when `addr` is
    /// `None`. The port is bound here, so a taken port is an error at start.
    pub fn serve(
        &mut self,
        name: &str,
        addr: Option<SocketAddr>,
        router: axum::Router,
    ) -> Result<(), ServiceError> {
        if let Some(addr) = addr {
            let router = match self.args.query_auth {
                QueryAuth::Required => protect(router, self.tokens.clone()),
                QueryAuth::Off => {
                    warn!(%addr, "query interface without tokens (--query-auth off): anyone can read any space");
                    router
                }
            };
            let handle =
                corral_telemetry::serve_in_thread(name, addr, router, self.shutdown.clone())?;
            self.edges.push(handle);
        }
        Ok(())
    }

    /// Runs every added runtime, each on its own thread, until SIGTERM or until one stops
    /// (which stops the others); then stops the edges. Returns the first error.
    pub fn run(mut self) -> Result<(), ServiceError> {
        // The runtimes serve the admin endpoint from here on, on the same address.
        if let Some(early) = self.early_admin.take() {
            early.stop.store(true, Ordering::SeqCst);
            let _ = early.thread.join();
        }
        let mut threads = Vec::new();
        for part in self.parts {
            let stop = self.shutdown.clone();
            let name = part.name.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-main", part.name))
                .spawn(move || {
                    let factory = part.factory;
                    let result = part.runtime.run(move || BoxedProcessor(factory()));
                    // One part alone would fill topics no one reads, or read what no one writes.
                    stop.store(true, Ordering::SeqCst);
                    result
                })
                .map_err(|source| RuntimeError::Io {
                    path: "runtime thread".into(),
                    source,
                })?;
            threads.push((name, spawned));
        }
        let mut first_error = None;
        for (part, t) in threads {
            let result = t
                .join()
                .unwrap_or_else(|_| Err(RuntimeError::Processor("runtime panicked".into())));
            if let Err(source) = result {
                error!(part, error = %source, "stopped");
                first_error.get_or_insert(ServiceError::Part {
                    part,
                    source: Box::new(source),
                });
            }
        }
        self.shutdown.store(true, Ordering::SeqCst);
        for e in self.edges {
            let _ = e.join();
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A boxed processor is a processor (the runtime's factory returns concrete types).
struct BoxedProcessor(Box<dyn Processor>);

impl Processor for BoxedProcessor {
    fn process(
        &mut self,
        ctx: &mut crate::ProcessContext<'_>,
        record: &crate::InputRecord<'_>,
    ) -> Result<(), crate::ProcessError> {
        self.0.process(ctx, record)
    }
    fn punctuate(
        &mut self,
        ctx: &mut crate::ProcessContext<'_>,
        now_ms: i64,
    ) -> Result<(), crate::ProcessError> {
        self.0.punctuate(ctx, now_ms)
    }
    fn on_assigned(&mut self, tasks: &[i32]) {
        self.0.on_assigned(tasks)
    }
    fn on_revoked(&mut self, tasks: &[i32]) {
        self.0.on_revoked(tasks)
    }
    fn on_abort(&mut self) {
        self.0.on_abort()
    }
}

/// SIGTERM and SIGINT set `shutdown` (a stream runtime then commits its batch and stops). The
/// thread ends with the process or when the flag is set otherwise.
fn spawn_signal_handler(shutdown: Arc<AtomicBool>) -> Result<JoinHandle<()>, RuntimeError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                error!("cannot start the signal handler; SIGTERM will kill without a commit");
                return;
            };
            rt.block_on(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                let stopped = async {
                    while !shutdown.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM: finishing the batch and committing"),
                    _ = int.recv() => info!("SIGINT: finishing the batch and committing"),
                    _ = stopped => return,
                }
                shutdown.store(true, Ordering::SeqCst);
            });
        })
        .map_err(|source| RuntimeError::Io {
            path: "signal thread".into(),
            source,
        })
}
