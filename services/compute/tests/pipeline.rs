//! End-to-end: compute on the real broker (`deploy/local`) with every USERS example from
//! `examples/definitions.yaml`, a demo stream, time moved forward through the test clock
//! (entries and exits caused only by time passing), a cross-profile merge, and a run crashed
//! mid-stream (the runtime's fault harness aborts the process right after a commit) that must
//! give the same output as an uninterrupted one. Waits are for conditions (record counts,
//! committed input offsets) with deadlines, never for output to go quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_codec::{
    AvroRecord, Definition, MembershipChange, MessageType, ProfileMerge, SegmentMessage,
    TraitChange,
};
use corral_runtime::definitions::publish;
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const EXAMPLES: &str = include_str!("../../../examples/definitions.yaml");
const DAY: i64 = 86_400_000;
const SPACE: &str = "demo";

struct Setup {
    app: String,
    resolved: String,
    merges: String,
    membership: String,
    traits: String,
    definitions: String,
    dlq: String,
    clock: PathBuf,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let app = unique(name);
        let t = |n: &str| format!("{app}.{n}");
        let state = tempfile::tempdir().unwrap();
        let s = Setup {
            resolved: t("events.resolved"),
            merges: t("profiles.merges"),
            membership: t("audiences.membership"),
            traits: t("traits.changes"),
            definitions: t("definitions"),
            dlq: t("events.dlq"),
            clock: state.path().join("clock-offset"),
            app,
            state,
        };
        for topic in [&s.resolved, &s.merges, &s.membership, &s.traits] {
            create_topic(topic, 3, CleanupPolicy::Delete);
        }
        create_topic(&s.dlq, 1, CleanupPolicy::Delete);
        create_topic(&s.definitions, 1, CleanupPolicy::Compact);
        s.set_offset(0);
        s
    }

    fn set_offset(&self, ms: i64) {
        std::fs::write(&self.clock, ms.to_string()).unwrap();
    }

    fn publish_examples(&self) {
        let defs = corral_query::load_definitions_str(EXAMPLES, "examples").unwrap();
        for d in &defs.definitions {
            let kind = match d.target {
                corral_query::Target::Audience => "audience",
                corral_query::Target::ComputedTrait => "computed_trait",
            };
            let rec = Definition {
                space_id: SPACE.into(),
                kind: kind.into(),
                key: d.key.clone(),
                version: 1,
                name: Some(d.name.clone()),
                body: json!({
                    "query": d.text,
                    "type": d.kind.name(),
                    "include_historical_data": d.include_historical_data,
                }),
                updated_at_ms: 0,
                updated_by: Some("test".into()),
            };
            let key = format!("{SPACE}/{kind}/{}", d.key);
            publish(
                &bootstrap(),
                &BTreeMap::new(),
                &self.definitions,
                &key,
                Some(&rec),
            )
            .unwrap();
        }
    }

    fn spawn(&self, instance: &str, fault: Option<&str>) -> Service {
        let args: Vec<String> = [
            "--bootstrap",
            &bootstrap(),
            "--app",
            &self.app,
            "--instance",
            instance,
            "--resolved-topic",
            &self.resolved,
            "--merges-topic",
            &self.merges,
            "--merge-state-topic",
            &format!("{}.compute.merge-state", self.app),
            "--membership-topic",
            &self.membership,
            "--traits-topic",
            &self.traits,
            "--definitions-topic",
            &self.definitions,
            "--dlq-topic",
            &self.dlq,
            "--state-dir",
            self.state
                .path()
                .join(format!("s{instance}"))
                .to_str()
                .unwrap(),
            "--punctuate-interval-ms",
            "100",
            "--clock-offset-file",
            self.clock.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let env: Vec<(&str, String)> = fault
            .map(|f| vec![("CORRAL_FAULT", f.to_string())])
            .unwrap_or_default();
        Service::spawn("compute", BIN, &args, &env)
    }

    fn memberships(&self, min: usize) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let recs = read_committed(&self.membership, min, Duration::from_secs(5));
            let mut out: Vec<(String, String, String)> = recs
                .iter()
                .map(|r| {
                    let m = MembershipChange::decode(r.value.as_deref().unwrap()).unwrap();
                    assert_eq!(r.key.as_deref(), Some(m.profile_id.as_bytes()));
                    assert_eq!(m.space_id, SPACE);
                    assert!(
                        !m.external_ids.is_empty(),
                        "external ids travel with the change"
                    );
                    (m.profile_id, m.audience_key, m.change.as_str().to_string())
                })
                .collect();
            out.sort();
            if out.len() >= min || Instant::now() > deadline {
                return out;
            }
        }
    }
}

