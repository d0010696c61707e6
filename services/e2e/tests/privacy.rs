//! Privacy regulations end to end (docs/privacy.md): `corralctl privacy suppress` of a user id,
//! then Segment's Python client sends that user's calls and another user's through the
//! collector; none of the suppressed user's calls reaches `events.raw` (so none reaches the
//! validator's `events.valid` either), the other user's do, and the collector counts the drops.
//! `corralctl privacy unsuppress` restores the flow; `corralctl privacy status` reports each
//! regulation.
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

    // Suppressions are finished as soon as they are written; a deletion is not (yet).
    assert!(privacy(&["status", &suppress_id]).contains("finished"));
    let status = Command::new(&ctl)
        .args(["--bootstrap", &bootstrap, "privacy", "status", &email_id])
        .args(["--prefix", &prefix])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(3), "a deletion is pending");

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
