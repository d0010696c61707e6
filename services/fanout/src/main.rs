//! `corral-fanout`: delivers audience and trait changes to destinations. See docs/fanout.md.
//! Configuration by flags or `CORRAL_*` variables (`--help`); the shared ones are the runtime's.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral_fanout::metrics::FanoutMetrics;
use corral_fanout::processor::{FanoutProcessor, Topics, OUTBOX};
use corral_fanout::registry::{self, Destinations, SharedDestinations};
use corral_fanout::retry::RetryPolicy;
use corral_fanout::{ensure_topics, follow_destinations, load_destinations_file};
use corral_runtime::{RuntimeArgs, Service};

#[derive(Parser)]
#[command(
    name = "corral-fanout",
    version,
    about = "Deliver audience and trait changes to destinations",
    // The outbox has its own folder by default.
    mut_arg("state_dir", |a| a.default_value("state/fanout"))
)]
struct Args {
    #[command(flatten)]
    common: RuntimeArgs,
    /// Read destinations from this file instead of the definitions topic (no hot reload).
    #[arg(long, env = "CORRAL_FANOUT_DESTINATIONS")]
    destinations: Option<PathBuf>,
    /// How often outcomes are applied and due retries dispatched, in ms.
    #[arg(
        long,
        alias = "punctuate-ms",
        env = "CORRAL_PUNCTUATE_INTERVAL_MS",
        default_value_t = 20
    )]
    punctuate_interval_ms: u64,
    /// First retry delay in ms (doubles per attempt, with jitter).
    #[arg(long, env = "CORRAL_FANOUT_RETRY_BASE_MS", default_value_t = 500)]
    retry_base_ms: u64,
    /// Longest delay between two attempts, in seconds.
    #[arg(long, env = "CORRAL_FANOUT_RETRY_MAX_DELAY_S", default_value_t = 600)]
    retry_max_delay_s: u64,
    /// Threads sending HTTP requests.
    #[arg(long, env = "CORRAL_FANOUT_LANE_THREADS", default_value_t = 2)]
    lane_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut svc = Service::start("fanout", args.common)?;
    let shared: SharedDestinations = Arc::new(RwLock::new(Arc::new(Destinations::default())));
    match &args.destinations {
        Some(path) => {
            let dests = load_destinations_file(path)?;
            if let Ok(mut g) = shared.write() {
                *g = Arc::new(dests);
            }
        }
        None => follow_destinations(&mut svc, shared.clone())?,
    }
    let dests = registry::snapshot(&shared);
    tracing::info!(destinations = dests.by_key.len(), "destinations loaded");
    let topics = Topics::from_names(svc.topics());
    ensure_topics(&svc, &topics, &dests)?;

    let interval = Duration::from_millis(args.punctuate_interval_ms.max(1));
    let mut cfg = svc.config();
    cfg.input_topics = vec![
        topics.membership.clone(),
        topics.traits.clone(),
        topics.replay.clone(),
    ];
    cfg.stores = vec![OUTBOX.into()];
    cfg.punctuate_interval = Some(interval);
    let runtime = svc.runtime(cfg).context("configuring the runtime")?;
    let metrics = FanoutMetrics::new(runtime.registry()).context("registering metrics")?;
    metrics.destinations.set(dests.by_key.len() as i64);
    let policy = RetryPolicy {
        base: Duration::from_millis(args.retry_base_ms.max(1)),
        max_delay: Duration::from_secs(args.retry_max_delay_s.max(1)),
    };
    let threads = args.lane_threads;
    svc.add(runtime, move || {
        FanoutProcessor::new(
            topics.clone(),
            shared.clone(),
            metrics.clone(),
            policy,
            interval,
            threads,
        )
    });
    svc.run().context("fanout stopped")
}
