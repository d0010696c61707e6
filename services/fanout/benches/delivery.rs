//! Fanout benchmark against the local broker and a local receiver (`make bench`, not `make test`):
//!
//! `cargo bench -p corral-fanout --bench delivery` (CORRAL_FANOUT_BENCH_SECS sets the limiter runs' length)
//! - ceiling: deliveries/s to a local receiver with no rate limit;
//! - limiter accuracy at 100/s and 500/s: achieved rate over CORRAL_FANOUT_BENCH_SECS (60);
//! - latency p50/p99 from the membership record (its changed_at_ms) to the HTTP request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, ExternalId, MembershipChange, MembershipChangeKind};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::Receiver;
use corral_tests::{bootstrap, create_topic, produce, unique, Service};

const BIN: &str = env!("CARGO_BIN_EXE_corral-fanout");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn change(i: u64, at: i64) -> MembershipChange {
    MembershipChange {
        space_id: "default".into(),
        profile_id: format!("p{i}"),
        audience_key: "a".into(),
        audience_version: 1,
        change: MembershipChangeKind::Entered,
        external_ids: vec![ExternalId {
            id_type: "user_id".into(),
            id: format!("u{i}"),
            collection: None,
        }],
        trigger_message_id: None,
        changed_at_ms: at,
    }
}

struct Run {
    prefix: String,
    svc: Service,
    hook: Receiver,
    _dir: tempfile::TempDir,
}

fn start(name: &str, rate: u32) -> Run {
    let app = unique(name);
    let prefix = format!("{app}.");
    for t in ["audiences.membership", "traits.changes"] {
        create_topic(&format!("{prefix}{t}"), 6, CleanupPolicy::Delete);
    }
    create_topic(&format!("{prefix}deliveries.dlq"), 1, CleanupPolicy::Delete);
    let hook = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("d.yaml");
    std::fs::write(
        &file,
        format!(
            "destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    rate_limit_per_second: {rate}\n    concurrency: 64\n    connections: [{{audience: a, mode: identify}}]\n",
            hook.url("/")
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "--bootstrap",
        &bootstrap(),
        "--topic-prefix",
        &prefix,
        "--application-id",
        &app,
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
        "--destinations",
        file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let svc = Service::spawn("fanout", BIN, &args, &[]);
    Run {
        prefix,
        svc,
        hook,
        _dir: dir,
    }
}

fn main() {
    let secs: u64 = std::env::var("CORRAL_FANOUT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);

    // Ceiling: no limit, a backlog of n changes.
    let n = 20_000u64;
    let r = start("fanout-bench-ceiling", 0);
    produce(
        &format!("{}audiences.membership", r.prefix),
        (0..n).map(|i| {
            (
                format!("p{i}").into_bytes(),
                change(i, now_ms()).encode().unwrap(),
            )
        }),
    );
    let got = r
        .hook
        .wait_for(Duration::from_secs(600), |x| x.len() as u64 >= n);
    let first = got.iter().map(|x| x.at).min().unwrap();
    let last = got.iter().map(|x| x.at).max().unwrap();
    let ceiling = got.len() as f64 / last.duration_since(first).as_secs_f64();
    r.svc.terminate();
    println!(
        "ceiling: {} deliveries in {:.2}s = {ceiling:.0} deliveries/s",
        got.len(),
        last.duration_since(first).as_secs_f64()
    );

    // Limiter accuracy.
    for rate in [100u32, 500] {
        let r = start("fanout-bench-rate", rate);
        let total = u64::from(rate) * (secs + 5);
        produce(
            &format!("{}audiences.membership", r.prefix),
            (0..total).map(|i| {
                (
                    format!("p{i}").into_bytes(),
                    change(i, now_ms()).encode().unwrap(),
                )
            }),
        );
        let t0 = r.hook.wait_for(Duration::from_secs(60), |x| !x.is_empty())[0].at;
        std::thread::sleep(
            (t0 + Duration::from_secs(secs + 1)).saturating_duration_since(Instant::now()),
        );
        let reqs = r.hook.requests();
        r.svc.kill9();
        let in_window = reqs
            .iter()
            .filter(|x| x.at >= t0 && x.at < t0 + Duration::from_secs(secs))
            .count();
        let mut times: Vec<Instant> = reqs.iter().map(|x| x.at).collect();
        times.sort();
        let (mut start_i, mut max) = (0, 0);
        for end in 0..times.len() {
            while times[end].duration_since(times[start_i]) >= Duration::from_secs(1) {
                start_i += 1;
            }
            max = max.max(end - start_i + 1);
        }
        println!(
            "limiter {rate}/s over {secs}s: {in_window} requests = {:.1}/s ({:.1}% of the cap); max in any 1 s window: {max}",
            in_window as f64 / secs as f64,
            100.0 * in_window as f64 / (secs as f64 * f64::from(rate))
        );
    }

    // Latency at a steady 200 changes/s for 15 s, no limit, after one unmeasured second at the
    // same rate (the producer's connect and the first deliveries are start-up, not steady state).
    let r = start("fanout-bench-latency", 0);
    let topic = format!("{}audiences.membership", r.prefix);
    let p = corral_tests::producer();
    rdkafka::producer::Producer::client(&p)
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let warmup = 200u64;
    let count = 3000u64;
    let send_at_200_per_s = |from: u64, n: u64| {
        let begin = Instant::now();
        for i in from..from + n {
            let due = begin + Duration::from_millis((i - from) * 5);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let v = change(i, now_ms()).encode().unwrap();
            let k = format!("p{i}");
            let _ = p.send(
                rdkafka::producer::BaseRecord::to(&topic)
                    .key(&k)
                    .payload(&v),
            );
            p.poll(Duration::ZERO);
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(30)).unwrap();
    };
    send_at_200_per_s(0, warmup);
    r.hook
        .wait_for(Duration::from_secs(120), |x| x.len() as u64 >= warmup);
    send_at_200_per_s(warmup, count);
    let all = r.hook.wait_for(Duration::from_secs(120), |x| {
        x.len() as u64 >= warmup + count
    });
    // The warm-up deliveries all arrived before the measured ones were sent.
    let got = all.get(warmup as usize..).unwrap_or_default();
    r.svc.terminate();
    let mut lat: Vec<i64> = got
        .iter()
        .map(|x| {
            let ts = x.body["timestamp"].as_str().unwrap();
            x.wall_ms
                - chrono::DateTime::parse_from_rfc3339(ts)
                    .unwrap()
                    .timestamp_millis()
        })
        .collect();
    lat.sort();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    println!(
        "latency (record -> HTTP request), {} deliveries at 200/s: p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
}
