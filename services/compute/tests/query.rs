//! End-to-end: compute on the real broker with `--query`; a profile's custom traits (with a
//! removal), computed trait value and audience memberships as the query interface answers them
//! through `corral_compute::client`, and 404s for an unknown profile and another space. Waits
//! are for conditions (the answer, committed input) with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use corral_codec::{Definition, MessageType, SegmentMessage};
use corral_compute::client::{ClientError, QueryClient};
use corral_runtime::definitions::publish;
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{bootstrap, create_topic, produce, unique, Service};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const SPACE: &str = "demo";

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

fn define(topic: &str, kind: &str, key: &str, query: &str) {
    let rec = Definition {
        space_id: SPACE.into(),
        kind: kind.into(),
        key: key.into(),
        version: 1,
        name: Some(key.into()),
        body: json!({"query": query, "type": "users", "include_historical_data": false}),
        updated_at_ms: 0,
        updated_by: Some("test".into()),
    };
    publish(
        &bootstrap(),
        &BTreeMap::new(),
        topic,
        &format!("{SPACE}/{kind}/{key}"),
        Some(&rec),
    )
    .unwrap();
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn profile_query_answers_traits_computed_traits_audiences_and_ids() {
    let app = unique("compute-query");
    let t = |n: &str| format!("{app}.{n}");
    for topic in [
        t("events.resolved"),
        t("profiles.merges"),
        t("audiences.membership"),
        t("traits.changes"),
    ] {
        create_topic(&topic, 2, CleanupPolicy::Delete);
    }
    create_topic(&t("events.dlq"), 1, CleanupPolicy::Delete);
    create_topic(&t("definitions"), 1, CleanupPolicy::Compact);
    define(
        &t("definitions"),
        "audience",
        "buyers",
        "event('Order Completed').count() >= 1",
    );
    define(
        &t("definitions"),
        "audience",
        "pro_users",
        "trait('plan') = 'pro'",
    );
    define(
        &t("definitions"),
        "computed_trait",
        "total_revenue",
        "event('Order Completed').sum(property('revenue'))",
    );

    let state = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let args: Vec<String> = [
        "--bootstrap",
        &bootstrap(),
        "--app",
        &app,
        "--topic-prefix",
        &format!("{app}."),
        "--dlq-topic",
        &t("events.dlq"),
        "--state-dir",
        state.path().to_str().unwrap(),
        "--query",
        &addr,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let svc = Service::spawn("compute", BIN, &args, &[]);

    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    produce(
        &t("events.resolved"),
        vec![
            event(
                "u1",
                "m1",
                MessageType::Identify,
                None,
                json!({"plan": "pro", "name": "Jane"}),
                t0,
            ),
            event(
                "u1",
                "m2",
                MessageType::Track,
                Some("Order Completed"),
                json!({"revenue": 100}),
                t0 + 1,
            ),
            event(
                "u1",
                "m3",
                MessageType::Track,
                Some("Order Completed"),
                json!({"revenue": 50}),
                t0 + 2,
            ),
            // `null` removes a trait.
            event(
                "u1",
                "m4",
                MessageType::Identify,
                None,
                json!({"name": null}),
                t0 + 3,
            ),
            event(
                "u2",
                "m5",
                MessageType::Track,
                Some("Page Viewed"),
                json!({}),
                t0,
            ),
        ],
    );

    // The interface reads only with a token of the space asked for.
    let token = |space: &str| {
        let created = corral_ops::tokens::create(
            &bootstrap(),
            &BTreeMap::new(),
            &t("definitions"),
            space,
            "test",
            Some("test"),
        )
        .unwrap();
        Some(created.token)
    };
    let client = QueryClient::new(&addr)
        .with_timeout(Duration::from_secs(5))
        .with_token(token(SPACE));
    let expected_u1 = json!({
        "profile_id": "u1",
        "space": SPACE,
        "external_ids": [{"type": "user_id", "id": "u1", "collection": "users"}],
        "traits": {"plan": "pro"},
        "computed_traits": {"total_revenue": 150.0},
        "audiences": ["buyers", "pro_users"],
    });
    let expected_u2 = json!({
        "profile_id": "u2",
        "space": SPACE,
        "external_ids": [{"type": "user_id", "id": "u2", "collection": "users"}],
        "traits": {},
        "computed_traits": {},
        "audiences": [],
    });
    // Until compute has started, loaded and committed the events, the answer is a connection
    // error, 503, 404 or an earlier state; then it is the expected one.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = |pid: &str| {
        client
            .profile(SPACE, pid)
            .map(|p| serde_json::to_value(p).unwrap())
    };
    let mut last;
    loop {
        last = (answer("u1"), answer("u2"));
        if matches!(&last, (Ok(a), Ok(b)) if *a == expected_u1 && *b == expected_u2)
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(last.0.unwrap(), expected_u1);
    assert_eq!(last.1.unwrap(), expected_u2);
    assert!(client.ready().unwrap());

    match client.profile(SPACE, "nobody") {
        Err(ClientError::NotFound(e)) => {
            assert_eq!(e, "compute holds no profile nobody in space demo")
        }
        other => panic!("expected 404, got {other:?}"),
    }
    // A token of one space reads nothing of another (403); another space's token finds no
    // profile u1 there (profiles are per space); no token or an unknown one: 401.
    match client.profile("another-space", "u1") {
        Err(ClientError::Forbidden(e)) => assert!(e.contains("is for space demo"), "{e}"),
        other => panic!("expected 403, got {other:?}"),
    }
    let other = QueryClient::new(&addr).with_token(token("another-space"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let a = other.profile("another-space", "u1");
        if !matches!(a, Err(ClientError::Unauthorized(_))) || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        matches!(answer, Err(ClientError::NotFound(_))),
        "{answer:?}"
    );
    for anonymous in [
        QueryClient::new(&addr),
        QueryClient::new(&addr).with_token(Some("crl_guess".into())),
    ] {
        match anonymous.profile(SPACE, "u1") {
            Err(ClientError::Unauthorized(e)) => assert!(e.contains("token"), "{e}"),
            other => panic!("expected 401, got {other:?}"),
        }
    }
    assert!(
        QueryClient::new(&addr).ready().unwrap(),
        "/readyz needs no token"
    );
    svc.terminate();
}
