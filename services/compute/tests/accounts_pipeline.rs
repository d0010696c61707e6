//! Accounts on the real broker (`deploy/local`): compute with every definition of
//! `examples/definitions.yaml`, group calls adding users to two accounts with their traits,
//! and the two example account audiences followed through: an account enters when its users'
//! condition holds, per user and for the account, time passing alone brings an account in
//! (a user's 30-day window closes), a user joining an account enters the account's audiences
//! alone, a user's flip makes every user of the account exit. Waits are for conditions with
//! deadlines, never for output to go quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, Definition, MembershipChange, MessageType, SegmentMessage};
use corral_runtime::definitions::publish;
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Service};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const EXAMPLES: &str = include_str!("../../../examples/definitions.yaml");
const DAY: i64 = 86_400_000;
const SPACE: &str = "demo";
const AT_RISK: &str = "at_risk_business_accounts";
const NO_DASH: &str = "accounts_no_dashboard_30d";

struct Setup {
    app: String,
    resolved: String,
    membership: String,
    definitions: String,
    clock: PathBuf,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let app = unique(name);
        let t = |n: &str| format!("{app}.{n}");
        let state = tempfile::tempdir().unwrap();
        let s = Setup {
            resolved: t("events.resolved"),
            membership: t("audiences.membership"),
            definitions: t("definitions"),
            clock: state.path().join("clock-offset"),
            app: app.clone(),
            state,
        };
        for topic in [
            &s.resolved,
            &t("profiles.merges"),
            &s.membership,
            &t("traits.changes"),
        ] {
            create_topic(topic, 3, CleanupPolicy::Delete);
        }
        create_topic(&t("events.dlq"), 1, CleanupPolicy::Delete);
        create_topic(&s.definitions, 1, CleanupPolicy::Compact);
        std::fs::write(&s.clock, "0").unwrap();
        s
    }

    fn publish_examples(&self) {
        let defs = corral_query::load_definitions_str(EXAMPLES, "examples").unwrap();
        for d in &defs.definitions {
            let kind = corral_ops::audiences::kind_of(d.target);
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
                updated_at_ms: 0,
                updated_by: Some("test".into()),
            };
            let key = format!("{SPACE}/{kind}/{}", d.key);
            publish(
                &bootstrap(),
                &BTreeMap::new(),
                &self.definitions,
                &key,
                Some(&rec),
            )
            .unwrap();
        }
    }

    fn spawn(&self) -> Service {
        self.spawn_with(&[])
    }

    fn spawn_with(&self, env: &[(&str, String)]) -> Service {
        let t = |n: &str| format!("{}.{n}", self.app);
        let args: Vec<String> = vec![
            "--bootstrap".into(),
            bootstrap(),
            "--app".into(),
            self.app.clone(),
            "--instance".into(),
            "0".into(),
            "--resolved-topic".into(),
            self.resolved.clone(),
            "--merges-topic".into(),
            t("profiles.merges"),
            "--merge-state-topic".into(),
            t("compute.merge-state"),
            "--membership-topic".into(),
            self.membership.clone(),
            "--traits-topic".into(),
            t("traits.changes"),
            "--definitions-topic".into(),
            self.definitions.clone(),
            "--dlq-topic".into(),
            t("events.dlq"),
            "--state-dir".into(),
            self.state.path().join("s0").to_str().unwrap().into(),
            "--punctuate-interval-ms".into(),
            "100".into(),
            "--clock-offset-file".into(),
            self.clock.to_str().unwrap().into(),
        ];
        Service::spawn("compute", BIN, &args, env)
    }

    /// The committed changes of the two account audiences, folded into each (profile,
    /// audience)'s last change. Changes of one profile share a partition, so they are read in
    /// the order compute wrote them: each pair must alternate, starting with `entered` (no
    /// change delivered twice, none lost in between). Also checks every change carries the
    /// group id of the account it is for.
    fn account_state(&self) -> BTreeMap<(String, String), String> {
        let mut last: BTreeMap<(String, String), String> = BTreeMap::new();
        for r in read_committed(&self.membership, 0, Duration::from_secs(3)) {
            let m = MembershipChange::decode(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(r.key.as_deref(), Some(m.profile_id.as_bytes()));
            if m.audience_key != AT_RISK && m.audience_key != NO_DASH {
                continue;
            }
            let group = m
                .external_ids
                .iter()
                .find(|i| i.id_type == "group_id" && i.collection.as_deref() == Some("accounts"))
                .map(|i| i.id.clone())
                .expect("account audience changes carry the group id");
            let p = &m.profile_id;
            assert!(
                p == &format!("account:{group}")
                    || (p.starts_with('a') && group == "acme")
                    || (p.starts_with('b') && group == "globex")
                    || (p.starts_with('c') && group == "initech"),
                "{p} is not in {group}"
            );
            let change = m.change.as_str().to_string();
            let prev = last.insert(
                (m.profile_id.clone(), m.audience_key.clone()),
                change.clone(),
            );
            let expected_prev = if change == "entered" {
                "exited"
            } else {
                "entered"
            };
            assert!(
                prev.as_deref().unwrap_or("exited") == expected_prev,
                "{} {} {change} after {prev:?}",
                m.profile_id,
                m.audience_key
            );
        }
        last
    }

    /// Waits (with a deadline) until `ok` holds for the folded state.
    fn wait(&self, what: &str, ok: impl Fn(&dyn Fn(&str, &str) -> String) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = self.account_state();
            let state = |p: &str, a: &str| {
                last.get(&(p.to_string(), a.to_string()))
                    .cloned()
                    .unwrap_or_else(|| "none".into())
            };
            if ok(&state) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {last:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn call(
    profile: &str,
    id: &str,
    t: MessageType,
    f: impl FnOnce(&mut SegmentMessage),
    at: i64,
) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, t, id);
    f(&mut m);
    corral_tests::resolved_event(profile, m, at)
}

fn group(profile: &str, id: &str, g: &str, traits: Value, at: i64) -> (Vec<u8>, Vec<u8>) {
    call(
        profile,
        id,
        MessageType::Group,
        |m| {
            m.group_id = Some(g.into());
            m.traits = Some(traits);
        },
        at,
    )
}

fn track(profile: &str, id: &str, name: &str, at: i64) -> (Vec<u8>, Vec<u8>) {
    call(
        profile,
        id,
        MessageType::Track,
        |m| m.event = Some(name.into()),
        at,
    )
}

#[test]
fn example_account_audiences_follow_users_traits_and_time() {
    let s = Setup::new("compute-accounts");
    s.publish_examples();
    let _svc = s.spawn();
    let t0 = chrono::Utc::now().timestamp_millis();
    // acme (business): a1 logs in and views the dashboard, a2 and a3 do nothing.
    // globex (free): b1 and b2 do nothing.
    let biz = json!({"name": "Acme", "plan": "business"});
    let free = json!({"name": "Globex", "plan": "free"});
    produce(
        &s.resolved,
        vec![
            group("a1", "g1", "acme", biz.clone(), t0),
            group("a2", "g2", "acme", biz.clone(), t0),
            group("a3", "g3", "acme", biz, t0),
            group("b1", "g4", "globex", free.clone(), t0),
            group("b2", "g5", "globex", free, t0),
            track("a1", "e1", "Logged In", t0 + 1),
            track("a1", "e2", "Dashboard Viewed", t0 + 2),
        ],
    );
    // globex: no user viewed a dashboard (ALL NOT ...), but it is not a business account.
    // acme: a1 logged in and viewed its dashboard (acme may enter before a1's events are
    // read, then leave: changes must alternate, and the final state is what counts).
    s.wait("initial memberships", |state| {
        ["account:globex", "b1", "b2"]
            .iter()
            .all(|p| state(p, NO_DASH) == "entered" && state(p, AT_RISK) == "none")
            && ["account:acme", "a1", "a2", "a3"]
                .iter()
                .all(|p| state(p, NO_DASH) != "entered" && state(p, AT_RISK) != "entered")
    });

    // 31 days later, with no new event: a1's 30-day windows close; acme is a business account
    // where nobody logged in or viewed a dashboard recently: the account and its three users
    // enter both audiences.
    std::fs::write(&s.clock, (31 * DAY).to_string()).unwrap();
    s.wait("acme entering with time", |state| {
        ["account:acme", "a1", "a2", "a3"]
            .iter()
            .all(|p| state(p, NO_DASH) == "entered" && state(p, AT_RISK) == "entered")
    });

    // A new user joins acme: it alone enters both audiences.
    let t1 = t0 + 31 * DAY;
    produce(&s.resolved, vec![group("a4", "g6", "acme", json!({}), t1)]);
    s.wait("a4 joining", |state| {
        state("a4", AT_RISK) == "entered" && state("a4", NO_DASH) == "entered"
    });
    // It logs in: acme leaves the at-risk audience, for the account and each of its users,
    // and stays in the no-dashboard one.
    produce(&s.resolved, vec![track("a4", "e3", "Logged In", t1 + 1)]);
    s.wait("acme leaving", |state| {
        ["account:acme", "a1", "a2", "a3", "a4"]
            .iter()
            .all(|p| state(p, AT_RISK) == "exited" && state(p, NO_DASH) == "entered")
    });
    // The account's traits change (no longer business): nothing more to leave; back to
    // business with nobody else logged in: still out, a4 logged in.
    produce(
        &s.resolved,
        vec![group(
            "a2",
            "g7",
            "acme",
            json!({"plan": "enterprise"}),
            t1 + 2,
        )],
    );
    produce(
        &s.resolved,
        vec![track("b1", "e4", "Dashboard Viewed", t1 + 3)],
    );
    // b1 viewed a dashboard: globex leaves the no-dashboard audience for everyone.
    s.wait("globex leaving", |state| {
        ["account:globex", "b1", "b2"]
            .iter()
            .all(|p| state(p, NO_DASH) == "exited")
    });
    let last = s.account_state();
    assert_eq!(
        last.get(&("account:acme".to_string(), AT_RISK.to_string()))
            .map(String::as_str),
        Some("exited")
    );
}

/// Input records of `events.resolved` compute has committed (sum of the group's offsets; the
/// test producer is not transactional, so offsets count records).
fn consumed(s: &Setup) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", &s.app)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&s.resolved, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// Killed right after its 3rd commit (the runtime's fault harness) while group calls and
/// events stream in, then restarted: every account and user ends in the right audiences and
/// every change is delivered exactly once, in order (`account_state` checks the alternation).
#[test]
fn account_audiences_survive_a_crash_mid_stream() {
    let s = Setup::new("compute-accounts-crash");
    s.publish_examples();
    let mut svc = s.spawn_with(&[("CORRAL_FAULT", "after_commit@3".to_string())]);
    let t0 = chrono::Utc::now().timestamp_millis();
    let biz = json!({"plan": "business"});
    let free = json!({"plan": "free"});
    let mut calls = Vec::new();
    for k in 0..10 {
        calls.push(group(
            &format!("a{k}"),
            &format!("ga{k}"),
            "acme",
            biz.clone(),
            t0 + k,
        ));
        calls.push(group(
            &format!("b{k}"),
            &format!("gb{k}"),
            "globex",
            free.clone(),
            t0 + k,
        ));
        calls.push(group(
            &format!("c{k}"),
            &format!("gc{k}"),
            "initech",
            biz.clone(),
            t0 + k,
        ));
    }
    calls.push(track("a0", "e1", "Logged In", t0 + 20));
    calls.push(track("a0", "e2", "Dashboard Viewed", t0 + 21));
    let total = calls.len() as i64;
    // One chunk at a time, each committed before the next: the crash lands within the first
    // chunks and the restarted process handles the rest.
    let mut produced = 0i64;
    let mut crashed_at = None;
    for chunk in calls.chunks(4) {
        produce(&s.resolved, chunk.to_vec());
        produced += chunk.len() as i64;
        if crashed_at.is_some() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if consumed(&s) >= produced {
                break;
            }
            if !svc.is_running() {
                crashed_at = Some(consumed(&s));
                break;
            }
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let at = crashed_at.expect("after_commit@3 never fired");
    assert!(
        at < total,
        "the crash happened mid-stream ({at} of {total})"
    );
    let status = svc.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fault must crash the service");
    let _svc = s.spawn();
    let users = |p: char| (0..10).map(move |k| format!("{p}{k}"));
    s.wait(
        "every account and user in place after the restart",
        |state| {
            let acme = std::iter::once("account:acme".to_string()).chain(users('a'));
            let globex = std::iter::once("account:globex".to_string()).chain(users('b'));
            let initech = std::iter::once("account:initech".to_string()).chain(users('c'));
            let (mut ok, mut a, mut g, mut i) = (true, acme, globex, initech);
            ok &= a.all(|p| state(&p, AT_RISK) != "entered" && state(&p, NO_DASH) != "entered");
            ok &= g.all(|p| state(&p, NO_DASH) == "entered" && state(&p, AT_RISK) == "none");
            ok &= i.all(|p| state(&p, NO_DASH) == "entered" && state(&p, AT_RISK) == "entered");
            ok
        },
    );
}
