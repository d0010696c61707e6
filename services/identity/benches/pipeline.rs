//! Identity on the local broker (`cargo bench -p corral-identity --bench pipeline`):
//! - events/s through identity (stitcher + coordinator) with 1% and 10% merge-triggering events,
//!   next to the runtime's exactly-once pass-through on the same input (the ratio the issue asks);
//! - bytes of state per profile (graph changelog, latest value per key);
//! - merge latency across partitions: produce time of a merge-triggering event to the commit of
//!   its `profiles.merges` record, at a fixed rate, p50/p99;
//! - one space of returning users (the stitcher tier's common case) with 1 and 2 instances and 1
//!   and 2 stream threads, three runs each: events/s, CPU-seconds per 1,000 events, hit ratio and
//!   the spread of the space's events over the stitcher partitions.
//!
//! `CORRAL_IDENTITY_BENCH_EVENTS` (default 100,000), `CORRAL_IDENTITY_BENCH_USERS` (default
//! 20,000), `CORRAL_IDENTITY_BENCH_RATE` (default 1,000/s for 10 s), `CORRAL_IDENTITY_BENCH_ONLY`
//! (comma-separated parts, default all). Loopback only; every loop is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use corral_codec::{
    AvroRecord, MessageType, ProfileMerge, ProtocolsAnnotation, SegmentMessage, ValidEvent,
};
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
        "identity.events-by-id",
    ] {
        create_topic(&format!("{prefix}{t}"), PARTITIONS, CleanupPolicy::Delete);
    }
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
}

fn spawn_identity(prefix: &str, app: &str, input: &str, state: &std::path::Path) -> Service {
    spawn_identity_with(prefix, app, input, state, 0, &[])
}

fn spawn_identity_with(
    prefix: &str,
    app: &str,
    input: &str,
    state: &std::path::Path,
    instance: u32,
    env: &[(&str, String)],
) -> Service {
    let instance = instance.to_string();
    let args: Vec<String> = [
        "--bootstrap",
        &bootstrap(),
        "--app",
        app,
        "--instance",
        &instance,
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
        env,
    )
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th after it, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn returning_user_event(user: usize, i: usize, tag: &str) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new("one-space", MessageType::Track, format!("{tag}-{i}"));
    m.anonymous_id = Some(format!("anon-{user}"));
    m.user_id = Some(format!("user-{user}"));
    m.event = Some("Page Viewed".into());
    m.received_at_ms = Some(1_700_000_000_000 + i as i64);
    let ev = ValidEvent {
        message: m,
        protocols: ProtocolsAnnotation::default(),
    };
    common::keyed(&ev)
}

struct OneSpace {
    events_per_s: f64,
    cpu_per_1000: f64,
    hit_ratio: f64,
    min_share: f64,
    max_share: f64,
    /// The runtime's exactly-once pass-through on the same records: over the input's partitions,
    /// and over one partition (the ceiling of one space's events when they all share one
    /// partition, as they did before the stitcher tier).
    passthrough: f64,
    passthrough_one_partition: f64,
}

