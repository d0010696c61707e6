//! Privacy regulations end to end (docs/privacy.md): `corralctl privacy suppress` of a user id,
//! then Segment's Python client sends that user's calls and another user's through the
//! collector; none of the suppressed user's calls reaches `events.raw` (so none reaches the
//! validator's `events.valid` either), the other user's do, and the collector counts the drops.
//! `corralctl privacy unsuppress` restores the flow; `corralctl privacy status` reports each
//! regulation.
//!
//! The second test deletes a user with events, traits and an audience membership delivered to a
//! webhook: her exit reaches `audiences.membership` (trigger `regulation:{id}`) and the webhook
//! (`Audience Exited`), `corralctl privacy status` turns `finished`, no live record of identity's
//! graph and links changelogs or compute's profiles changelog names any of her identifiers, her
//! profile id or her traits, a backfill of a new audience over the retained history takes the
//! other user in and never her, and the other user is untouched. Identity and compute are
//! SIGKILLed right after the request is sent and restarted; the request completes; fanout's
//! outbox changelog holds nothing of her once her exit was delivered. The status turns
//! `finished` only once compute's erasure scans tombstoned her records in `events.resolved`; the
//! test gives that topic tiny log-cleaner settings, and reading it from the beginning then finds
//! none of her records (nor the tombstones) while every one of the other user's is still there.
//! No service's log names either user's identifiers or profile id.
//!
//! Needs the service binaries (`cargo build --workspace --bins`). Every wait is a condition with
//! a deadline; no timing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    binary, create_topics, decode_all, metric, run, send_with_python, start_pipeline,
    PipelineConfig, TopicReader,
};
use corral_codec::{RawEvent, ValidEvent};
use serde_json::json;

const SPACE: &str = "default";
const WRITE_KEY: &str = "e2e-privacy-key";
const STAGE: Duration = Duration::from_secs(60);

