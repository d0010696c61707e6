//! The whole pipeline on a secured cluster: every service and the operator connect to the local
//! broker's SASL_SSL listener (SCRAM-SHA-512, the local test CA) as principals of their own,
//! holding exactly the ACLs `corralctl acls` prints (docs/security.md's table), and Segment's
//! Python client's calls still reach the webhook as an audience change. A service principal
//! cannot change a definition.
//!
//! Needs the service binaries (`make test` builds them first). The test reads the outputs as the
//! super user on the plaintext listener; nothing else in the run uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step should stop it loudly

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{binary, decode_all, repo_root, run, send_with_python, start_pipeline};
use common::{PipelineConfig, TopicReader, Webhook};
use corral_codec::{MembershipChange, MembershipChangeKind, ResolvedEvent, SegmentMessage};
use corral_tests::secure::{as_env, broker_env, kafka_sh, sasl_ssl};
use serde_json::{json, Value};

const SPACE: &str = "default";
const WRITE_KEY: &str = "secure-e2e-write-key";
const AUDIENCE: &str = "stuck_before_activation";
const PASSWORD: &str = "a-long-test-password";
const SERVICES: [&str; 5] = ["collector", "validator", "identity", "compute", "fanout"];
/// Waits are conditions; this is only when the test gives up.
const STAGE: Duration = Duration::from_secs(90);

/// Runs every `kafka-acls` invocation of `corralctl acls --output json`, a few at a time (each
/// is a JVM start).
fn apply_acls(plan: &Value) -> usize {
    let commands: Vec<Vec<String>> = plan["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let args: Vec<String> =
                serde_json::from_value(c["args"].clone()).expect("args of a kafka-acls call");
            std::iter::once("acl".to_string()).chain(args).collect()
        })
        .collect();
    for chunk in commands.chunks(4) {
        std::thread::scope(|s| {
            for args in chunk {
                s.spawn(move || kafka_sh(args));
            }
        });
    }
    commands.len()
}

