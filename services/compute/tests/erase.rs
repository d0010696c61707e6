//! Erasure of a deleted profile's retained history on the real broker (`deploy/local`;
//! docs/privacy.md, "Erasure"). Compute reads a history of two profiles sharing a partition,
//! is stopped, and gets a deletion record for one of them. It is restarted with the runtime's
//! fault harness (killed right after its 3rd commit) and reading one history record per slice,
//! so the crash lands in the middle of the erasure scan: the committed backfill changelog shows
//! a scan under way and no `erased/` mark. Restarted again, it finishes: every record of the
//! deleted life is tombstoned exactly once (`read_committed`), the record of a new life (resolved
//! after the request) and the other profile's records are not, and `erased/{profile}` is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_codec::history::{key_of, parse_key, partition};
use corral_codec::{AvroRecord, MessageType, ProfileMerge, SegmentMessage};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{
    bootstrap, create_topic, produce, read_committed, resolved_event, unique, Service,
};
use rdkafka::producer::{BaseRecord, Producer};

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const PARTS: i32 = 3;
const ADA: &str = "use_ada";
/// Old-life records of ada: enough that a scan reading one per slice spans many commits.
const ADA_EVENTS: i64 = 10_000;
const BOB_EVENTS: i64 = 200;

fn spawn(app: &str, state: &std::path::Path, env: &[(&str, String)]) -> Service {
    let args: Vec<String> = vec![
        "--bootstrap".into(),
        bootstrap(),
        "--app".into(),
        app.into(),
        "--instance".into(),
        "0".into(),
        "--topic-prefix".into(),
        format!("{app}."),
        "--state-dir".into(),
        state.to_str().unwrap().into(),
        "--punctuate-interval-ms".into(),
        "100".into(),
        "--backfill-max-records".into(),
        "1".into(),
        // Many commits per scan, so the fault lands in the middle of it.
        "--commit-interval-ms".into(),
        "10".into(),
    ];
    Service::spawn("compute", BIN, &args, env)
}

/// The latest value of each key of the backfill changelog.
fn backfill_state(app: &str) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    for r in read_committed(
        &format!("{app}.{app}.backfill-changelog"),
        0,
        Duration::from_secs(5),
    ) {
        if let Some(k) = r.key {
            out.insert(k, r.value);
        }
    }
    out
}

/// Records of `topic` committed by the consumer group `app` (compute's progress).
fn consumed(app: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", app)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTS {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| e.offset().to_raw().filter(|o| *o > 0))
        .sum()
}

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_erasure_scan_killed_midway_resumes_and_tombstones_each_record_once() {
    let app = unique("compute-erase");
    let t = |n: &str| format!("{app}.{n}");
    for n in [
        "events.resolved",
        "profiles.merges",
        "compute.merge-state",
        "audiences.membership",
        "traits.changes",
    ] {
        create_topic(&t(n), PARTS, CleanupPolicy::Delete);
    }
    create_topic(&t("events.dlq"), 1, CleanupPolicy::Delete);
    create_topic(&t("definitions"), 1, CleanupPolicy::Compact);
    let state = tempfile::tempdir().unwrap();
    // Another profile on ada's partition: the scan reads its records and must leave them.
    let part = partition(ADA.as_bytes(), PARTS);
    let bob = (0..)
        .map(|n| format!("use_bob{n}"))
        .find(|b| partition(b.as_bytes(), PARTS) == part)
        .unwrap();
    let t0 = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let deleted_at = t0 + 1_000_000;
    let event = |profile: &str, n: i64, at: i64| {
        let (_, v) = resolved_event(
            profile,
            SegmentMessage::new("s", MessageType::Track, format!("m-{n}")),
            at,
        );
        (key_of(profile, &format!("m-{n}"), at), v)
    };
    let mut history = Vec::new();
    for n in 0..ADA_EVENTS {
        history.push(event(ADA, n, t0 + n));
        if n < BOB_EVENTS {
            history.push(event(&bob, n, t0 + n));
        }
    }
    // A new life of ada's id: resolved after the request, read before it; it stays.
    let new_life = event(ADA, ADA_EVENTS, deleted_at + 1);
    history.push(new_life.clone());
    // On the profile id's partition, as identity writes them.
    let p = corral_tests::producer();
    let resolved = t("events.resolved");
    for (k, v) in &history {
        let profile = parse_key(k).profile_id.to_vec();
        let mut rec = BaseRecord::to(&resolved)
            .key(k)
            .payload(v)
            .partition(partition(&profile, PARTS));
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();

    let svc = spawn(&app, state.path(), &[]);
    let total = history.len() as i64;
    wait(
        "compute reading the history",
        Duration::from_secs(120),
        || consumed(&app, &t("events.resolved")) >= total,
    );
    svc.terminate();

    produce(
        &t("profiles.merges"),
        [(
            ADA.as_bytes().to_vec(),
            ProfileMerge {
                space_id: "s".into(),
                from_profile_id: ADA.into(),
                into_profile_id: String::new(),
                trigger_message_id: Some("regulation:reg-erase".into()),
                trigger_ids: Vec::new(),
                merged_at_ms: deleted_at,
            }
            .encode()
            .unwrap(),
        )],
    );
    let mut crashing = spawn(
        &app,
        state.path(),
        &[("CORRAL_FAULT", "after_commit@3".to_string())],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while crashing.is_running() {
        assert!(Instant::now() < deadline, "after_commit@3 never fired");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mid = backfill_state(&app);
    let scan = mid
        .get(b"erase/scan".as_slice())
        .cloned()
        .flatten()
        .expect("the crash landed mid-scan: a scan is committed");
    let scan: serde_json::Value = serde_json::from_slice(&scan).unwrap();
    assert!(
        scan["at"].as_i64().unwrap() < scan["end"].as_i64().unwrap(),
        "{scan}"
    );
    assert!(!mid.contains_key(format!("erased/{ADA}").as_bytes()));
    assert!(
        mid.get(format!("deleted/{ADA}").as_bytes())
            .is_some_and(Option::is_some),
        "the deletion was committed"
    );

    let svc = spawn(&app, state.path(), &[]);
    wait("the erasure scan's end", Duration::from_secs(180), || {
        backfill_state(&app)
            .get(format!("erased/{ADA}").as_bytes())
            .is_some_and(Option::is_some)
    });
    let after = backfill_state(&app);
    assert!(
        after
            .get(b"erase/scan".as_slice())
            .is_none_or(Option::is_none),
        "the scan is closed"
    );
    let records = read_committed(&t("events.resolved"), 0, Duration::from_secs(10));
    let mut tombstones: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for r in &records {
        if r.value.is_none() {
            *tombstones.entry(r.key.clone().unwrap()).or_default() += 1;
        }
    }
    for (k, _) in &history {
        let n = tombstones.get(k).copied().unwrap_or(0);
        let key = String::from_utf8_lossy(k);
        if k.starts_with(ADA.as_bytes()) && *k != new_life.0 {
            assert_eq!(n, 1, "{key}: tombstoned {n} times");
        } else {
            assert_eq!(n, 0, "{key} must stay");
        }
    }
    assert_eq!(
        tombstones.values().sum::<usize>() as i64,
        ADA_EVENTS,
        "no other tombstone"
    );
    svc.terminate();
}