fn wait_for(stack: &mut common::Stack, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + STAGE;
    while !cond() {
        stack.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out after {STAGE:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn users(r: &TopicReader, valid: bool) -> Vec<String> {
    if valid {
        decode_all::<ValidEvent>(r)
            .into_iter()
            .filter_map(|e| e.message.user_id)
            .collect()
    } else {
        decode_all::<RawEvent>(r)
            .into_iter()
            .filter_map(|e| e.user_id)
            .collect()
    }
}

#[test]
fn suppressed_users_never_reach_events_raw_until_unsuppressed() {
    for name in [
        "corral-collector",
        "corral-validator",
        "corral-identity",
        "corral-compute",
        "corralctl",
    ] {
        binary(name);
    }
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("e2e-priv");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    create_topics(&bootstrap, &prefix);
    let ctl = binary("corralctl");
    let privacy = |args: &[&str]| -> String {
        run(
            Command::new(&ctl)
                .args(["--bootstrap", &bootstrap, "privacy"])
                .args(args)
                .args(["--prefix", &prefix, "--space", SPACE]),
            &format!("corralctl privacy {}", args.join(" ")),
        )
        .trim()
        .to_string()
    };
    let ada = format!("{run_id}-ada");
    let bob = format!("{run_id}-bob");
    let email = format!("{run_id}-ada@example.com");
    // Written before the collector starts: it must be in force from the first request.
    let suppress_id = privacy(&["suppress", &format!("user_id:{ada}")]);
    let email_id = privacy(&["suppress-with-delete", &format!("email:{email}")]);

    let (mut stack, collector) = start_pipeline(&PipelineConfig {
        bootstrap: &bootstrap,
        prefix: &prefix,
        run_id: &run_id,
        dir: dir.path(),
        write_keys: vec![format!("{WRITE_KEY}=e2e-source:{SPACE}")],
        instances: 1,
        fanout: false,
        env: BTreeMap::new(),
    });
    stack.wait_ready(STAGE);
    let admin = stack.admin("collector");
    let mut raw = TopicReader::new(&bootstrap, &format!("{prefix}events.raw"));
    let mut valid = TopicReader::new(&bootstrap, &format!("{prefix}events.valid"));

    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            {"call": "identify", "user_id": ada, "traits": {"plan": "pro"}},
            {"call": "track", "user_id": ada, "event": "Feature Used",
             "properties": {"feature_name": "export"}},
            // Another id of the same person, caught by the email suppression.
            {"call": "identify", "anonymous_id": format!("{run_id}-anon"),
             "traits": {"email": email}},
            {"call": "track", "user_id": bob, "event": "Feature Used",
             "properties": {"feature_name": "export"}},
        ]),
    );
    // Bob's call passing the validator shows the batch was processed.
    wait_for(&mut stack, "bob's call in events.valid", || {
        raw.poll(Duration::from_millis(200));
        valid.poll(Duration::from_millis(200));
        users(&valid, true).contains(&bob)
    });
    assert_eq!(users(&raw, false), vec![bob.clone()], "events.raw");
    assert!(decode_all::<RawEvent>(&raw)
        .iter()
        .all(|e| !serde_json::to_string(e).unwrap().contains(&email)));
    assert_eq!(users(&valid, true), vec![bob.clone()], "events.valid");
    assert_eq!(
        metric(admin, &["corral_collector_suppressed_total"]),
        Some(3.0)
    );
    assert_eq!(
        metric(admin, &["corral_collector_suppressed_identifiers"]),
        Some(2.0)
    );

    // Suppressions are finished as soon as they are written; the deletion part of
    // suppress-with-delete once identity handled it (nothing of that email was ever stored).
    assert!(privacy(&["status", &suppress_id]).contains("finished"));
    wait_for(&mut stack, "the suppress-with-delete finished", || {
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "privacy", "status", &email_id])
            .args(["--prefix", &prefix])
            .output()
            .unwrap()
            .status
            .success()
    });

    // Unsuppress ada's user id: her calls flow again; the email stays suppressed.
    privacy(&["unsuppress", &format!("user_id:{ada}")]);
    wait_for(&mut stack, "the collector applying the unsuppress", || {
        metric(admin, &["corral_collector_suppressed_identifiers"]) == Some(1.0)
    });
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            {"call": "track", "user_id": ada, "event": "Feature Used",
             "properties": {"feature_name": "import"}},
            {"call": "identify", "anonymous_id": format!("{run_id}-anon2"),
             "traits": {"email": email}},
        ]),
    );
    wait_for(&mut stack, "ada's call in events.valid", || {
        valid.poll(Duration::from_millis(200));
        users(&valid, true).contains(&ada)
    });
    raw.poll(Duration::from_millis(500));
    let mut seen = users(&raw, false);
    seen.sort();
    let mut want = vec![bob, ada];
    want.sort();
    assert_eq!(seen, want, "events.raw");
    assert_eq!(
        metric(admin, &["corral_collector_suppressed_total"]),
        Some(4.0)
    );
    let listed = privacy(&["list"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    stack.assert_running();
}

/// The latest value of every key of a compacted topic (what compaction keeps, and what a
/// restoring store or a replica reads), without tombstoned keys.
fn live_values(bootstrap: &str, topic: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut r = TopicReader::new(bootstrap, topic);
    // Until a second passes without a new record.
    loop {
        let before = r.records.len();
        r.poll(Duration::from_secs(1));
        if r.records.len() == before {
            break;
        }
    }
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for rec in &r.records {
        if let Some(k) = &rec.key {
            latest.insert(k.clone(), rec.value.clone());
        }
    }
    latest
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
}

fn mentions(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every topic of the manifest under `prefix`, with the log cleaner settings of events.resolved
/// made tiny (segments roll after a second, a tombstoned record is compacted away at the
/// cleaner's next pass, the tombstones at the pass after), so the test sees the erasure reach the
/// log itself. The manifest's own settings bound it at a day.
fn create_topics_compacting_quickly(bootstrap: &str, prefix: &str) {
    use corral_runtime::topics::{CleanupPolicy, Manifest, TopicAdmin};
    let text = std::fs::read_to_string(common::repo_root().join("deploy/topics.yaml")).unwrap();
    let mut desired = Manifest::from_yaml(&text)
        .unwrap()
        .desired(Some(prefix))
        .unwrap();
    let resolved = format!("{prefix}events.resolved");
    let t = desired.iter_mut().find(|t| t.name == resolved).unwrap();
    assert_eq!(
        t.cleanup_policy,
        CleanupPolicy::Compact,
        "the manifest compacts the retained history"
    );
    assert!(t.configs.contains_key("max.compaction.lag.ms"));
    for (k, v) in [
        ("segment.ms", "1000"),
        ("max.compaction.lag.ms", "1000"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("delete.retention.ms", "0"),
    ] {
        t.configs.insert(k.into(), v.into());
    }
    let admin = TopicAdmin::connect(bootstrap, &BTreeMap::new()).unwrap();
    let report = admin.apply(&desired).unwrap();
    assert!(report.drift.is_empty(), "{report}");
}

/// A record's key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic` (key, value), read from the beginning until a second passes without
/// a new one.
fn all_records(bootstrap: &str, topic: &str) -> Vec<KeyValue> {
    let mut r = TopicReader::new(bootstrap, topic);
    loop {
        let before = r.records.len();
        r.poll(Duration::from_secs(1));
        if r.records.len() == before {
            break;
        }
    }
    r.records
        .iter()
        .map(|rec| (rec.key.clone(), rec.value.clone()))
        .collect()
}

#[test]
fn a_deleted_user_leaves_every_store_exits_downstream_and_never_comes_back() {
    use corral_codec::MembershipChange;
    for name in [
        "corral-collector",
        "corral-validator",
        "corral-identity",
        "corral-compute",
        "corral-fanout",
        "corralctl",
    ] {
        binary(name);
    }
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("e2e-del");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    create_topics_compacting_quickly(&bootstrap, &prefix);
    let hook = common::Webhook::start();
    let ctl = binary("corralctl");
    const BUYERS: &str = "order_completed_last_30days";
    const EVER: &str = "ordered_ever";
    let audiences = |path: &std::path::Path, keys: &[(&str, &str)]| {
        let mut text = String::from("audiences:\n");
        for (key, query) in keys {
            text.push_str(&format!(
                "  - key: {key}\n    type: users\n    include_historical_data: true\n    query: \"{query}\"\n"
            ));
        }
        std::fs::write(path, text).unwrap();
        run(
            Command::new(&ctl)
                .args(["--bootstrap", &bootstrap, "audiences", "apply"])
                .arg(path)
                .args(["--prefix", &prefix, "--space", SPACE, "--by", "corral-e2e"]),
            "corralctl audiences apply",
        );
    };
    audiences(
        &dir.path().join("a1.yaml"),
        &[(
            BUYERS,
            "event('Order Completed').within(30 days).count() >= 1",
        )],
    );
    let destinations = dir.path().join("destinations.yaml");
    std::fs::write(
        &destinations,
        format!(
            "space_id: {SPACE}\ndestinations:\n  - key: hook\n    type: webhook\n    url: {url}\n    rate_limit_per_second: 0\n    connections:\n      - audience: {BUYERS}\n        mode: track\n",
            url = hook.url("/hook")
        ),
    )
    .unwrap();
    run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "destinations", "apply"])
            .arg(&destinations)
            .args(["--prefix", &prefix, "--by", "corral-e2e"]),
        "corralctl destinations apply",
    );
    let (mut stack, collector) = start_pipeline(&PipelineConfig {
        bootstrap: &bootstrap,
        prefix: &prefix,
        run_id: &run_id,
        dir: dir.path(),
        write_keys: vec![format!("{WRITE_KEY}=e2e-source:{SPACE}")],
        instances: 1,
        fanout: true,
        env: BTreeMap::new(),
    });
    stack.wait_ready(STAGE);
    let ada = format!("{run_id}-ada");
    let bob = format!("{run_id}-bob");
    let email = format!("{run_id}-ada@example.com");
    let anon = format!("{run_id}-anon");
    let order = |user: &str| {
        json!({"call": "track", "user_id": user, "event": "Order Completed",
        "properties": {"order_id": "o1", "total": 12.5}})
    };
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            {"call": "identify", "user_id": ada, "anonymous_id": anon,
             "traits": {"email": email, "name": "Ada Lovelace"}},
            order(&ada),
            {"call": "identify", "user_id": bob, "traits": {"name": "Bob"}},
            order(&bob),
        ]),
    );
    let mut membership = TopicReader::new(&bootstrap, &format!("{prefix}audiences.membership"));
    let changes = |r: &TopicReader| decode_all::<MembershipChange>(r);
    let user_of = |c: &MembershipChange, user: &str| {
        c.external_ids
            .iter()
            .any(|i| i.id_type == "user_id" && i.id == user)
    };
    let entered_webhook = |user: &str, event: &str| {
        hook.requests().iter().any(|r| {
            r.body["userId"] == user
                && r.body["event"] == event
                && r.body["properties"]["audience_key"] == BUYERS
        })
    };
    wait_for(
        &mut stack,
        "ada and bob entering, at the webhook too",
        || {
            membership.poll(Duration::from_millis(200));
            entered_webhook(&ada, "Audience Entered")
                && entered_webhook(&bob, "Audience Entered")
                && changes(&membership).iter().any(|c| user_of(c, &ada))
        },
    );
    let ada_profile = changes(&membership)
        .into_iter()
        .find(|c| user_of(c, &ada))
        .unwrap()
        .profile_id;
    // The retained history before the deletion: both users' records.
    let resolved = format!("{prefix}events.resolved");
    let names = |k: &Option<Vec<u8>>, v: &Option<Vec<u8>>, who: &str| {
        k.as_deref().is_some_and(|k| mentions(k, who))
            || v.as_deref().is_some_and(|v| mentions(v, who))
    };
    let history = all_records(&bootstrap, &resolved);
    let bob_history: Vec<_> = history
        .iter()
        .filter(|(k, v)| v.is_some() && names(k, v, &bob))
        .cloned()
        .collect();
    assert_eq!(bob_history.len(), 2, "bob's identify and order");
    assert!(history.iter().any(|(k, v)| names(k, v, &ada_profile)));

    // Delete ada by her email: every identifier of her profile goes.
    let id = run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "privacy", "delete"])
            .arg(format!("email:{email}"))
            .args(["--prefix", &prefix, "--space", SPACE]),
        "corralctl privacy delete",
    )
    .trim()
    .to_string();
    // SIGKILL identity and compute while the request is in flight: it completes after restart.
    // (start_pipeline's order: collector, validator, identity, compute, fanout.)
    for i in [2, 3] {
        stack.kill_and_restart(i);
    }
    stack.wait_ready(STAGE);
    let trigger = format!("regulation:{id}");
    wait_for(&mut stack, "ada's exit caused by the deletion", || {
        membership.poll(Duration::from_millis(200));
        changes(&membership).iter().any(|c| {
            c.profile_id == ada_profile
                && c.audience_key == BUYERS
                && c.change == corral_codec::MembershipChangeKind::Exited
                && c.trigger_message_id.as_deref() == Some(trigger.as_str())
        })
    });
    wait_for(&mut stack, "Audience Exited for ada at the webhook", || {
        entered_webhook(&ada, "Audience Exited")
    });
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
    wait_for(&mut stack, "the deletion's status: finished", || {
        status(&id).status.success()
    });
    let out = String::from_utf8_lossy(&status(&id).stdout).to_string();
    assert!(out.contains("finished") && out.contains("1 of 1"), "{out}");

    // No live record of the graph, links or profile state names her.
    for changelog in [
        format!("{prefix}{run_id}-identity.graph-changelog"),
        format!("{prefix}{run_id}-identity-stitcher.links-changelog"),
        format!("{prefix}{run_id}-compute.profiles-changelog"),
        // The exit was delivered: nothing of her waits in fanout's outbox.
        format!("{prefix}{run_id}-fanout.outbox-changelog"),
    ] {
        let live = live_values(&bootstrap, &changelog);
        assert!(!live.is_empty(), "{changelog} holds bob");
        for (k, v) in &live {
            for needle in [
                &ada,
                &email,
                &anon,
                &ada_profile,
                &"Ada Lovelace".to_string(),
            ] {
                assert!(
                    !mentions(k, needle) && !mentions(v, needle),
                    "{changelog} still holds {needle}"
                );
            }
        }
        assert!(
            live.iter()
                .any(|(k, v)| mentions(k, &bob) || mentions(v, &bob)),
            "{changelog} lost bob"
        );
    }

    // A backfill after the deletion: a new audience over the retained history takes bob in, and
    // never ada.
    audiences(
        &dir.path().join("a2.yaml"),
        &[
            (
                BUYERS,
                "event('Order Completed').within(30 days).count() >= 1",
            ),
            (EVER, "event('Order Completed').count() >= 1"),
        ],
    );
    wait_for(&mut stack, "bob entering the backfilled audience", || {
        membership.poll(Duration::from_millis(200));
        changes(&membership)
            .iter()
            .any(|c| c.audience_key == EVER && user_of(c, &bob))
    });
    let all = changes(&membership);
    assert!(
        !all.iter()
            .any(|c| c.audience_key == EVER && c.profile_id == ada_profile),
        "the backfill brought ada back"
    );
    // Bob is untouched: in, never out.
    assert!(!all
        .iter()
        .any(|c| user_of(c, &bob) && c.change == corral_codec::MembershipChangeKind::Exited));

    // The retained history itself: once the log cleaner has run, events.resolved holds no record
    // of hers (neither her events nor the tombstones that erased them), and every one of bob's.
    // A segment rolls (and becomes cleanable) only when something is appended to its partition,
    // so empty filler records (which every reader skips) are appended to hers meanwhile.
    let partitions = corral_runtime::topics::TopicAdmin::connect(&bootstrap, &BTreeMap::new())
        .unwrap()
        .partitions(&resolved)
        .unwrap()
        .unwrap();
    let hers = corral_codec::history::partition(ada_profile.as_bytes(), partitions);
    let filler = corral_tests::producer();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let left = loop {
        n += 1;
        let key = format!("filler-{n}");
        filler
            .send(
                rdkafka::producer::BaseRecord::<[u8], [u8]>::to(&resolved)
                    .key(key.as_bytes())
                    .partition(hers),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        rdkafka::producer::Producer::flush(&filler, Duration::from_secs(10)).unwrap();
        let now = all_records(&bootstrap, &resolved);
        let hers_left = now
            .iter()
            .filter(|(k, v)| {
                [&ada, &email, &anon, &ada_profile]
                    .iter()
                    .any(|who| names(k, v, who))
            })
            .count();
        if hers_left == 0 {
            break now;
        }
        stack.assert_running();
        assert!(
            Instant::now() < deadline,
            "events.resolved still holds {hers_left} records naming ada after compaction"
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    for rec in &bob_history {
        assert!(left.contains(rec), "compaction removed a record of bob");
    }
    // Personal data stays out of the services' logs at info level (RUST_LOG=info by default).
    let mut logs = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in [&ada, &bob, &email, &anon, &ada_profile] {
                assert!(
                    !text.contains(needle.as_str()),
                    "{} logs {needle}",
                    path.display()
                );
            }
        }
    }
    assert_eq!(logs, 5, "one log per service");
    // (No metric is asserted here: compute may have counted the deletion before its SIGKILL.)
    stack.assert_running();
}
