//! What erasing a deleted person's retained history costs at scale (issue 21), on the local
//! broker: `cargo bench -p corral-e2e --bench privacy_scale`, the `privacy_scale` part of
//! `make bench` (needs release binaries: `cargo build --release --workspace --bins`).
//!
//! State: `PRIVACY_SCALE_PROFILES` profiles (1,000,000) with `PRIVACY_SCALE_EVENTS` events
//! (10,000,000) of retained history. The history is written straight to `events.resolved` the way
//! identity writes it (history keys, the profile id's partition, the profile ids identity derives
//! from each user id), so compute builds the million profiles from it without identity and the
//! validator doing the same work first. The users to delete also send one identify through the
//! pipeline, so identity's graph knows them. Audience: `event('Order Completed').count() >= 1`.
//!
//! Measured, all in one run:
//! - compute's rate over the history (events/s while building the profiles);
//! - the normal pipeline's cost: compute's rate over `PRIVACY_SCALE_PROBE_EVENTS` (500,000) new
//!   events with no deletion pending (the baseline), then over as many again sent right after a
//!   deletion, while its erasure scan runs on the same thread;
//! - `corralctl privacy delete` of one user -> `corralctl privacy status` says `finished`
//!   (identity, compute's state and the erasure scan of the user's partition all committed),
//!   with nothing else running, and again under that load;
//! - the same for one request naming `PRIVACY_SCALE_DELETES` (12) users spread over the
//!   partitions (one scan per partition serves all of them);
//! - the scans' read rate (`corral_compute_erase_scanned_total`) and tombstones written.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{create_topics, metric, run, start_pipeline, PipelineConfig};
use corral_codec::history::{key_of, partition};
use corral_codec::{
    AvroRecord, ExternalId, MessageType, ProtocolsAnnotation, ResolvedEvent, SegmentMessage,
    ValidEvent,
};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

const SPACE: &str = "bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fast_producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(p: &BaseProducer, topic: &str, key: &[u8], value: &[u8], part: Option<i32>) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    if let Some(n) = part {
        rec = rec.partition(n);
    }
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
}

/// The profile id identity gives a user known by `user_id` alone (its anchor).
fn profile_of(user: &str) -> String {
    corral_identity::engine::profile_id(SPACE, &corral_identity::ids::Ident::new("user_id", user))
}

