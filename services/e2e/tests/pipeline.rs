//! The product end to end: Segment's real Python client -> corral-collector -> corral-validator
//! -> corral-identity -> corral-compute -> corral-fanout -> a webhook, on unique topics of the
//! real local Kafka, with the examples a user starts from (examples/tracking-plan.yaml,
//! examples/definitions.yaml, a webhook destination like examples/destinations.yaml).
//!
//! Needs the service binaries: `cargo build --workspace --bins` (`make test` builds them first).
//! Every wait is a condition with a deadline; no timing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step should stop it loudly

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    binary, create_topics, decode_all, metric, repo_root, run, send_with_python, start_pipeline,
    PipelineConfig, Received, Stack, TopicReader, Webhook,
};
use corral_codec::{
    BlockedEvent, DeadLetter, Definition, ExternalId, MembershipChange, MembershipChangeKind,
    ProfileMerge, ResolvedEvent, SegmentMessage, TraitChange, ValidEvent, Violation,
};
use serde_json::{json, Value};

const SPACE: &str = "default";
const WRITE_KEY: &str = "e2e-write-key";
const AUDIENCE: &str = "stuck_before_activation";
const TRAIT: &str = "feature_uses_30d";
const DESTINATION: &str = "e2e_webhook";
/// How long one stage may take to show its effect before the test gives up.
const STAGE: Duration = Duration::from_secs(45);

/// Every output topic of the pipeline, read as it grows.
struct Outputs {
    raw: TopicReader,
    valid: TopicReader,
    blocked: TopicReader,
    violations: TopicReader,
    dlq: TopicReader,
    resolved: TopicReader,
    merges: TopicReader,
    membership: TopicReader,
    traits: TopicReader,
}

impl Outputs {
    fn new(bootstrap: &str, prefix: &str) -> Outputs {
        let r = |name: &str| TopicReader::new(bootstrap, &format!("{prefix}{name}"));
        Outputs {
            raw: r("events.raw"),
            valid: r("events.valid"),
            blocked: r("events.blocked"),
            violations: r("events.violations"),
            dlq: r("events.dlq"),
            resolved: r("events.resolved"),
            merges: r("profiles.merges"),
            membership: r("audiences.membership"),
            traits: r("traits.changes"),
        }
    }

    fn poll(&mut self) {
        for r in [
            &mut self.raw,
            &mut self.valid,
            &mut self.blocked,
            &mut self.violations,
            &mut self.dlq,
            &mut self.resolved,
            &mut self.merges,
            &mut self.membership,
            &mut self.traits,
        ] {
            r.poll(Duration::from_millis(20));
        }
    }

    fn raw(&self) -> Vec<SegmentMessage> {
        decode_all(&self.raw)
    }
    fn valid(&self) -> Vec<ValidEvent> {
        decode_all(&self.valid)
    }
    fn blocked(&self) -> Vec<BlockedEvent> {
        decode_all(&self.blocked)
    }
    fn violations(&self) -> Vec<Violation> {
        decode_all(&self.violations)
    }
    fn dlq(&self) -> Vec<DeadLetter> {
        decode_all(&self.dlq)
    }
    fn resolved(&self) -> Vec<ResolvedEvent> {
        decode_all(&self.resolved)
    }
    fn merges(&self) -> Vec<ProfileMerge> {
        decode_all(&self.merges)
    }
    fn membership(&self) -> Vec<MembershipChange> {
        decode_all(&self.membership)
    }
    fn traits(&self) -> Vec<TraitChange> {
        decode_all(&self.traits)
    }

    /// The profile a message was resolved to.
    fn profile_of(&self, message_id: &str) -> Option<String> {
        self.resolved()
            .into_iter()
            .find(|r| r.message.message_id == message_id)
            .map(|r| r.profile_id)
    }
}

/// The test's world: the stack, its outputs, the webhook.
struct World {
    stack: Stack,
    out: Outputs,
    hook: Webhook,
}

