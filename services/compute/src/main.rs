//! `corral-compute`: real-time audiences and computed traits on the exactly-once runtime.
//! Configuration by flags or `CORRAL_*` variables (`--help`); the shared ones are the runtime's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral_compute::backfill::HistorySource;
use corral_compute::metrics::Metrics;
use corral_compute::query::{self, ProfilesView, QueryState};
use corral_compute::service::{
    Clock, ComputeProcessor, Definitions, FileOffsetClock, Topics, WallClock, PROFILES, STORES,
};
use corral_compute::EngineConfig;
use corral_runtime::topics::CleanupPolicy;
use corral_runtime::{RuntimeArgs, Service};

#[derive(Parser, Debug)]
#[command(name = "corral-compute", version, about = "Corral's compute service")]
struct Args {
    #[command(flatten)]
    common: RuntimeArgs,
    /// Backfill: wall-clock budget of history work per punctuation round, shared by the
    /// partitions with history pending (their live events wait at most about this long).
    #[arg(long, env = "CORRAL_BACKFILL_BUDGET_MS", default_value_t = 400)]
    backfill_budget_ms: u64,
    /// Backfill: at most this many history records per partition and punctuation.
    #[arg(long, env = "CORRAL_BACKFILL_MAX_RECORDS", default_value_t = 500_000)]
    backfill_max_records: usize,
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
    let args = Args::parse();
    let mut svc = Service::start("compute", args.common)?;
    let mut topics = Topics::from_names(svc.topics());
    // Internal to the application, like its changelogs: `{prefix}{app}.accounts`
    // (`corral.compute.accounts` by default), so two deployments on one cluster never share it.
    let app = svc.config();
    topics.accounts = format!("{}{}.accounts", app.topic_prefix, app.application_id);
    let topics = Arc::new(topics);
    // The merge hand-over is compute's own topic, partitioned like events.resolved.
    let week = Some(7 * 86_400_000);
    svc.ensure_topic_like(
        &topics.merge_state,
        &topics.resolved,
        CleanupPolicy::Delete,
        week,
    )?;
    // The user side → account side messages, partitioned like events.resolved too.
    svc.ensure_topic_like(
        &topics.accounts,
        &topics.resolved,
        CleanupPolicy::Delete,
        week,
    )?;
    let mut cfg = svc.config();
    cfg.input_topics = vec![
        topics.resolved.clone(),
        topics.merges.clone(),
        topics.merge_state.clone(),
        topics.accounts.clone(),
    ];
    cfg.stores = STORES.iter().map(|s| (*s).into()).collect();
    cfg.punctuate_interval = Some(Duration::from_millis(args.punctuate_interval_ms.max(10)));
    let runtime = svc
        .runtime(cfg.clone())
        .context("configuring the runtime")?;
    let metrics = Arc::new(Metrics::new(runtime.registry()).context("registering metrics")?);

    let defs = Definitions::new(EngineConfig {
        allowed_lateness_ms: args.allowed_lateness_hours.saturating_mul(3_600_000),
        ..EngineConfig::default()
    });
    let (d, m) = (defs.clone(), metrics.clone());
    svc.follow_definitions("audiences and computed traits", move |ev| d.apply(ev, &m))?;
    if args.query.is_some() {
        let view = ProfilesView::new();
        let v = view.clone();
        svc.follow_store(&cfg, PROFILES, view.caught_up_flag(), move |batch| {
            v.apply_batch(batch.into_iter().map(|r| (r.key, r.value)))
        })?;
        let state = QueryState {
            view,
            definitions: defs.clone(),
        };
        svc.serve("query", args.query, query::router(state))?;
    }
    let clock: Arc<dyn Clock> = match &args.clock_offset_file {
        Some(p) => Arc::new(FileOffsetClock { path: p.clone() }),
        None => Arc::new(WallClock),
    };
    let history = Arc::new(HistorySource {
        bootstrap: svc.bootstrap().to_string(),
        kafka: svc.kafka().clone(),
        topic: topics.resolved.clone(),
        budget: Duration::from_millis(args.backfill_budget_ms.max(1)),
        max_records: args.backfill_max_records.max(1),
    });
    svc.add(runtime, move || {
        ComputeProcessor::new(topics.clone(), defs.clone(), clock.clone(), metrics.clone())
            .with_history(history.clone())
    });
    svc.run().context("compute stopped")
}