fn main() {
    let profiles = env_or("PRIVACY_SCALE_PROFILES", 1_000_000).max(16);
    let events = env_or("PRIVACY_SCALE_EVENTS", 10_000_000).max(profiles);
    let probe = env_or("PRIVACY_SCALE_PROBE_EVENTS", 500_000).max(1);
    let many = env_or("PRIVACY_SCALE_DELETES", 12).clamp(1, profiles / 2);
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("pscale");
    let prefix = format!("{run_id}.");
    // Compute's RocksDB and the logs: on tmpfs when there is one (a million profiles).
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    create_topics(&bootstrap, &prefix);
    let ctl = common::binary("corralctl");
    let audience = dir.path().join("audience.yaml");
    std::fs::write(
        &audience,
        "audiences:\n  - key: buyers\n    type: users\n    \
         query: event('Order Completed').count() >= 1\n",
    )
    .unwrap();
    run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "audiences", "apply"])
            .arg(&audience)
            .args(["--space", SPACE, "--prefix", &prefix]),
        "corralctl audiences apply",
    );
    let (mut stack, _) = start_pipeline(&PipelineConfig {
        bootstrap: &bootstrap,
        prefix: &prefix,
        run_id: &run_id,
        dir: dir.path(),
        write_keys: Vec::new(),
        instances: 1,
        fanout: false,
        env: BTreeMap::new(),
    });
    stack.wait_ready(Duration::from_secs(120));
    let compute = stack.admin("compute");
    let resolved = format!("{prefix}events.resolved");
    let parts = corral_runtime::topics::TopicAdmin::connect(&bootstrap, &BTreeMap::new())
        .unwrap()
        .partitions(&resolved)
        .unwrap()
        .unwrap();
    let user = |i: u64| format!("{run_id}-u{i}");
    let pids: Vec<String> = (0..profiles).map(|i| profile_of(&user(i))).collect();
    let producer = fast_producer(&bootstrap);
    let mut seq = 0u64;
    let mut resolved_event = |i: u64, kind: MessageType, at: i64| {
        seq += 1;
        let id = format!("{run_id}-m{seq}");
        let mut m = SegmentMessage::new(SPACE, kind, id.clone());
        m.received_at_ms = Some(at);
        m.user_id = Some(user(i));
        if kind == MessageType::Identify {
            m.traits = Some(json!({"email": format!("{}@example.com", user(i)), "name": "N"}));
        } else {
            m.event = Some("Order Completed".into());
            m.properties = Some(json!({"total": 10}));
        }
        let pid = &pids[i as usize];
        let ev = ResolvedEvent {
            message: m,
            profile_id: pid.clone(),
            external_ids: vec![ExternalId {
                id_type: "user_id".into(),
                id: user(i),
                collection: Some("users".into()),
            }],
            resolved_at_ms: at,
        };
        send(
            &producer,
            &resolved,
            &key_of(pid, &id, at),
            &ev.encode().unwrap(),
            Some(partition(pid.as_bytes(), parts)),
        );
    };
    let counted = || metric(compute, &["corral_compute_events_total"]).unwrap_or(0.0) as u64;
    let drain = |stack: &mut common::Stack, target: u64| {
        while counted() < target {
            stack.assert_running();
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // The history: an identify per user, then orders round-robin, an hour ago.
    let at = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let start = Instant::now();
    for i in 0..profiles {
        resolved_event(i, MessageType::Identify, at);
    }
    for n in 0..events - profiles {
        resolved_event(n % profiles, MessageType::Track, at + 1);
    }
    producer.flush(Duration::from_secs(300)).unwrap();
    let written = start.elapsed().as_secs_f64();
    drain(&mut stack, events);
    let built = start.elapsed().as_secs_f64();
    println!(
        "privacy_scale history: {events} events of {profiles} profiles written to events.resolved in {written:.1} s ({:.0} events/s); compute built the profiles in {built:.1} s ({:.0} events/s)",
        events as f64 / written,
        events as f64 / built
    );

    // The users to delete: spread over the users, and so over the partitions. Identity learns
    // them from one identify each, through the pipeline (its id is the one their history has).
    let doomed: Vec<u64> = (0..many + 2).map(|k| k * (profiles / (many + 2))).collect();
    let valid = format!("{prefix}events.valid");
    for &i in &doomed {
        let mut m = SegmentMessage::new(SPACE, MessageType::Identify, format!("{run_id}-id{i}"));
        m.received_at_ms = Some(chrono::Utc::now().timestamp_millis());
        m.user_id = Some(user(i));
        let v = ValidEvent {
            message: m,
            protocols: ProtocolsAnnotation::default(),
        }
        .encode()
        .unwrap();
        send(&producer, &valid, user(i).as_bytes(), &v, None);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let known = events + doomed.len() as u64;
    drain(&mut stack, known);

    // The normal pipeline's rate: `probe` new orders (of users that stay), no deletion pending.
    let keep = |n: u64| {
        let i = n % profiles;
        if doomed.contains(&i) {
            (i + 1) % profiles
        } else {
            i
        }
    };
    let mut base_target = known;
    let mut rate = |stack: &mut common::Stack, from: u64| -> (f64, f64) {
        let t0 = Instant::now();
        let now = chrono::Utc::now().timestamp_millis();
        for n in 0..probe {
            resolved_event(keep(n + from), MessageType::Track, now);
        }
        producer.flush(Duration::from_secs(120)).unwrap();
        base_target += probe;
        drain(stack, base_target);
        let secs = t0.elapsed().as_secs_f64();
        (secs, probe as f64 / secs)
    };
    let (base_s, base_rate) = rate(&mut stack, 0);
    println!(
        "privacy_scale pipeline, no deletion pending (baseline): compute took {probe} new events in {base_s:.1} s: {base_rate:.0} events/s"
    );

    let status = |id: &str| {
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "privacy", "status", id])
            .args([
                "--prefix",
                &prefix,
                "--compute-app",
                &format!("{run_id}-compute"),
            ])
            .output()
            .unwrap()
    };
    let delete = |users: &[u64]| -> String {
        let mut cmd = Command::new(&ctl);
        cmd.args(["--bootstrap", &bootstrap, "privacy", "delete"]);
        for &i in users {
            cmd.arg(format!("user_id:{}", user(i)));
        }
        cmd.args(["--space", SPACE, "--prefix", &prefix]);
        run(&mut cmd, "corralctl privacy delete").trim().to_string()
    };
    let scanned = || metric(compute, &["corral_compute_erase_scanned_total"]).unwrap_or(0.0);
    let tombstones = || metric(compute, &["corral_compute_erased_records_total"]).unwrap_or(0.0);
    let until_finished = |stack: &mut common::Stack, id: &str, t0: Instant| -> (f64, usize, f64) {
        let mut checks = 0;
        let mut status_ms: f64 = 0.0;
        loop {
            let s0 = Instant::now();
            let out = status(id);
            status_ms = status_ms.max(s0.elapsed().as_secs_f64() * 1e3);
            checks += 1;
            if out.status.success() {
                return (t0.elapsed().as_secs_f64(), checks, status_ms);
            }
            stack.assert_running();
            assert!(
                t0.elapsed() < Duration::from_secs(1800),
                "deletion {id} never finished: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };

    // One user, nothing else running: the request to `finished`.
    let (scanned0, tomb0) = (scanned(), tombstones());
    let t0 = Instant::now();
    let id = delete(&doomed[..1]);
    let (one_s, checks, status_ms) = until_finished(&mut stack, &id, t0);
    println!(
        "privacy_scale one user deleted, no other load, corralctl privacy delete -> status finished: {one_s:.1} s (scan of partition {} read {:.0} records, {:.0} tombstones; {checks} status checks of up to {status_ms:.0} ms each)",
        partition(pids[doomed[0] as usize].as_bytes(), parts),
        scanned() - scanned0,
        tombstones() - tomb0
    );

    // Another user, with the same load as the baseline sent right after the request: compute's
    // rate while the erasure scan shares its thread.
    let (scanned0, tomb0) = (scanned(), tombstones());
    let t0 = Instant::now();
    let id = delete(&doomed[1..2]);
    let (during_s, during_rate) = rate(&mut stack, probe);
    let scanned_in_phase = scanned() - scanned0;
    let (loaded_s, _, _) = until_finished(&mut stack, &id, t0);
    println!(
        "privacy_scale pipeline during an erasure scan: compute took {probe} new events in {during_s:.1} s: {during_rate:.0} events/s ({:.1} % of the baseline; the scan read {scanned_in_phase:.0} records meanwhile)",
        100.0 * during_rate / base_rate
    );
    println!(
        "privacy_scale one user deleted under that load, delete -> status finished: {loaded_s:.1} s (scan of partition {} read {:.0} records, {:.0} tombstones)",
        partition(pids[doomed[1] as usize].as_bytes(), parts),
        scanned() - scanned0,
        tombstones() - tomb0
    );

    // One request for the rest, spread over the partitions: one scan per partition serves all.
    let (scanned0, tomb0) = (scanned(), tombstones());
    let covered: BTreeSet<i32> = doomed[2..]
        .iter()
        .map(|&i| partition(pids[i as usize].as_bytes(), parts))
        .collect();
    let t0 = Instant::now();
    let id = delete(&doomed[2..]);
    let (many_s, _, _) = until_finished(&mut stack, &id, t0);
    let many_scanned = scanned() - scanned0;
    println!(
        "privacy_scale {} users in one request (partitions {covered:?} of {parts}), delete -> status finished: {many_s:.1} s (scans read {many_scanned:.0} records at {:.0} records/s, {:.0} tombstones)",
        doomed.len() - 2,
        many_scanned / many_s,
        tombstones() - tomb0
    );
    stack.assert_running();
}
