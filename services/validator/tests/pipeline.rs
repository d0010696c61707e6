//! End-to-end tests of the validator against the real broker (`deploy/local`): exact outputs for a
//! mixed stream, de-duplication across SIGKILL, plan hot reload, replay of blocked messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_codec::{
    AvroRecord, BlockedEvent, DeadLetter, MessageType, RawEvent, SegmentMessage, ValidEvent,
    Violation,
};
use corral_runtime::definitions::Applied;
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Record, Service};
use corral_validator::kafka::{apply_plan, replay_blocked, ReplayFilter};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_corral-validator");
const SAMPLE: &str = include_str!("../../../examples/tracking-plan.yaml");

struct Setup {
    app: String,
    raw: String,
    valid: String,
    blocked: String,
    violations: String,
    dlq: String,
    definitions: String,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let app = unique(name);
        let t = |n: &str| format!("{app}.{n}");
        let s = Setup {
            raw: t("events.raw"),
            valid: t("events.valid"),
            blocked: t("events.blocked"),
            violations: t("events.violations"),
            dlq: t("events.dlq"),
            definitions: t("definitions"),
            app,
            state: tempfile::tempdir().unwrap(),
        };
        for topic in [&s.raw, &s.valid, &s.blocked, &s.violations] {
            create_topic(topic, 3, CleanupPolicy::Delete);
        }
        create_topic(&s.dlq, 1, CleanupPolicy::Delete);
        create_topic(&s.definitions, 1, CleanupPolicy::Compact);
        s
    }

    /// Applies the sample plan with its `controls:` block replaced.
    fn apply(&self, controls: &str) -> Applied {
        let start = SAMPLE.find("controls:").unwrap();
        let end = SAMPLE.find("\nevents:").unwrap() + 1;
        let text = format!(
            "{}controls:\n{controls}\n{}",
            &SAMPLE[..start],
            &SAMPLE[end..]
        );
        let path: PathBuf = self
            .state
            .path()
            .join(format!("plan-{}.yaml", rand::random::<u32>()));
        std::fs::write(&path, text).unwrap();
        apply_plan(
            &bootstrap(),
            &Default::default(),
            &self.definitions,
            &path,
            Some("test".into()),
        )
        .unwrap()
    }

    fn spawn(&self) -> Service {
        self.spawn_in("state")
    }

    /// A validator whose local state lives in `dir` below the test's folder.
    fn spawn_in(&self, dir: &str) -> Service {
        let args: Vec<String> = [
            "--bootstrap",
            &bootstrap(),
            "--app",
            &self.app,
            "--instance",
            "0",
            "--raw-topic",
            &self.raw,
            "--valid-topic",
            &self.valid,
            "--blocked-topic",
            &self.blocked,
            "--violations-topic",
            &self.violations,
            "--dlq-topic",
            &self.dlq,
            "--definitions-topic",
            &self.definitions,
            "--state-dir",
            &self.state.path().join(dir).display().to_string(),
            "--session-timeout-ms",
            "6000",
            "--commit-interval-ms",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Service::spawn("validator", BIN, &args, &[])
    }

    fn send(&self, msgs: &[SegmentMessage]) {
        produce(
            &self.raw,
            msgs.iter()
                .map(|m| (corral_codec::routing::message_key(m), m.encode().unwrap())),
        );
    }

    fn read(&self, topic: &str) -> Vec<Record> {
        read_committed(topic, 0, Duration::from_secs(20))
    }

    /// Waits until `topic` holds at least `n` committed records.
    fn await_count(&self, topic: &str, n: usize) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = read_committed(topic, n, Duration::from_secs(10));
            if out.len() >= n || Instant::now() > deadline {
                return out;
            }
        }
    }
}

fn track(id: &str, event: &str, props: serde_json::Value) -> SegmentMessage {
    let mut m = SegmentMessage::new("default", MessageType::Track, id);
    m.event = Some(event.into());
    m.user_id = Some(format!("user-{id}"));
    m.properties = Some(props);
    m.source_id = Some("web".into());
    m
}

