//! Identity on the local broker (`cargo bench -p corral-identity --bench pipeline`):
//! - events/s through identity (router + coordinator) with 1% and 10% merge-triggering events,
//!   next to the runtime's exactly-once pass-through on the same input (the ratio the issue asks);
//! - bytes of state per profile (graph changelog, latest value per key);
//! - merge latency across partitions: produce time of a merge-triggering event to the commit of
//!   its `profiles.merges` record, at a fixed rate, p50/p99.
//!
//! `CORRAL_IDENTITY_BENCH_EVENTS` (default 100,000), `CORRAL_IDENTITY_BENCH_RATE` (default
//! 1,000/s for 10 s). Loopback only; every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, ProfileMerge};
use corral_identity::store::{decode_key, TAG_PROFILE};
use corral_runtime::topics::CleanupPolicy;
use corral_runtime::{InputRecord, ProcessContext, ProcessError, RuntimeConfig, StreamRuntime};
use corral_tests::{bootstrap, create_topic, produce, producer, read_committed, unique, Service};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 6;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts committed records of `topic` until `n`; returns when the n-th arrived, and per record
/// (key of merges: trigger message id) its arrival time.
fn consume_until(
    topic: &str,
    n: usize,
    timeout: Duration,
    mut each: impl FnMut(&[u8]),
) -> Option<Instant> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("bench-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            each(m.payload().unwrap_or_default());
            got += 1;
            if got >= n {
                return Some(Instant::now());
            }
        }
    }
    None
}

fn topics(prefix: &str) {
    for t in [
        "events.resolved",
        "profiles.merges",
        "identity.events-by-space",
    ] {
        create_topic(&format!("{prefix}{t}"), PARTITIONS, CleanupPolicy::Delete);
    }
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
}

fn spawn_identity(prefix: &str, app: &str, input: &str, state: &std::path::Path) -> Service {
    let args: Vec<String> = [
        "--bootstrap",
        &bootstrap(),
        "--app",
        app,
        "--instance",
        "0",
        "--topic-prefix",
        prefix,
        "--valid-topic",
        input,
        "--state-dir",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Service::spawn(
        "identity",
        env!("CARGO_BIN_EXE_corral-identity"),
        &args,
        &[],
    )
}

/// The runtime's pass-through on the same input: decode nothing, emit every record.
fn passthrough(input: &str, n: usize) -> f64 {
    let out = format!("{}.out", unique("bench-pass"));
    create_topic(&out, PARTITIONS, CleanupPolicy::Delete);
    let state = tempfile::tempdir().unwrap();
    let mut cfg = RuntimeConfig::new(&unique("passthrough"), "0", &bootstrap());
    cfg.input_topics = vec![input.to_string()];
    cfg.state_dir = state.path().to_path_buf();
    cfg.dlq_topic = out.clone();
    let rt = StreamRuntime::new(cfg).unwrap();
    let stop = rt.shutdown_flag();
    let out2 = out.clone();
    let started = Instant::now();
    let h = std::thread::spawn(move || {
        rt.run(move || {
            let out = out2.clone();
            move |ctx: &mut ProcessContext<'_>, r: &InputRecord<'_>| -> Result<(), ProcessError> {
                ctx.emit(&out, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec));
                Ok(())
            }
        })
    });
    let done =
        consume_until(&out, n, Duration::from_secs(600), |_| {}).expect("pass-through finished");
    stop.store(true, Ordering::SeqCst);
    let _ = h.join();
    n as f64 / (done - started).as_secs_f64()
}

fn throughput(n: usize, link: f64) {
    let events = common::generate(n, 8, link, 11);
    let input = format!("{}.events.valid", unique("bench-id-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    produce(
        &input,
        events.iter().map(|e| {
            (
                e.message.message_id.clone().into_bytes(),
                e.encode().unwrap(),
            )
        }),
    );

    let base = passthrough(&input, n);

    let prefix = format!("{}.", unique("bench-id"));
    topics(&prefix);
    let app = unique("identity");
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let svc = spawn_identity(&prefix, &app, &input, state.path());
    let done = consume_until(
        &format!("{prefix}events.resolved"),
        n,
        Duration::from_secs(900),
        |_| {},
    )
    .expect("identity finished");
    let rate = n as f64 / (done - started).as_secs_f64();
    svc.terminate();

    let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    for r in read_committed(
        &format!("{prefix}{app}.graph-changelog"),
        0,
        Duration::from_secs(60),
    ) {
        latest.insert(r.key.unwrap(), r.value);
    }
    let bytes: usize = latest
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| k.len() + v.len()))
        .sum();
    let profiles = latest
        .iter()
        .filter(|(k, v)| v.is_some() && decode_key(k).is_some_and(|(t, _)| t == TAG_PROFILE))
        .count();
    let merges = read_committed(
        &format!("{prefix}profiles.merges"),
        0,
        Duration::from_secs(30),
    )
    .len();
    println!(
        "identity events={n} link_fraction={link} events_per_s={rate:.0} passthrough_events_per_s={base:.0} ratio={:.2} profiles={profiles} merge_records={merges} state_bytes_per_profile={:.0}",
        rate / base,
        bytes as f64 / profiles.max(1) as f64
    );
}

fn merge_latency(rate: usize, seconds: usize) {
    let total = rate * seconds;
    let events = common::generate(total, 8, 0.10, 13);
    let input = format!("{}.events.valid", unique("bench-lat-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    let prefix = format!("{}.", unique("bench-lat"));
    topics(&prefix);
    let app = unique("identity");
    let state = tempfile::tempdir().unwrap();
    let svc = spawn_identity(&prefix, &app, &input, state.path());
    std::thread::sleep(Duration::from_secs(5)); // joined and assigned

    let merges_topic = format!("{prefix}profiles.merges");
    let arrivals = std::thread::spawn(move || {
        let mut seen: HashMap<String, Instant> = HashMap::new();
        consume_until(
            &merges_topic,
            usize::MAX,
            Duration::from_secs(seconds as u64 + 20),
            |v| {
                if let Ok(m) = ProfileMerge::decode(v) {
                    if let Some(t) = m.trigger_message_id {
                        seen.entry(t).or_insert_with(Instant::now);
                    }
                }
            },
        );
        seen
    });
    let p = producer();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for (i, e) in events.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let v = e.encode().unwrap();
        let k = e.message.message_id.as_bytes();
        let mut rec = BaseRecord::to(&input).key(k).payload(&v);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
        p.poll(Duration::ZERO);
        sent.insert(e.message.message_id.clone(), Instant::now());
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let seen = arrivals.join().unwrap();
    svc.terminate();
    let mut lat: Vec<f64> = seen
        .iter()
        .filter_map(|(id, at)| sent.get(id).map(|s| (*at - *s).as_secs_f64() * 1000.0))
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| {
        lat.get(((lat.len() as f64 * f) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "identity merge_latency rate={rate}/s seconds={seconds} merges_measured={} p50_ms={:.1} p99_ms={:.1}",
        lat.len(),
        q(0.50),
        q(0.99)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there are no options.
    let n = env_or("CORRAL_IDENTITY_BENCH_EVENTS", 100_000);
    for link in [0.01, 0.10] {
        throughput(n, link);
    }
    merge_latency(env_or("CORRAL_IDENTITY_BENCH_RATE", 1_000), 10);
}
