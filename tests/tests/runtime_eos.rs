//! Exactly-once tests of the stream runtime against the real broker (`deploy/local`): a per-key
//! counter SIGKILLed at random points, moved between instances, scaled up and down, crashed inside
//! the commit protocol, and restored from its changelog. The committed output must hold exactly
//! one record per input, and per key the counts 1..n in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use corral_runtime::topics::CleanupPolicy;
use corral_tests::{create_topic, produce, read_committed, unique, Record, Service};
use rand::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_corral-counter");
const PARTITIONS: i32 = 4;
const KEYS: usize = 500;

struct Setup {
    app: String,
    input: String,
    output: String,
    dlq: String,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str) -> Setup {
        Setup::with_partitions(name, PARTITIONS)
    }

    fn with_partitions(name: &str, partitions: i32) -> Setup {
        let app = unique(name);
        let s = Setup {
            input: format!("{app}.in"),
            output: format!("{app}.out"),
            dlq: format!("{app}.dlq"),
            app,
            state: tempfile::tempdir().unwrap(),
        };
        create_topic(&s.input, partitions, CleanupPolicy::Delete);
        create_topic(&s.output, partitions, CleanupPolicy::Delete);
        create_topic(&s.dlq, 1, CleanupPolicy::Delete);
        s
    }

    fn spawn(&self, instance: &str, extra_env: &[(&str, String)]) -> Service {
        self.spawn_in(instance, self.state.path(), extra_env)
    }

    fn spawn_in(&self, instance: &str, state: &Path, extra_env: &[(&str, String)]) -> Service {
        let args = vec![
            "--bootstrap".into(),
            corral_tests::bootstrap(),
            "--app".into(),
            self.app.clone(),
            "--instance".into(),
            instance.into(),
            "--input".into(),
            self.input.clone(),
            "--output".into(),
            self.output.clone(),
            "--dlq".into(),
            self.dlq.clone(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        Service::spawn(&format!("counter-{instance}"), BIN, &args, extra_env)
    }

    /// Produces `n` records numbered from `start`, keys spread over `KEYS`.
    fn produce_range(&self, start: usize, n: usize) -> HashMap<Vec<u8>, u64> {
        let mut counts = HashMap::new();
        let records: Vec<_> = (start..start + n)
            .map(|i| {
                let k = format!("key-{}", i % KEYS).into_bytes();
                *counts.entry(k.clone()).or_insert(0u64) += 1;
                (k, format!("v{i}").into_bytes())
            })
            .collect();
        produce(&self.input, records);
        counts
    }
}

/// Waits until the committed output holds `n` records (or the deadline passes) and returns it.
fn await_output(s: &Setup, n: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = read_committed(&s.output, n, Duration::from_secs(20));
        if out.len() >= n || Instant::now() > deadline {
            return out;
        }
    }
}

/// Asserts exactly-once: per key the values are 1, 2, ..., n_k in order, and n_k matches the input.
fn assert_exactly_once(out: &[Record], expected: &HashMap<Vec<u8>, u64>) {
    let total: u64 = expected.values().sum();
    let mut per_key: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    let mut ordered = out.to_vec();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for r in &ordered {
        let v: u64 = String::from_utf8(r.value.clone().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        per_key.entry(r.key.clone().unwrap()).or_default().push(v);
    }
    assert_eq!(
        out.len() as u64,
        total,
        "committed output must hold exactly one record per input"
    );
    for (k, want) in expected {
        let got = per_key
            .get(k)
            .unwrap_or_else(|| panic!("no output for key {:?}", String::from_utf8_lossy(k)));
        let seq: Vec<u64> = (1..=*want).collect();
        assert_eq!(
            got,
            &seq,
            "key {} must count 1..{want} exactly once, in order",
            String::from_utf8_lossy(k)
        );
    }
}

fn merge(a: &mut HashMap<Vec<u8>, u64>, b: HashMap<Vec<u8>, u64>) {
    for (k, v) in b {
        *a.entry(k).or_insert(0) += v;
    }
}

#[test]
fn survives_repeated_sigkill_of_a_single_instance() {
    let s = Setup::new("eos-kill");
    let expected = s.produce_range(0, 200_000);
    let mut rng = rand::rng();
    for round in 0..6 {
        let svc = s.spawn("0", &[]);
        // Kill at a random point: sometimes during startup, restore or rebalance, mostly mid-stream.
        let ms = rng.random_range(500..4_000);
        std::thread::sleep(Duration::from_millis(ms));
        eprintln!("round {round}: SIGKILL after {ms} ms");
        svc.kill9();
    }
    let svc = s.spawn("0", &[]);
    let out = await_output(&s, 200_000, Duration::from_secs(600));
    svc.terminate();
    let out_after = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out_after, &expected);
}

