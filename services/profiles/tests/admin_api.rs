//! The admin API end to end: a bad query gets the Public API's error with its position; preview
//! → create → membership changes on `audiences.membership` → update → delete, each write the
//! record `corralctl audiences apply` writes; CSV exports in the three layouts, from the API and
//! from `corralctl audiences export`, compared field by field.
//!
//! Needs the binaries: `cargo build -p corral-identity -p corral-compute -p corral-profiles -p corralctl --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{basic, binary, message, request, until, Stack, SPACE};
use corral_codec::{AvroRecord, MembershipChange, MembershipChangeKind, MessageType};
use corral_ops::audiences::{desired, DefinitionKind, Target};
use corral_ops::export::sha256_hex;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// (profile, audience, change) of every membership record so far.
fn memberships(stack: &Stack) -> Vec<(String, String, MembershipChangeKind)> {
    corral_tests::read_committed(
        &stack.topic("audiences.membership"),
        0,
        Duration::from_secs(20),
    )
    .into_iter()
    .filter_map(|r| MembershipChange::decode(&r.value?).ok())
    .map(|m| (m.profile_id, m.audience_key, m.change))
    .collect()
}

fn wait_memberships(
    stack: &Stack,
    pred: impl Fn(&[(String, String, MembershipChangeKind)]) -> bool,
) -> Vec<(String, String, MembershipChangeKind)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = memberships(stack);
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "membership changes never matched: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn audiences_are_previewed_created_updated_deleted_and_exported() {
    let stack = Stack::start("admin-api");
    let token = stack.token(SPACE, "admin");
    let auth = format!("Bearer {token}");
    // u1: 2 orders, two emails; u2: 1; u3: 3; u4: none.
    let t0 = corral_ops::now_ms() - 3_600_000;
    let mut msgs = Vec::new();
    for (user, orders, emails) in [
        ("u1", 2, vec!["u1@example.com", "u1@work.example"]),
        ("u2", 1, vec!["u2@example.com"]),
        ("u3", 3, vec!["u3@example.com"]),
        ("u4", 0, vec!["u4@example.com"]),
    ] {
        for (i, e) in emails.iter().enumerate() {
            let mut m = message(
                MessageType::Identify,
                &format!("{user}-id-{i}"),
                user,
                t0 + i as i64,
            );
            m.traits = Some(json!({"email": e}));
            msgs.push(m);
        }
        for i in 0..orders {
            let mut m = message(
                MessageType::Track,
                &format!("{user}-oc-{i}"),
                user,
                t0 + 10 + i,
            );
            m.event = Some("Order Completed".into());
            msgs.push(m);
        }
    }
    stack.send(msgs);
    let profile = |user: &str| {
        until(
            WAIT,
            || request(stack.api, "GET", &format!("/v1/spaces/default/collections/users/profiles/user_id:{user}/events?limit=100"), Some(&basic(&token)), None),
            |a| a.status == 200 && !a.json()["data"].as_array().unwrap().is_empty(),
        )
        .json()["data"][0]["related"]["users"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let pid: BTreeMap<&str, String> = ["u1", "u2", "u3", "u4"]
        .into_iter()
        .map(|u| (u, profile(u)))
        .collect();
    let post = |path: &str, body: Value| request(stack.api, "POST", path, Some(&auth), Some(&body));

    // A bad query: the Public API's error shape, positioned in the query text.
    let bad = post(
        "/spaces/default/audiences",
        json!({"name": "Repeat Buyers", "definition": {"query": "event('Order Completed')\n  .cont() >= 2", "type": "USERS"}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let e = &bad.json()["errors"][0];
    assert_eq!(e["type"], "validation");
    assert_eq!(e["field"], "definition.query");
    assert_eq!(
        (e["data"]["line"].clone(), e["data"]["column"].clone()),
        (json!(2), json!(4))
    );
    assert_eq!(e["data"]["line_text"], "  .cont() >= 2");
    assert!(e["message"].as_str().unwrap().contains("cont"));
    // No token: the Public API's 401 shape.
    let anonymous = request(stack.api, "GET", "/spaces/default/audiences", None, None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["errors"][0]["type"], "unauthorized");

    // Preview: size and sample from the history, nothing written.
    let query = "event('Order Completed').count() >= 2";
    let preview = post(
        "/spaces/default/audiences/previews",
        json!({"name": "Repeat Buyers", "definition": {"query": query, "type": "USERS"}, "sampleSize": 1}),
    );
    assert_eq!(preview.status, 200, "{}", preview.body);
    let p = &preview.json()["data"]["audiencePreview"];
    assert_eq!(p["status"], "COMPLETED");
    assert_eq!(p["size"]["count"], 2);
    let first_member = pid["u1"].clone().min(pid["u3"].clone());
    assert_eq!(p["results"].as_array().unwrap().len(), 1);
    assert_eq!(p["results"][0]["id"], first_member.as_str());
    assert!(
        memberships(&stack).iter().all(|m| m.1 != "repeat_buyers"),
        "a preview applies nothing"
    );

    // Create: the record corralctl writes; members enter.
    let created = post(
        "/spaces/default/audiences",
        json!({"name": "Repeat Buyers", "definition": {"query": query, "type": "USERS"}, "options": {"includeHistoricalData": true}}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let a = &created.json()["data"]["audience"];
    assert_eq!(
        (a["id"].clone(), a["key"].clone(), a["version"].clone()),
        (json!("repeat_buyers"), json!("repeat_buyers"), json!(1))
    );
    assert_eq!(a["definition"], json!({"query": query, "type": "USERS"}));
    assert_eq!(a["options"]["includeHistoricalData"], true);
    let defs = corral_runtime::definitions::read_all(
        &stack.bootstrap,
        &BTreeMap::new(),
        &stack.topic("definitions"),
        Duration::from_secs(20),
    )
    .unwrap();
    let record = &defs["default/audience/repeat_buyers"];
    let expected = desired(
        SPACE,
        Target::Audience,
        "repeat_buyers",
        "Repeat Buyers",
        DefinitionKind::Users,
        true,
        query,
    );
    assert_eq!(
        (&record.body, &record.name, record.version),
        (&expected.body, &expected.name, 1)
    );
    let again = post(
        "/spaces/default/audiences",
        json!({"name": "Repeat Buyers", "definition": {"query": query}}),
    );
    assert_eq!(
        (again.status, again.json()["errors"][0]["type"].clone()),
        (409, json!("conflict"))
    );
    let entered = |m: &[(String, String, MembershipChangeKind)], user: &str| {
        m.iter().any(|(p, k, c)| {
            p == &pid[user] && k == "repeat_buyers" && *c == MembershipChangeKind::Entered
        })
    };
    wait_memberships(&stack, |m| entered(m, "u1") && entered(m, "u3"));
    let got = request(
        stack.api,
        "GET",
        "/spaces/default/audiences/repeat_buyers",
        Some(&auth),
        None,
    );
    assert_eq!(got.json()["data"]["audience"]["name"], "Repeat Buyers");
    let listed = request(
        stack.api,
        "GET",
        "/spaces/default/audiences",
        Some(&auth),
        None,
    )
    .json();
    assert!(listed["data"]["audiences"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["key"] == "repeat_buyers"));

    // CSV in the three layouts, once compute's results reached the replica.
    let csv = |q: &str| {
        request(
            stack.api,
            "GET",
            &format!("/spaces/default/audiences/repeat_buyers/export?{q}"),
            Some(&auth),
            None,
        )
    };
    let unformatted = until(
        WAIT,
        || csv("format=unformatted"),
        |a| a.status == 200 && a.body.lines().count() == 3,
    );
    assert_eq!(
        unformatted.header("content-type"),
        Some("text/csv; charset=utf-8")
    );
    let (m1, m3) = (&pid["u1"], &pid["u3"]);
    let mut rows: Vec<(String, Vec<(&str, &str)>)> = vec![
        (
            m1.clone(),
            vec![
                ("email", "u1@example.com"),
                ("email", "u1@work.example"),
                ("user_id", "u1"),
            ],
        ),
        (
            m3.clone(),
            vec![("email", "u3@example.com"), ("user_id", "u3")],
        ),
    ];
    rows.sort();
    let parse = |text: &str| -> Vec<Vec<String>> {
        // Quoted fields may hold commas and doubled quotes (RFC 4180).
        text.lines()
            .map(|l| {
                let mut cells = vec![String::new()];
                let mut quoted = false;
                let mut chars = l.chars().peekable();
                while let Some(c) = chars.next() {
                    match (c, quoted) {
                        ('"', true) if chars.peek() == Some(&'"') => {
                            chars.next();
                            cells.last_mut().unwrap().push('"');
                        }
                        ('"', _) => quoted = !quoted,
                        (',', false) => cells.push(String::new()),
                        (c, _) => cells.last_mut().unwrap().push(c),
                    }
                }
                cells
            })
            .collect()
    };
    let u = parse(&unformatted.body);
    assert_eq!(u[0], ["id", "external_ids"]);
    for (row, (id, ids)) in u[1..].iter().zip(&rows) {
        assert_eq!(&row[0], id);
        let mut by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (t, v) in ids {
            by_type.entry(t).or_default().push(v);
        }
        assert_eq!(
            serde_json::from_str::<Value>(&row[1]).unwrap(),
            json!(by_type)
        );
    }
    let indexed = parse(&csv("format=indexed").body);
    assert_eq!(
        indexed[0],
        ["id", "external_ids", "email", "email_1", "user_id"]
    );
    for (row, (id, ids)) in indexed[1..].iter().zip(&rows) {
        let emails: Vec<&str> = ids.iter().filter(|i| i.0 == "email").map(|i| i.1).collect();
        assert_eq!(row[0], *id);
        assert_eq!(row[2], emails[0]);
        assert_eq!(row[3], emails.get(1).copied().unwrap_or(""));
        assert_eq!(row[4], ids.iter().find(|i| i.0 == "user_id").unwrap().1);
    }
    let hashed = parse(&csv("format=single_column&id_type=email").body);
    let want: Vec<String> = rows
        .iter()
        .flat_map(|(_, ids)| {
            ids.iter()
                .filter(|i| i.0 == "email")
                .map(|i| sha256_hex(i.1))
        })
        .collect();
    assert_eq!(hashed[0], ["email"]);
    assert_eq!(
        hashed[1..].iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
        want
    );
    // corralctl gives the same bytes.
    let ctl = Command::new(binary("corralctl"))
        .args([
            "audiences",
            "export",
            "repeat_buyers",
            "--format",
            "single_column",
            "--id-type",
            "email",
            "--api",
            &stack.api.to_string(),
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert_eq!(
        String::from_utf8(ctl.stdout).unwrap(),
        csv("format=single_column&id_type=email").body
    );
    let ctl_raw = Command::new(binary("corralctl"))
        .args([
            "audiences",
            "export",
            "repeat_buyers",
            "--format",
            "indexed",
            "--api",
            &stack.api.to_string(),
            "--token",
            &token,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(ctl_raw.stdout).unwrap(),
        csv("format=indexed").body
    );

    // Update: three orders now; u1 exits.
    let patched = request(
        stack.api,
        "PATCH",
        "/spaces/default/audiences/repeat_buyers",
        Some(&auth),
        Some(&json!({"definition": {"query": "event('Order Completed').count() >= 3"}})),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["data"]["audience"]["version"], 2);
    let m = wait_memberships(&stack, |m| {
        m.iter()
            .any(|(p, k, c)| p == m1 && k == "repeat_buyers" && *c == MembershipChangeKind::Exited)
    });
    let in_now: BTreeSet<&String> = pid
        .values()
        .filter(|p| {
            let changes: Vec<_> = m
                .iter()
                .filter(|(x, k, _)| x == *p && k == "repeat_buyers")
                .collect();
            changes
                .last()
                .is_some_and(|c| c.2 == MembershipChangeKind::Entered)
        })
        .collect();
    assert_eq!(in_now, BTreeSet::from([m3]));

    // Delete: a tombstone; then 404 in the Public API's shape.
    let deleted = request(
        stack.api,
        "DELETE",
        "/spaces/default/audiences/repeat_buyers",
        Some(&auth),
        None,
    );
    assert_eq!(
        (deleted.status, deleted.json()),
        (200, json!({"data": {"status": "SUCCESS"}}))
    );
    let defs = corral_runtime::definitions::read_all(
        &stack.bootstrap,
        &BTreeMap::new(),
        &stack.topic("definitions"),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(!defs.contains_key("default/audience/repeat_buyers"));
    let gone = request(
        stack.api,
        "GET",
        "/spaces/default/audiences/repeat_buyers",
        Some(&auth),
        None,
    );
    assert_eq!(
        (gone.status, gone.json()["errors"][0]["type"].clone()),
        (404, json!("not-found"))
    );

    // Computed traits take the same path.
    let ct = post(
        "/spaces/default/computed-traits",
        json!({"name": "Orders", "key": "orders", "definition": {"query": "event('Order Completed').count()"}}),
    );
    assert_eq!(ct.status, 201, "{}", ct.body);
    assert_eq!(ct.json()["data"]["computedTrait"]["key"], "orders");
    let typed = post(
        "/spaces/default/computed-traits",
        json!({"name": "Bad", "definition": {"query": "event('Order Completed').count() >= 1"}}),
    );
    assert_eq!(typed.status, 400);
    assert_eq!(typed.json()["errors"][0]["data"]["code"], "type_mismatch");
}
