//! End-to-end tests of fanout against the real broker and real local HTTP receivers: exact
//! payloads, rate limit, retries with order, dead letters, lists, lanes, SIGKILL mid-stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use corral_codec::{
    AvroRecord, DeadLetter, ExternalId, MembershipChange, MembershipChangeKind, TraitChange,
};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::{Answer, Receiver};
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Service};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_corral-fanout");

struct Setup {
    app: String,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let app = unique(name);
        let prefix = format!("{app}.");
        for t in ["audiences.membership", "traits.changes"] {
            create_topic(&format!("{prefix}{t}"), 3, CleanupPolicy::Delete);
        }
        create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
        // As the manifest would (fanout creates it too, but a test reader may look first).
        create_topic(&format!("{prefix}deliveries.dlq"), 1, CleanupPolicy::Delete);
        Setup {
            app,
            prefix,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn topic(&self, t: &str) -> String {
        format!("{}{t}", self.prefix)
    }

    fn spawn(&self, destinations: &str, env: &[(&str, String)]) -> Service {
        let file = self.dir.path().join("destinations.yaml");
        std::fs::write(&file, destinations).unwrap();
        self.spawn_with(&["--destinations", file.to_str().unwrap()], env)
    }

    fn spawn_with(&self, extra: &[&str], env: &[(&str, String)]) -> Service {
        let mut args: Vec<String> = [
            "--bootstrap",
            &bootstrap(),
            "--topic-prefix",
            &self.prefix,
            "--application-id",
            &self.app,
            "--instance",
            "0",
            "--state-dir",
            self.dir.path().join("state").to_str().unwrap(),
            "--retry-base-ms",
            "100",
            "--retry-max-delay-s",
            "1",
            "--punctuate-ms",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Service::spawn("fanout", BIN, &args, env)
    }

    fn membership(&self, changes: &[MembershipChange]) {
        produce(
            &self.topic("audiences.membership"),
            changes
                .iter()
                .map(|c| (c.profile_id.clone().into_bytes(), c.encode().unwrap())),
        );
    }
}

fn ids(user: &str, emails: &[&str]) -> Vec<ExternalId> {
    let mut v = vec![ExternalId {
        id_type: "user_id".into(),
        id: user.into(),
        collection: Some("users".into()),
    }];
    for e in emails {
        v.push(ExternalId {
            id_type: "email".into(),
            id: (*e).into(),
            collection: Some("users".into()),
        });
    }
    v
}

fn change(
    profile: &str,
    audience: &str,
    entered: bool,
    at: i64,
    ids: Vec<ExternalId>,
) -> MembershipChange {
    MembershipChange {
        space_id: "default".into(),
        profile_id: profile.into(),
        audience_key: audience.into(),
        audience_version: 1,
        change: if entered {
            MembershipChangeKind::Entered
        } else {
            MembershipChangeKind::Exited
        },
        external_ids: ids,
        trigger_message_id: None,
        changed_at_ms: at,
    }
}

const T0: i64 = 1_700_000_000_000;

#[test]
fn exact_payloads_for_every_mode_and_target() {
    let s = Setup::new("fanout-exact");
    let hook = Receiver::start();
    let seg = Receiver::start();
    let kafka_topic = s.topic("dest.kafka");
    let dests = format!(
        r#"
destinations:
  - key: hook
    type: webhook
    url: {}
    credential_env: HOOK_SECRET
    connections:
      - audience: first_time_shopper
        mode: both
      - trait: total_revenue_180_days
        mode: track
  - key: seg
    type: segment
    url: {}
    credential_env: SEG_WRITE_KEY
    connections:
      - trait: total_revenue_180_days
        mode: identify
  - key: topic
    type: kafka
    topic: {kafka_topic}
    connections:
      - audience: first_time_shopper
        mode: identify
"#,
        hook.url("/hook"),
        seg.url("")
    );
    let svc = s.spawn(
        &dests,
        &[
            ("HOOK_SECRET", "s3cret".into()),
            ("SEG_WRITE_KEY", "wk".into()),
        ],
    );
    s.membership(&[change(
        "p1",
        "first_time_shopper",
        true,
        T0,
        ids("u123", &["a@x.io"]),
    )]);
    let t = TraitChange {
        space_id: "default".into(),
        profile_id: "p1".into(),
        trait_key: "total_revenue_180_days".into(),
        value: Some(json!(450.5)),
        previous_value: None,
        definition_version: Some(2),
        external_ids: ids("u123", &[]),
        changed_at_ms: T0 + 1,
    };
    produce(
        &s.topic("traits.changes"),
        [(b"p1".to_vec(), t.encode().unwrap())],
    );

    // identify + track for each of user id and email, plus the trait's track.
    let got = hook.wait_for(Duration::from_secs(60), |r| r.len() >= 5);
    let segs = seg.wait_for(Duration::from_secs(30), |r| !r.is_empty());
    let kafka = read_committed(&kafka_topic, 2, Duration::from_secs(30));
    svc.terminate();

    let personas = |class: &str, key: &str| json!({"computation_class": class, "computation_id": key, "computation_key": key, "namespace": "default", "space_id": "default"});
    let strip = |mut v: serde_json::Value| {
        assert_eq!(v["messageId"].as_str().unwrap().len(), 36);
        v.as_object_mut().unwrap().remove("messageId");
        v
    };
    let bodies: Vec<serde_json::Value> = got.iter().map(|r| strip(r.body.clone())).collect();
    assert_eq!(bodies.len(), 5, "{bodies:#?}");
    let integrations = json!({"All": false, "hook": true});
    let expected = [
        json!({"type": "identify", "timestamp": "2023-11-14T22:13:20.000Z", "userId": "u123",
               "traits": {"first_time_shopper": true},
               "context": {"personas": personas("audience", "first_time_shopper")}, "integrations": integrations}),
        json!({"type": "identify", "timestamp": "2023-11-14T22:13:20.000Z", "userId": "u123",
               "traits": {"first_time_shopper": true, "email": "a@x.io"},
               "context": {"personas": personas("audience", "first_time_shopper")}, "integrations": integrations}),
        json!({"type": "track", "timestamp": "2023-11-14T22:13:20.000Z", "userId": "u123", "event": "Audience Entered",
               "properties": {"audience_key": "first_time_shopper", "first_time_shopper": true},
               "context": {"personas": personas("audience", "first_time_shopper")}, "integrations": integrations}),
        json!({"type": "track", "timestamp": "2023-11-14T22:13:20.000Z", "userId": "u123", "event": "Audience Entered",
               "properties": {"audience_key": "first_time_shopper", "first_time_shopper": true},
               "context": {"personas": personas("audience", "first_time_shopper"), "traits": {"email": "a@x.io"}},
               "integrations": integrations}),
        json!({"type": "track", "timestamp": "2023-11-14T22:13:20.001Z", "userId": "u123", "event": "Trait Computed",
               "properties": {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 450.5},
               "context": {"personas": personas("computed_trait", "total_revenue_180_days")}, "integrations": integrations}),
    ];
    for e in &expected {
        assert!(bodies.contains(e), "missing {e:#}\nin {bodies:#?}");
    }
    // Signed with HMAC-SHA256 of the exact body; message id also in a header.
    for r in &got {
        let sig = r.header("x-signature").unwrap();
        let raw = serde_json::to_vec(&r.body).unwrap();
        assert_eq!(
            sig,
            format!("sha256={}", corral_fanout::lane::signature("s3cret", &raw))
        );
        assert_eq!(r.header("idempotency-key"), r.body["messageId"].as_str());
    }
    // Segment HTTP API: /v1/identify with the write key as Basic username.
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].path, "/v1/identify");
    assert_eq!(segs[0].header("authorization"), Some("Basic d2s6"));
    assert_eq!(
        segs[0].body["traits"],
        json!({"total_revenue_180_days": 450.5})
    );
    assert_eq!(
        segs[0].body["integrations"],
        json!({"All": false, "seg": true})
    );
    // Kafka target: one identify per identifier, keyed by profile, exactly once.
    assert_eq!(kafka.len(), 2);
    for r in &kafka {
        assert_eq!(r.key.as_deref(), Some(&b"p1"[..]));
        let v: serde_json::Value = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
        assert_eq!(v["type"], "identify");
        assert_eq!(v["integrations"], json!({"All": false, "topic": true}));
    }
}

