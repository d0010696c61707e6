//! Privacy in corral-profiles end to end (docs/privacy.md): a deletion filed through the admin
//! API's regulations route goes through identity and compute as `corralctl privacy delete`
//! does, its status turns FINISHED, and when the person comes back (same user id, so the same
//! profile id) `/events`, `/metadata`, `/external_ids` and `/links` show only the new life: the
//! events index followed the deletion record on `profiles.merges`. Bad bodies get 400 with the
//! field; the other user is untouched.
//!
//! Needs the binaries: `cargo build -p corral-identity -p corral-compute -p corral-profiles --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{basic, message, request, until, Stack, SPACE};
use corral_codec::MessageType;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

fn message_ids(events: &Value) -> Vec<String> {
    events["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["message_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_deleted_person_who_comes_back_shows_only_the_new_life() {
    let stack = Stack::start("profiles-privacy");
    let token = stack.token(SPACE, "privacy");
    let auth = format!("Bearer {token}");
    let t0 = corral_ops::now_ms() - 3_600_000;
    let mut ada_id = message(MessageType::Identify, "ada-identify", "ada", t0);
    ada_id.traits = Some(json!({"email": "ada@example.com"}));
    let mut ada_oc = message(MessageType::Track, "ada-order", "ada", t0 + 1_000);
    ada_oc.event = Some("Order Completed".into());
    let mut ada_group = message(MessageType::Group, "ada-group", "ada", t0 + 2_000);
    ada_group.group_id = Some("acme".into());
    ada_group.traits = Some(json!({"plan": "enterprise"}));
    let mut bob_id = message(MessageType::Identify, "bob-identify", "bob", t0);
    bob_id.traits = Some(json!({"email": "bob@example.com"}));
    let mut bob_oc = message(MessageType::Track, "bob-order", "bob", t0 + 1_000);
    bob_oc.event = Some("Order Completed".into());
    stack.send(vec![ada_id, ada_oc, ada_group, bob_id, bob_oc]);

    let get = |path: &str| request(stack.api, "GET", path, Some(&basic(&token)), None);
    let ada = "/v1/spaces/default/collections/users/profiles/user_id:ada";
    let bob = "/v1/spaces/default/collections/users/profiles/user_id:bob";
    let before = until(
        WAIT,
        || get(&format!("{ada}/events?limit=100")),
        |a| a.status == 200 && message_ids(&a.json()).len() == 3,
    );
    let pid = before.json()["data"][0]["related"]["users"]
        .as_str()
        .unwrap()
        .to_string();
    until(
        WAIT,
        || get(&format!("{bob}/events?limit=100")),
        |a| a.status == 200 && message_ids(&a.json()).len() == 2,
    );
    until(
        WAIT,
        || get(&format!("{ada}/links")),
        |a| a.status == 200 && a.body.contains("acme"),
    );

    // Bad bodies: 400, the field and what is wrong; no token: 401.
    let post = |body: Value| {
        request(
            stack.api,
            "POST",
            "/spaces/default/regulations",
            Some(&auth),
            Some(&body),
        )
    };
    let bad =
        post(json!({"regulationType": "FORGET", "subjectType": "USER_ID", "subjectIds": ["ada"]}));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["errors"][0]["field"], "regulationType");
    assert!(bad.body.contains("DELETE_ONLY"), "{}", bad.body);
    let bad =
        post(json!({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": []}));
    assert_eq!(
        (bad.status, bad.json()["errors"][0]["field"].clone()),
        (400, json!("subjectIds"))
    );
    let anonymous = request(stack.api, "GET", "/spaces/default/regulations", None, None);
    assert_eq!(anonymous.status, 401);

    // The deletion, as Segment's Public API files it.
    let filed = post(
        json!({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ["ada"]}),
    );
    assert_eq!(filed.status, 200, "{}", filed.body);
    let id = filed.json()["data"]["regulateId"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(id.starts_with("reg-"), "{id}");
    let done = until(
        WAIT,
        || {
            request(
                stack.api,
                "GET",
                &format!("/spaces/default/regulations/{id}"),
                Some(&auth),
                None,
            )
        },
        |a| a.status == 200 && a.json()["data"]["regulation"]["overallStatus"] == "FINISHED",
    );
    let r = &done.json()["data"]["regulation"];
    assert_eq!(
        (
            r["regulationType"].clone(),
            r["subjectType"].clone(),
            r["subjectCount"].clone()
        ),
        (json!("DELETE_ONLY"), json!("USER_ID"), json!(1))
    );
    assert!(
        r["done"].to_string().contains("1 of 1 profiles"),
        "{}",
        done.body
    );
    assert!(!done.body.contains("ada"), "answers never name the person");
    let listed = request(
        stack.api,
        "GET",
        "/spaces/default/regulations",
        Some(&auth),
        None,
    );
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["data"]["regulations"][0]["id"], id.as_str());
    assert_eq!(
        listed.json()["data"]["regulations"][0]["overallStatus"],
        "FINISHED"
    );
    let unknown = request(
        stack.api,
        "GET",
        "/spaces/default/regulations/reg-0000000000000000",
        Some(&auth),
        None,
    );
    assert_eq!(unknown.status, 404);
    until(WAIT, || get(&format!("{ada}/events")), |a| a.status == 404);

    // She comes back: the same user id, so the same profile id; only the new life shows.
    let mut back = message(
        MessageType::Track,
        "ada-back",
        "ada",
        corral_ops::now_ms() + 1_000,
    );
    back.event = Some("Product Viewed".into());
    stack.send(vec![back]);
    let after = until(
        WAIT,
        || get(&format!("{ada}/events?limit=100")),
        |a| a.status == 200 && !message_ids(&a.json()).is_empty(),
    );
    assert_eq!(message_ids(&after.json()), ["ada-back"], "{}", after.body);
    assert_eq!(after.json()["data"][0]["related"]["users"], pid.as_str());
    let meta = get(&format!("{ada}/metadata")).json();
    assert_eq!(
        (
            meta["metadata"]["first_message_id"].clone(),
            meta["metadata"]["last_message_id"].clone()
        ),
        (json!("ada-back"), json!("ada-back")),
        "{meta}"
    );
    let links = get(&format!("{ada}/links"));
    assert!(!links.body.contains("acme"), "{}", links.body);
    let ids = get(&format!("{ada}/external_ids")).json();
    assert!(
        !ids.to_string().contains("ada-identify"),
        "no first message of the deleted life: {ids}"
    );
    let account = get("/v1/spaces/default/collections/accounts/profiles/group_id:acme/events");
    assert!(!account.body.contains("ada-group"), "{}", account.body);
    // Bob is untouched.
    assert_eq!(
        message_ids(&get(&format!("{bob}/events?limit=100")).json()),
        ["bob-order", "bob-identify"]
    );
    let metrics = corral_tests::http::http_get(stack.admin, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let count = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(count("corral_profiles_deletions_total"), 1.0, "{metrics}");
    assert!(
        count("corral_profiles_erased_events_total") >= 3.0,
        "{metrics}"
    );
}
