//! Compute through the real broker (`deploy/local`), the two figures the compute issue asks for
//! that the in-process `compute-bench` cannot give:
//!
//! - latency: events enter `events.resolved` at a fixed rate (default 5 000/s for 15 s) with the
//!   example definitions; each profile's first event (`Product Viewed` above $100) makes it enter
//!   `viewed_expensive_not_bought`, its second changes nothing. The figure is the time from the
//!   producer's send to the membership change being readable with `read_committed` (reader with
//!   `fetch.wait.max.ms=10`), matched by the change's trigger message id; commit interval 100 ms.
//! - backfill: N events (default 100 000, 5 per profile) are processed live, then an audience over
//!   them with `include_historical_data: true` is applied (`corral_compute::admin::apply_text`);
//!   two figures: the backfill rate proper (history events applied / time from compute's first
//!   history read, its `corral_compute_backfill_started_timestamp_seconds`, until the last done
//!   state is committed, i.e. the last `entered` is readable) and end to end (the apply call
//!   until every profile's `entered` is committed).
//!
//! - throughput: 200 000 events (`COMPUTE_BENCH_THROUGHPUT_EVENTS`; 20 000 profiles, 1 in 10 an
//!   identify) with 10 and with 100 definitions (`corral_compute::bench_defs`, the same sets as
//!   the in-process `compute-bench`), produced as fast as the broker takes them; events/s =
//!   events committed by compute's consumer group / time from its first to its last commit.
//!
//! `cargo bench -p corral-compute --bench pipeline`; `COMPUTE_BENCH_RATE`,
//! `COMPUTE_BENCH_SECONDS`, `COMPUTE_BENCH_BACKFILL_EVENTS` scale it. Bounded: every wait has a
//! deadline; loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MembershipChange, MessageType, SegmentMessage};
use corral_compute::admin::{self, DefinitionsTopic};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::{metric, metrics_text};
use corral_tests::{assign_from_beginning, bootstrap, create_topic, produce, unique, Service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const EXAMPLES: &str = include_str!("../../../examples/definitions.yaml");
const SPACE: &str = "bench";
const PARTITIONS: i32 = 3;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Topics and a running compute for one figure.
struct Stack {
    /// Application id (the consumer group).
    app: String,
    resolved: String,
    membership: String,
    defs: DefinitionsTopic,
    _state: tempfile::TempDir,
    svc: Service,
}

impl Stack {
    /// Creates the topics, applies `definitions` and starts compute (with `extra` flags).
    fn start(name: &str, definitions: &str, extra: &[(&str, String)]) -> Stack {
        let app = unique(name);
        let t = |n: &str| format!("{app}.{n}");
        for n in [
            "events.resolved",
            "profiles.merges",
            "audiences.membership",
            "traits.changes",
        ] {
            create_topic(&t(n), PARTITIONS, CleanupPolicy::Delete);
        }
        create_topic(&t("events.dlq"), 1, CleanupPolicy::Delete);
        create_topic(&t("definitions"), 1, CleanupPolicy::Compact);
        let defs = DefinitionsTopic {
            bootstrap: bootstrap(),
            kafka: BTreeMap::new(),
            topic: t("definitions"),
            space: SPACE.into(),
        };
        admin::apply_text(&defs, definitions, "bench.yaml", Some("bench".into())).unwrap();
        let state = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            ("--bootstrap", bootstrap()),
            ("--app", app.clone()),
            ("--instance", "0".into()),
            ("--resolved-topic", t("events.resolved")),
            ("--merges-topic", t("profiles.merges")),
            ("--merge-state-topic", t("compute.merge-state")),
            ("--membership-topic", t("audiences.membership")),
            ("--traits-topic", t("traits.changes")),
            ("--definitions-topic", t("definitions")),
            ("--dlq-topic", t("events.dlq")),
            ("--state-dir", state.path().to_str().unwrap().to_string()),
            ("--commit-interval-ms", "100".into()),
        ]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (*k, v.clone())))
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        let svc = Service::spawn("compute", BIN, &args, &[]);
        Stack {
            app: app.clone(),
            resolved: t("events.resolved"),
            membership: t("audiences.membership"),
            defs,
            _state: state,
            svc,
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn event(profile: &str, id: &str, name: &str, props: Value, at: i64) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, MessageType::Track, id);
    m.event = Some(name.into());
    m.properties = Some(props);
    corral_tests::resolved_event(profile, m, at)
}

