//! Corral's fanout service: audience and trait changes (`audiences.membership`,
//! `traits.changes`) delivered to destinations.
//!
//! - [`payload`]: pure builders of Segment's identify/track payloads and each adapter's request.
//! - [`limit`], [`retry`]: the rate limiter (governor GCRA, adaptive to 429) and retry policy.
//! - [`outbox`]: deliveries and their retry state in a changelogged state store.
//! - [`lane`]: one delivery lane per destination (limiter, concurrency, Retry-After pause).
//! - [`processor`]: the exactly-once processor that ties them together.
//! - [`destination`], [`registry`]: destination definitions (file or `definitions` topic).
//!
//! Operator guide: `docs/fanout.md`.

pub mod destination;
pub mod lane;
pub mod limit;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod payload;
pub mod processor;
pub mod registry;
pub mod retry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use corral_runtime::definitions::{follow, DefinitionEvent};
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use corral_runtime::{Fault, RuntimeConfig, StoreSpec, StreamRuntime};
use tracing::{info, warn};

use crate::destination::{DestinationType, DestinationsFile};
use crate::metrics::FanoutMetrics;
use crate::processor::{FanoutProcessor, Topics, OUTBOX_STORE};
use crate::registry::{apply_definition, Destinations, SharedDestinations};
use crate::retry::RetryPolicy;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Runtime(#[from] corral_runtime::RuntimeError),
    #[error("destinations: {0}")]
    Destinations(String),
    #[error("{0}")]
    Setup(String),
}

/// Everything the service needs.
#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub bootstrap: String,
    pub topic_prefix: String,
    pub instance_id: String,
    pub application_id: String,
    pub state_dir: PathBuf,
    pub admin_addr: Option<SocketAddr>,
    /// Destinations from a file instead of the `definitions` topic.
    pub destinations_file: Option<PathBuf>,
    pub punctuate_interval: Duration,
    pub commit_interval: Duration,
    /// Consumer group session timeout.
    pub session_timeout: Duration,
    /// Test-only crash injection; when `None`, `CORRAL_FAULT` is read at `run`.
    pub fault: Option<Fault>,
    pub retry: RetryPolicy,
    pub lane_threads: usize,
    pub kafka: BTreeMap<String, String>,
}

impl FanoutConfig {
    pub fn new(bootstrap: &str, topic_prefix: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_string(),
            topic_prefix: topic_prefix.to_string(),
            instance_id: "0".into(),
            application_id: "fanout".into(),
            state_dir: PathBuf::from("state/fanout"),
            admin_addr: None,
            destinations_file: None,
            punctuate_interval: Duration::from_millis(20),
            commit_interval: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            fault: None,
            retry: RetryPolicy::default(),
            lane_threads: 2,
            kafka: BTreeMap::new(),
        }
    }

    pub fn topics(&self) -> Topics {
        let p = &self.topic_prefix;
        Topics {
            membership: format!("{p}audiences.membership"),
            traits: format!("{p}traits.changes"),
            replay: format!("{p}deliveries.replay"),
            deliveries_dlq: format!("{p}deliveries.dlq"),
        }
    }

    pub fn definitions_topic(&self) -> String {
        format!("{}definitions", self.topic_prefix)
    }
}

/// Creates what fanout writes to and is not in the shared manifest yet: the replay input
/// (co-partitioned with the membership topic), the deliveries dead-letter topic and Kafka
/// destinations' topics.
fn ensure_topics(cfg: &FanoutConfig, dests: &Destinations) -> Result<(), FanoutError> {
    let admin = TopicAdmin::connect(&cfg.bootstrap, &cfg.kafka)?;
    let topics = cfg.topics();
    let partitions = admin.partitions(&topics.membership)?.ok_or_else(|| {
        FanoutError::Setup(format!(
            "input topic {} does not exist; create it first (`corralctl topics apply`)",
            topics.membership
        ))
    })?;
    let mut wanted = vec![
        (topics.traits.clone(), partitions, CleanupPolicy::Delete),
        (topics.replay.clone(), partitions, CleanupPolicy::Delete),
        (topics.deliveries_dlq.clone(), 1, CleanupPolicy::Delete),
    ];
    for d in dests
        .iter()
        .filter(|d| d.spec.dest_type == DestinationType::Kafka)
    {
        if let Some(t) = &d.spec.topic {
            wanted.push((t.clone(), partitions, CleanupPolicy::Delete));
        }
    }
    for (name, partitions, cleanup_policy) in wanted {
        if admin.partitions(&name)?.is_none() {
            admin.create(&DesiredTopic {
                name: name.clone(),
                partitions,
                replication_factor: 1,
                cleanup_policy,
                retention_ms: None,
            })?;
            info!(topic = %name, partitions, "created topic");
        }
    }
    Ok(())
}