fn valid_feature(id: &str) -> SegmentMessage {
    track(
        id,
        "Feature Used",
        json!({"feature_name": "export", "time_spent_seconds": 3}),
    )
}

fn ids<T>(
    records: &[Record],
    decode: impl Fn(&[u8]) -> T,
    id: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| id(&decode(r.value.as_deref().unwrap())))
        .collect();
    v.sort();
    v
}

fn valid_ids(r: &[Record]) -> Vec<String> {
    ids(
        r,
        |b| ValidEvent::decode(b).unwrap(),
        |e| e.message.message_id.clone(),
    )
}

fn blocked_ids(r: &[Record]) -> Vec<String> {
    ids(
        r,
        |b| BlockedEvent::decode(b).unwrap(),
        |e| e.message.message_id.clone(),
    )
}

const STRICT: &str =
    "  track: {unplanned_events: block, unplanned_properties: omit, violations: block}";

#[test]
fn mixed_stream_gives_exact_outputs_and_duplicates_stay_dropped_across_sigkill() {
    let s = Setup::new("val-mixed");
    assert!(matches!(s.apply(STRICT), Applied::Created { .. }));
    assert!(
        matches!(s.apply(STRICT), Applied::Unchanged { version: 1, .. }),
        "applying again changes nothing"
    );

    let mut input = Vec::new();
    for i in 0..20 {
        input.push(valid_feature(&format!("v-{i:02}")));
    }
    for i in 0..5 {
        input.push(track(&format!("u-{i}"), "Report Generated", json!({})));
        input.push(track(
            &format!("t-{i}"),
            "Feature Used",
            json!({"feature_name": "x", "time_spent_seconds": "long"}),
        ));
        input.push(track(
            &format!("r-{i}"),
            "Onboarding Step Completed",
            json!({"step_index": 1}),
        ));
        input.push(track(
            &format!("e-{i}"),
            "Feature Used",
            json!({"feature_name": "x", "colour": "red"}),
        ));
    }
    for i in 0..10 {
        input.push(valid_feature(&format!("v-{i:02}"))); // duplicates
    }
    s.send(&input);
    produce(
        &s.raw,
        vec![
            (b"bad-1".to_vec(), vec![0xff, 0x00]),
            (b"bad-2".to_vec(), b"{\"json\":1}".to_vec()),
        ],
    );

    // Killed mid-stream, then restarted: outputs must be as if it never happened.
    let svc = s.spawn();
    std::thread::sleep(Duration::from_millis(1_500));
    svc.kill9();
    let svc = s.spawn();
    s.await_count(&s.valid, 25);
    s.await_count(&s.dlq, 2);
    // Duplicates of already-valid messages after a SIGKILL and restart: still dropped.
    svc.kill9();
    let mut more: Vec<_> = (10..20)
        .map(|i| valid_feature(&format!("v-{i:02}")))
        .collect();
    more.push(valid_feature("n-1"));
    s.send(&more);
    let svc = s.spawn();
    s.await_count(&s.valid, 26);
    assert_eq!(svc.terminate().code(), Some(0));
    // A validator without local state (a pod rescheduled without its volume) rebuilds its memory
    // of messageIds from events.valid, which logs it: duplicates are still dropped.
    let mut again: Vec<_> = (0..10)
        .map(|i| valid_feature(&format!("v-{i:02}")))
        .collect();
    again.push(valid_feature("n-2"));
    s.send(&again);
    let svc = s.spawn_in("fresh-state");
    s.await_count(&s.valid, 27);
    assert_eq!(svc.terminate().code(), Some(0));

    let valid = s.read(&s.valid);
    let blocked = s.read(&s.blocked);
    let violations = s.read(&s.violations);
    let dlq = s.read(&s.dlq);

    let mut want_valid: Vec<String> = (0..20).map(|i| format!("v-{i:02}")).collect();
    want_valid.extend((0..5).map(|i| format!("e-{i}")));
    want_valid.extend(["n-1".into(), "n-2".into()]);
    want_valid.sort();
    assert_eq!(
        valid_ids(&valid),
        want_valid,
        "each valid message exactly once, duplicates dropped"
    );
    let mut want_blocked: Vec<String> = (0..5)
        .flat_map(|i| [format!("u-{i}"), format!("t-{i}"), format!("r-{i}")])
        .collect();
    want_blocked.sort();
    assert_eq!(blocked_ids(&blocked), want_blocked);
    assert_eq!(violations.len(), 20, "one record per violation");
    assert_eq!(dlq.len(), 2);
    // Nothing lost: every input is accounted for (30 duplicates were dropped).
    assert_eq!(
        valid.len() + blocked.len() + dlq.len() + 30,
        input.len() + 2 + more.len() + again.len()
    );

    for r in &valid {
        let e = ValidEvent::decode(r.value.as_deref().unwrap()).unwrap();
        // Keyed for identity's stitcher: by userId, else anonymousId.
        let routing = corral_codec::routing::routing_key(&e.message);
        assert!(routing.is_some(), "every test message has an identifier");
        assert_eq!(r.key, routing);
        // On the partition the collector's key gives events.raw: the stitcher's and the
        // de-duplication store's.
        let raw_key = corral_codec::routing::message_key(&e.message);
        assert_eq!(r.partition, corral_codec::history::partition(&raw_key, 3));
        assert_eq!(e.protocols.tracking_plan_id.as_deref(), Some("engagement"));
        assert_eq!(e.protocols.tracking_plan_version, Some(1));
        if e.message.message_id.starts_with("e-") {
            assert_eq!(e.protocols.omitted, vec!["properties.colour"]);
            assert!(e
                .message
                .properties
                .as_ref()
                .unwrap()
                .get("colour")
                .is_none());
            assert_eq!(
                e.message.context.as_ref().unwrap()["protocols"]["omitted"],
                json!(["properties.colour"])
            );
        } else {
            assert!(e.protocols.violations.is_empty());
        }
    }
    for r in &blocked {
        let b = BlockedEvent::decode(r.value.as_deref().unwrap()).unwrap();
        let original = input
            .iter()
            .find(|m| m.message_id == b.message.message_id)
            .unwrap();
        assert_eq!(&b.message, original, "blocked messages are kept intact");
        let want = match &b.message.message_id[..1] {
            "u" => ("unplanned_event", "Unplanned Event"),
            "t" => ("violation", "Invalid Type"),
            _ => ("violation", "Required"),
        };
        assert_eq!(
            (b.reason.as_str(), b.violations[0].violation_type.as_str()),
            want
        );
    }
    let types: BTreeSet<String> = violations
        .iter()
        .map(|r| {
            Violation::decode(r.value.as_deref().unwrap())
                .unwrap()
                .violation_type
        })
        .collect();
    assert_eq!(
        types,
        [
            "Invalid Type",
            "Required",
            "Unplanned Event",
            "Unplanned Property"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    for r in &dlq {
        let d = DeadLetter::decode(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(d.origin_topic, s.raw);
        assert_eq!(d.service, s.app);
        assert!(d.value.is_some(), "the original bytes are kept");
    }
}

#[test]
fn plan_changes_take_effect_without_restart_and_blocked_messages_replay() {
    let s = Setup::new("val-reload");
    s.apply("  track: {unplanned_events: allow}\n  forward_violations_to: violations-source");
    let svc = s.spawn();
    let first: Vec<_> = (0..5)
        .map(|i| track(&format!("a-{i}"), "Report Generated", json!({})))
        .collect();
    s.send(&first);
    s.await_count(&s.valid, 5);

    assert!(matches!(
        s.apply("  track: {unplanned_events: block}"),
        Applied::Changed { version: 2, .. }
    ));
    // Probe until the new version is in force, then send a batch.
    let mut probes = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.read(&s.blocked).is_empty() {
        assert!(
            Instant::now() < deadline,
            "plan version 2 never took effect"
        );
        s.send(&[track(&format!("p-{probes}"), "Report Generated", json!({}))]);
        probes += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    let second: Vec<_> = (0..5)
        .map(|i| track(&format!("b-{i}"), "Report Generated", json!({})))
        .collect();
    s.send(&second);
    let blocked = s.await_count(&s.blocked, 6);
    let ids = blocked_ids(&blocked);
    for i in 0..5 {
        assert!(
            ids.contains(&format!("b-{i}")),
            "b-{i} must be blocked under plan v2: {ids:?}"
        );
    }
    let valid = s.read(&s.valid);
    // Nothing lost or doubled across the change: every input is in exactly one output.
    let mut all = valid_ids(&valid);
    all.extend(ids.clone());
    let unique_ids: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(
        all.len(),
        unique_ids.len(),
        "no message in two outputs or twice"
    );
    // The raw topic also holds the Violation Generated events forwarded under v1 (5 a-*).
    let forwarded: Vec<RawEvent> = s
        .read(&s.raw)
        .iter()
        .filter_map(|r| RawEvent::decode(r.value.as_deref()?).ok())
        .filter(|m| m.event.as_deref() == Some("Violation Generated"))
        .collect();
    assert_eq!(
        forwarded.len(),
        5,
        "one Violation Generated per violation under v1"
    );
    assert!(forwarded
        .iter()
        .all(|m| m.source_id.as_deref() == Some("violations-source")));
    assert_eq!(
        all.len(),
        5 + probes + 5 + 5,
        "first, probes, second and the forwarded events"
    );
    for r in &valid {
        let e = ValidEvent::decode(r.value.as_deref().unwrap()).unwrap();
        if e.message.message_id.starts_with("a-") {
            assert_eq!(e.protocols.tracking_plan_version, Some(1));
        }
    }

    // Fix the plan (allow again) and replay the quarantine: the blocked messages become valid.
    assert!(matches!(
        s.apply("  track: {unplanned_events: allow}"),
        Applied::Changed { version: 3, .. }
    ));
    std::thread::sleep(Duration::from_secs(2));
    let filter = ReplayFilter {
        since_ms: 0,
        ..Default::default()
    };
    let n = replay_blocked(
        &bootstrap(),
        &Default::default(),
        &s.blocked,
        &s.raw,
        &filter,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(n, ids.len());
    let valid = s.await_count(&s.valid, valid.len() + n);
    let replayed: BTreeSet<String> = valid_ids(&valid).into_iter().collect();
    for id in &ids {
        assert!(replayed.contains(id), "{id} must be valid after the replay");
    }
    svc.terminate();
}

/// Pipeline throughput (not part of the default run): `cargo test -p corral-validator --release
/// --test pipeline -- --ignored --nocapture throughput`. Messages/s = records / span of the output
/// records' timestamps, so startup and group join are not counted.
#[test]
#[ignore]
fn throughput() {
    let n: usize = std::env::var("VALIDATOR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let s = Setup::new("val-bench");
    s.apply("  track: {unplanned_events: block, unplanned_properties: omit, violations: block}");
    let props = json!({"feature_name": "export", "feature_category": "reports", "time_spent_seconds": 12.5});
    let msgs: Vec<_> = (0..n).map(|i| {
        let mut m = track(&format!("m-{i}"), "Feature Used", props.clone());
        m.context = Some(json!({"app": {"name": "web", "version": "4.2.1"}, "library": {"name": "analytics.js", "version": "5.2.0"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"}));
        m
    }).collect();
    s.send(&msgs);
    let svc = s.spawn();
    let out = s.await_count(&s.valid, n);
    svc.terminate();
    assert_eq!(out.len(), n);
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("ts"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    use rdkafka::consumer::Consumer;
    use rdkafka::message::Message;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&s.valid, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut lo, mut hi, mut seen) = (i64::MAX, i64::MIN, 0);
    while seen < n {
        if let Some(Ok(m)) = consumer.poll(Duration::from_secs(5)) {
            let t = m.timestamp().to_millis().unwrap();
            lo = lo.min(t);
            hi = hi.max(t);
            seen += 1;
        }
    }
    let secs = (hi - lo).max(1) as f64 / 1000.0;
    println!(
        "validator throughput: {n} messages in {secs:.2} s = {:.0} messages/s",
        n as f64 / secs
    );
}