#[test]
fn rate_never_exceeds_the_limit_in_any_one_second_window() {
    let s = Setup::new("fanout-rate");
    let hook = Receiver::start();
    let limit = 20;
    let n = 80;
    let dests = format!(
        "destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    rate_limit_per_second: {limit}\n    connections: [{{audience: a, mode: identify}}]\n",
        hook.url("/")
    );
    let svc = s.spawn(&dests, &[]);
    let changes: Vec<_> = (0..n)
        .map(|i| {
            change(
                &format!("p{i}"),
                "a",
                true,
                T0 + i,
                ids(&format!("u{i}"), &[]),
            )
        })
        .collect();
    s.membership(&changes);
    let got = hook.wait_for(Duration::from_secs(60), |r| r.len() >= n as usize);
    svc.terminate();
    assert_eq!(got.len(), n as usize);
    let mut times: Vec<Instant> = got.iter().map(|r| r.at).collect();
    times.sort();
    let mut start = 0;
    let mut max = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= Duration::from_secs(1) {
            start += 1;
        }
        max = max.max(end - start + 1);
    }
    assert!(max <= limit, "{max} requests in one second, limit {limit}");
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_in_order_per_profile() {
    let s = Setup::new("fanout-down");
    let hook = Receiver::start();
    let down_until = Instant::now() + Duration::from_secs(3);
    // Down (500s and one 429 with Retry-After), then up.
    hook.answer(move |n, _| {
        if Instant::now() < down_until {
            if n % 7 == 3 {
                Answer::Status(429, "slow down".into(), Some("1".into()))
            } else {
                Answer::Status(500, "oops".into(), None)
            }
        } else {
            Answer::Ok
        }
    });
    let dests = format!(
        "destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    rate_limit_per_second: 0\n    connections: [{{audience: a, mode: track}}]\n",
        hook.url("/")
    );
    let svc = s.spawn(&dests, &[]);
    let mut changes = Vec::new();
    for step in 0..6 {
        for p in 0..5 {
            changes.push(change(
                &format!("p{p}"),
                "a",
                step % 2 == 0,
                T0 + step * 10 + p,
                ids(&format!("u{p}"), &[]),
            ));
        }
    }
    s.membership(&changes);
    let got = hook.wait_for(Duration::from_secs(90), |r| {
        r.iter().filter(|x| x.status == 200).count() >= 30
    });
    svc.terminate();
    let ok: Vec<_> = got.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        ok.len(),
        30,
        "every delivery arrives once the receiver is back"
    );
    assert!(got.iter().any(|r| r.status == 500) && got.iter().any(|r| r.status == 429));
    let mut per_profile: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for r in &ok {
        per_profile
            .entry(r.body["userId"].as_str().unwrap().to_string())
            .or_default()
            .push((
                r.body["event"].as_str().unwrap().to_string(),
                r.body["timestamp"].as_str().unwrap().to_string(),
            ));
    }
    for (user, events) in per_profile {
        let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["Audience Entered", "Audience Exited"].repeat(3),
            "order of {user}"
        );
        let mut sorted = events.clone();
        sorted.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(events, sorted, "order of {user}");
    }
}

