//! Account audiences end to end: Segment's Python client sends `group` calls and events ->
//! collector -> validator -> identity -> compute -> fanout -> a webhook, with the definitions
//! applied by `corralctl audiences apply examples/definitions.yaml` (its two account audiences
//! included). The webhook must receive Segment's account audience payloads: a `group` call per
//! account (`groupId`, `traits: {<audience>: true|false}`), and for every user of the account
//! an identify and `Audience Entered` / `Audience Exited` track with the account in
//! `context.groupId`; a user's login makes its account leave, for the account and every user.
//!
//! Needs the service binaries (`cargo build --workspace --bins`). Every wait is a condition with
//! a deadline; no timing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    binary, create_topics, repo_root, run, send_with_python, start_pipeline, PipelineConfig,
    Received, Webhook,
};
use serde_json::{json, Value};

const SPACE: &str = "default";
const WRITE_KEY: &str = "e2e-accounts-key";
const AT_RISK: &str = "at_risk_business_accounts";
const NO_DASH: &str = "accounts_no_dashboard_30d";
const STAGE: Duration = Duration::from_secs(60);

fn wait(hook: &Webhook, stack: &mut common::Stack, what: &str, cond: impl Fn(&[Received]) -> bool) {
    let deadline = Instant::now() + STAGE;
    loop {
        if cond(&hook.requests()) {
            return;
        }
        stack.assert_running();
        assert!(
            Instant::now() < deadline,
            "timed out after {STAGE:?} waiting for: {what}\nreceived: {:#?}",
            hook.requests().iter().map(|r| &r.body).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A group call for `group` setting `audience` to `value`.
fn group_call(rs: &[Received], group: &str, audience: &str, value: bool) -> bool {
    rs.iter().any(|r| {
        let b = &r.body;
        b["type"] == "group"
            && b["groupId"] == group
            && b["traits"][audience] == value
            && b["context"]["personas"]["computation_key"] == audience
            && b.get("userId").is_none()
    })
}

/// A user's track of `event` for `audience` with the account in `context.groupId`.
fn user_track(rs: &[Received], user: &str, group: &str, audience: &str, event: &str) -> bool {
    let value = event == "Audience Entered";
    rs.iter().any(|r| {
        let b = &r.body;
        b["type"] == "track"
            && b["userId"] == user
            && b["event"] == event
            && b["properties"]["audience_key"] == audience
            && b["properties"][audience] == value
            && b["context"]["groupId"] == group
    })
}

/// A user's identify setting `audience`, with the account in `context.groupId`.
fn user_identify(rs: &[Received], user: &str, group: &str, audience: &str, value: bool) -> bool {
    rs.iter().any(|r| {
        let b = &r.body;
        b["type"] == "identify"
            && b["userId"] == user
            && b["traits"][audience] == value
            && b["context"]["groupId"] == group
    })
}

#[test]
fn account_audiences_reach_a_webhook_as_segment_sends_them() {
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
    let run_id = corral_tests::unique("e2e-acct");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    create_topics(&bootstrap, &prefix);
    let hook = Webhook::start();
    let root = repo_root();
    let ctl = binary("corralctl");
    run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "plans", "apply"])
            .arg(root.join("examples/tracking-plan.yaml"))
            .args(["--prefix", &prefix, "--by", "corral-e2e"]),
        "corralctl plans apply examples/tracking-plan.yaml",
    );
    let applied = run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "audiences", "apply"])
            .arg(root.join("examples/definitions.yaml"))
            .args(["--prefix", &prefix, "--space", SPACE, "--by", "corral-e2e"]),
        "corralctl audiences apply examples/definitions.yaml",
    );
    assert!(
        applied.contains(AT_RISK) && applied.contains(NO_DASH),
        "{applied}"
    );
    let destinations = dir.path().join("destinations.yaml");
    std::fs::write(
        &destinations,
        format!(
            "space_id: {SPACE}\n\
             destinations:\n\
             \x20 - key: accounts_hook\n\
             \x20   type: webhook\n\
             \x20   url: {url}\n\
             \x20   rate_limit_per_second: 0\n\
             \x20   connections:\n\
             \x20     - audience: {AT_RISK}\n\
             \x20       mode: both\n\
             \x20     - audience: {NO_DASH}\n\
             \x20       mode: identify\n",
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
    stack.wait_ready(Duration::from_secs(60));

    // initech: a business account whose two users never logged in nor opened a dashboard.
    // globex: a free account, same users' behaviour. acme: business, its user logged in and
    // opened a dashboard.
    let u = |n: &str| format!("{run_id}-{n}");
    let (initech, globex, acme) = (u("initech"), u("globex"), u("acme"));
    let (i1, i2, g1, a1) = (u("i1"), u("i2"), u("g1"), u("a1"));
    let group = |user: &str, g: &str, plan: &str| -> Value {
        json!({"call": "group", "user_id": user, "group_id": g,
               "traits": {"name": g, "plan": plan}})
    };
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            group(&i1, &initech, "business"),
            group(&i2, &initech, "business"),
            group(&g1, &globex, "free"),
            group(&a1, &acme, "business"),
            {"call": "track", "user_id": a1, "event": "Logged In"},
            {"call": "track", "user_id": a1, "event": "Dashboard Viewed"},
        ]),
    );
    wait(
        &hook,
        &mut stack,
        "initech's and globex's group calls and their users' calls",
        |rs| {
            group_call(rs, &initech, AT_RISK, true)
                && group_call(rs, &initech, NO_DASH, true)
                && group_call(rs, &globex, NO_DASH, true)
                && [&i1, &i2].iter().all(|user| {
                    user_track(rs, user, &initech, AT_RISK, "Audience Entered")
                        && user_identify(rs, user, &initech, AT_RISK, true)
                        && user_identify(rs, user, &initech, NO_DASH, true)
                })
                && user_identify(rs, &g1, &globex, NO_DASH, true)
        },
    );
    let rs = hook.requests();
    assert!(
        !group_call(&rs, &globex, AT_RISK, true),
        "globex is not a business account"
    );
    // acme may have entered before a1's events were read; it must not be in at the end.
    let acme_in = |rs: &[Received]| {
        rs.iter()
            .rfind(|r| {
                r.body["type"] == "group"
                    && r.body["groupId"] == acme.as_str()
                    && r.body["traits"].get(AT_RISK).is_some()
            })
            .is_some_and(|r| r.body["traits"][AT_RISK] == true)
    };
    assert!(!acme_in(&rs), "acme's user logged in");

    // i1 logs in: initech is no longer at risk, for the account and for each of its users.
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([{"call": "track", "user_id": i1, "event": "Logged In"}]),
    );
    wait(
        &hook,
        &mut stack,
        "initech leaving the at-risk audience",
        |rs| {
            group_call(rs, &initech, AT_RISK, false)
                && [&i1, &i2].iter().all(|user| {
                    user_track(rs, user, &initech, AT_RISK, "Audience Exited")
                        && user_identify(rs, user, &initech, AT_RISK, false)
                })
        },
    );
    // Still no dashboard opened at initech: no exit from that audience.
    assert!(!group_call(&hook.requests(), &initech, NO_DASH, false));
}