/// Loads destinations (file, or the definitions topic followed for hot reload) and runs the
/// service until SIGTERM. Blocks.
pub fn run(cfg: FanoutConfig) -> Result<(), FanoutError> {
    let shared: SharedDestinations = Arc::new(RwLock::new(Arc::new(Destinations::default())));
    let shutdown_defs = Arc::new(AtomicBool::new(false));
    let mut follower = None;
    if let Some(path) = &cfg.destinations_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FanoutError::Destinations(format!("reading {}: {e}", path.display())))?;
        let file = DestinationsFile::from_yaml(&text).map_err(|errs| {
            FanoutError::Destinations(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let dests =
            Destinations::from_file(&file).map_err(|e| FanoutError::Destinations(e.to_string()))?;
        if let Ok(mut g) = shared.write() {
            *g = Arc::new(dests);
        }
    } else {
        let caught_up = Arc::new(AtomicBool::new(false));
        let target = shared.clone();
        follower = Some(follow(
            &cfg.bootstrap,
            &cfg.kafka,
            &cfg.definitions_topic(),
            caught_up.clone(),
            shutdown_defs.clone(),
            move |ev| {
                let res = match ev {
                    DefinitionEvent::Upsert { key, definition } => {
                        apply_definition(&target, key, Some(&definition))
                    }
                    DefinitionEvent::Delete { key } => apply_definition(&target, key, None),
                    DefinitionEvent::Undecodable { key, error } => {
                        warn!(key, error, "skipping an undecodable definition");
                        Ok(())
                    }
                };
                if let Err(e) = res {
                    warn!(error = %e, "destination definition rejected; the previous version stays");
                }
            },
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !caught_up.load(std::sync::atomic::Ordering::SeqCst) {
            if Instant::now() > deadline {
                return Err(FanoutError::Setup("timed out loading definitions".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let dests = registry::snapshot(&shared);
    info!(destinations = dests.by_key.len(), "destinations loaded");
    ensure_topics(&cfg, &dests)?;

    let topics = cfg.topics();
    let mut rc = RuntimeConfig::new(&cfg.application_id, &cfg.instance_id, &cfg.bootstrap);
    rc.topic_prefix = cfg.topic_prefix.clone();
    rc.input_topics = vec![
        topics.membership.clone(),
        topics.traits.clone(),
        topics.replay.clone(),
    ];
    rc.dlq_topic = format!("{}events.dlq", cfg.topic_prefix);
    rc.stores = vec![StoreSpec {
        name: OUTBOX_STORE.into(),
    }];
    rc.state_dir = cfg.state_dir.clone();
    rc.commit_interval = cfg.commit_interval;
    rc.punctuate_interval = Some(cfg.punctuate_interval);
    rc.admin_addr = cfg.admin_addr;
    rc.kafka = cfg.kafka.clone();
    rc.session_timeout = cfg.session_timeout;
    rc.fault = cfg.fault.or_else(|| {
        std::env::var("CORRAL_FAULT")
            .ok()
            .and_then(|f| f.parse().ok())
    });
    let runtime = StreamRuntime::new(rc)?;
    let metrics = FanoutMetrics::new(runtime.registry())
        .map_err(|e| FanoutError::Setup(format!("registering metrics: {e}")))?;
    metrics.destinations.set(dests.by_key.len() as i64);
    let (policy, interval, threads) = (cfg.retry, cfg.punctuate_interval, cfg.lane_threads);
    let result = runtime.run(move || {
        FanoutProcessor::new(
            topics.clone(),
            shared.clone(),
            metrics.clone(),
            policy,
            interval,
            threads,
        )
    });
    shutdown_defs.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(h) = follower {
        let _ = h.join();
    }
    Ok(result?)
}