/// One space: `users` first events (which make the profiles and the links), then `n` events of
/// those users again, measured from the first produce to the last resolved commit.
fn one_space_run(users: usize, n: usize, instances: u32, threads: u32) -> OneSpace {
    let input = format!("{}.events.valid", unique("bench-one-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    let prefix = format!("{}.", unique("bench-one"));
    topics(&prefix);
    let app = unique("identity");
    let state = tempfile::tempdir().unwrap();
    let admins: Vec<String> = (0..instances)
        .map(|_| format!("127.0.0.1:{}", corral_tests::http::free_port()))
        .collect();
    let services: Vec<Service> = admins
        .iter()
        .enumerate()
        .map(|(i, a)| {
            spawn_identity_with(
                &prefix,
                &app,
                &input,
                state.path(),
                i as u32,
                &[
                    ("CORRAL_ADMIN_ADDR", a.clone()),
                    ("CORRAL_STREAM_THREADS", threads.to_string()),
                ],
            )
        })
        .collect();
    let resolved = format!("{prefix}events.resolved");
    produce(
        &input,
        (0..users).map(|u| returning_user_event(u, u, "first")),
    );
    consume_until(&resolved, users, Duration::from_secs(600), |_| {}).expect("warm-up resolved");
    // The links of the last profiles follow their events by a commit interval or two.
    std::thread::sleep(Duration::from_secs(2));
    let lookups = |label: &str| -> f64 {
        admins
            .iter()
            .map(|a| {
                corral_tests::http::metrics_text(a)
                    .lines()
                    .filter(|l| {
                        l.starts_with("corral_identity_lookups_total{") && l.contains(label)
                    })
                    .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum()
    };
    let hits_before = lookups("result=\"hit\"");
    let cpu_before: f64 = services.iter().map(|s| cpu_seconds(s.child.id())).sum();
    let started = Instant::now();
    produce(
        &input,
        (0..n).map(|i| returning_user_event(i * 7919 % users, users + i, "again")),
    );
    let done = consume_until(&resolved, users + n, Duration::from_secs(900), |_| {})
        .expect("returning users resolved");
    let cpu: f64 = services
        .iter()
        .map(|s| cpu_seconds(s.child.id()))
        .sum::<f64>()
        - cpu_before;
    let hits = lookups("result=\"hit\"") - hits_before;
    let mut per_partition = [0usize; PARTITIONS as usize];
    // The input is keyed by identifier as the validator keys it: its partitions are the
    // stitcher partitions.
    for r in read_committed(&input, 0, Duration::from_secs(60)) {
        per_partition[r.partition as usize] += 1;
    }
    for s in services {
        s.terminate();
    }
    let passthrough = passthrough_live(PARTITIONS, users, n);
    let passthrough_one_partition = passthrough_live(1, users, n);
    let total = per_partition.iter().sum::<usize>().max(1) as f64;
    OneSpace {
        passthrough,
        passthrough_one_partition,
        events_per_s: n as f64 / (done - started).as_secs_f64(),
        cpu_per_1000: cpu / n as f64 * 1000.0,
        hit_ratio: hits / n as f64,
        min_share: *per_partition.iter().min().unwrap_or(&0) as f64 / total,
        max_share: *per_partition.iter().max().unwrap_or(&0) as f64 / total,
    }
}

/// Median of three runs with min and max beside it, per configuration.
fn one_space(users: usize, n: usize) {
    for (instances, threads) in [(1, 1), (1, 2), (2, 1)] {
        let mut runs: Vec<OneSpace> = (0..3)
            .map(|_| one_space_run(users, n, instances, threads))
            .collect();
        runs.sort_by(|a, b| a.events_per_s.total_cmp(&b.events_per_s));
        let (lo, mid, hi) = (&runs[0], &runs[1], &runs[2]);
        println!(
            "identity one_space instances={instances} threads={threads} users={users} events={n} events_per_s_median={:.0} min={:.0} max={:.0} cpu_seconds_per_1000_events={:.3} hit_ratio={:.3} partition_share_min={:.3} partition_share_max={:.3} passthrough_events_per_s={:.0} passthrough_one_partition_events_per_s={:.0}",
            mid.events_per_s, lo.events_per_s, hi.events_per_s, mid.cpu_per_1000, mid.hit_ratio, mid.min_share, mid.max_share, mid.passthrough, mid.passthrough_one_partition
        );
    }
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

/// The runtime's exactly-once pass-through measured like [`one_space_run`]: started on an empty
/// topic of `partitions`, warmed with `warm` records, then `n` records produced and timed from the
/// first produce to the last output's commit.
fn passthrough_live(partitions: i32, warm: usize, n: usize) -> f64 {
    let input = format!("{}.in", unique("bench-pass-live"));
    create_topic(&input, partitions, CleanupPolicy::Delete);
    let out = format!("{}.out", unique("bench-pass-live"));
    create_topic(&out, PARTITIONS, CleanupPolicy::Delete);
    let state = tempfile::tempdir().unwrap();
    let mut cfg = RuntimeConfig::new(&unique("passthrough"), "0", &bootstrap());
    cfg.input_topics = vec![input.clone()];
    cfg.state_dir = state.path().to_path_buf();
    cfg.dlq_topic = out.clone();
    let rt = StreamRuntime::new(cfg).unwrap();
    let stop = rt.shutdown_flag();
    let out2 = out.clone();
    let h = std::thread::spawn(move || {
        rt.run(move || {
            let out = out2.clone();
            move |ctx: &mut ProcessContext<'_>, r: &InputRecord<'_>| -> Result<(), ProcessError> {
                ctx.emit(&out, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec));
                Ok(())
            }
        })
    });
    let users = warm.max(1);
    produce(
        &input,
        (0..warm).map(|u| returning_user_event(u, u, "first")),
    );
    consume_until(&out, warm, Duration::from_secs(600), |_| {}).expect("pass-through warmed");
    let started = Instant::now();
    produce(
        &input,
        (0..n).map(|i| returning_user_event(i * 7919 % users, warm + i, "again")),
    );
    let done = consume_until(&out, warm + n, Duration::from_secs(600), |_| {})
        .expect("pass-through finished");
    stop.store(true, Ordering::SeqCst);
    let _ = h.join();
    n as f64 / (done - started).as_secs_f64()
}

fn throughput(n: usize, link: f64) {
    let events = common::generate(n, 8, link, 11);
    let input = format!("{}.events.valid", unique("bench-id-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    produce(&input, events.iter().map(common::keyed));

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
        let (k, v) = common::keyed(e);
        let mut rec = BaseRecord::to(&input).key(&k).payload(&v);
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
    // `CORRAL_IDENTITY_BENCH_ONLY=one_space,throughput,merge_latency` picks parts (default all).
    let only = std::env::var("CORRAL_IDENTITY_BENCH_ONLY").unwrap_or_default();
    let want = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    if want("one_space") {
        one_space(env_or("CORRAL_IDENTITY_BENCH_USERS", 20_000), n);
    }
    if want("throughput") {
        for link in [0.01, 0.10] {
            throughput(n, link);
        }
    }
    if want("merge_latency") {
        merge_latency(env_or("CORRAL_IDENTITY_BENCH_RATE", 1_000), 10);
    }
}