impl Setup {
    /// Input records of `topic` whose processing compute has committed: the sum of the
    /// consumer group's committed offsets (the test producer is not transactional, so offsets
    /// count records). The offsets commit in the same transaction as the outputs of those
    /// records, so once they cover the input every output it causes is readable.
    fn consumed(&self, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("group.id", &self.app)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..md.topics()[0].partitions().len() as i32 {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }

    /// Waits (up to a deadline) until compute has committed the processing of `n` records of
    /// `events.resolved`, or `svc` (when given) has exited; returns whether all were consumed.
    fn wait_consumed(&self, n: i64, mut svc: Option<&mut Service>) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.consumed(&self.resolved) >= n {
                return true;
            }
            if svc.as_mut().is_some_and(|s| !s.is_running()) {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "compute did not commit {n} input records within 120 s (committed {})",
                self.consumed(&self.resolved)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every committed computed-trait change: (profile, trait, value, previous value).
    fn trait_changes(&self) -> Vec<(String, String, String, String)> {
        let mut out: Vec<_> = read_committed(&self.traits, 0, Duration::from_secs(5))
            .iter()
            .map(|r| {
                let t = TraitChange::decode(r.value.as_deref().unwrap()).unwrap();
                let show = |v: &Option<Value>| v.as_ref().map_or("-".into(), Value::to_string);
                (
                    t.profile_id.clone(),
                    t.trait_key.clone(),
                    show(&t.value),
                    show(&t.previous_value),
                )
            })
            .collect();
        out.sort();
        out
    }
}

fn event(
    profile: &str,
    id: &str,
    t: MessageType,
    name: Option<&str>,
    body: Value,
    at: i64,
) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, t, id);
    m.event = name.map(String::from);
    if t == MessageType::Identify {
        m.traits = Some(body);
    } else {
        m.properties = Some(body);
    }
    corral_tests::resolved_event(profile, m, at)
}

