//! The runtime's test processor: counts records per key and emits `key -> count` for each input.
//! Values must be UTF-8; anything else is bad input and goes to the dead-letter topic. Used by the
//! exactly-once tests (SIGKILLed at random points) and the runtime benchmarks.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral_runtime::{
    InputRecord, ProcessContext, ProcessError, Processor, RuntimeConfig, Store, StreamRuntime,
};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long)]
    app: String,
    #[arg(long, default_value = "0")]
    instance: String,
    /// Input topics, comma-separated; several must be co-partitioned (a key counts across all).
    #[arg(long, value_delimiter = ',', required = true)]
    input: Vec<String>,
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
    #[arg(long, env = "CORRAL_ADMIN_ADDR")]
    admin: Option<std::net::SocketAddr>,
    /// Stream threads (also `CORRAL_STREAM_THREADS`, as every service).
    #[arg(long, env = "CORRAL_STREAM_THREADS", default_value_t = 1)]
    threads: usize,
    /// Every this many ms, emit each task's `keys=K total=N` to `--summary-topic` when it changed
    /// (exercises punctuation and prefix scans).
    #[arg(long, requires = "summary_topic")]
    punctuate_ms: Option<u64>,
    #[arg(long)]
    summary_topic: Option<String>,
    /// Test-only crash injection, e.g. `after_commit@3` (also `CORRAL_FAULT`).
    #[arg(long, env = "CORRAL_FAULT")]
    fault: Option<String>,
    /// librdkafka settings for the runtime's clients, `key=value`, repeatable (benchmark knobs).
    #[arg(long = "kafka", value_parser = parse_kafka_setting)]
    kafka: Vec<(String, String)>,
}

fn parse_kafka_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not key=value"))
}

fn counter(
    ctx: &mut ProcessContext<'_>,
    rec: &InputRecord<'_>,
    output: &str,
) -> Result<(), ProcessError> {
    let key = rec
        .key
        .ok_or_else(|| ProcessError::bad_input("missing_key", "record has no key"))?;
    let value = rec.value.unwrap_or_default();
    std::str::from_utf8(value)
        .map_err(|e| ProcessError::bad_input("decode", format!("value is not UTF-8: {e}")))?;
    let count = match ctx.get(0, key)? {
        Some(bytes) => decode_count(&bytes)?,
        None => 0,
    } + 1;
    ctx.put(0, key.to_vec(), count.to_be_bytes().to_vec());
    ctx.emit(
        output,
        Some(key.to_vec()),
        Some(count.to_string().into_bytes()),
    );
    Ok(())
}

fn decode_count(bytes: &[u8]) -> Result<u64, ProcessError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| ProcessError::Fatal("corrupt count in store".into()))?;
    Ok(u64::from_be_bytes(arr))
}

/// The counter plus a punctuation that summarises each task's store: store 0 holds the counts,
/// store 1 the last summary emitted per task, so a summary is emitted once per change, exactly once.
struct Summarising {
    output: String,
    summary_topic: String,
}

impl Processor for Summarising {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        rec: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        counter(ctx, rec, &self.output)
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        _now_ms: i64,
    ) -> Result<(), ProcessError> {
        let entries = ctx.scan_prefix(0, b"")?;
        let mut total = 0;
        for (_, v) in &entries {
            total += decode_count(v)?;
        }
        let summary = format!("keys={} total={total}", entries.len());
        let task = format!("partition-{}", ctx.partition());
        if entries.is_empty() || ctx.get(1, task.as_bytes())?.as_deref() == Some(summary.as_bytes())
        {
            return Ok(());
        }
        ctx.put(1, task.clone().into_bytes(), summary.clone().into_bytes());
        ctx.emit(
            &self.summary_topic,
            Some(task.into_bytes()),
            Some(summary.into_bytes()),
        );
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    corral_telemetry::init_tracing(false);
    let args = Args::parse();
    let mut cfg = RuntimeConfig::new(&args.app, &args.instance, &args.bootstrap);
    cfg.input_topics = args.input.clone();
    cfg.dlq_topic = args.dlq.clone();
    cfg.state_dir = args.state_dir.clone();
    cfg.commit_interval = Duration::from_millis(args.commit_interval_ms);
    cfg.session_timeout = Duration::from_millis(args.session_timeout_ms);
    cfg.admin_addr = args.admin;
    cfg.threads = args.threads;
    cfg.fault = args.fault.as_deref().map(str::parse).transpose()?;
    cfg.kafka.extend(args.kafka.iter().cloned());
    if !args.passthrough {
        cfg.stores = vec![Store::named("counts").into()];
    }
    if let (Some(ms), Some(_)) = (args.punctuate_ms, &args.summary_topic) {
        cfg.punctuate_interval = Some(Duration::from_millis(ms));
        cfg.stores.push(Store::named("summaries").into());
    }
    let runtime = StreamRuntime::new(cfg).context("configuring the runtime")?;
    let output = args.output.clone();
    if let Some(summary_topic) = args.summary_topic.clone() {
        runtime.run(move || Summarising {
            output: output.clone(),
            summary_topic: summary_topic.clone(),
        })?;
    } else if args.passthrough {
        runtime.run(move || {
            let output = output.clone();
            move |ctx: &mut ProcessContext<'_>, rec: &InputRecord<'_>| {
                ctx.emit(
                    &output,
                    rec.key.map(<[u8]>::to_vec),
                    rec.value.map(<[u8]>::to_vec),
                );
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
