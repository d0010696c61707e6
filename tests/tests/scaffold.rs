//! The service scaffold and the processor API, through the runtime's minimal example service
//! (`services/lib/runtime/examples/minimal.rs`, shown in docs/runtime.md) against the real broker:
//! topic names from the prefix, an internal topic created co-partitioned, a missing definitions
//! topic taken as empty, named stores, exactly-once output across a SIGKILL, metrics on the
//! admin port, and a clean exit on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::{free_port, http_get};
use corral_tests::{
    admin, bootstrap, create_topic, produce, read_committed, repo_root, unique, Service,
};

fn example() -> String {
    repo_root()
        .join("target/debug/examples/minimal")
        .display()
        .to_string()
}

fn start(app: &str, prefix: &str, state: &std::path::Path, admin_addr: SocketAddr) -> Service {
    start_with(app, prefix, state, admin_addr, &[])
}

fn start_with(
    app: &str,
    prefix: &str,
    state: &std::path::Path,
    admin_addr: SocketAddr,
    env: &[(&str, String)],
) -> Service {
    let args = [
        "--app",
        app,
        "--topic-prefix",
        prefix,
        "--state-dir",
        &state.display().to_string(),
        "--admin",
        &admin_addr.to_string(),
        "--commit-interval-ms",
        "50",
    ]
    .map(String::from);
    let mut env = env.to_vec();
    env.push(("CORRAL_KAFKA_BOOTSTRAP", bootstrap()));
    Service::spawn("minimal", &example(), &args, &env)
}

/// `corral_kafka_consumer_lag_records` of `topic`, by partition, from the admin port.
fn lag(admin_addr: SocketAddr, topic: &str) -> BTreeMap<String, f64> {
    let Some((200, body)) = http_get(admin_addr, "/metrics") else {
        return BTreeMap::new();
    };
    body.lines()
        .filter(|l| l.starts_with("corral_kafka_consumer_lag_records{") && l.contains(topic))
        .filter_map(|l| {
            let partition = l.split("partition=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((partition.to_string(), value))
        })
        .collect()
}

#[test]
fn consumer_lag_is_exported_per_partition_and_falls_to_zero_once_the_input_is_processed() {
    let prefix = format!("{}.", unique("lag"));
    let input = format!("{prefix}events.valid");
    create_topic(&input, 3, CleanupPolicy::Delete);
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
    // A backlog before the service starts: lag is what it has not processed yet.
    let n = 150_000;
    produce(
        &input,
        (0..n).map(|i| (format!("k{}", i % 1000).into_bytes(), b"e".to_vec())),
    );
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let state = tempfile::tempdir().unwrap();
    let svc = start_with(
        &unique("lag-app"),
        &prefix,
        state.path(),
        admin_addr,
        &[("CORRAL_LAG_INTERVAL_MS", "100".into())],
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut highest = 0.0_f64;
    loop {
        let now = lag(admin_addr, &input);
        highest = now.values().copied().fold(highest, f64::max);
        if now.len() == 3 && now.values().all(|v| *v == 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag never fell to 0 on every partition: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        highest > 0.0,
        "the backlog of {n} records never showed as lag"
    );
    assert!(highest <= n as f64);
    assert!(svc.terminate().success());
}

fn wait_for_topic(topic: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(n) = admin().partitions(topic).unwrap() {
            return n;
        }
        assert!(Instant::now() < deadline, "{topic} was not created");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per key, the counts emitted, in offset order.
fn counts(topic: &str, want: usize) -> BTreeMap<String, Vec<u64>> {
    let mut records = read_committed(topic, want, Duration::from_secs(90));
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in records {
        let key = String::from_utf8(r.key.unwrap()).unwrap();
        let n = String::from_utf8(r.value.unwrap())
            .unwrap()
            .parse()
            .unwrap();
        out.entry(key).or_default().push(n);
    }
    out
}

#[test]
fn the_minimal_example_counts_exactly_once_across_a_sigkill_and_stops_on_sigterm() {
    let prefix = format!("{}.", unique("scaffold"));
    let input = format!("{prefix}events.valid");
    let output = format!("{prefix}example.counts");
    create_topic(&input, 3, CleanupPolicy::Delete);
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
    let app = unique("minimal");
    let state = tempfile::tempdir().unwrap();
    let keys = ["a", "b", "c", "d"];
    let batch = |n: usize| {
        (0..n).map(|i| {
            let k = keys[i % keys.len()];
            (k.as_bytes().to_vec(), format!("event {i}").into_bytes())
        })
    };

    // No definitions topic under this prefix: the scaffold starts with none.
    produce(&input, batch(40));
    let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let first = start(&app, &prefix, state.path(), admin_addr);
    assert_eq!(wait_for_topic(&output), 3, "created like its input");
    assert_eq!(
        counts(&output, 40).values().map(Vec::len).sum::<usize>(),
        40
    );
    first.kill9();

    // A second run after a SIGKILL continues the counts: 1..=20 per key, each once.
    produce(&input, batch(40));
    let second = start(&app, &prefix, state.path(), admin_addr);
    let got = counts(&output, 80);
    for k in keys {
        assert_eq!(got[k], (1..=20).collect::<Vec<u64>>(), "key {k}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        match http_get(admin_addr, "/metrics") {
            Some((200, body)) if body.contains("corral_kafka_commits_total") => break body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("no runtime metrics on the admin port: {other:?}"),
        }
    };
    let consumed = metrics
        .lines()
        .find(|l| l.starts_with("corral_kafka_records_consumed_total") && l.contains(&input));
    assert!(consumed.is_some(), "{metrics}");
    assert!(second.terminate().success(), "SIGTERM is a clean stop");
}

#[test]
fn a_replication_factor_the_broker_refuses_stops_the_service_with_a_clear_error() {
    let prefix = format!("{}.", unique("scaffold-rf"));
    create_topic(&format!("{prefix}events.valid"), 1, CleanupPolicy::Delete);
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
    let state = tempfile::tempdir().unwrap();
    // The local broker is one node: a factor of 3 cannot be met.
    let mut child = std::process::Command::new(example())
        .args([
            "--app",
            &unique("rf"),
            "--topic-prefix",
            &prefix,
            "--state-dir",
        ])
        .arg(state.path())
        .args(["--replication-factor", "3"])
        .env("CORRAL_KAFKA_BOOTSTRAP", bootstrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a refused replication factor left the service hanging");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("replication factor 3") && err.contains("--replication-factor"),
        "the error should name the factor and the flag: {err}"
    );
}