#[test]
fn the_pipeline_runs_over_sasl_ssl_with_one_least_privilege_principal_per_service() {
    for name in SERVICES.map(|s| format!("corral-{s}")) {
        binary(&name);
    }
    let ctl = binary("corralctl");
    let env = broker_env();
    let secure = env["KAFKA_SECURE_BOOTSTRAP"].clone();
    let plaintext = corral_tests::bootstrap();
    let run_id = corral_tests::unique("sece2e");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let user = |role: &str| format!("{run_id}-{role}");
    let client_env = |role: &str| as_env(&sasl_ssl(&env, &user(role), PASSWORD));

    // A SCRAM user per service and one for the operator, and the ACLs corralctl generates.
    for role in SERVICES.iter().chain(&["operator"]) {
        kafka_sh(&["user", &user(role), PASSWORD]);
    }
    let plan: Value = serde_json::from_str(&run(
        Command::new(&ctl).args([
            "--output",
            "json",
            "acls",
            "--principal-prefix",
            &format!("User:{run_id}-"),
            "--app-prefix",
            &format!("{run_id}-"),
            "--operator",
            &format!("User:{}", user("operator")),
            "--topic-prefix",
            &prefix,
        ]),
        "corralctl acls",
    ))
    .unwrap();
    assert!(apply_acls(&plan) >= SERVICES.len() * 3);

    // The operator, over SASL_SSL: topics, the tracking plan, audiences, a destination.
    let operator = |args: &[&str], what: &str| {
        run(
            Command::new(&ctl)
                .args(["--bootstrap", &secure])
                .args(args)
                .envs(client_env("operator")),
            what,
        )
    };
    let manifest = root.join("deploy/topics.yaml");
    operator(
        &[
            "topics",
            "apply",
            "--manifest",
            manifest.to_str().unwrap(),
            "--prefix",
            &prefix,
            "--replication-factor",
            "1",
        ],
        "corralctl topics apply as the operator",
    );
    let plan_file = root.join("examples/tracking-plan.yaml");
    operator(
        &[
            "plans",
            "apply",
            plan_file.to_str().unwrap(),
            "--prefix",
            &prefix,
        ],
        "corralctl plans apply as the operator",
    );
    let definitions = root.join("examples/definitions.yaml");
    let audiences = [
        "audiences",
        "apply",
        definitions.to_str().unwrap(),
        "--space",
        SPACE,
        "--prefix",
        &prefix,
    ];
    operator(&audiences, "corralctl audiences apply as the operator");
    let hook = Webhook::start();
    let destinations = dir.path().join("destinations.yaml");
    std::fs::write(
        &destinations,
        format!(
            "space_id: {SPACE}\ndestinations:\n  - key: secure_hook\n    type: webhook\n    \
             url: {}\n    rate_limit_per_second: 0\n    connections:\n      - audience: {AUDIENCE}\n        \
             mode: track\n",
            hook.url("/hook")
        ),
    )
    .unwrap();
    operator(
        &[
            "destinations",
            "apply",
            destinations.to_str().unwrap(),
            "--prefix",
            &prefix,
        ],
        "corralctl destinations apply as the operator",
    );

    // A service's principal cannot change what every service computes.
    let refused = Command::new(&ctl)
        .args(["--bootstrap", &secure])
        .args(audiences)
        .envs(client_env("compute"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(
        !refused.status.success() && said.contains("authoriz"),
        "compute's principal wrote the definitions topic, or failed without saying why: {said}"
    );

    // The five services, each as its own principal on the secured listener.
    let (mut stack, collector) = start_pipeline(&PipelineConfig {
        bootstrap: &secure,
        prefix: &prefix,
        run_id: &run_id,
        dir: dir.path(),
        write_keys: vec![format!("{WRITE_KEY}=secure-source:{SPACE}")],
        instances: 1,
        fanout: true,
        env: SERVICES.iter().map(|s| (*s, client_env(s))).collect(),
    });
    stack.wait_ready(STAGE);

    let ada = format!("{run_id}-ada");
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            {"call": "identify", "user_id": ada, "message_id": format!("{run_id}-identify"),
             "traits": {"email": format!("{run_id}@example.com"), "plan": "trial"}},
            {"call": "track", "user_id": ada, "event": "Account Created",
             "message_id": format!("{run_id}-created"), "timestamp": three_days_ago},
            {"call": "track", "user_id": ada, "event": "Feature Used",
             "message_id": format!("{run_id}-feature"),
             "properties": {"feature_name": "dashboards"}},
        ]),
    );

    let topic = |name: &str| TopicReader::new(&plaintext, &format!("{prefix}{name}"));
    let (mut raw, mut resolved, mut membership, mut dlq) = (
        topic("events.raw"),
        topic("events.resolved"),
        topic("audiences.membership"),
        topic("events.dlq"),
    );
    let deadline = Instant::now() + STAGE;
    let entered_call = loop {
        for r in [&mut raw, &mut resolved, &mut membership, &mut dlq] {
            r.poll(Duration::from_millis(50));
        }
        let calls = hook.requests();
        if let Some(call) = calls.iter().find(|r| {
            r.body["event"] == "Audience Entered" && r.body["userId"] == json!(ada.clone())
        }) {
            break call.clone();
        }
        stack.assert_running();
        assert!(
            Instant::now() < deadline,
            "no Audience Entered for {ada} at the webhook after {STAGE:?} \
             (raw {}, resolved {}, membership {}, dlq {})",
            raw.records.len(),
            resolved.records.len(),
            membership.records.len(),
            dlq.records.len()
        );
    };
    assert_eq!(entered_call.body["properties"]["audience_key"], AUDIENCE);

    // Exactly once, each stage as its own principal: three calls in, three resolved, one entry.
    raw.poll(Duration::from_millis(500));
    resolved.poll(Duration::from_millis(500));
    membership.poll(Duration::from_millis(500));
    dlq.poll(Duration::from_millis(200));
    assert_eq!(decode_all::<SegmentMessage>(&raw).len(), 3);
    let resolved: Vec<ResolvedEvent> = decode_all(&resolved);
    assert_eq!(resolved.len(), 3, "{resolved:?}");
    let entries: Vec<MembershipChange> = decode_all::<MembershipChange>(&membership)
        .into_iter()
        .filter(|m| m.audience_key == AUDIENCE && m.change == MembershipChangeKind::Entered)
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].profile_id, resolved[0].profile_id);
    assert!(
        dlq.records.is_empty(),
        "nothing should be dead-lettered: {} records",
        dlq.records.len()
    );
    stack.wait_ready(Duration::from_secs(10));
}
