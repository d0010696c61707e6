//! `corral-validator`: tracking plans, controls and de-duplication on the exactly-once runtime.
//! Configuration by flags or `CORRAL_*` variables; topic names default to `{prefix}events.raw` etc.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use corral_runtime::cli::RuntimeArgs;
use corral_runtime::{StoreSpec, StreamRuntime};
use corral_validator::kafka::spawn_definitions_reader;
use corral_validator::metrics::Metrics;
use corral_validator::{parse_duration_ms, Outputs, PlanStore, ValidatorProcessor};
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "corral-validator",
    version,
    about = "Corral's validator service"
)]
struct Args {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Consumer group, transactional id prefix and changelog prefix.
    #[arg(long, env = "CORRAL_APPLICATION_ID", default_value = "validator")]
    app: String,
    /// Full topic names; each defaults to the prefix + its standard name.
    #[arg(long, env = "CORRAL_TOPIC_RAW")]
    raw_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_VALID")]
    valid_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_BLOCKED")]
    blocked_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_VIOLATIONS")]
    violations_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DLQ")]
    dlq_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DEFINITIONS")]
    definitions_topic: Option<String>,
    /// How long a messageId is remembered (at least 24h in production).
    #[arg(long, env = "CORRAL_DEDUP_WINDOW", default_value = "24h")]
    dedup_window: String,
    /// Allow a window under 24h (tests only).
    #[arg(long, hide = true)]
    allow_short_dedup_window: bool,
}

fn main() -> anyhow::Result<()> {
    corral_telemetry::init_tracing(std::env::var("CORRAL_LOG_JSON").is_ok());
    let args = Args::parse();
    let topic = |given: &Option<String>, name: &str| {
        given
            .clone()
            .unwrap_or_else(|| format!("{}{name}", args.runtime.topic_prefix))
    };
    let window = parse_duration_ms(&args.dedup_window).map_err(anyhow::Error::msg)?;
    if window < 86_400_000 && !args.allow_short_dedup_window {
        anyhow::bail!(
            "the de-duplication window must be at least 24h (got {})",
            args.dedup_window
        );
    }
    let outputs = Arc::new(Outputs {
        raw: topic(&args.raw_topic, "events.raw"),
        valid: topic(&args.valid_topic, "events.valid"),
        blocked: topic(&args.blocked_topic, "events.blocked"),
        violations: topic(&args.violations_topic, "events.violations"),
        dedup_window_ms: window,
    });
    let definitions = topic(&args.definitions_topic, "definitions");

    let mut cfg = args.runtime.runtime_config(&args.app)?;
    cfg.input_topics = vec![outputs.raw.clone()];
    cfg.dlq_topic = topic(&args.dlq_topic, "events.dlq");
    cfg.stores = vec![StoreSpec {
        name: "dedup".into(),
    }];
    let kafka_extra = cfg.kafka.clone();

    let runtime = StreamRuntime::new(cfg).context("configuring the runtime")?;
    let metrics = Arc::new(Metrics::new(runtime.registry()).context("registering metrics")?);
    let plans = PlanStore::new();
    let caught_up = Arc::new(AtomicBool::new(false));
    let shutdown = runtime.shutdown_flag();
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = spawn_definitions_reader(
        args.runtime.bootstrap.clone(),
        kafka_extra,
        definitions.clone(),
        plans.clone(),
        metrics.clone(),
        caught_up.clone(),
        reader_stop.clone(),
    )
    .with_context(|| format!("reading tracking plans from {definitions}"))?;
    let started = Instant::now();
    while !caught_up.load(Ordering::SeqCst) {
        if shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            info!("still loading tracking plans from {definitions}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    info!(plans = plans.snapshot().len(), input = %outputs.raw, "validating");

    let result = runtime
        .run(move || ValidatorProcessor::new(outputs.clone(), plans.clone(), metrics.clone(), 0));
    reader_stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    result.context("validator stopped")
}
