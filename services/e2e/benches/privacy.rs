//! What a deletion costs, on the local broker (`cargo bench -p corral-e2e --bench privacy`, the
//! `privacy` part of `make bench`; needs release binaries: `cargo build --release --workspace
//! --bins`).
//!
//! Load: `PRIVACY_BENCH_PROFILES` users (1,000,000), each with an identify (email, name) and
//! `Order Completed` events, `PRIVACY_BENCH_EVENTS` events in all (10,000,000), sent to
//! `events.valid` as fast as the producer goes, through identity and compute with the audience
//! `event('Order Completed').count() >= 1`. That leaves one graph profile, one compute state and
//! the events of every user in the retained history (`events.resolved`). Printed: events/s end to
//! end for the load (the pipeline with the deletion checks in place).
//!
//! Then `PRIVACY_BENCH_DELETES` (10) users are deleted one after another. For each deletion the
//! time is measured from the start of `corralctl privacy delete` to the commit of the user's exit
//! (trigger `regulation:{id}`, read `read_committed`). That is the time until identity and compute
//! have both committed. The baseline, measured the same way just before each deletion, is a new
//! user's `Order Completed` to its committed `entered`. Also printed: how long the
//! `corralctl privacy status` run that says `finished` takes (it reads `profiles.merges` and
//! compute's backfill changelog in full); it is run until the erasure scan is done too. The
//! erasure itself at scale is the `privacy_scale` bench.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_topics, metric, run, start_pipeline, PipelineConfig};
use corral_codec::{
    AvroRecord, MembershipChange, MessageType, ProtocolsAnnotation, SegmentMessage, ValidEvent,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::json;

const SPACE: &str = "bench";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let profiles = env_or("PRIVACY_BENCH_PROFILES", 1_000_000).max(1);
    // Every user orders at least once, so every deleted user has an exit to wait for.
    let events = env_or("PRIVACY_BENCH_EVENTS", 10_000_000).max(2 * profiles);
    let deletes = env_or("PRIVACY_BENCH_DELETES", 10).min(profiles);
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("pbench");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
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
    stack.wait_ready(Duration::from_secs(90));

    // Committed membership changes: arrival time by trigger.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", corral_tests::unique("pbench-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        corral_tests::assign_from_beginning(&consumer, &format!("{prefix}audiences.membership"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let Some(t) = m
                        .payload()
                        .and_then(|v| MembershipChange::decode(v).ok())
                        .and_then(|ch| ch.trigger_message_id)
                    else {
                        continue;
                    };
                    // Only the measured triggers matter; the load's entries are many.
                    if t.starts_with("regulation:") || t.contains("-probe-") {
                        arrived
                            .lock()
                            .unwrap()
                            .entry(t)
                            .or_insert_with(Instant::now);
                    }
                }
            }
        })
    };

    let producer = corral_tests::producer();
    let valid = format!("{prefix}events.valid");
    let send = |m: SegmentMessage| {
        let key = m.message_id.clone();
        let v = ValidEvent {
            message: m,
            protocols: ProtocolsAnnotation::default(),
        }
        .encode()
        .unwrap();
        loop {
            match producer.send(BaseRecord::to(&valid).key(&key).payload(&v)) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    };
    let message = |kind, id: String, user: String| {
        let mut m = SegmentMessage::new(SPACE.to_string(), kind, id);
        m.received_at_ms = Some(chrono::Utc::now().timestamp_millis());
        m.user_id = Some(user);
        m
    };
    let user = |i: u64| format!("{run_id}-u{i}");

    // The load: an identify per user, then the rest of the events round-robin over the users.
    let start = Instant::now();
    for i in 0..profiles {
        let mut m = message(MessageType::Identify, format!("{run_id}-i{i}"), user(i));
        m.traits = Some(json!({"email": format!("{}@example.com", user(i)), "name": "N"}));
        send(m);
    }
    for n in 0..events - profiles {
        let mut m = message(
            MessageType::Track,
            format!("{run_id}-e{n}"),
            user(n % profiles),
        );
        m.event = Some("Order Completed".into());
        m.properties = Some(json!({"total": 10}));
        send(m);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let compute = stack.admin("compute");
    loop {
        let done = metric(compute, &["corral_compute_events_total"]).unwrap_or(0.0);
        if done as u64 >= events {
            break;
        }
        stack.assert_running();
        std::thread::sleep(Duration::from_millis(500));
    }
    let load = start.elapsed().as_secs_f64();
    println!(
        "privacy load: {profiles} profiles, {events} events through identity and compute in {load:.1} s: {:.0} events/s",
        events as f64 / load
    );

    let wait_for = |key: &str| -> Instant {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(t) = arrived.lock().unwrap().get(key) {
                return *t;
            }
            assert!(Instant::now() < deadline, "no committed change for {key}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (mut base_ms, mut del_ms, mut status_ms) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..deletes {
        // Baseline: a new user's first order to its committed entry.
        let probe = format!("{run_id}-probe-{k}");
        let t0 = Instant::now();
        let mut m = message(MessageType::Track, probe.clone(), format!("{probe}-user"));
        m.event = Some("Order Completed".into());
        send(m);
        producer.flush(Duration::from_secs(30)).unwrap();
        base_ms.push(wait_for(&probe).duration_since(t0).as_secs_f64() * 1e3);
        // A deletion of a loaded user (spread over the users).
        let target = user(k * (profiles / deletes.max(1)));
        let t0 = Instant::now();
        let id = run(
            Command::new(&ctl)
                .args(["--bootstrap", &bootstrap, "privacy", "delete"])
                .arg(format!("user_id:{target}"))
                .args(["--space", SPACE, "--prefix", &prefix]),
            "corralctl privacy delete",
        )
        .trim()
        .to_string();
        del_ms.push(
            wait_for(&format!("regulation:{id}"))
                .duration_since(t0)
                .as_secs_f64()
                * 1e3,
        );
        // `finished` also waits for the erasure scan of the user's partition (docs/privacy.md):
        // the status command runs until it says so; the last run is what one check costs.
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let t0 = Instant::now();
            let ok = Command::new(&ctl)
                .args(["--bootstrap", &bootstrap, "privacy", "status", &id])
                .args([
                    "--prefix",
                    &prefix,
                    "--compute-app",
                    &format!("{run_id}-compute"),
                ])
                .output()
                .unwrap();
            if ok.status.success() {
                status_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                String::from_utf8_lossy(&ok.stdout)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    for (label, v) in [
        (
            "a new user's first order -> committed entered (baseline)",
            &mut base_ms,
        ),
        ("corralctl privacy delete -> committed exit", &mut del_ms),
        ("corralctl privacy status -> finished", &mut status_ms),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "privacy {label}: {} runs over {profiles} profiles and {events} events: p50 {:.0} ms, max {:.0} ms",
            v.len(),
            percentile(v, 0.5),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
}