impl World {
    /// Polls until `cond` holds; fails naming `what` (and a service that died) at the deadline.
    fn wait(&mut self, what: &str, cond: impl Fn(&Outputs, &[Received]) -> bool) {
        let deadline = Instant::now() + STAGE;
        loop {
            self.out.poll();
            if cond(&self.out, &self.hook.requests()) {
                return;
            }
            self.stack.assert_running();
            assert!(
                Instant::now() < deadline,
                "timed out after {STAGE:?} waiting for: {what}"
            );
        }
    }
}

fn has_id(ids: &[ExternalId], id_type: &str, id: &str) -> bool {
    ids.iter().any(|e| e.id_type == id_type && e.id == id)
}

/// Audience and trait definitions from examples/definitions.yaml, in the format compute reads
/// (kind `audience` / `computed_trait`, key `{space}/{kind}/{key}`, body `{query, type,
/// include_historical_data}`), written with `corral_runtime::definitions::publish`; there is no
/// corralctl command for them yet.
fn publish_definitions(bootstrap: &str, topic: &str) -> usize {
    let text = std::fs::read_to_string(repo_root().join("examples/definitions.yaml")).unwrap();
    let defs = corral_query::load_definitions_str(&text, "examples/definitions.yaml")
        .unwrap_or_else(|e| panic!("examples/definitions.yaml: {e}"));
    for d in &defs.definitions {
        let kind = match d.target {
            corral_query::Target::Audience => "audience",
            corral_query::Target::ComputedTrait => "computed_trait",
        };
        let rec = Definition {
            space_id: SPACE.into(),
            kind: kind.into(),
            key: d.key.clone(),
            version: 1,
            name: Some(d.name.clone()),
            body: json!({
                "query": d.text,
                "type": d.kind.name(),
                "include_historical_data": d.include_historical_data,
            }),
            updated_at_ms: chrono::Utc::now().timestamp_millis(),
            updated_by: Some("corral-e2e".into()),
        };
        let key = corral_runtime::definitions::definition_key(SPACE, kind, &d.key);
        corral_runtime::definitions::publish(bootstrap, &BTreeMap::new(), topic, &key, Some(&rec))
            .unwrap();
    }
    defs.definitions.len()
}

