//! The Profile API end to end: events written to `events.valid`, resolved by corral-identity,
//! computed by corral-compute, served by corral-profiles; asked with a plain HTTP client that
//! replays the request and response examples of Segment's Profile API (the seeds' `/traits`
//! example byte for byte, then the documented paths, parameters, shapes, pagination and the
//! 401 / 403 / 404 bodies).
//!
//! Needs the binaries: `cargo build -p corral-identity -p corral-compute -p corral-profiles --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{basic, message, request, until, Answer, Stack, SPACE};
use corral_codec::MessageType;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn profile_api_answers_as_segment_documents() {
    let stack = Stack::start("profile-api");
    let token = stack.token(SPACE, "e2e");
    let other = stack.token("other-space", "e2e-other");
    stack.apply_definitions(
        "audiences:\n  - key: high_value_user\n    query: event('Order Completed').count() >= 2\n  - key: window_shopper\n    query: event('Product Viewed').count() >= 1 AND event('Order Completed').count() = 0\n  - key: buying_accounts\n    type: accounts\n    query: ANY event('Order Completed').count() >= 1\n  - key: enterprise_accounts\n    type: accounts\n    query: trait('plan') = 'enterprise'\ncomputed_traits:\n  - key: orders_count\n    query: event('Order Completed').count()\n",
    );
    let t0 = corral_ops::now_ms() - 3_600_000;
    let mut identify = message(MessageType::Identify, "m-alex-identify", "u-alex", t0);
    identify.traits = Some(json!({"email": "alex@segment.com", "first_name": "Alex"}));
    let mut oc1 = message(MessageType::Track, "m-alex-oc1", "u-alex", t0 + 1_000);
    oc1.event = Some("Order Completed".into());
    oc1.properties = Some(json!({"revenue": 120}));
    let mut oc2 = message(MessageType::Track, "m-alex-oc2", "u-alex", t0 + 2_000);
    oc2.event = Some("Order Completed".into());
    oc2.properties = Some(json!({"revenue": 80}));
    let mut page = message(MessageType::Page, "m-alex-page", "u-alex", t0 + 3_000);
    page.name = Some("Pricing".into());
    page.context = Some(json!({"page": {"path": "/pricing"}}));
    let mut group = message(MessageType::Group, "m-alex-group", "u-alex", t0 + 4_000);
    group.group_id = Some("acme".into());
    group.traits = Some(json!({"name": "Acme", "plan": "enterprise"}));
    let mut bob = message(MessageType::Identify, "m-bob-identify", "u-bob", t0);
    bob.traits = Some(json!({"email": "bob@example.com"}));
    let mut bob_view = message(MessageType::Track, "m-bob-view", "u-bob", t0 + 1_000);
    bob_view.event = Some("Product Viewed".into());
    stack.send(vec![identify, oc1, oc2, page, group, bob, bob_view]);

    let auth = basic(&token);
    let get = |path: &str| request(stack.api, "GET", path, Some(&auth), None);
    let alex = "/v1/spaces/default/collections/users/profiles/email:alex@segment.com";

    // The seeds' example: /traits?limit=100&include=high_value_user, response byte for byte.
    let seed = until(
        WAIT,
        || get(&format!("{alex}/traits?limit=100&include=high_value_user")),
        |a| a.status == 200 && a.json()["traits"]["high_value_user"] == json!(true),
    );
    assert_eq!(
        seed.json(),
        json!({
            "traits": {"high_value_user": true},
            "cursor": {"url": "", "has_more": false, "next": "", "limit": 100}
        })
    );
    assert_eq!(seed.header("content-type"), Some("application/json"));

    // Errors: 404, 401 without a token or with an unknown one, 403 for another space's token.
    let not_found = get("/v1/spaces/default/collections/users/profiles/user_id:nobody/traits");
    assert_eq!(not_found.status, 404);
    assert_eq!(
        not_found.json(),
        json!({"error": {"code": "not_found", "message": "Profile was not found."}})
    );
    for what in ["traits", "external_ids", "events", "metadata", "links"] {
        let a = get(&format!(
            "/v1/spaces/default/collections/users/profiles/user_id:nobody/{what}"
        ));
        assert_eq!(
            (a.status, a.json()["error"]["code"].clone()),
            (404, json!("not_found")),
            "{what}"
        );
    }
    let no_token = request(stack.api, "GET", &format!("{alex}/traits"), None, None);
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.json()["error"]["code"], "authentication_error");
    let wrong = request(
        stack.api,
        "GET",
        &format!("{alex}/traits"),
        Some(&basic("crl_nope")),
        None,
    );
    assert_eq!(
        (wrong.status, wrong.json()["error"]["code"].clone()),
        (401, json!("authentication_error"))
    );
    let forbidden = request(
        stack.api,
        "GET",
        &format!("{alex}/traits"),
        Some(&basic(&other)),
        None,
    );
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "authentication_error");
    assert!(forbidden.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("other-space"));
    // Bearer works as well (the Public API's way).
    let bearer = request(
        stack.api,
        "GET",
        &format!("{alex}/metadata"),
        Some(&format!("Bearer {token}")),
        None,
    );
    assert_eq!(bearer.status, 200);
    // Bad ids and parameters.
    let bad_collection =
        get("/v1/spaces/default/collections/people/profiles/user_id:u-alex/traits");
    assert_eq!(
        (
            bad_collection.status,
            bad_collection.json()["error"]["code"].clone()
        ),
        (400, json!("validation_error"))
    );
    let bad_id = get("/v1/spaces/default/collections/users/profiles/u-alex/traits");
    assert_eq!(
        (bad_id.status, bad_id.json()["error"]["code"].clone()),
        (400, json!("validation_error"))
    );
    let bad_limit = get(&format!("{alex}/traits?limit=201"));
    assert_eq!(
        (bad_limit.status, bad_limit.json()["error"]["code"].clone()),
        (400, json!("invalid_request_error"))
    );

    // /traits: custom, computed and audience traits; class; verbose; pages of 2.
    let all = until(
        WAIT,
        || get(&format!("{alex}/traits?limit=200")),
        |a| a.status == 200 && a.json()["traits"]["orders_count"] == json!(2),
    )
    .json();
    assert_eq!(
        all["traits"],
        json!({
            "email": "alex@segment.com",
            "first_name": "Alex",
            "high_value_user": true,
            "orders_count": 2,
            "window_shopper": false,
        })
    );
    assert_eq!(
        get(&format!("{alex}/traits?class=audience")).json()["traits"],
        json!({"high_value_user": true, "window_shopper": false})
    );
    assert_eq!(
        get(&format!("{alex}/traits?class=computed_trait")).json()["traits"],
        json!({"orders_count": 2})
    );
    let verbose = get(&format!("{alex}/traits?include=first_name&verbose=true")).json();
    assert_eq!(verbose["traits"]["first_name"]["value"], "Alex");
    assert!(verbose["traits"]["first_name"]["updated_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let mut collected = serde_json::Map::new();
    let mut page_url = format!("{alex}/traits?limit=2");
    let mut pages = 0;
    loop {
        let a = get(&page_url).json();
        pages += 1;
        collected.extend(a["traits"].as_object().unwrap().clone());
        assert_eq!(a["cursor"]["limit"], 2);
        if a["cursor"]["has_more"] == json!(false) {
            assert_eq!(a["cursor"]["url"], "");
            break;
        }
        assert!(a["traits"].as_object().unwrap().len() == 2);
        page_url = a["cursor"]["url"].as_str().unwrap().to_string();
        assert!(page_url.contains(&format!("next={}", a["cursor"]["next"].as_str().unwrap())));
    }
    assert_eq!(
        (pages, Value::Object(collected)),
        (3, all["traits"].clone())
    );

    // /external_ids: Segment's item shape, the first message that carried each id.
    let ids = get(&format!("{alex}/external_ids")).json();
    let data = ids["data"].as_array().unwrap();
    let email = data.iter().find(|i| i["type"] == "email").unwrap();
    assert_eq!(email["id"], "alex@segment.com");
    assert_eq!(email["collection"], "users");
    assert_eq!(email["encoding"], "none");
    assert_eq!(email["source_id"], "src-web");
    assert_eq!(email["first_message_id"], "m-alex-identify");
    assert!(email["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(data
        .iter()
        .any(|i| i["type"] == "user_id" && i["id"] == "u-alex"));
    assert_eq!(ids["cursor"]["has_more"], false);
    let only = get(&format!("{alex}/external_ids?include=user_id")).json();
    assert_eq!(only["data"].as_array().unwrap().len(), 1);

    // /events: newest first, pages of 2 through the cursor, Segment's item shape.
    until(
        WAIT,
        || get(&format!("{alex}/events?limit=100")),
        |a| a.status == 200 && a.json()["data"].as_array().is_some_and(|d| d.len() == 5),
    );
    let mut seen = Vec::new();
    let mut url = format!("{alex}/events?limit=2");
    loop {
        let a = get(&url).json();
        for e in a["data"].as_array().unwrap() {
            seen.push(e["message_id"].as_str().unwrap().to_string());
        }
        if a["cursor"]["has_more"] == json!(false) {
            break;
        }
        url = a["cursor"]["url"].as_str().unwrap().to_string();
    }
    assert_eq!(
        seen,
        [
            "m-alex-group",
            "m-alex-page",
            "m-alex-oc2",
            "m-alex-oc1",
            "m-alex-identify"
        ]
    );
    let first = get(&format!("{alex}/events?limit=1&include=Order%20Completed")).json();
    let e = &first["data"][0];
    assert_eq!(e["message_id"], "m-alex-oc2");
    assert_eq!(e["type"], "track");
    assert_eq!(e["event"], "Order Completed");
    assert_eq!(e["properties"], json!({"revenue": 80}));
    assert_eq!(e["source_id"], "src-web");
    assert!(e["related"]["users"].as_str().unwrap().starts_with("use_"));
    assert!(e["external_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["type"] == "user_id" && i["id"] == "u-alex" && i["encoding"] == "none"));
    assert_eq!(first["cursor"]["has_more"], true);
    let asc = get(&format!("{alex}/events?sort=asc&limit=1")).json();
    assert_eq!(asc["data"][0]["message_id"], "m-alex-identify");

    // /metadata.
    let meta = get(&format!("{alex}/metadata")).json();
    let md = &meta["metadata"];
    assert_eq!(md["first_message_id"], "m-alex-identify");
    assert_eq!(md["last_message_id"], "m-alex-group");
    assert_eq!(md["last_source_id"], "src-web");
    assert_eq!(md["expires_at"], Value::Null);
    assert!(md["created_at"].as_str().unwrap().ends_with('Z'));

    // /links both ways, and the account itself.
    let links = get(&format!("{alex}/links")).json();
    assert_eq!(links["data"][0]["to_collection"], "accounts");
    assert_eq!(links["data"][0]["external_ids"][0]["id"], "acme");
    assert_eq!(links["data"][0]["external_ids"][0]["type"], "group_id");
    let acme = "/v1/spaces/default/collections/accounts/profiles/group_id:acme";
    let users = get(&format!("{acme}/links")).json();
    assert_eq!(users["data"].as_array().unwrap().len(), 1);
    assert_eq!(users["data"][0]["to_collection"], "users");
    assert!(users["data"][0]["external_ids"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["id"] == "alex@segment.com"));
    // An account's traits: its group calls', and compute's ACCOUNTS audiences.
    let acme_traits = until(
        WAIT,
        || get(&format!("{acme}/traits")),
        |a| a.status == 200 && a.json()["traits"]["buying_accounts"] == json!(true),
    );
    assert_eq!(
        acme_traits.json()["traits"],
        json!({"name": "Acme", "plan": "enterprise", "buying_accounts": true, "enterprise_accounts": true})
    );
    assert_eq!(
        get(&format!("{acme}/traits?class=audience")).json()["traits"],
        json!({"buying_accounts": true, "enterprise_accounts": true})
    );
    assert_eq!(
        get(&format!("{acme}/events")).json()["data"][0]["message_id"],
        "m-alex-group"
    );

    // The same profile by its profile id; the trailing slash of the paths.
    let pid = e["related"]["users"].as_str().unwrap();
    let by_pid: Answer = get(&format!(
        "/v1/spaces/default/collections/users/profiles/{pid}/traits/?limit=200"
    ));
    assert_eq!(by_pid.json()["traits"], all["traits"]);
}