/// The same with two stream threads per process: each thread is its own group member with its
/// own transactional producer and state folder; partitions move between the threads of one
/// process as between processes.
#[test]
fn survives_repeated_sigkill_with_two_stream_threads() {
    let s = Setup::new("eos-threads");
    let expected = s.produce_range(0, 100_000);
    let threads = [("CORRAL_STREAM_THREADS", "2".to_string())];
    let mut rng = rand::rng();
    for round in 0..4 {
        let svc = s.spawn("0", &threads);
        let ms = rng.random_range(500..4_000);
        std::thread::sleep(Duration::from_millis(ms));
        eprintln!("round {round}: SIGKILL after {ms} ms");
        svc.kill9();
    }
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", corral_tests::http::free_port())
        .parse()
        .unwrap();
    let svc = s.spawn_in(
        "0",
        s.state.path(),
        &[threads[0].clone(), ("CORRAL_ADMIN_ADDR", admin.to_string())],
    );
    let out = await_output(&s, 100_000, Duration::from_secs(600));
    // Both threads run and share the partitions: ready means both are.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match corral_tests::http::http_get(admin, "/readyz") {
            Some((200, _)) => break,
            other => assert!(
                Instant::now() < deadline,
                "a process whose two threads run is ready: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics = corral_tests::http::http_get(admin, "/metrics").unwrap().1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("corral_kafka_assigned_partitions") && l.ends_with(" 4")),
        "the two threads own the 4 partitions between them:\n{metrics}"
    );
    svc.terminate();
    let out_after = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out_after, &expected);
}

/// A thread left without a partition (more threads than partitions) idles; it does not keep the
/// process from being ready.
#[test]
fn more_threads_than_partitions_leaves_one_idle_and_ready() {
    let s = Setup::with_partitions("eos-idle", 1);
    let expected = s.produce_range(0, 1_000);
    let admin = format!("127.0.0.1:{}", corral_tests::http::free_port());
    let svc = s.spawn(
        "0",
        &[
            ("CORRAL_STREAM_THREADS", "2".to_string()),
            ("CORRAL_ADMIN_ADDR", admin.clone()),
        ],
    );
    let out = await_output(&s, 1_000, Duration::from_secs(120));
    assert_exactly_once(&out, &expected);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match corral_tests::http::http_get(admin.parse().unwrap(), "/readyz") {
            Some((200, _)) => break,
            other => assert!(Instant::now() < deadline, "not ready: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    svc.terminate();
}

#[test]
fn partitions_move_to_the_survivor_and_back() {
    let s = Setup::new("eos-move");
    let expected = s.produce_range(0, 100_000);
    let a = s.spawn("a", &[]);
    let b = s.spawn("b", &[]);
    std::thread::sleep(Duration::from_millis(
        rand::rng().random_range(1_500..3_000),
    ));
    a.kill9(); // b takes a's partitions once a's session times out
    std::thread::sleep(Duration::from_secs(9));
    let a = s.spawn("a", &[]); // and a takes some back
    let out = await_output(&s, 100_000, Duration::from_secs(600));
    a.terminate();
    b.terminate();
    let out = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out, &expected);
}

#[test]
fn scaling_one_two_one_mid_stream_loses_and_doubles_nothing() {
    let s = Setup::new("eos-scale");
    let mut expected = HashMap::new();
    let a = s.spawn("a", &[]);
    merge(&mut expected, s.produce_range(0, 20_000));
    std::thread::sleep(Duration::from_secs(2));
    let b = s.spawn("b", &[]);
    for chunk in 1..5 {
        merge(&mut expected, s.produce_range(chunk * 20_000, 20_000));
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(
        b.terminate().code(),
        Some(0),
        "SIGTERM must stop the instance cleanly"
    );
    merge(&mut expected, s.produce_range(100_000, 20_000));
    let out = await_output(&s, 120_000, Duration::from_secs(600));
    a.terminate();
    let out = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out, &expected);
}

/// Crashes the instance at its third commit that carries records. The input arrives in three
/// chunks, each produced once the previous one is committed (or the instance has crashed), so
/// there are at least three such commits however fast the instance is.
fn crash_inside_commit(fault: &str) {
    let s = Setup::new("eos-fault");
    let mut expected = HashMap::new();
    let mut svc = s.spawn("0", &[("CORRAL_FAULT", fault.to_string())]);
    for chunk in 0..3 {
        merge(&mut expected, s.produce_range(chunk * 10_000, 10_000));
        let want = (chunk + 1) * 10_000;
        let deadline = Instant::now() + Duration::from_secs(120);
        while svc.is_running() && Instant::now() < deadline {
            if read_committed(&s.output, want, Duration::from_secs(2)).len() >= want {
                break;
            }
        }
    }
    let status = svc.wait_exit(Duration::from_secs(120));
    assert!(
        !status.success(),
        "the injected crash must abort the process"
    );
    merge(&mut expected, s.produce_range(30_000, 10_000));
    let svc = s.spawn("0", &[]);
    let out = await_output(&s, 40_000, Duration::from_secs(300));
    svc.terminate();
    let out = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out, &expected);
}