#[test]
fn a_permanent_400_lands_in_the_dead_letter_topic_with_the_response() {
    let s = Setup::new("fanout-dlq");
    let hook = Receiver::start();
    hook.answer(|_, body| {
        if body["userId"] == "bad" {
            Answer::Status(400, r#"{"error":"invalid user"}"#.into(), None)
        } else {
            Answer::Ok
        }
    });
    let dests = format!(
        "destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    connections: [{{audience: a, mode: identify}}]\n",
        hook.url("/")
    );
    let svc = s.spawn(&dests, &[]);
    s.membership(&[
        change("p1", "a", true, T0, ids("bad", &[])),
        change("p1", "a", false, T0 + 1, ids("bad", &[])),
        change("p2", "a", true, T0, ids("good", &[])),
    ]);
    let dlq = read_committed(&s.topic("deliveries.dlq"), 2, Duration::from_secs(60));
    let got = hook.wait_for(Duration::from_secs(30), |r| r.len() >= 3);
    svc.terminate();
    assert_eq!(got.iter().filter(|r| r.status == 200).count(), 1);
    assert_eq!(dlq.len(), 2, "both calls of the bad profile, nothing else");
    for r in &dlq {
        let l = DeadLetter::decode(r.value.as_ref().unwrap()).unwrap();
        assert_eq!(l.service, "fanout");
        assert_eq!(l.reason, "permanent_http_status");
        assert_eq!(l.error, r#"HTTP 400: {"error":"invalid user"}"#);
        assert_eq!(l.key.as_deref(), Some(&b"p1"[..]));
        let d: corral_fanout::outbox::Delivery =
            serde_json::from_slice(l.value.as_ref().unwrap()).unwrap();
        assert_eq!(d.dest, "hook");
        assert_eq!(d.attempts, 1);
        assert_eq!(d.body["userId"], "bad");
    }
}

#[test]
fn a_slow_destination_never_slows_the_others() {
    let s = Setup::new("fanout-lanes");
    let stuck = Receiver::start();
    stuck.answer(|_, _| Answer::Never);
    let fast = Receiver::start();
    let dests = format!(
        "destinations:\n  - key: stuck\n    type: webhook\n    url: {}\n    timeout: 60s\n    concurrency: 2\n    rate_limit_per_second: 0\n    connections: [{{audience: a, mode: identify}}]\n  - key: fast\n    type: webhook\n    url: {}\n    rate_limit_per_second: 0\n    connections: [{{audience: a, mode: identify}}]\n",
        stuck.url("/"),
        fast.url("/")
    );
    let svc = s.spawn(&dests, &[]);
    let changes: Vec<_> = (0..50)
        .map(|i| change(&format!("p{i}"), "a", true, T0, ids(&format!("u{i}"), &[])))
        .collect();
    s.membership(&changes);
    let got = fast.wait_for(Duration::from_secs(45), |r| r.len() >= 50);
    let stuck_seen = stuck.requests().len();
    svc.kill9();
    assert_eq!(got.len(), 50, "the fast destination got everything");
    assert!(
        stuck_seen <= 2,
        "the stuck one holds at most its concurrency in flight, got {stuck_seen}"
    );
}

#[test]
fn a_list_destination_gets_exactly_the_adds_and_removes_since_its_previous_sync() {
    let s = Setup::new("fanout-list");
    let list = Receiver::start();
    let dests = format!(
        "destinations:\n  - key: lst\n    type: list_http\n    url: {}\n    sync_interval: 3s\n    hash_emails: true\n    connections: [{{audience: vip}}]\n",
        list.url("/list")
    );
    s.membership(&[
        change("p1", "vip", true, T0, ids("u1", &["One@x.io"])),
        change("p2", "vip", true, T0, ids("u2", &[])),
        change("p3", "vip", true, T0, ids("u3", &[])),
        change("p3", "vip", false, T0 + 1, ids("u3", &[])),
    ]);
    let svc = s.spawn(&dests, &[]);
    // Collect members across partitions (each task syncs its own profiles).
    let collect = |reqs: &[corral_tests::http::Received], field: &str| -> Vec<String> {
        let mut v: Vec<String> = reqs
            .iter()
            .flat_map(|r| r.body[field].as_array().cloned().unwrap_or_default())
            .map(|m| m["profile_id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let first = list.wait_for(Duration::from_secs(60), |r| collect(r, "adds").len() >= 2);
    assert_eq!(
        collect(&first, "adds"),
        ["p1", "p2"],
        "first sync: the whole audience"
    );
    assert!(collect(&first, "removes").is_empty());
    let p1 = first
        .iter()
        .flat_map(|r| r.body["adds"].as_array().cloned().unwrap())
        .find(|m| m["profile_id"] == "p1")
        .unwrap();
    assert_eq!(
        p1["email_sha256"],
        json!([corral_fanout::payload::hash_email("one@x.io")])
    );
    assert_eq!(first[0].body["audience_key"], "vip");
    let n_first = first.len();
    s.membership(&[
        change("p2", "vip", false, T0 + 2, ids("u2", &[])),
        change("p4", "vip", true, T0 + 2, ids("u4", &[])),
        change("p5", "vip", true, T0 + 2, ids("u5", &[])),
        change("p5", "vip", false, T0 + 3, ids("u5", &[])),
    ]);
    let all = list.wait_for(Duration::from_secs(60), |r| {
        let later = &r[n_first.min(r.len())..];
        collect(later, "adds").len() + collect(later, "removes").len() >= 2
    });
    // A short grace for anything extra (there should be none).
    std::thread::sleep(Duration::from_secs(4));
    let all = list.requests().len().max(all.len());
    let reqs = list.requests();
    svc.terminate();
    let later = &reqs[n_first..all];
    assert_eq!(collect(later, "adds"), ["p4"]);
    assert_eq!(collect(later, "removes"), ["p2"]);
}

#[test]
fn killing_fanout_mid_stream_loses_nothing() {
    let s = Setup::new("fanout-kill");
    let hook = Receiver::start();
    hook.answer(|_, _| Answer::Slow(Duration::from_millis(5)));
    let dests = format!(
        "destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    rate_limit_per_second: 0\n    connections: [{{audience: a, mode: identify}}]\n",
        hook.url("/")
    );
    let n = 400;
    let changes: Vec<_> = (0..n)
        .map(|i| {
            change(
                &format!("p{}", i % 40),
                "a",
                (i / 40) % 2 == 0,
                T0 + i,
                ids(&format!("u{}", i % 40), &[]),
            )
        })
        .collect();
    s.membership(&changes);
    let svc = s.spawn(&dests, &[]);
    hook.wait_for(Duration::from_secs(60), |r| r.len() >= 100);
    svc.kill9();
    let svc = s.spawn(&dests, &[]);
    let distinct = |r: &[corral_tests::http::Received]| {
        r.iter()
            .map(|x| x.body["messageId"].as_str().unwrap_or("").to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let got = hook.wait_for(Duration::from_secs(120), |r| distinct(r) >= n as usize);
    svc.terminate();
    assert_eq!(distinct(&got), n as usize, "every delivery arrived");
    // Duplicates only with identical message ids (and identical bodies), counted.
    let mut by_id: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for r in &got {
        by_id
            .entry(r.body["messageId"].as_str().unwrap().to_string())
            .or_default()
            .push(&r.body);
    }
    let dups: usize = by_id.values().map(|v| v.len() - 1).sum();
    for v in by_id.values() {
        assert!(v.iter().all(|b| *b == v[0]));
    }
    eprintln!("kill -9 mid-stream: {n} deliveries, {dups} duplicates (same message id)");
    // Per profile, first arrivals are in change order.
    let mut seen = std::collections::HashSet::new();
    let mut per_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &got {
        if seen.insert(r.body["messageId"].as_str().unwrap().to_string()) {
            per_user
                .entry(r.body["userId"].as_str().unwrap().to_string())
                .or_default()
                .push(r.body["timestamp"].as_str().unwrap().to_string());
        }
    }
    for (u, ts) in per_user {
        let mut sorted = ts.clone();
        sorted.sort();
        assert_eq!(ts, sorted, "order of {u}");
    }
}

#[test]
fn destinations_from_the_definitions_topic_and_replay_of_dead_letters() {
    let s = Setup::new("fanout-replay");
    let definitions = s.topic("definitions");
    create_topic(&definitions, 1, CleanupPolicy::Compact);
    let hook = Receiver::start();
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let b = broken.clone();
    hook.answer(move |_, _| {
        if b.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(422, "unknown field".into(), None)
        } else {
            Answer::Ok
        }
    });
    let file = s.dir.path().join("dests.yaml");
    std::fs::write(
        &file,
        format!("destinations:\n  - key: hook\n    type: webhook\n    url: {}\n    connections: [{{audience: a, mode: track}}]\n", hook.url("/")),
    )
    .unwrap();
    use corral_fanout::ops::{apply_destinations, replay_deliveries, Applied, ReplayFilter};
    let applied = apply_destinations(
        &bootstrap(),
        &Default::default(),
        &definitions,
        &file,
        Some("test".into()),
    )
    .unwrap();
    assert_eq!(
        applied,
        [Applied::Created {
            kind: "destination".into(),
            key: "hook".into()
        }]
    );
    let again =
        apply_destinations(&bootstrap(), &Default::default(), &definitions, &file, None).unwrap();
    assert_eq!(
        again,
        [Applied::Unchanged {
            kind: "destination".into(),
            key: "hook".into(),
            version: 1
        }]
    );
    // A Kafka destination whose topic does not exist would fail every transaction: refused.
    let missing = s.dir.path().join("missing.yaml");
    let absent_topic = s.topic("no.such.topic");
    std::fs::write(
        &missing,
        format!("destinations:\n  - key: feed\n    type: kafka\n    topic: {absent_topic}\n    connections: [{{audience: a, mode: identify}}]\n"),
    )
    .unwrap();
    let err = apply_destinations(
        &bootstrap(),
        &Default::default(),
        &definitions,
        &missing,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let svc = s.spawn_with(&[], &[]);
    s.membership(&[change("p1", "a", true, T0, ids("u1", &[]))]);
    let dlq = read_committed(&s.topic("deliveries.dlq"), 1, Duration::from_secs(60));
    assert_eq!(dlq.len(), 1);
    let first = hook.requests();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status, 422);
    broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let filter = ReplayFilter {
        destination: Some("hook".into()),
        ..Default::default()
    };
    let n = replay_deliveries(
        &bootstrap(),
        &Default::default(),
        &s.topic("deliveries.dlq"),
        &s.topic("deliveries.replay"),
        &filter,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(n, 1);
    let got = hook.wait_for(Duration::from_secs(60), |r| r.len() >= 2);
    svc.terminate();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].status, 200);
    assert_eq!(
        got[1].body, first[0].body,
        "the replay is the same delivery, same message id"
    );
}

#[test]
fn a_deleted_profile_is_deleted_once_from_each_destination_with_a_deletion_api() {
    let s = Setup::new("fanout-delete");
    let braze = Receiver::start();
    let iterable = Receiver::start();
    let hook = Receiver::start();
    // Braze refuses the deletion of `bad` (permanent); Iterable fails once, then answers 404
    // (the user is not there: done).
    braze.answer(|_, body| {
        if body["external_ids"] == json!(["bad"]) {
            Answer::Status(400, r#"{"message":"no"}"#.into(), None)
        } else {
            Answer::Ok
        }
    });
    let deletions_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = deletions_seen.clone();
    iterable.answer(move |_, body| {
        // Deletions have no body; the first one fails.
        if !body.is_null() {
            Answer::Ok
        } else if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Answer::Status(503, "busy".into(), None)
        } else {
            Answer::Status(404, r#"{"code":"NotFound"}"#.into(), None)
        }
    });
    let dests = format!(
        r#"
destinations:
  - key: braze
    type: braze
    url: {}
    connections: [{{audience: a, mode: identify}}, {{audience: b, mode: identify}}]
  - key: iterable
    type: iterable
    url: {}
    connections: [{{audience: b, mode: track}}]
  - key: hook
    type: webhook
    url: {}
    connections: [{{audience: a, mode: identify}}, {{audience: b, mode: identify}}]
"#,
        braze.url(""),
        iterable.url(""),
        hook.url("/hook")
    );
    let file = s.dir.path().join("destinations.yaml");
    std::fs::write(&file, dests).unwrap();
    let admin = format!("127.0.0.1:{}", corral_tests::http::free_port());
    let svc = s.spawn_with(
        &["--destinations", file.to_str().unwrap(), "--admin", &admin],
        &[],
    );
    let deleted = |mut c: MembershipChange| {
        c.trigger_message_id = Some("regulation:reg-1".into());
        c
    };
    s.membership(&[
        change("p1", "a", true, T0, ids("u1", &[])),
        change("p1", "b", true, T0, ids("u1", &[])),
        // The deletion's exits, one per audience, as compute emits them.
        deleted(change("p1", "a", false, T0 + 1, ids("u1", &[]))),
        deleted(change("p1", "b", false, T0 + 1, ids("u1", &[]))),
        deleted(change("p2", "a", false, T0 + 1, ids("bad", &[]))),
    ]);
    let dlq = read_committed(&s.topic("deliveries.dlq"), 1, Duration::from_secs(60));
    let hooks = hook.wait_for(Duration::from_secs(60), |r| r.len() >= 5);
    let iter = iterable.wait_for(Duration::from_secs(60), |r| {
        r.iter().filter(|q| q.status == 404).count() >= 2
    });
    let brz = braze.wait_for(Duration::from_secs(60), |r| r.len() >= 4);
    // Nothing more arrives: one deletion per profile and destination.
    std::thread::sleep(Duration::from_secs(2));
    let text = corral_tests::http::metrics_text(&admin);
    let metric = |dest: &str, outcome: &str| {
        text.lines()
            .filter(|l| l.starts_with("corral_fanout_user_deletions_total{"))
            .filter(|l| l.contains(&format!("destination=\"{dest}\"")))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .find_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let counts = (
        metric("braze", "queued"),
        metric("braze", "delivered"),
        metric("braze", "dead_lettered"),
        metric("iterable", "queued"),
        metric("iterable", "not_found"),
    );
    svc.terminate();

    // Delivery is at least once: a request that timed out on a loaded machine is sent again
    // with the same id, so requests are told apart by their idempotency key.
    let key = |r: &corral_tests::http::Received| {
        r.header("idempotency-key").unwrap_or_default().to_string()
    };
    let distinct = |rs: &[corral_tests::http::Received],
                    pred: &dyn Fn(&corral_tests::http::Received) -> bool| {
        rs.iter()
            .filter(|r| pred(r))
            .map(key)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // The webhook has no deletion API: it gets the exits as before.
    assert_eq!(distinct(&hooks, &|_| true), 5, "{hooks:#?}");
    assert_eq!(distinct(&hook.requests(), &|_| true), 5);
    // Braze: the two entries, then one deletion per deleted profile and no exit.
    let brz_all = braze.requests();
    let paths: Vec<(&str, &str)> = brz_all
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert!(brz.len() >= 4);
    assert_eq!(distinct(&brz_all, &|_| true), 4, "{paths:?}");
    assert_eq!(
        distinct(&brz_all, &|r| r.path == "/users/track"),
        2,
        "{paths:?}"
    );
    // p1's deletion follows its entries (same queue); p2's has its own queue.
    let u1_delete = brz_all
        .iter()
        .position(|r| r.body == json!({"external_ids": ["u1"]}))
        .unwrap();
    let last_track = brz_all
        .iter()
        .rposition(|r| r.path == "/users/track")
        .unwrap();
    assert!(last_track < u1_delete, "{paths:?}");
    for who in ["u1", "bad"] {
        assert_eq!(
            distinct(&brz_all, &|r| r.path == "/users/delete"
                && r.body == json!({"external_ids": [who]})),
            1,
            "{paths:?}"
        );
    }
    // Iterable (connected to b only, in track mode): the entry's event, then a deletion by
    // user id for each deleted profile (Iterable is in the space, connected or not), one of
    // them retried after a 503; a 404 ends each.
    let iter_all = iterable.requests();
    assert!(iter.len() <= iter_all.len());
    assert_eq!(distinct(&iter_all, &|r| r.path == "/api/events/track"), 1);
    let first_u1 = iter_all
        .iter()
        .position(|r| r.path == "/api/users/byUserId/u1")
        .unwrap();
    let last_track = iter_all
        .iter()
        .rposition(|r| r.path == "/api/events/track")
        .unwrap();
    assert!(last_track < first_u1);
    let deletes: Vec<(&str, &str, u16)> = iter_all
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| (r.method.as_str(), r.path.as_str(), r.status))
        .collect();
    assert_eq!(
        distinct(&iter_all, &|r| r.method == "DELETE"),
        2,
        "{deletes:?}"
    );
    assert!(deletes.iter().any(|d| d.2 == 503), "{deletes:?}");
    for user in ["u1", "bad"] {
        let path = format!("/api/users/byUserId/{user}");
        let last = deletes.iter().rev().find(|d| d.1 == path);
        assert_eq!(last.map(|d| d.2), Some(404), "{deletes:?}");
    }
    // The refused deletion is dead-lettered as a deletion, with the response.
    assert_eq!(dlq.len(), 1);
    let l = DeadLetter::decode(dlq[0].value.as_ref().unwrap()).unwrap();
    assert_eq!(l.reason, "permanent_http_status");
    let d: corral_fanout::outbox::Delivery =
        serde_json::from_slice(l.value.as_ref().unwrap()).unwrap();
    assert!(d.deletion);
    assert_eq!((d.dest.as_str(), d.profile_id.as_str()), ("braze", "p2"));
    assert_eq!(counts, (2.0, 1.0, 1.0, 2.0, 2.0), "{text}");
}

#[test]
fn a_queued_deletion_survives_kill9_and_is_queued_once() {
    let s = Setup::new("fanout-delete-kill");
    let braze = Receiver::start();
    let accept = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let open = accept.clone();
    // Deletions fail until the receiver is told to accept them; everything else is accepted.
    braze.answer(move |_, body| {
        if body.get("external_ids").is_some() && !open.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(503, "down".into(), None)
        } else {
            Answer::Ok
        }
    });
    let dests = format!(
        "destinations:\n  - key: braze\n    type: braze\n    url: {}\n    connections: [{{audience: a, mode: identify}}, {{audience: b, mode: identify}}]\n",
        braze.url("")
    );
    let deleted = |mut c: MembershipChange| {
        c.trigger_message_id = Some("regulation:reg-9".into());
        c
    };
    let svc = s.spawn(&dests, &[]);
    s.membership(&[
        change("p1", "a", true, T0, ids("u1", &[])),
        change("p1", "b", true, T0, ids("u1", &[])),
        deleted(change("p1", "a", false, T0 + 1, ids("u1", &[]))),
    ]);
    let is_delete = |r: &corral_tests::http::Received| r.path == "/users/delete";
    braze.wait_for(Duration::from_secs(60), |r| {
        r.iter().filter(|x| is_delete(x)).count() >= 2
    });
    svc.kill9();
    // The profile's second exit arrives while fanout is down; the restarted fanout restores the
    // queued deletion from its outbox changelog and must not queue another one for it.
    s.membership(&[deleted(change("p1", "b", false, T0 + 1, ids("u1", &[])))]);
    let svc = s.spawn(&dests, &[]);
    let before = braze.requests().len();
    braze.wait_for(Duration::from_secs(60), |r| {
        r.len() > before + 2 && r.iter().skip(before).filter(|x| is_delete(x)).count() >= 2
    });
    accept.store(true, std::sync::atomic::Ordering::SeqCst);
    braze.wait_for(Duration::from_secs(60), |r| {
        r.iter().any(|x| is_delete(x) && x.status == 200)
    });
    // Time for a second queued copy (same deterministic id) to show, if there were one.
    std::thread::sleep(Duration::from_secs(3));
    svc.terminate();
    let all = braze.requests();
    let deletes: Vec<_> = all.iter().filter(|r| is_delete(r)).collect();
    assert_eq!(
        deletes.iter().filter(|r| r.status == 200).count(),
        1,
        "delivered once"
    );
    let ids: std::collections::HashSet<_> = deletes
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt is the same request");
    assert!(deletes
        .iter()
        .all(|r| r.body == json!({"external_ids": ["u1"]})));
    // The two entries (a re-send after the kill repeats an id), and no exit.
    let tracks: std::collections::HashSet<_> = all
        .iter()
        .filter(|r| r.path == "/users/track")
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
        .collect();
    assert_eq!(tracks.len(), 2, "the entries, and no exit");
}