fn identify(profile: &str, id: &str, traits: Value, at: i64) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, MessageType::Identify, id);
    m.traits = Some(traits);
    corral_tests::resolved_event(profile, m, at)
}

/// A committed-only reader of the membership topic that does not add its own wait.
fn membership_reader(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    assign_from_beginning(&c, topic);
    c
}

/// Polls `c` until `done` says so or the deadline passes; calls `f` per change with the
/// instant it was read.
fn read_changes(
    c: &BaseConsumer,
    deadline: Instant,
    mut f: impl FnMut(MembershipChange, Instant) -> bool,
) -> bool {
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let at = Instant::now();
            if let Some(v) = m.payload() {
                if let Ok(ch) = MembershipChange::decode(v) {
                    if f(ch, at) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency() {
    let rate: u64 = env_or("COMPUTE_BENCH_RATE", 5000);
    let seconds: u64 = env_or("COMPUTE_BENCH_SECONDS", 15);
    let admin_addr = format!("127.0.0.1:{}", corral_tests::http::free_port());
    let stack = Stack::start(
        "compute-bench-lat",
        EXAMPLES,
        &[("--admin", admin_addr.clone())],
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    let send = |p: &BaseProducer, rec: &(Vec<u8>, Vec<u8>)| {
        let mut r = BaseRecord::to(&stack.resolved).key(&rec.0).payload(&rec.1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(Instant::now() < deadline, "producer queue stuck: {e}");
                    r = back;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
        p.poll(Duration::ZERO);
    };

    // The reader runs on its own thread; sent ids and their send instants reach it by channel.
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    let topic = stack.membership.clone();
    let expected_total = (rate * seconds).div_ceil(2) as usize; // each profile's first event
    let origin = Instant::now();
    let reader = std::thread::spawn(move || {
        let c = membership_reader(&topic);
        let mut sent: HashMap<String, Instant> = HashMap::new();
        // (sent, ms after origin; latency ms)
        let mut lat: Vec<(f64, f64)> = Vec::new();
        let point = |t: Instant, read: Instant| {
            (
                t.duration_since(origin).as_secs_f64() * 1000.0,
                read.duration_since(t).as_secs_f64() * 1000.0,
            )
        };
        let mut pending: HashMap<String, Instant> = HashMap::new(); // read before their send arrived
        let deadline = Instant::now() + Duration::from_secs(seconds + 180);
        read_changes(&c, deadline, |ch, at| {
            for (id, t) in rx.try_iter() {
                if let Some(read) = pending.remove(&id) {
                    lat.push(point(t, read));
                } else {
                    sent.insert(id, t);
                }
            }
            if ch.audience_key == "viewed_expensive_not_bought" {
                if let Some(id) = ch.trigger_message_id {
                    match sent.remove(&id) {
                        Some(t) => lat.push(point(t, at)),
                        None => {
                            pending.insert(id, at);
                        }
                    }
                }
            }
            lat.len() >= expected_total
        });
        lat
    });

    // Warm-up: one event, wait for compute to be up (definitions loaded, partitions assigned).
    let t0 = now_ms();
    let warm = event(
        "warm",
        "warm-0",
        "Product Viewed",
        json!({"price": 150}),
        t0,
    );
    send(&producer, &warm);
    producer.flush(Duration::from_secs(10)).unwrap();
    // Its latency includes start-up, so it is not measured (the reader never learns its id).
    let c = membership_reader(&stack.membership);
    assert!(
        read_changes(&c, Instant::now() + Duration::from_secs(120), |ch, _| ch
            .trigger_message_id
            .as_deref()
            == Some("warm-0")),
        "compute did not start within 120 s"
    );
    drop(c);

    // Fixed rate: event i is due at start + i / rate; profile i/2 sees a qualifying first event
    // (enters) and a second one that changes nothing.
    let total = rate * seconds;
    // The first second runs at the rate unmeasured: every partition's first transactions and
    // first profiles are start-up, not steady state (see BENCHMARKS.md, runtime latency).
    let warmup = rate;
    let start = Instant::now();
    for i in 0..warmup + total {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            producer.poll(Duration::ZERO);
            std::thread::sleep((due - now).min(Duration::from_micros(500)));
        }
        let (id, profile) = match i.checked_sub(warmup) {
            Some(j) => (format!("e{j}"), format!("p{}", j / 2)),
            None => (format!("w{i}"), format!("w{}", i / 2)),
        };
        let rec = event(
            &profile,
            &id,
            "Product Viewed",
            json!({"price": 150}),
            now_ms(),
        );
        if i >= warmup && (i - warmup).is_multiple_of(2) {
            tx.send((id, Instant::now())).unwrap();
        }
        send(&producer, &rec);
    }
    let send_secs = start.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(30)).unwrap();
    drop(tx);
    let timeline = reader.join().unwrap();
    // COMPUTE_BENCH_LATENCY_DUMP=FILE: each change's send time and latency (ms), to find stalls.
    if let Ok(path) = std::env::var("COMPUTE_BENCH_LATENCY_DUMP") {
        let lines: String = timeline
            .iter()
            .map(|(t, l)| format!("{t:.1} {l:.1}\n"))
            .collect();
        std::fs::write(path, lines).unwrap();
        // With the service's own timings, to tell a slow commit from a slow punctuation.
        let body = metrics_text(&admin_addr);
        for l in body.lines().filter(|l| {
            l.starts_with("corral_kafka_commit_duration_seconds")
                || l.starts_with("corral_processing_duration_seconds")
        }) {
            println!("{l}");
        }
    }
    let mut lat: Vec<f64> = timeline.into_iter().map(|(_, l)| l).collect();
    lat.sort_by(f64::total_cmp);
    let measured = lat.len();
    let changes = total.div_ceil(2);
    println!(
        "compute latency rate={rate} seconds={seconds} sent_in_s={send_secs:.1} changes={measured}/{changes} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
    );
    assert!(stack.svc.terminate().success());
}

const BACKFILL_BEFORE: &str = r#"
audiences:
  - key: signed_up
    include_historical_data: true
    query: event('Signed Up').count() >= 1
"#;

const BACKFILL_AFTER: &str = r#"
audiences:
  - key: signed_up
    include_historical_data: true
    query: event('Signed Up').count() >= 1
  - key: five_orders
    include_historical_data: true
    query: event('Order Completed').count() >= 5
"#;

fn backfill() {
    let n: usize = env_or("COMPUTE_BENCH_BACKFILL_EVENTS", 100_000);
    let per_profile = 5;
    let profiles = n / per_profile;
    let admin_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let load_before = loadavg();
    let mut stack = Stack::start(
        "compute-bench-backfill",
        BACKFILL_BEFORE,
        &[("--admin", admin_addr.clone())],
    );

    // History: processed live (so the partitions have history behind the new audience's cut).
    let base = now_ms() - 3_600_000;
    let history: Vec<_> = (0..n)
        .map(|i| {
            let p = i % profiles;
            event(
                &format!("p{p}"),
                &format!("h{i}"),
                "Order Completed",
                json!({"revenue": 10}),
                base + i as i64,
            )
        })
        .collect();
    for chunk in history.chunks(10_000) {
        produce(&stack.resolved, chunk.to_vec());
    }
    // A marker last: once its entry is committed, every earlier event has been processed
    // (one instance, in-order per partition; the marker is on every partition).
    let c = membership_reader(&stack.membership);
    let markers: Vec<_> = (0..30)
        .map(|i| {
            event(
                &format!("m{i}"),
                &format!("m{i}"),
                "Signed Up",
                json!({}),
                base + n as i64,
            )
        })
        .collect();
    produce(&stack.resolved, markers);
    let mut seen = 0;
    assert!(
        read_changes(&c, Instant::now() + Duration::from_secs(300), |ch, _| {
            if ch.audience_key == "signed_up" {
                seen += 1;
            }
            seen >= 30
        }),
        "history not processed within 300 s"
    );
    assert!(stack.svc.is_running());

    let applied_at = Instant::now();
    admin::apply_text(
        &stack.defs,
        BACKFILL_AFTER,
        "after.yaml",
        Some("bench".into()),
    )
    .unwrap();
    let apply_secs = applied_at.elapsed().as_secs_f64();
    let mut entered = 0;
    let mut all_entered_unix_ms = 0;
    let done = read_changes(&c, Instant::now() + Duration::from_secs(600), |ch, _| {
        if ch.audience_key == "five_orders" {
            entered += 1;
        }
        all_entered_unix_ms = now_ms();
        entered >= profiles
    });
    let secs = applied_at.elapsed().as_secs_f64();
    assert!(
        done,
        "backfill: only {entered} of {profiles} entries within 600 s"
    );
    // The rate proper, from compute's metrics (same machine, same wall clock): from its first
    // history read to the last partition's done state written, and to it committed (the last
    // `entered` is readable: the done state, the re-evaluation and its output are one
    // transaction).
    let m = |name: &str| metric(&admin_addr, name).unwrap_or(f64::NAN);
    let applied = m("corral_compute_backfill_applied_total");
    let read = m("corral_compute_backfill_read_total");
    let started = m("corral_compute_backfill_started_timestamp_seconds");
    let written = m("corral_compute_backfill_completed_timestamp_seconds") - started;
    let committed = all_entered_unix_ms as f64 / 1000.0 - started;
    println!(
        "compute backfill events={n} profiles={profiles} applied={applied:.0} read={read:.0} backfill_committed_s={committed:.3} backfill_events_per_s={:.0} (done written after {written:.3} s: {:.0}/s) end_to_end_s={secs:.2} end_to_end_events_per_s={:.0} (apply call {apply_secs:.2} s) load_avg_before={load_before} load_avg_after={}",
        applied / committed,
        applied / written,
        n as f64 / secs,
        loadavg(),
    );
    assert!(stack.svc.terminate().success());
}

/// 1-minute load average (the machine is shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one figure.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if want("latency") {
        latency();
    }
    if want("backfill") {
        backfill();
    }
    if want("throughput") {
        throughput(10);
        throughput(100);
    }
}

/// Saturation throughput through the broker: `COMPUTE_BENCH_THROUGHPUT_EVENTS` (200,000) events
/// for 20,000 profiles (a mix of the example definitions' event names, 1 in 10 an identify) are
/// produced to `events.resolved` as fast as the broker takes them while compute consumes; the
/// figure is events whose offsets compute committed, divided by the time between the first and
/// the last committed batch (start-up and the group join left out).
fn throughput(definitions: usize) {
    let n: u64 = env_or("COMPUTE_BENCH_THROUGHPUT_EVENTS", 200_000);
    let profiles = 20_000u64;
    let specs = corral_compute::bench_defs::definitions(definitions);
    let yaml = corral_compute::bench_defs::definitions_yaml(&specs);
    let admin_addr = format!("127.0.0.1:{}", corral_tests::http::free_port());
    let stack = Stack::start(
        &format!("compute-bench-tput{definitions}"),
        &yaml,
        &[("--admin", admin_addr.clone())],
    );
    let names = corral_compute::bench_defs::EVENT_NAMES;
    let t0 = now_ms() - 7 * 86_400_000;
    let load = loadavg();
    let resolved = stack.resolved.clone();
    let producer = std::thread::spawn(move || {
        produce(
            &resolved,
            (0..n).map(|i| {
                let profile = format!("p{}", (i * 7919) % profiles);
                let id = format!("t{i}");
                let at = t0 + (i as i64) * 3;
                if i % 10 == 9 {
                    identify(&profile, &id, json!({"plan": if i % 3 == 0 { "trial" } else { "pro" }}), at)
                } else {
                    event(
                        &profile,
                        &id,
                        names[(i % names.len() as u64) as usize],
                        json!({"revenue": i % 200, "price": i % 300, "product_id": format!("p{}", i % 20), "feature_name": format!("f{}", i % 12)}),
                        at,
                    )
                }
            }),
        )
    });
    let group = stack.app.clone();
    let offsets = committed_reader(&group);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(u64, Instant)> = None;
    let mut last = (0u64, Instant::now());
    while Instant::now() < deadline {
        let done = committed_total(&offsets, &stack.resolved);
        if done > 0 && first.is_none() {
            first = Some((done, Instant::now()));
        }
        if done > last.0 {
            last = (done, Instant::now());
        }
        if done >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    producer.join().unwrap();
    let (c1, t1) = first.expect("compute committed nothing within 600 s");
    assert_eq!(last.0, n, "compute committed {} of {n} events", last.0);
    let secs = last.1.duration_since(t1).as_secs_f64().max(1e-3);
    let state_sum = metric(&admin_addr, "corral_compute_state_bytes_sum").unwrap_or(f64::NAN);
    let state_count = metric(&admin_addr, "corral_compute_state_bytes_count").unwrap_or(f64::NAN);
    println!(
        "compute throughput definitions={} events={n} profiles={profiles} events_per_s={:.0} seconds={secs:.2} mean_state_write_bytes={:.0} loadavg={load}",
        definitions,
        (n - c1) as f64 / secs,
        state_sum / state_count,
    );
    assert!(stack.svc.terminate().success());
}

/// A client that reads a group's committed offsets without joining it.
fn committed_reader(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Sum of the group's committed offsets over `topic`'s partitions.
fn committed_total(c: &BaseConsumer, topic: &str) -> u64 {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
