//! `corral-compute`: real-time audiences and computed traits on the exactly-once runtime.
//! Configuration by flags or `CORRAL_*` variables; topic names default to the prefix plus the
//! standard names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use corral_compute::backfill::HistorySource;
use corral_compute::metrics::Metrics;
use corral_compute::query::{self, spawn_follower, ProfilesView, QueryState};
use corral_compute::service::{
    Clock, ComputeProcessor, Definitions, FileOffsetClock, Topics, WallClock, STORES,
};
use corral_compute::EngineConfig;
use corral_runtime::cli::RuntimeArgs;
use corral_runtime::definitions::{follow, DefinitionEvent};
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use corral_runtime::{StoreSpec, StreamRuntime};
use tracing::{info, warn};

#[derive(Parser, Debug)]
#[command(name = "corral-compute", version, about = "Corral's compute service")]
struct Args {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Consumer group, transactional id prefix and changelog prefix.
    #[arg(long, env = "CORRAL_APPLICATION_ID", default_value = "compute")]
    app: String,
    #[arg(long, env = "CORRAL_TOPIC_RESOLVED")]
    resolved_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_MERGES")]
    merges_topic: Option<String>,
    /// Internal: merged-away state handed to the survivor's partition.
    #[arg(long, env = "CORRAL_TOPIC_MERGE_STATE")]
    merge_state_topic: Option<String>,
    /// Backfill: wall-clock budget of history work per punctuation round, shared by the
    /// partitions with history pending (their live events wait at most about this long).
    #[arg(long, env = "CORRAL_BACKFILL_BUDGET_MS", default_value_t = 400)]
    backfill_budget_ms: u64,
    /// Backfill: at most this many history records per partition and punctuation.
    #[arg(long, env = "CORRAL_BACKFILL_MAX_RECORDS", default_value_t = 500_000)]
    backfill_max_records: usize,
    #[arg(long, env = "CORRAL_TOPIC_MEMBERSHIP")]
    membership_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_TRAITS")]
    traits_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DLQ")]
    dlq_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DEFINITIONS")]
    definitions_topic: Option<String>,
    /// How often timers (window expiry) are checked.
    #[arg(long, env = "CORRAL_PUNCTUATE_INTERVAL_MS", default_value_t = 1000)]
    punctuate_interval_ms: u64,
    /// How late an event may be and still bridge `expires_after` sessions.
    #[arg(long, env = "CORRAL_ALLOWED_LATENESS_HOURS", default_value_t = 168)]
    allowed_lateness_hours: i64,
    /// Read-only profile queries (HTTP JSON, `corralctl profile show`); none when absent.
    #[arg(long, env = "CORRAL_COMPUTE_QUERY_ADDR")]
    query: Option<SocketAddr>,
    /// Test-only: add the milliseconds in this file to the wall clock.
    #[arg(long, env = "CORRAL_COMPUTE_CLOCK_OFFSET_FILE", hide = true)]
    clock_offset_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    corral_telemetry::init_tracing(std::env::var("CORRAL_LOG_JSON").is_ok());
    let args = Args::parse();
    let topic = |given: &Option<String>, name: &str| {
        given
            .clone()
            .unwrap_or_else(|| format!("{}{name}", args.runtime.topic_prefix))
    };
    let topics = Arc::new(Topics {
        resolved: topic(&args.resolved_topic, "events.resolved"),
        merges: topic(&args.merges_topic, "profiles.merges"),
        merge_state: topic(&args.merge_state_topic, "compute.merge-state"),
        membership: topic(&args.membership_topic, "audiences.membership"),
        traits: topic(&args.traits_topic, "traits.changes"),
    });
    let definitions_topic = topic(&args.definitions_topic, "definitions");

    let mut cfg = args.runtime.runtime_config(&args.app)?;
    cfg.input_topics = vec![
        topics.resolved.clone(),
        topics.merges.clone(),
        topics.merge_state.clone(),
    ];
    cfg.dlq_topic = topic(&args.dlq_topic, "events.dlq");
    cfg.stores = STORES
        .iter()
        .map(|s| StoreSpec {
            name: (*s).to_string(),
        })
        .collect();
    cfg.punctuate_interval = Some(Duration::from_millis(args.punctuate_interval_ms.max(10)));
    let kafka_extra = cfg.kafka.clone();
    let profiles_changelog = cfg.changelog_topic(STORES[0]);

