//! Load generator for the running-pipeline benchmarks (`make bench`): measures the runtime's
//! exactly-once pass-through throughput, end-to-end latency at a fixed rate, and restore speed,
//! against the local broker, printing one `runtime ...` line per figure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{create_topic, produce, producer, read_committed, unique, Service};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};

#[derive(Parser)]
struct Args {
    /// Records for the throughput and restore runs.
    #[arg(long, default_value_t = 300_000)]
    records: usize,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Rate of the latency run (records/s) and its length.
    #[arg(long, default_value_t = 2_000)]
    latency_rate: u64,
    #[arg(long, default_value_t = 15)]
    latency_seconds: u64,
    /// Which measurements to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,restore,rebalance"
    )]
    parts: Vec<String>,
    /// librdkafka settings for the service under test (`key=value`, repeatable), to try knobs
    /// or a secured listener's client settings.
    #[arg(long = "service-kafka")]
    service_kafka: Vec<String>,
    /// Where the service under test connects [default: the test broker's plaintext listener];
    /// the load generator itself always produces and reads on the plaintext one.
    #[arg(long)]
    service_bootstrap: Option<String>,
}

const COUNTER: &str = "corral-counter";

fn counter_bin() -> std::path::PathBuf {
    std::env::current_exe().unwrap().with_file_name(COUNTER)
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    args_in: &Args,
    instance: &str,
    app: &str,
    input: &str,
    output: &str,
    state: &std::path::Path,
    commit_ms: u64,
    passthrough: bool,
) -> Service {
    let mut args = vec![
        "--bootstrap".to_string(),
        args_in
            .service_bootstrap
            .clone()
            .unwrap_or_else(corral_tests::bootstrap),
        "--app".into(),
        app.into(),
        "--instance".into(),
        instance.into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--dlq".into(),
        format!("{input}.dlq"),
        "--state-dir".into(),
        state.display().to_string(),
        "--commit-interval-ms".into(),
        commit_ms.to_string(),
    ];
    if passthrough {
        args.push("--passthrough".into());
    }
    for kv in &args_in.service_kafka {
        args.push("--kafka".into());
        args.push(kv.clone());
    }
    Service::spawn(
        &format!("{app}-{instance}"),
        counter_bin().to_str().unwrap(),
        &args,
        &[("RUST_LOG", "info".into())],
    )
}

fn topics(name: &str, partitions: i32) -> (String, String, String) {
    let app = unique(name);
    let (input, output) = (format!("{app}.in"), format!("{app}.out"));
    create_topic(&input, partitions, CleanupPolicy::Delete);
    create_topic(&output, partitions, CleanupPolicy::Delete);
    create_topic(&format!("{input}.dlq"), 1, CleanupPolicy::Delete);
    (app, input, output)
}

/// Rate at which committed output appeared: records / (last - first output timestamp).
fn throughput(commit_ms: u64, args: &Args) {
    let (app, input, output) = topics(&format!("bench-pass-{commit_ms}"), args.partitions);
    let payload = vec![b'x'; args.record_bytes];
    produce(
        &input,
        (0..args.records).map(|i| (format!("k{i}").into_bytes(), payload.clone())),
    );
    let state = tempfile::tempdir().unwrap();
    let svc = spawn(
        args,
        "0",
        &app,
        &input,
        &output,
        state.path(),
        commit_ms,
        true,
    );
    let out = read_committed_timestamps(&output, args.records, Duration::from_secs(600));
    svc.terminate();
    let (first, last) = (
        out.iter().min().copied().unwrap_or(0),
        out.iter().max().copied().unwrap_or(0),
    );
    let secs = ((last - first).max(1)) as f64 / 1000.0;
    println!(
        "runtime passthrough commit_interval_ms={commit_ms} records={} records_per_sec={:.0} mb_per_sec={:.1}",
        out.len(),
        out.len() as f64 / secs,
        out.len() as f64 * args.record_bytes as f64 / secs / 1_048_576.0
    );
}

fn read_committed_timestamps(topic: &str, n: usize, timeout: Duration) -> Vec<i64> {
    let consumer = committed_consumer(topic);
    let deadline = Instant::now() + timeout;
    let mut ts = Vec::with_capacity(n);
    while ts.len() < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            ts.push(m.timestamp().to_millis().unwrap_or(0));
        }
    }
    ts
}

