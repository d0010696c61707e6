//! Sources from the `definitions` topic, against a real collector process and the real broker:
//! a source applied before start is loaded before `/readyz` says ready; one applied while the
//! collector runs starts working, and stops working once deleted, without a restart; a key
//! configured on the collector keeps its own source even when a definition claims it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use corral_collector::sources::{self, DefinitionsTopic};
use corral_runtime::topics::CleanupPolicy;
use serde_json::json;

const EARLY_KEY: &str = "early-key-4c1e7d0b2a9f";
const WEB_KEY: &str = "web-key-93b1f0aa61c2";

fn env(name: &str) -> Option<String> {
    (name == "E2E_WEB_KEY").then(|| WEB_KEY.to_string())
}

fn apply(at: &DefinitionsTopic, yaml: &str) -> Vec<String> {
    let file = sources::resolve_text(yaml, "test", env).unwrap();
    sources::apply(at, &file, Some("e2e".into()))
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn track(c: &Collector, key: &str, message_id: &str) -> Response {
    let body = json!({"userId": "u1", "event": "Source Test", "messageId": message_id});
    c.post(
        "/v1/track",
        &[("Authorization", &basic(key))],
        body.to_string().as_bytes(),
    )
}

/// Sends until the status is `want` (the collector applies definitions asynchronously); every
/// other answer must be `other`. Returns the last message id sent.
fn until_status(c: &Collector, key: &str, want: u16, other: u16, tag: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        let id = format!("{tag}-{i}");
        let r = track(c, key, &id);
        if r.status == want {
            return id;
        }
        assert_eq!(r.status, other, "{}", String::from_utf8_lossy(&r.body));
        assert!(Instant::now() < deadline, "{tag}: still {other} after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    unreachable!()
}

#[test]
fn sources_are_followed_live_without_restart() {
    let bootstrap = bootstrap();
    let prefix = format!("{}.", unique("collector-sources"));
    let raw_topic = format!("{prefix}events.raw");
    let dlq_topic = format!("{prefix}events.dlq");
    let defs_topic = format!("{prefix}definitions");
    create_topic(&raw_topic, 3, CleanupPolicy::Delete);
    create_topic(&dlq_topic, 1, CleanupPolicy::Delete);
    create_topic(&defs_topic, 1, CleanupPolicy::Compact);
    let at = DefinitionsTopic {
        bootstrap: bootstrap.clone(),
        kafka: BTreeMap::new(),
        topic: defs_topic.clone(),
    };

    // Applied before the collector starts: loaded before it reports ready.
    let early = format!(
        "space_id: acme\nsources:\n  - {{id: early, name: Early, write_keys: [{EARLY_KEY}]}}\n"
    );
    assert_eq!(
        apply(&at, &early),
        ["created   source early (version 1, 1 write keys)"]
    );
    assert_eq!(apply(&at, &early)[0], "unchanged source early (version 1)");

    // The fixed key e2e-key (source e2e, space s1) comes from --write-key.
    let mut c = Collector::spawn(
        "collector-sources",
        &bootstrap,
        &prefix,
        &[],
        raw_topic.clone(),
        dlq_topic,
    );
    c.wait_for("/readyz", Duration::from_secs(60));
    let r = track(&c, EARLY_KEY, "early-0");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(track(&c, WEB_KEY, "web-before").status, 401);

    // Applied while it runs: the key starts working. The second source claims the fixed key.
    let both = format!(
        "space_id: acme\nsources:\n  - {{id: early, name: Early, write_keys: [{EARLY_KEY}]}}\n  - id: web\n    name: Website\n    write_keys: ['env:E2E_WEB_KEY']\n  - {{id: thief, write_keys: [{WRITE_KEY}]}}\n"
    );
    let lines = apply(&at, &both);
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("created   source web"), "{lines:?}");
    let web_ok = until_status(&c, WEB_KEY, 200, 401, "web");
    // The body's writeKey works as well as Basic auth.
    let body = json!({"userId": "u1", "event": "Source Test", "messageId": "web-body", "writeKey": WEB_KEY});
    assert_eq!(
        c.post("/v1/track", &[], body.to_string().as_bytes()).status,
        200
    );
    let r = track(&c, WRITE_KEY, "fixed-0");
    assert_eq!(r.status, 200);

    let listed = sources::list(&at, Some("acme")).unwrap();
    assert_eq!(
        listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["early", "thief", "web"]
    );
    assert_eq!(
        c.metric("corral_collector_definition_sources", &[]),
        3.0,
        "sources gauge"
    );

    // Deleted: the key stops working; the other sources are untouched.
    sources::delete(&at, "acme", "web").unwrap();
    until_status(&c, WEB_KEY, 401, 200, "web-deleted");
    assert_eq!(track(&c, EARLY_KEY, "early-1").status, 200);
    assert!(matches!(
        sources::delete(&at, "acme", "web"),
        Err(sources::SourcesError::NotFound { .. })
    ));
    assert!(c.service.is_running(), "the collector was never restarted");

    // What reached events.raw: each message carries its key's source and space.
    let events = read_raw(&raw_topic, 5, Duration::from_secs(30));
    let by_id: BTreeMap<String, corral_codec::RawEvent> = events
        .into_iter()
        .map(|(_, ev)| (ev.message_id.clone(), ev))
        .collect();
    let who = |id: &str| {
        let ev = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id} not in events.raw"));
        (
            ev.space_id.clone(),
            ev.source_id.clone().unwrap_or_default(),
        )
    };
    assert_eq!(who("early-0"), ("acme".into(), "early".into()));
    assert_eq!(who("early-1"), ("acme".into(), "early".into()));
    assert_eq!(who(&web_ok), ("acme".into(), "web".into()));
    assert_eq!(who("web-body"), ("acme".into(), "web".into()));
    // The configured key wins over the definition that also lists it.
    assert_eq!(who("fixed-0"), ("s1".into(), "e2e".into()));
    // write_key_id names the key without revealing it.
    let kid = by_id["early-0"].write_key_id.clone().unwrap();
    assert!(
        kid.starts_with("early-") && !kid.contains(EARLY_KEY),
        "{kid}"
    );
    // Nothing sent with a refused key was written.
    assert!(!by_id.contains_key("web-before"));
    assert!(!by_id.keys().any(|k| k.starts_with("web-deleted")));
}