fn triples(xs: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = xs
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    v.sort();
    v
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[test]
fn examples_end_to_end_with_time_passing_and_merge() {
    let s = Setup::new("compute-e2e");
    s.publish_examples();
    let svc = s.spawn("0", None);
    let t0 = now();
    produce(
        &s.resolved,
        vec![
            event(
                "u1",
                "m1",
                MessageType::Track,
                Some("Order Completed"),
                json!({"revenue": 600, "product_id": "p1"}),
                t0,
            ),
            event(
                "u2",
                "m2",
                MessageType::Track,
                Some("Product Viewed"),
                json!({"price": 150, "product_id": "p9", "name": "Lamp"}),
                t0,
            ),
            event(
                "u3",
                "m3",
                MessageType::Identify,
                None,
                json!({"plan": "trial"}),
                t0,
            ),
            event(
                "u3",
                "m4",
                MessageType::Track,
                Some("Account Created"),
                json!({}),
                t0,
            ),
        ],
    );
    let mut expected = vec![
        ("u1", "order_completed_last_30days", "entered"),
        ("u1", "first_time_shopper", "entered"),
        ("u1", "big_spenders", "entered"),
        ("u2", "viewed_expensive_not_bought", "entered"),
        ("u2", "viewed_not_ordered_same_product", "entered"),
    ];
    assert_eq!(s.memberships(expected.len()), triples(&expected));

    // Three days later, with no new event: u3's account is older than 2 days.
    s.set_offset(3 * DAY);
    expected.push(("u3", "stuck_before_activation", "entered"));
    assert_eq!(s.memberships(expected.len()), triples(&expected));

    // Day 31: the 30-day windows close on their own.
    s.set_offset(31 * DAY);
    expected.push(("u1", "order_completed_last_30days", "exited"));
    expected.push(("u2", "viewed_not_ordered_same_product", "exited"));
    assert_eq!(s.memberships(expected.len()), triples(&expected));

    // u4 buys, then merges into u1 (keyed by the merged-away id, as identity writes it).
    let t1 = now() + 31 * DAY;
    produce(
        &s.resolved,
        vec![event(
            "u4",
            "m5",
            MessageType::Track,
            Some("Order Completed"),
            json!({"revenue": 10, "product_id": "p2"}),
            t1,
        )],
    );
    expected.push(("u4", "order_completed_last_30days", "entered"));
    expected.push(("u4", "first_time_shopper", "entered"));
    assert_eq!(s.memberships(expected.len()), triples(&expected));
    let merge = ProfileMerge {
        space_id: SPACE.into(),
        from_profile_id: "u4".into(),
        into_profile_id: "u1".into(),
        trigger_message_id: Some("m6".into()),
        trigger_ids: vec![],
        merged_at_ms: t1,
    };
    produce(&s.merges, vec![(b"u4".to_vec(), merge.encode().unwrap())]);
    // u1 carries u4's recent order on, so u4 keeps that membership (no leave and re-enter);
    // with two orders neither is a first-time shopper any more.
    expected.push(("u4", "first_time_shopper", "exited"));
    expected.push(("u1", "first_time_shopper", "exited"));
    expected.push(("u1", "order_completed_last_30days", "entered"));
    assert_eq!(s.memberships(expected.len()), triples(&expected));

    // Computed traits: latest total_revenue of u1 is 610, with its previous value.
    let traits: Vec<TraitChange> = read_committed(&s.traits, 1, Duration::from_secs(10))
        .iter()
        .map(|r| TraitChange::decode(r.value.as_deref().unwrap()).unwrap())
        .collect();
    let last_rev = traits
        .iter()
        .rfind(|t| t.profile_id == "u1" && t.trait_key == "total_revenue")
        .expect("total_revenue changes for u1");
    assert_eq!(last_rev.value.as_ref().and_then(Value::as_f64), Some(610.0));
    assert_eq!(
        last_rev.previous_value.as_ref().and_then(Value::as_f64),
        Some(600.0)
    );
    assert_eq!(last_rev.definition_version, Some(1));
    assert!(traits.iter().any(|t| t.profile_id == "u2"
        && t.trait_key == "last_product_viewed_item"
        && t.value == Some(json!("Lamp"))));
    assert!(svc.terminate().success());
}

/// Killed mid-stream (runtime fault harness: abort right after the 3rd commit, before the
/// committed state reaches RocksDB), restarted from the changelog: the committed memberships and
/// trait changes equal an uninterrupted run's, and include every member the stream implies.
#[test]
fn crash_mid_stream_gives_identical_output() {
    const CHUNK: usize = 50;
    let stream = |base: i64| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v = Vec::new();
        for i in 0..300 {
            let p = format!("p{}", i % 40);
            let (name, body) = match i % 4 {
                0 => (
                    "Order Completed",
                    json!({"revenue": i, "product_id": format!("x{}", i % 7)}),
                ),
                1 => (
                    "Product Viewed",
                    json!({"price": 90 + i % 30, "product_id": format!("x{}", i % 5), "name": "n"}),
                ),
                2 => ("Session Started", json!({})),
                _ => ("Checkout Started", json!({})),
            };
            v.push(event(
                &p,
                &format!("m{i}"),
                MessageType::Track,
                Some(name),
                body,
                base + i,
            ));
        }
        v
    };
    let base = now();
    let total = stream(base).len() as i64;
    type Output = (
        Vec<(String, String, String)>,
        Vec<(String, String, String, String)>,
    );
    let run = |fault: Option<&str>| -> Output {
        let s = Setup::new("compute-crash");
        s.publish_examples();
        let mut svc = s.spawn("0", fault);
        // One chunk at a time, each committed before the next is produced: every chunk takes
        // at least one commit, so `after_commit@3` fires within the first three chunks and the
        // rest of the stream is left to the restarted process (a crash that is really
        // mid-stream, whatever the machine's speed).
        let mut produced = 0;
        let mut consumed_at_crash = None;
        for chunk in stream(base).chunks(CHUNK) {
            produce(&s.resolved, chunk.to_vec());
            produced += chunk.len() as i64;
            if consumed_at_crash.is_none() && !s.wait_consumed(produced, Some(&mut svc)) {
                consumed_at_crash = Some(s.consumed(&s.resolved));
            }
        }
        let svc = match fault {
            Some(f) => {
                let at = consumed_at_crash.unwrap_or_else(|| panic!("{f} never fired"));
                assert!(
                    at < total,
                    "the crash happened mid-stream ({at} of {total})"
                );
                let status = svc.wait_exit(Duration::from_secs(60));
                assert!(!status.success(), "the fault must crash the service");
                s.spawn("0", None)
            }
            None => svc,
        };
        // Outputs commit atomically with the input offsets: once every input record is
        // committed, everything it causes is readable.
        assert!(s.wait_consumed(total, None));
        let out = (s.memberships(1), s.trait_changes());
        assert!(svc.terminate().success());
        out
    };
    let clean = run(None);
    let crashed = run(Some("after_commit@3"));

    // The uninterrupted run is complete: every profile whose orders sum above 500 (the last
    // of them cross it in the stream's final chunks) entered big_spenders.
    let mut revenue: BTreeMap<String, i64> = BTreeMap::new();
    for i in (0..300).step_by(4) {
        *revenue.entry(format!("p{}", i % 40)).or_default() += i;
    }
    for (p, r) in &revenue {
        let entered = (p.clone(), "big_spenders".to_string(), "entered".to_string());
        assert_eq!(clean.0.contains(&entered), *r > 500, "{p} (revenue {r})");
    }
    assert!(!clean.1.is_empty());
    assert_eq!(clean.0, crashed.0, "memberships");
    assert_eq!(clean.1, crashed.1, "trait changes");
}