fn committed_consumer(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", corral_tests::bootstrap())
        .set("group.id", unique("bench-reader"))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // Ask the broker for new data every 10 ms instead of parking the fetch up to 500 ms, so
        // the figure is the pipeline's latency, not the reader's.
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Latency percentiles in ms of `lat` (µs): p50, p99, max.
fn percentiles(mut lat: Vec<u64>) -> (f64, f64, f64) {
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    (pct(0.5), pct(0.99), pct(1.0))
}

/// Produces to `input` at `--latency-rate` for a warm-up second plus `--latency-seconds`, the
/// send time in each value, and reads `output` committed; returns (send µs, latency µs) per
/// record and when the measured part began. `at_second(i)` runs as second `i` of the measured
/// part begins (the rebalance part starts a second instance there).
fn timed_run(
    args: &Args,
    input: &str,
    output: &str,
    mut at_second: impl FnMut(u64),
) -> (Vec<(u64, u64)>, u64) {
    let consumer = committed_consumer(output);
    // A producer connected and holding the topic's metadata, so its own start-up is not measured.
    let p = producer();
    p.client()
        .fetch_metadata(Some(input), Duration::from_secs(10))
        .unwrap();
    // Let the group settle before measuring.
    std::thread::sleep(Duration::from_secs(8));
    // The first second is a warm-up, reported apart: the first transactions after start-up
    // pay one-time costs (a single ~0.6 s stall) that would otherwise be most of the p99.
    let warmup = args.latency_rate;
    let total = warmup + args.latency_rate * args.latency_seconds;
    let reader = std::thread::spawn(move || {
        let mut lat = Vec::with_capacity(total as usize);
        let deadline = Instant::now() + Duration::from_secs(120);
        while (lat.len() as u64) < total && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let sent: u64 = std::str::from_utf8(m.payload().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.split(':').next()?.parse().ok())
                    .unwrap_or(0);
                lat.push((sent, now_us().saturating_sub(sent)));
            }
        }
        lat
    });
    let started = Instant::now();
    let pad = "y".repeat(args.record_bytes.saturating_sub(20));
    let mut measure_from_us = u64::MAX;
    for i in 0..total {
        if i == warmup {
            measure_from_us = now_us();
        }
        if i >= warmup && (i - warmup).is_multiple_of(args.latency_rate) {
            at_second((i - warmup) / args.latency_rate);
        }
        let due = started + Duration::from_micros(i * 1_000_000 / args.latency_rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let v = format!("{}:{pad}", now_us());
        let k = format!("k{i}");
        let mut rec = BaseRecord::to(input).key(&k).payload(&v);
        while let Err((_, r)) = p.send(rec) {
            rec = r;
            p.poll(Duration::from_millis(1));
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    (reader.join().unwrap(), measure_from_us)
}

/// Produce at a fixed rate with the send time in the value; latency = time the committed copy is read.
fn latency(args: &Args) {
    let (app, input, output) = topics("bench-latency", args.partitions);
    let state = tempfile::tempdir().unwrap();
    let svc = spawn(args, "0", &app, &input, &output, state.path(), 100, true);
    let (timeline, measure_from_us) = timed_run(args, &input, &output, |_| {});
    svc.terminate();
    // LOADGEN_LATENCY_DUMP=FILE: every record's send time and latency (µs), to find stalls.
    if let Ok(path) = std::env::var("LOADGEN_LATENCY_DUMP") {
        let lines: String = timeline.iter().map(|(s, l)| format!("{s} {l}\n")).collect();
        std::fs::write(path, lines).unwrap();
    }
    let (measured, warm): (Vec<_>, Vec<_>) = timeline
        .into_iter()
        .partition(|(sent, _)| *sent >= measure_from_us);
    let warmup_max_ms = warm.iter().map(|(_, l)| *l).max().unwrap_or(0) as f64 / 1000.0;
    let n = measured.len();
    let (p50, p99, max) = percentiles(measured.into_iter().map(|(_, l)| l).collect());
    println!(
        "runtime latency rate_per_sec={} records={n} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1} warmup_records={} warmup_max_ms={warmup_max_ms:.1}",
        args.latency_rate,
        warm.len(),
    );
}

/// The pause a rebalance causes when an instance joins: the pass-through runs alone at the
/// latency rate, a second instance joins after 5 s of measurement, and the latency of records
/// sent in the 10 s after the join is set against the 5 s before it. Cooperative-sticky moves
/// only the partitions the new member takes (the old owner commits them first). Pass-through:
/// the output carries the send time; restoring a moved partition's state adds its size at the
/// restore rate (part `restore`).
fn rebalance(args: &Args) {
    let (app, input, output) = topics("bench-rebalance", args.partitions);
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = spawn(args, "0", &app, &input, &output, state_a.path(), 100, true);
    let mut second = None;
    let mut joined_us = u64::MAX;
    let (timeline, measure_from_us) = timed_run(args, &input, &output, |second_index| {
        if second_index == 5 {
            joined_us = now_us();
            second = Some(spawn(
                args,
                "1",
                &app,
                &input,
                &output,
                state_b.path(),
                100,
                true,
            ));
        }
    });
    first.terminate();
    if let Some(s) = second {
        s.terminate();
    }
    let window = |from: u64, to: u64| {
        percentiles(
            timeline
                .iter()
                .filter(|(sent, _)| *sent >= from && *sent < to)
                .map(|(_, l)| *l)
                .collect(),
        )
    };
    let (b50, b99, bmax) = window(measure_from_us, joined_us);
    let (a50, a99, amax) = window(joined_us, joined_us + 10_000_000);
    println!(
        "runtime rebalance rate_per_sec={} before_join p50_ms={b50:.1} p99_ms={b99:.1} max_ms={bmax:.1} \
         after_join_10s p50_ms={a50:.1} p99_ms={a99:.1} max_ms={amax:.1} pause_ms={:.1}",
        args.latency_rate,
        (amax - b99).max(0.0)
    );
}

/// Builds a changelog of `records` distinct keys, deletes the local state and times the restore
/// reported by the runtime's own log line per partition.
fn restore(args: &Args) {
    let (app, input, output) = topics("bench-restore", args.partitions);
    let payload = vec![b'z'; 100];
    produce(
        &input,
        (0..args.records).map(|i| (format!("key-{i}").into_bytes(), payload.clone())),
    );
    let state = tempfile::tempdir().unwrap();
    let svc = spawn(args, "0", &app, &input, &output, state.path(), 1000, false);
    let _ = read_committed(&output, args.records, Duration::from_secs(600));
    svc.terminate();
    std::fs::remove_dir_all(state.path()).unwrap();
    let started = Instant::now();
    let mut cmd = std::process::Command::new(counter_bin());
    cmd.args([
        "--bootstrap",
        &corral_tests::bootstrap(),
        "--app",
        &app,
        "--instance",
        "0",
        "--input",
        &input,
        "--output",
        &output,
        "--dlq",
        &format!("{input}.dlq"),
        "--state-dir",
        &state.path().display().to_string(),
    ])
    .args(
        args.service_kafka
            .iter()
            .flat_map(|kv| ["--kafka", kv.as_str()]),
    )
    .env("RUST_LOG", "info")
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut restored: HashMap<String, (u64, f64)> = HashMap::new();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stderr).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("store partition restored") {
            let field = |name: &str| -> Option<String> {
                let start = line.find(&format!("{name}="))? + name.len() + 1;
                let rest = &line[start..];
                Some(
                    rest.split_whitespace()
                        .next()?
                        .trim_matches('"')
                        .to_string(),
                )
            };
            let p = field("partition").unwrap_or_default();
            let n: u64 = field("records").and_then(|s| s.parse().ok()).unwrap_or(0);
            let s: f64 = field("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
            restored.insert(p, (n, s));
            if restored.len() as i32 == args.partitions
                || started.elapsed() > Duration::from_secs(300)
            {
                break;
            }
        }
    }
    // Keep draining the child's log: a full pipe would block its logging, and with it its shutdown.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let records: u64 = restored.values().map(|v| v.0).sum();
    let seconds: f64 = restored.values().map(|v| v.1).sum();
    println!(
        "runtime restore records={records} seconds={seconds:.2} records_per_sec={:.0}",
        records as f64 / seconds.max(1e-6)
    );
}

fn main() {
    let args = Args::parse();
    let want = |part: &str| args.parts.iter().any(|p| p == part);
    if want("throughput") {
        throughput(100, &args);
        throughput(1000, &args);
    }
    if want("latency") {
        latency(&args);
    }
    if want("restore") {
        restore(&args);
    }
    if want("rebalance") {
        rebalance(&args);
    }
}