    // The merge hand-over topic is compute's own: same partitioning as events.resolved.
    let admin = TopicAdmin::connect(&args.runtime.bootstrap, &kafka_extra)
        .context("connecting to Kafka")?;
    let partitions = admin
        .partitions(&topics.resolved)
        .context("reading events.resolved metadata")?
        .with_context(|| {
            format!(
                "topic {} does not exist; create it with `corralctl topics apply`",
                topics.resolved
            )
        })?;
    admin
        .create(&DesiredTopic {
            name: topics.merge_state.clone(),
            partitions,
            replication_factor: 1,
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(7 * 86_400_000),
        })
        .with_context(|| format!("creating {}", topics.merge_state))?;

    let runtime = StreamRuntime::new(cfg).context("configuring the runtime")?;
    let metrics = Arc::new(Metrics::new(runtime.registry()).context("registering metrics")?);
    let defs = Definitions::new(EngineConfig {
        allowed_lateness_ms: args.allowed_lateness_hours.saturating_mul(3_600_000),
        ..EngineConfig::default()
    });
    let caught_up = Arc::new(AtomicBool::new(false));
    let shutdown = runtime.shutdown_flag();
    let reader_stop = Arc::new(AtomicBool::new(false));
    let (d2, m2) = (defs.clone(), metrics.clone());
    let reader = follow(
        &args.runtime.bootstrap,
        &kafka_extra,
        &definitions_topic,
        caught_up.clone(),
        reader_stop.clone(),
        move |ev| {
            match ev {
                DefinitionEvent::Upsert { key, definition } => {
                    if let Err(e) = d2.upsert(&definition) {
                        warn!(key, error = %e, "definition not in force");
                    } else if matches!(definition.kind.as_str(), "audience" | "computed_trait") {
                        info!(key, version = definition.version, "definition in force");
                    }
                }
                DefinitionEvent::Delete { key } => d2.delete(key),
                DefinitionEvent::Undecodable { key, error } => {
                    warn!(key, error, "skipping an undecodable definition")
                }
            }
            let (active, rejected) = d2.counts();
            m2.definitions_active.set(active as i64);
            m2.definitions_rejected.set(rejected as i64);
        },
    )
    .with_context(|| format!("reading definitions from {definitions_topic}"))?;
    let started = Instant::now();
    while !caught_up.load(Ordering::SeqCst) {
        if shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            info!("still loading definitions from {definitions_topic}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let clock: Arc<dyn Clock> = match &args.clock_offset_file {
        Some(p) => Arc::new(FileOffsetClock { path: p.clone() }),
        None => Arc::new(WallClock),
    };
    let (active, rejected) = defs.counts();
    info!(active, rejected, input = %topics.resolved, "computing");
    let mut edges = Vec::new();
    if let Some(addr) = args.query {
        let view = ProfilesView::new();
        edges.push(
            spawn_follower(
                &args.runtime.bootstrap,
                &kafka_extra,
                profiles_changelog,
                &format!("{}-query-{}", args.app, args.runtime.instance),
                view.clone(),
                reader_stop.clone(),
            )
            .context("starting the profiles view")?,
        );
        let state = QueryState {
            view,
            definitions: defs.clone(),
        };
        edges.push(corral_telemetry::serve_in_thread(
            "query",
            addr,
            query::router(state),
            reader_stop.clone(),
        )?);
    }
    let history = Arc::new(HistorySource {
        bootstrap: args.runtime.bootstrap.clone(),
        kafka: kafka_extra.clone(),
        topic: topics.resolved.clone(),
        budget: Duration::from_millis(args.backfill_budget_ms.max(1)),
        max_records: args.backfill_max_records.max(1),
    });
    let result = runtime.run(move || {
        ComputeProcessor::new(topics.clone(), defs.clone(), clock.clone(), metrics.clone())
            .with_history(history.clone())
    });
    reader_stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    for e in edges {
        let _ = e.join();
    }
    result.context("compute stopped")
}
