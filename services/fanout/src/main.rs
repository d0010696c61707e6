//! `corral-fanout`: delivers audience and trait changes to destinations. See docs/fanout.md.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use corral_fanout::retry::RetryPolicy;
use corral_fanout::{run, FanoutConfig};
use corral_runtime::cli::RuntimeArgs;

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
    runtime: RuntimeArgs,
    /// Read destinations from this file instead of the definitions topic (no hot reload).
    #[arg(long, env = "CORRAL_FANOUT_DESTINATIONS")]
    destinations: Option<PathBuf>,
    /// Consumer group and changelog prefix.
    #[arg(long, default_value = "fanout")]
    application_id: String,
    /// How often outcomes are applied and due retries dispatched, in ms.
    #[arg(long, default_value_t = 20)]
    punctuate_ms: u64,
    /// First retry delay in ms (doubles per attempt, with jitter).
    #[arg(long, default_value_t = 500)]
    retry_base_ms: u64,
    /// Longest delay between two attempts, in seconds.
    #[arg(long, default_value_t = 600)]
    retry_max_delay_s: u64,
    /// Threads sending HTTP requests.
    #[arg(long, default_value_t = 2)]
    lane_threads: usize,
    /// Log as JSON.
    #[arg(long, env = "CORRAL_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let rt = &args.runtime;
    let mut cfg = FanoutConfig::new(&rt.bootstrap, &rt.topic_prefix);
    cfg.instance_id = rt.instance.clone();
    cfg.application_id = args.application_id;
    cfg.state_dir = rt.state_dir.clone();
    cfg.admin_addr = rt.admin;
    cfg.commit_interval = rt.commit_interval();
    cfg.session_timeout = rt.session_timeout();
    cfg.fault = rt.fault()?;
    cfg.destinations_file = args.destinations;
    cfg.punctuate_interval = Duration::from_millis(args.punctuate_ms.max(1));
    cfg.retry = RetryPolicy {
        base: Duration::from_millis(args.retry_base_ms.max(1)),
        max_delay: Duration::from_secs(args.retry_max_delay_s.max(1)),
    };
    cfg.lane_threads = args.lane_threads;
    run(cfg)?;
    Ok(())
}
