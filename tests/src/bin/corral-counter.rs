//! The runtime's test processor: counts records per key and emits `key -> count` for each input.
//! Values must be UTF-8; anything else is bad input and goes to the dead-letter topic. Used by the
//! exactly-once tests (SIGKILLed at random points) and the runtime benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral_runtime::{InputRecord, ProcessContext, ProcessError, RuntimeConfig, StoreSpec, StreamRuntime};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long)]
    app: String,
    #[arg(long, default_value = "0")]
    instance: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    dlq: String,
    #[arg(long)]
    state_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    commit_interval_ms: u64,
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u64,
    /// Pass records through unchanged (no state): the runtime's pass-through benchmark.
    #[arg(long)]
    passthrough: bool,
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Test-only crash injection, e.g. `after_commit@3` (also `CORRAL_FAULT`).
    #[arg(long, env = "CORRAL_FAULT")]
    fault: Option<String>,
}

fn counter(ctx: &mut ProcessContext<'_>, rec: &InputRecord<'_>, output: &str) -> Result<(), ProcessError> {
    let key = rec
        .key
        .ok_or_else(|| ProcessError::bad_input("missing_key", "record has no key"))?;
    let value = rec.value.unwrap_or_default();
    std::str::from_utf8(value)
        .map_err(|e| ProcessError::bad_input("decode", format!("value is not UTF-8: {e}")))?;
    let count = match ctx.get(0, key)? {
        Some(bytes) => {
            let arr: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| ProcessError::Fatal("corrupt count in store".into()))?;
            u64::from_be_bytes(arr)
        }
        None => 0,
    } + 1;
    ctx.put(0, key.to_vec(), count.to_be_bytes().to_vec());
    ctx.emit(output, Some(key.to_vec()), Some(count.to_string().into_bytes()));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    corral_telemetry::init_tracing(false);
    let args = Args::parse();
    let mut cfg = RuntimeConfig::new(&args.app, &args.instance, &args.bootstrap);
    cfg.input_topics = vec![args.input.clone()];
    cfg.dlq_topic = args.dlq.clone();
    cfg.state_dir = args.state_dir.clone();
    cfg.commit_interval = Duration::from_millis(args.commit_interval_ms);
    cfg.session_timeout = Duration::from_millis(args.session_timeout_ms);
    cfg.admin_addr = args.admin;
    cfg.fault = args.fault.as_deref().map(str::parse).transpose()?;
    if !args.passthrough {
        cfg.stores = vec![StoreSpec { name: "counts".into() }];
    }
    let runtime = StreamRuntime::new(cfg).context("configuring the runtime")?;
    let output = args.output.clone();
    if args.passthrough {
        runtime.run(move || {
            let output = output.clone();
            move |ctx: &mut ProcessContext<'_>, rec: &InputRecord<'_>| {
                ctx.emit(&output, rec.key.map(<[u8]>::to_vec), rec.value.map(<[u8]>::to_vec));
                Ok(())
            }
        })?;
    } else {
        runtime.run(move || {
            let output = output.clone();
            move |ctx: &mut ProcessContext<'_>, rec: &InputRecord<'_>| counter(ctx, rec, &output)
        })?;
    }
    Ok(())
}
