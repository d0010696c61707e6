//! `corral-validator`: tracking plans, controls and de-duplication on the exactly-once runtime.
//! Configuration by flags or `CORRAL_*` variables (`--help`); the shared ones are the runtime's.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use corral_codec::RawEvent;
use corral_runtime::{RuntimeArgs, Service};
use corral_validator::metrics::Metrics;
use corral_validator::registry::Applied;
use corral_validator::{dedup_store, parse_duration_ms, PlanStore, ValidatorProcessor};

#[derive(Parser, Debug)]
#[command(
    name = "corral-validator",
    version,
    about = "Corral's validator service"
)]
struct Args {
    #[command(flatten)]
    common: RuntimeArgs,
    /// How long a messageId is remembered (at least 24h in production).
    #[arg(long, env = "CORRAL_DEDUP_WINDOW", default_value = "24h")]
    dedup_window: String,
    /// Allow a window under 24h (tests only).
    #[arg(long, hide = true)]
    allow_short_dedup_window: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let window = parse_duration_ms(&args.dedup_window).map_err(anyhow::Error::msg)?;
    if window < 86_400_000 && !args.allow_short_dedup_window {
        anyhow::bail!(
            "the de-duplication window must be at least 24h (got {})",
            args.dedup_window
        );
    }
    let mut svc = Service::start("validator", args.common)?;
    let mut cfg = svc.config();
    cfg.input_topics = vec![svc.topics().of::<RawEvent>()];
    cfg.stores = vec![dedup_store(window)];
    let runtime = svc.runtime(cfg).context("configuring the runtime")?;
    let metrics = Arc::new(Metrics::new(runtime.registry()).context("registering metrics")?);

    let plans = PlanStore::new();
    let (p, m) = (plans.clone(), metrics.clone());
    svc.follow_definitions("tracking plans", move |ev| match p.apply_logged(ev) {
        Some(Applied::Loaded { .. } | Applied::Removed { .. }) => m.publish_plans(&p),
        Some(Applied::Ignored) => {}
        None => m.definition_errors.inc(),
    })?;
    svc.add(runtime, move || {
        ValidatorProcessor::new(plans.clone(), metrics.clone(), window)
    });
    svc.run().context("validator stopped")
}
