//! Merge hand-over latency through identity and compute on the local broker
//! (`cargo bench -p corral-e2e --bench merge_handover`, part of `make bench`).
//!
//! Load: `MERGE_BENCH_RATE` events/s (1,000) for `MERGE_BENCH_SECONDS` (20) into `events.valid`,
//! of which 10 % are merge-causing identifies (an anonymous profile that did `Account Created`
//! gets a user id and `plan: trial`: identity renames it, compute hands its state over), 10 %
//! identifies of a user whose `Account Created` was sent by user id (no merge: the baseline),
//! and the rest `Account Created` and `Feature Used` calls. The audience
//! `event('Account Created').count() >= 1 AND trait('plan') = 'trial'` is entered by both kinds of
//! identify; the latency is from the identify's send to the commit of the survivor's `entered`
//! (read `read_committed`, matched by the triggering messageId). The first two seconds are left
//! out (start-up). Prints p50, p99 and max for merges and for the no-merge baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_topics, run, start_pipeline, PipelineConfig};
use corral_codec::{
    AvroRecord, MembershipChange, MembershipChangeKind, MessageType, ProtocolsAnnotation,
    SegmentMessage, ValidEvent,
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

fn message(kind: MessageType, id: String, now_ms: i64) -> SegmentMessage {
    let mut m = SegmentMessage::new(SPACE.to_string(), kind, id);
    m.received_at_ms = Some(now_ms);
    m
}

fn main() {
    let rate = env_or("MERGE_BENCH_RATE", 1000);
    let seconds = env_or("MERGE_BENCH_SECONDS", 20);
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("mbench");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    create_topics(&bootstrap, &prefix);
    let audience = dir.path().join("audience.yaml");
    std::fs::write(
        &audience,
        "audiences:\n  - key: trial_signups\n    type: users\n    \
         query: event('Account Created').count() >= 1 AND trait('plan') = 'trial'\n",
    )
    .unwrap();
    run(
        Command::new(common::binary("corralctl"))
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

    // Reader: arrival time of each committed `entered`, by triggering messageId.
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (arrived, stop) = (arrived.clone(), stop.clone());
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", corral_tests::unique("mbench-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "5")
            .create()
            .unwrap();
        corral_tests::assign_from_beginning(&consumer, &format!("{prefix}audiences.membership"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let Some(ch) = m.payload().and_then(|v| MembershipChange::decode(v).ok())
                    else {
                        continue;
                    };
                    if ch.change == MembershipChangeKind::Entered {
                        if let Some(t) = ch.trigger_message_id {
                            arrived
                                .lock()
                                .unwrap()
                                .entry(t)
                                .or_insert_with(Instant::now);
                        }
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
    // Identifies sent (messageId -> (send time, causes a merge)), after the warm-up.
    let mut sent: HashMap<String, (Instant, bool)> = HashMap::new();
    let (mut anon_ready, mut users_ready) = (Vec::new(), Vec::new());
    let (mut anon_next, mut user_next) = (0u64, 0u64);
    let start = Instant::now();
    let warmup = Duration::from_secs(2);
    let total = rate * seconds;
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let id = format!("{run_id}-m{i}");
        let measured = start.elapsed() >= warmup;
        match i % 10 {
            // Merge-causing: an anonymous profile with Account Created identifies.
            0 if !anon_ready.is_empty() => {
                let k: u64 = anon_ready.remove(0);
                let mut m = message(MessageType::Identify, id.clone(), now_ms);
                m.anonymous_id = Some(format!("{run_id}-a{k}"));
                m.user_id = Some(format!("{run_id}-au{k}"));
                m.traits = Some(json!({"plan": "trial"}));
                send(m);
                if measured {
                    sent.insert(id, (Instant::now(), true));
                }
            }
            // Baseline: a known user (Account Created by user id) identifies, no merge.
            5 if !users_ready.is_empty() => {
                let k: u64 = users_ready.remove(0);
                let mut m = message(MessageType::Identify, id.clone(), now_ms);
                m.user_id = Some(format!("{run_id}-u{k}"));
                m.traits = Some(json!({"plan": "trial"}));
                send(m);
                if measured {
                    sent.insert(id, (Instant::now(), false));
                }
            }
            1 | 2 | 3 | 6 | 7 | 8 => {
                let mut m = message(MessageType::Track, id, now_ms);
                m.event = Some("Account Created".into());
                if i % 2 == 0 {
                    m.user_id = Some(format!("{run_id}-u{user_next}"));
                    users_ready.push(user_next);
                    user_next += 1;
                } else {
                    m.anonymous_id = Some(format!("{run_id}-a{anon_next}"));
                    anon_ready.push(anon_next);
                    anon_next += 1;
                }
                send(m);
            }
            _ => {
                let mut m = message(MessageType::Track, id, now_ms);
                m.event = Some("Feature Used".into());
                m.user_id = Some(format!("{run_id}-u{}", i % (user_next.max(1))));
                send(m);
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let sent_for = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let a = arrived.lock().unwrap();
        if sent.keys().all(|k| a.contains_key(k)) {
            break;
        }
        drop(a);
        stack.assert_running();
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let a = arrived.lock().unwrap();
    for (label, merge) in [("merge hand-over", true), ("no-merge baseline", false)] {
        let mut ms: Vec<f64> = sent
            .iter()
            .filter(|(_, (_, m))| *m == merge)
            .filter_map(|(k, (t, _))| a.get(k).map(|at| at.duration_since(*t).as_secs_f64() * 1e3))
            .collect();
        let expected = sent.values().filter(|(_, m)| *m == merge).count();
        ms.sort_by(f64::total_cmp);
        println!(
            "compute {label}: {} of {expected} identifies entered at {rate} events/s for {:.0} s \
             (10 % merge-causing): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms.len(),
            sent_for.as_secs_f64(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN)
        );
    }
}