#[test]
fn segment_calls_flow_through_every_service_to_a_webhook() {
    // Every binary first: a missing one is a build step, not a failure of the product.
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
    let run_id = corral_tests::unique("e2e");
    let prefix = format!("{run_id}.");
    let definitions_topic = format!("{prefix}definitions");
    let dir = tempfile::tempdir().unwrap();
    create_topics(&bootstrap, &prefix);
    let hook = Webhook::start();
    let root = repo_root();
    let ctl = binary("corralctl");

    // Configuration before the services start, so each one begins with it in force.
    run(
        Command::new(&ctl)
            .args(["--bootstrap", &bootstrap, "plans", "apply"])
            .arg(root.join("examples/tracking-plan.yaml"))
            .args(["--prefix", &prefix, "--by", "corral-e2e"]),
        "corralctl plans apply examples/tracking-plan.yaml",
    );
    let published = publish_definitions(&bootstrap, &definitions_topic);
    assert!(published > 0);
    let destinations = dir.path().join("destinations.yaml");
    std::fs::write(
        &destinations,
        format!(
            "space_id: {SPACE}\n\
             destinations:\n\
             \x20 - key: {DESTINATION}\n\
             \x20   type: webhook\n\
             \x20   url: {url}\n\
             \x20   rate_limit_per_second: 0\n\
             \x20   connections:\n\
             \x20     - audience: {AUDIENCE}\n\
             \x20       mode: track\n\
             \x20     - trait: {TRAIT}\n\
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

    // The five services, as deploy/local/services.sh starts them, on this test's topics, ports,
    // consumer groups / transactional ids (`--app`) and state folders.
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

    let mut w = World {
        stack,
        out: Outputs::new(&bootstrap, &prefix),
        hook,
    };

    // ---- Phase 1: two users, as an application would send them ----
    let ada = format!("{run_id}-ada");
    let ada_email = format!("ada.{}@example.com", std::process::id());
    let bob = format!("{run_id}-bob");
    let anon_bob = format!("{run_id}-anon-bob");
    let mid = |name: &str| format!("{run_id}-{name}");
    let (m_ada_identify, m_created, m_fu1, m_fu2, m_bad, m_anon, m_bob_identify) = (
        mid("ada-identify"),
        mid("account-created"),
        mid("feature-used-1"),
        mid("feature-used-2"),
        mid("feature-used-invalid"),
        mid("anon-feature-used"),
        mid("bob-identify"),
    );
    let three_days_ago = (chrono::Utc::now() - chrono::Duration::days(3))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([
            {"call": "identify", "user_id": ada, "message_id": m_ada_identify,
             "traits": {"email": ada_email, "plan": "trial"}},
            {"call": "track", "user_id": ada, "event": "Account Created", "message_id": m_created,
             "timestamp": three_days_ago},
            {"call": "track", "user_id": ada, "event": "Feature Used", "message_id": m_fu1,
             "properties": {"feature_name": "dashboards"}},
            {"call": "track", "user_id": ada, "event": "Feature Used", "message_id": m_fu2,
             "properties": {"feature_name": "reports", "time_spent_seconds": 12}},
            // The same messageId again (a client retry): dropped by the validator.
            {"call": "track", "user_id": ada, "event": "Feature Used", "message_id": m_fu1,
             "properties": {"feature_name": "dashboards"}},
            // Violates the plan (feature_name required, time_spent_seconds >= 0): blocked.
            {"call": "track", "user_id": ada, "event": "Feature Used", "message_id": m_bad,
             "properties": {"time_spent_seconds": -1}},
            // Bob browses anonymously, and separately identifies on another device.
            {"call": "track", "anonymous_id": anon_bob, "event": "Feature Used",
             "message_id": m_anon, "properties": {"feature_name": "export"}},
            {"call": "identify", "user_id": bob, "message_id": m_bob_identify,
             "traits": {"plan": "pro"}},
        ]),
    );

    // The collector took all eight, the duplicate included.
    w.wait("8 messages in events.raw", |o, _| o.raw().len() >= 8);
    let raw = w.out.raw();
    assert_eq!(raw.len(), 8, "events.raw: {raw:?}");
    assert_eq!(raw.iter().filter(|m| m.message_id == m_fu1).count(), 2);
    assert!(raw.iter().all(|m| m.space_id == SPACE));
    let created = raw.iter().find(|m| m.message_id == m_created).unwrap();
    assert_eq!(created.event.as_deref(), Some("Account Created"));
    // The client's timestamp is kept as originalTimestamp (`timestamp` is skew-corrected).
    let original = created
        .original_timestamp
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| {
            panic!("Account Created without a parseable originalTimestamp: {created:?}")
        });
    assert_eq!(
        original.timestamp_millis(),
        chrono::DateTime::parse_from_rfc3339(&three_days_ago)
            .unwrap()
            .timestamp_millis()
    );

    // Validator: the violation is blocked (with one violation record per problem), the
    // duplicate is dropped, everything else passes.
    w.wait(
        "the invalid Feature Used in events.blocked and events.violations",
        |o, _| {
            o.blocked().iter().any(|b| b.message.message_id == m_bad)
                && o.violations().iter().any(|v| v.message_id == m_bad)
        },
    );
    let blocked = w.out.blocked();
    assert_eq!(blocked.len(), 1, "events.blocked: {blocked:?}");
    assert_eq!(blocked[0].reason, "violation");
    assert!(!blocked[0].violations.is_empty());
    let violations: Vec<Violation> = w
        .out
        .violations()
        .into_iter()
        .filter(|v| v.message_id == m_bad)
        .collect();
    assert!(
        violations
            .iter()
            .any(|v| v.violation_field.contains("feature_name")),
        "a violation names the missing feature_name: {violations:?}"
    );
    assert!(violations
        .iter()
        .all(|v| v.event_name.as_deref() == Some("Feature Used") && v.space_id == SPACE));
    let validator_admin = w.stack.admin("validator");
    w.wait("the validator counted the duplicate", |_, _| {
        metric(
            validator_admin,
            &["validator_messages_total", "outcome=\"duplicate\""],
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert_eq!(
        metric(
            validator_admin,
            &["validator_messages_total", "outcome=\"duplicate\""]
        ),
        Some(1.0)
    );
    w.wait("6 messages in events.valid", |o, _| o.valid().len() >= 6);

    // Identity: every valid message resolved; Bob has two profiles so far.
    w.wait("6 messages in events.resolved", |o, _| {
        o.resolved().len() >= 6
    });
    let ada_profile = w.out.profile_of(&m_created).unwrap();
    assert_eq!(
        w.out.profile_of(&m_ada_identify).as_ref(),
        Some(&ada_profile)
    );
    let anon_profile = w.out.profile_of(&m_anon).unwrap();
    let bob_profile = w.out.profile_of(&m_bob_identify).unwrap();
    assert_ne!(anon_profile, bob_profile);
    assert!(w.out.profile_of(&m_bad).is_none());

    // Compute: Ada entered stuck_before_activation (Account Created 3 days ago, plan trial, no
    // activation), with her external ids; her Feature Used count went 1 then 2 (the duplicate
    // and the blocked event never counted).
    w.wait("Ada entered stuck_before_activation", |o, _| {
        o.membership().iter().any(|m| {
            m.profile_id == ada_profile
                && m.audience_key == AUDIENCE
                && m.change == MembershipChangeKind::Entered
        })
    });
    let entered = w
        .out
        .membership()
        .into_iter()
        .find(|m| m.profile_id == ada_profile && m.audience_key == AUDIENCE)
        .unwrap();
    assert_eq!(entered.change, MembershipChangeKind::Entered);
    assert_eq!(entered.space_id, SPACE);
    assert_eq!(entered.audience_version, 1);
    assert!(
        has_id(&entered.external_ids, "user_id", &ada),
        "{entered:?}"
    );
    assert!(
        has_id(&entered.external_ids, "email", &ada_email),
        "{entered:?}"
    );
    // Whichever of her identify and Account Created came last made her a member.
    assert!(
        [&m_ada_identify, &m_created]
            .iter()
            .any(|m| entered.trigger_message_id.as_deref() == Some(m.as_str())),
        "{entered:?}"
    );
    w.wait("Ada's feature_uses_30d reached 2", |o, _| {
        o.traits().iter().any(|t| {
            t.profile_id == ada_profile && t.trait_key == TRAIT && t.value == Some(json!(2))
        })
    });
    let ada_traits: Vec<TraitChange> = w
        .out
        .traits()
        .into_iter()
        .filter(|t| t.profile_id == ada_profile && t.trait_key == TRAIT)
        .collect();
    let values: Vec<Option<Value>> = ada_traits.iter().map(|t| t.value.clone()).collect();
    assert_eq!(
        values,
        vec![Some(json!(1)), Some(json!(2))],
        "{ada_traits:?}"
    );
    assert_eq!(ada_traits[1].previous_value, Some(json!(1)));
    assert!(has_id(&ada_traits[1].external_ids, "user_id", &ada));

    // Fanout: Segment's `Audience Entered` track call for Ada, and her trait as an identify.
    w.wait("Audience Entered for Ada at the webhook", |_, reqs| {
        reqs.iter().any(|r| {
            r.body["type"] == "track"
                && r.body["event"] == "Audience Entered"
                && r.body["userId"] == json!(ada)
        })
    });
    let reqs = w.hook.requests();
    let entered_call = reqs
        .iter()
        .find(|r| r.body["event"] == "Audience Entered" && r.body["userId"] == json!(ada))
        .unwrap();
    assert_eq!(entered_call.path, "/hook");
    let b = &entered_call.body;
    assert_eq!(b["properties"]["audience_key"], AUDIENCE, "{b}");
    assert_eq!(b["properties"][AUDIENCE], true, "{b}");
    assert_eq!(b["context"]["personas"]["computation_key"], AUDIENCE, "{b}");
    assert_eq!(
        b["context"]["personas"]["computation_class"], "audience",
        "{b}"
    );
    assert_eq!(b["context"]["personas"]["space_id"], SPACE, "{b}");
    assert!(
        b["messageId"].as_str().is_some_and(|s| !s.is_empty()),
        "{b}"
    );
    assert_eq!(
        entered_call
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-corral-message-id"))
            .map(|(_, v)| v.as_str()),
        b["messageId"].as_str(),
        "the message id header matches the body"
    );
    assert_eq!(
        b["integrations"],
        json!({"All": false, DESTINATION: true}),
        "{b}"
    );
    // One call per identifier: the one made for her email carries it in context.traits.
    w.wait(
        "Audience Entered for Ada's email at the webhook",
        |_, reqs| {
            reqs.iter().any(|r| {
                r.body["event"] == "Audience Entered"
                    && r.body["context"]["traits"]["email"] == json!(ada_email)
            })
        },
    );
    w.wait(
        "Ada's feature_uses_30d = 2 as an identify at the webhook",
        |_, reqs| {
            reqs.iter().any(|r| {
                r.body["type"] == "identify"
                    && r.body["userId"] == json!(ada)
                    && r.body["traits"][TRAIT] == json!(2)
            })
        },
    );

    // ---- Phase 2: Bob identifies on the device he browsed anonymously on: one profile ----
    let m_merge = mid("bob-identify-merge");
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([{"call": "identify", "user_id": bob, "anonymous_id": anon_bob,
                 "message_id": m_merge}]),
    );
    w.wait(
        "the anonymous profile merged into Bob's in profiles.merges",
        |o, _| {
            o.merges()
                .iter()
                .any(|m| m.trigger_message_id.as_deref() == Some(m_merge.as_str()))
        },
    );
    let merge = w
        .out
        .merges()
        .into_iter()
        .find(|m| m.trigger_message_id.as_deref() == Some(m_merge.as_str()))
        .unwrap();
    assert_eq!(merge.space_id, SPACE);
    assert_eq!(merge.from_profile_id, anon_profile, "{merge:?}");
    assert_eq!(merge.into_profile_id, bob_profile, "{merge:?}");
    w.wait("the merging identify resolved to Bob's profile", |o, _| {
        o.profile_of(&m_merge).is_some()
    });
    assert_eq!(w.out.profile_of(&m_merge), Some(bob_profile.clone()));
    // Compute carried the anonymous Feature Used over to Bob's profile.
    w.wait("Bob's feature_uses_30d = 1 after the merge", |o, _| {
        o.traits().iter().any(|t| {
            t.profile_id == bob_profile && t.trait_key == TRAIT && t.value == Some(json!(1))
        })
    });

    let bob_traits: Vec<TraitChange> = w
        .out
        .traits()
        .into_iter()
        .filter(|t| t.profile_id == bob_profile && t.trait_key == TRAIT)
        .collect();
    assert_eq!(bob_traits.len(), 1, "{bob_traits:?}");
    assert_eq!(bob_traits[0].previous_value, None, "{bob_traits:?}");
    assert!(has_id(&bob_traits[0].external_ids, "user_id", &bob));
    assert!(has_id(
        &bob_traits[0].external_ids,
        "anonymous_id",
        &anon_bob
    ));
    // ...and fanout delivered it for Bob's user id (his anonymous profile had none to send to).
    w.wait(
        "Bob's feature_uses_30d = 1 as an identify at the webhook",
        |_, reqs| {
            reqs.iter().any(|r| {
                r.body["type"] == "identify"
                    && r.body["userId"] == json!(bob)
                    && r.body["traits"][TRAIT] == json!(1)
            })
        },
    );

    // ---- Phase 3: Ada activates and leaves the audience ----
    let m_act = mid("activation");
    send_with_python(
        &collector,
        WRITE_KEY,
        &json!([{"call": "track", "user_id": ada, "event": "Activation Milestone Reached",
                 "message_id": m_act}]),
    );
    w.wait("Ada exited stuck_before_activation", |o, _| {
        o.membership().iter().any(|m| {
            m.profile_id == ada_profile
                && m.audience_key == AUDIENCE
                && m.change == MembershipChangeKind::Exited
        })
    });
    let ada_changes: Vec<MembershipChange> = w
        .out
        .membership()
        .into_iter()
        .filter(|m| m.profile_id == ada_profile && m.audience_key == AUDIENCE)
        .collect();
    let kinds: Vec<MembershipChangeKind> = ada_changes.iter().map(|m| m.change).collect();
    assert_eq!(
        kinds,
        vec![MembershipChangeKind::Entered, MembershipChangeKind::Exited],
        "exactly one entry and one exit: {ada_changes:?}"
    );
    assert_eq!(
        ada_changes[1].trigger_message_id.as_deref(),
        Some(m_act.as_str())
    );
    assert!(has_id(&ada_changes[1].external_ids, "user_id", &ada));
    w.wait("Audience Exited for Ada at the webhook", |_, reqs| {
        reqs.iter().any(|r| {
            r.body["type"] == "track"
                && r.body["event"] == "Audience Exited"
                && r.body["userId"] == json!(ada)
        })
    });
    let exited_call = w
        .hook
        .requests()
        .into_iter()
        .find(|r| r.body["event"] == "Audience Exited" && r.body["userId"] == json!(ada))
        .unwrap();
    assert_eq!(exited_call.body["properties"][AUDIENCE], false);

    // By now the validator has long passed the duplicate: exactly one copy went on, and the
    // blocked event never did.
    let valid = w.out.valid();
    assert_eq!(
        valid
            .iter()
            .filter(|v| v.message.message_id == m_fu1)
            .count(),
        1,
        "the duplicate messageId passed the validator twice"
    );
    assert!(valid.iter().all(|v| v.message.message_id != m_bad));
    assert_eq!(valid.len(), 8, "6 in phase 1, the merge, the activation");

    // Nothing anywhere was dead-lettered.
    w.out.poll();
    let dlq = w.out.dlq();
    assert!(dlq.is_empty(), "events.dlq: {dlq:?}");
    w.stack.assert_running();
    every_metric_is_documented(&w.stack);
    eprintln!(
        "pipeline: {} raw, {} valid, {} blocked, {} violations, {} resolved, {} merges, \
         {} membership changes, {} trait changes, {} webhook requests",
        w.out.raw().len(),
        w.out.valid().len(),
        w.out.blocked().len(),
        w.out.violations().len(),
        w.out.resolved().len(),
        w.out.merges().len(),
        w.out.membership().len(),
        w.out.traits().len(),
        w.hook.requests().len()
    );
}

/// Scrapes every service's `/metrics`: each name it exposes has the `corral_` prefix once and is
/// named in the service guides or docs/runtime.md (whose runtime names omit the prefix).
fn every_metric_is_documented(stack: &common::Stack) {
    let docs: String = [
        "collector",
        "validator",
        "identity",
        "compute",
        "fanout",
        "runtime",
    ]
    .iter()
    .map(|d| std::fs::read_to_string(repo_root().join(format!("docs/{d}.md"))).unwrap())
    .collect();
    for service in ["collector", "validator", "identity", "compute", "fanout"] {
        let Some((200, body)) = corral_tests::http::http_get(stack.admin(service), "/metrics")
        else {
            panic!("{service} serves no /metrics");
        };
        let names: std::collections::BTreeSet<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n)
            })
            .collect();
        assert!(names.len() > 5, "{service}: {body}");
        for name in names {
            assert!(
                name.starts_with("corral_") && !name.starts_with("corral_corral_"),
                "{service} exposes {name}: one corral_ prefix expected"
            );
            let bare = name.trim_start_matches("corral_");
            assert!(
                docs.contains(name) || docs.contains(&format!("`{bare}")),
                "{service} exposes {name}, which no guide in docs/ names"
            );
        }
    }
}