#[test]
fn crash_after_commit_before_rocksdb_write() {
    crash_inside_commit("after_commit@3");
}

#[test]
fn crash_before_commit() {
    crash_inside_commit("before_commit@3");
}

#[test]
fn lost_state_folder_is_rebuilt_from_the_changelog() {
    let s = Setup::new("eos-restore");
    let mut expected = s.produce_range(0, 20_000);
    let svc = s.spawn("0", &[]);
    await_output(&s, 20_000, Duration::from_secs(300));
    assert_eq!(svc.terminate().code(), Some(0));
    // The instance's local state is gone while it is stopped: counts must continue from the
    // changelog, not restart at 1.
    std::fs::remove_dir_all(s.state.path()).unwrap();
    merge(&mut expected, s.produce_range(20_000, 10_000));
    let svc = s.spawn("0", &[]);
    let out = await_output(&s, 30_000, Duration::from_secs(300));
    svc.terminate();
    let out = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out, &expected);
}

#[test]
fn undecodable_records_go_to_the_dead_letter_topic_and_processing_continues() {
    let s = Setup::new("eos-dlq");
    let mut expected = s.produce_range(0, 1_000);
    produce(
        &s.input,
        vec![
            (b"bad-1".to_vec(), vec![0xff, 0xfe, 0x00]),
            (b"bad-2".to_vec(), vec![0xc3, 0x28]),
        ],
    );
    merge(&mut expected, s.produce_range(1_000, 1_000));
    let svc = s.spawn("0", &[]);
    let out = await_output(&s, 2_000, Duration::from_secs(300));
    let dlq = read_committed(&s.dlq, 2, Duration::from_secs(60));
    svc.terminate();
    assert_exactly_once(&out, &expected);
    assert_eq!(
        dlq.len(),
        2,
        "both bad records must reach the dead-letter topic"
    );
    for r in &dlq {
        let letter = corral_codec::DeadLetter::decode(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(letter.origin_topic, s.input);
        assert_eq!(letter.reason, "decode");
        assert_eq!(letter.service, s.app);
        assert!(letter.error.contains("not UTF-8"), "{}", letter.error);
        assert!(letter.origin_offset >= 0);
        assert!(letter.key.as_deref() == Some(b"bad-1") || letter.key.as_deref() == Some(b"bad-2"));
        let original = letter.value.clone().unwrap();
        assert!(
            original == vec![0xff, 0xfe, 0x00] || original == vec![0xc3, 0x28],
            "the original bytes are kept for replay"
        );
    }
}

#[test]
fn punctuation_summarises_each_task_once_per_change_across_a_crash() {
    let s = Setup::new("eos-punct");
    let summaries = format!("{}.summary", s.app);
    create_topic(&summaries, PARTITIONS, CleanupPolicy::Delete);
    let spawn = |s: &Setup| {
        let mut args = vec![
            "--bootstrap".into(),
            corral_tests::bootstrap(),
            "--app".into(),
            s.app.clone(),
            "--instance".into(),
            "0".into(),
            "--input".into(),
            s.input.clone(),
            "--output".into(),
            s.output.clone(),
            "--dlq".into(),
            s.dlq.clone(),
            "--state-dir".into(),
            s.state.path().display().to_string(),
        ];
        args.extend([
            "--punctuate-ms".into(),
            "150".into(),
            "--summary-topic".into(),
            summaries.clone(),
        ]);
        Service::spawn("counter-punct", BIN, &args, &[])
    };
    let mut expected = s.produce_range(0, 5_000);
    let svc = spawn(&s);
    await_output(&s, 5_000, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(rand::rng().random_range(0..400)));
    svc.kill9();
    merge(&mut expected, s.produce_range(5_000, 5_000));
    let svc = spawn(&s);
    let out = await_output(&s, 10_000, Duration::from_secs(120));
    // Let the last punctuation after the final input commit.
    std::thread::sleep(Duration::from_secs(2));
    svc.terminate();
    assert_exactly_once(
        &read_committed(&s.output, out.len(), Duration::from_secs(10)),
        &expected,
    );

    // What each task (input partition) saw: its distinct keys and its record count.
    let input = read_committed(&s.input, 10_000, Duration::from_secs(30));
    let mut per_task: BTreeMap<i32, (std::collections::BTreeSet<Vec<u8>>, u64)> = BTreeMap::new();
    for r in &input {
        let e = per_task.entry(r.partition).or_default();
        e.0.insert(r.key.clone().unwrap());
        e.1 += 1;
    }
    let mut seen: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut recs = read_committed(&summaries, 1, Duration::from_secs(10));
    recs.sort_by_key(|r| (r.partition, r.offset));
    for r in recs {
        let task = String::from_utf8(r.key.unwrap()).unwrap();
        let text = String::from_utf8(r.value.unwrap()).unwrap();
        let field = |name: &str| -> u64 {
            text.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        seen.entry(task)
            .or_default()
            .push((field("keys"), field("total")));
    }
    for (partition, (keys, total)) in per_task {
        let task = format!("partition-{partition}");
        let got = seen
            .get(&task)
            .unwrap_or_else(|| panic!("no summary for {task}"));
        assert_eq!(
            got.last(),
            Some(&(keys.len() as u64, total)),
            "{task}: last summary is the final state"
        );
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "{task}: a summary is emitted once per change, never repeated, even across a SIGKILL: {got:?}"
        );
    }
}

#[test]
fn co_partitioned_inputs_stay_together_when_instances_come_and_go() {
    // A key counts across both inputs, so partition N of both must always be processed by the
    // same instance, with the same store, whatever the rebalances.
    let s = Setup::new("eos-copart");
    let second = format!("{}.in2", s.app);
    create_topic(&second, PARTITIONS, CleanupPolicy::Delete);
    let inputs = format!("{},{second}", s.input);
    let spawn = |instance: &str| {
        let args = vec![
            "--bootstrap".into(),
            corral_tests::bootstrap(),
            "--app".into(),
            s.app.clone(),
            "--instance".into(),
            instance.into(),
            "--input".into(),
            inputs.clone(),
            "--output".into(),
            s.output.clone(),
            "--dlq".into(),
            s.dlq.clone(),
            "--state-dir".into(),
            s.state.path().join(instance).display().to_string(),
        ];
        Service::spawn(&format!("counter-{instance}"), BIN, &args, &[])
    };
    let mut expected = HashMap::new();
    let a = spawn("a");
    let mut b = Some(spawn("b"));
    for chunk in 0..6 {
        merge(&mut expected, s.produce_range(chunk * 5_000, 5_000));
        let records: Vec<_> = (0..5_000)
            .map(|i| {
                (
                    format!("key-{}", (chunk * 5_000 + i) % KEYS).into_bytes(),
                    b"second".to_vec(),
                )
            })
            .collect();
        for (k, _) in &records {
            *expected.entry(k.clone()).or_insert(0) += 1;
        }
        produce(&second, records);
        if chunk == 2 {
            if let Some(b) = b.take() {
                assert_eq!(b.terminate().code(), Some(0), "SIGTERM stops cleanly");
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let b = spawn("b");
    let total: u64 = expected.values().sum();
    let out = await_output(&s, total as usize, Duration::from_secs(300));
    a.terminate();
    b.terminate();
    let out = read_committed(&s.output, out.len(), Duration::from_secs(10));
    assert_exactly_once(&out, &expected);
}
