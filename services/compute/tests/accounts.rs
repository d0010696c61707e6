//! ACCOUNTS definitions against the reference evaluator (no Kafka).
//!
//! Random account definitions (ANY/ALL/NONE over user conditions with counts, windows and
//! user traits; account-trait comparisons; NOT/AND/OR; references to other account audiences)
//! and random histories (track events, identifies, group calls that add users to accounts and
//! change account traits, time passing) are run the way the service runs them: the engine per
//! user (its timers honoured exactly: a user is re-evaluated only when its `wake_ms` passed),
//! `pending_updates` after every state write carried to the account side as member updates,
//! account counters and the account engine there. At every check point each account's emitted
//! results equal `corral_query::evaluate_audience` with `Subject::Account` over the account's
//! traits and its users' full histories at that "now".
//!
//! Merges are applied as the service does: the merged-away user leaves its accounts, the
//! survivor absorbs its state and joins them (the reference: one user with both histories, the
//! latest plan, in the union of accounts). Restrictions (docs/compute.md, "Accounts"): unique
//! event times, no late events.
//!
//! Cases: `COMPUTE_ACCOUNTS_DIFF_CASES` (default 1500).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Utc};
use corral_compute::accounts::{pending_updates, AccountState, MemberState};
use corral_compute::{ChangeKind, DefinitionSpec, Engine, EngineConfig, InEvent, ProfileState};
use corral_query::check::{Catalogue, DefinitionKind, Target};
use corral_query::{evaluate_audience, Account, Event, Profile, Subject};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

const USERS: usize = 6;
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];
const KEYS: [&str; 3] = ["acc0", "acc1", "acc2"];
const DAY: i64 = 86_400_000;

fn user_condition() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..3).prop_map(|n| format!("event('A').count() >= {n}")),
        prop::sample::select(vec!["1 days", "3 days", "12 hours"])
            .prop_map(|d| format!("event('B').within({d}).count() >= 1")),
        Just("trait('plan') = 'pro'".to_string()),
        Just("NOT event('A').count() >= 1".to_string()),
        Just("event('A').count() >= 1 AND trait('plan') = 'pro'".to_string()),
    ]
}

fn atom(refs: Vec<&'static str>) -> BoxedStrategy<String> {
    let q = (
        prop::sample::select(vec!["ANY", "ALL", "NONE"]),
        user_condition(),
    )
        .prop_map(|(q, c)| format!("{q} ({c})"));
    let tr = prop_oneof![
        Just("trait('tier') = 'gold'".to_string()),
        (0i64..20).prop_map(|n| format!("trait('size') > {n}")),
    ];
    if refs.is_empty() {
        prop_oneof![3 => q, 1 => tr].boxed()
    } else {
        let r = prop::sample::select(refs).prop_map(|k| format!("trait('{k}') = true"));
        prop_oneof![3 => q, 1 => tr, 1 => r].boxed()
    }
}

fn account_def(refs: Vec<&'static str>) -> BoxedStrategy<String> {
    (
        prop::collection::vec((atom(refs), any::<bool>()), 1..3),
        any::<bool>(),
    )
        .prop_map(|(atoms, and)| {
            let parts: Vec<String> = atoms
                .into_iter()
                .map(|(a, not)| {
                    if not {
                        format!("NOT ({a})")
                    } else {
                        format!("({a})")
                    }
                })
                .collect();
            parts.join(if and { " AND " } else { " OR " })
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum Op {
    Track {
        user: usize,
        name: &'static str,
    },
    Identify {
        user: usize,
        pro: bool,
    },
    Group {
        user: usize,
        group: usize,
        traits: Option<(bool, i64)>,
    },
    /// `from`'s profile is merged into `into`'s (as identity does; later ops on `from` go to
    /// the survivor).
    Merge {
        from: usize,
        into: usize,
    },
    Advance(i64),
    Check,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..USERS, prop::sample::select(vec!["A", "B"]))
            .prop_map(|(user, name)| Op::Track { user, name }),
        1 => (0..USERS, any::<bool>()).prop_map(|(user, pro)| Op::Identify { user, pro }),
        3 => (0..USERS, 0..GROUPS.len(), prop::option::of((any::<bool>(), 0i64..20)))
            .prop_map(|(user, group, traits)| Op::Group { user, group, traits }),
        1 => (0..USERS, 0..USERS).prop_map(|(from, into)| Op::Merge { from, into }),
        2 => prop::sample::select(vec![DAY / 4, DAY, 2 * DAY, 4 * DAY]).prop_map(Op::Advance),
        2 => Just(Op::Check),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    defs: Vec<String>,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        account_def(vec![]),
        account_def(vec!["acc0"]),
        account_def(vec!["acc0", "acc1"]),
        prop::collection::vec(op(), 1..60),
    )
        .prop_map(|(a, b, c, ops)| Case {
            defs: vec![a, b, c],
            ops,
        })
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The service's account side, in memory.
#[derive(Default)]
struct Accounts {
    state: BTreeMap<usize, AccountState>,
    members: BTreeMap<(usize, usize), MemberState>,
}

struct Sim<'e> {
    engine: &'e Engine,
    users: Vec<ProfileState>,
    accounts: Accounts,
}

impl Sim<'_> {
    fn account(&mut self, g: usize) -> &mut AccountState {
        self.accounts
            .state
            .entry(g)
            .or_insert_with(|| AccountState {
                group_id: GROUPS[g].into(),
                profile: ProfileState {
                    space_id: "sp".into(),
                    ..Default::default()
                },
                ..Default::default()
            })
    }

    /// Applies emitted account changes to `results` (what downstream would hold).
    fn evaluate_account(&mut self, g: usize, now: i64) {
        let side = self.engine.accounts().expect("account side");
        let acct = self.account(g);
        let _ = side.evaluate(acct, now);
    }

    /// What the service does at every user state write.
    fn save_user(&mut self, u: usize, now: i64) {
        let Some((conds, to)) = pending_updates(&mut self.users[u]) else {
            return;
        };
        for group in to {
            let g = GROUPS.iter().position(|x| *x == group).unwrap_or(0);
            let new = MemberState {
                ids: Vec::new(),
                conditions: conds.clone(),
            };
            let old = self.accounts.members.insert((g, u), new.clone());
            self.account(g).set_member(old.as_ref(), Some(&new));
            self.evaluate_account(g, now);
        }
    }
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    let specs: Vec<DefinitionSpec> = c
        .defs
        .iter()
        .enumerate()
        .map(|(i, q)| DefinitionSpec {
            key: KEYS[i].into(),
            name: None,
            target: Target::Audience,
            kind: DefinitionKind::Accounts,
            version: 1,
            query: q.clone(),
            include_historical_data: false,
        })
        .collect();
    let engine = Engine::new(EngineConfig::default(), specs);
    prop_assert!(
        engine.rejected().is_empty(),
        "rejected: {:?}",
        engine.rejected()
    );
    let mut catalogue = Catalogue::new();
    let mut queries = Vec::new();
    for (i, q) in c.defs.iter().enumerate() {
        let parsed = corral_query::parse(q).map_err(|e| TestCaseError::fail(e.message))?;
        catalogue.insert(
            KEYS[i].to_string(),
            Target::Audience,
            DefinitionKind::Accounts,
            Some(parsed.clone()),
        );
        queries.push(parsed);
    }
    let mut sim = Sim {
        engine: &engine,
        users: (0..USERS)
            .map(|_| ProfileState {
                space_id: "sp".into(),
                ..Default::default()
            })
            .collect(),
        accounts: Accounts::default(),
    };
    let mut profiles: Vec<Profile> = vec![Profile::default(); USERS];
    let mut account_traits: BTreeMap<usize, Map<String, Value>> = BTreeMap::new();
    let mut membership: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    // Merged-away user -> survivor; the time each user's plan was last set.
    let mut merged: Vec<Option<usize>> = vec![None; USERS];
    let mut plan_at: Vec<i64> = vec![i64::MIN; USERS];
    let live = |merged: &[Option<usize>], mut u: usize| {
        while let Some(n) = merged[u] {
            u = n;
        }
        u
    };
    let mut now: i64 = 1_700_000_000_000;
    let empty = Map::new();
    for op in c.ops.iter().chain(std::iter::once(&Op::Check)) {
        now += 1;
        match op {
            Op::Track { user, name } => {
                let user = &live(&merged, *user);
                let ev = InEvent {
                    name,
                    ts_ms: now,
                    properties: &empty,
                    context: &empty,
                    source_id: None,
                };
                let _ = engine.apply_event(&mut sim.users[*user], &ev, now);
                profiles[*user].events.push(Event::new(*name, ts(now)));
                sim.save_user(*user, now);
            }
            Op::Identify { user, pro } => {
                let user = &live(&merged, *user);
                plan_at[*user] = now;
                let plan = if *pro { "pro" } else { "free" };
                let traits = json!({ "plan": plan });
                let t = traits.as_object().cloned().unwrap_or_default();
                let _ = engine.apply_identify(&mut sim.users[*user], &t, now, now);
                profiles[*user].traits.insert("plan".into(), json!(plan));
                sim.save_user(*user, now);
            }
            Op::Group {
                user,
                group,
                traits,
            } => {
                let user = &live(&merged, *user);
                // The service: account traits first (their message is sent first), then the
                // user's state write tells the account it joined.
                if let Some((gold, size)) = traits {
                    let t = json!({"tier": if *gold { "gold" } else { "silver" }, "size": size});
                    let t = t.as_object().cloned().unwrap_or_default();
                    corral_compute::engine::record_traits(
                        &mut sim.account(*group).profile,
                        &t,
                        now,
                    );
                    account_traits.entry(*group).or_default().extend(t);
                    sim.evaluate_account(*group, now);
                } else {
                    sim.account(*group);
                    account_traits.entry(*group).or_default();
                    sim.evaluate_account(*group, now);
                }
                let st = &mut sim.users[*user];
                st.accounts.insert(GROUPS[*group].into());
                if st.now_ms == 0 {
                    let _ = engine.evaluate(st, now);
                }
                membership.entry(*group).or_default().insert(*user);
                sim.save_user(*user, now);
            }
            Op::Merge { from, into } => {
                let (f, i) = (live(&merged, *from), live(&merged, *into));
                if f == i {
                    continue;
                }
                // The merged-away side: its state leaves, and it leaves its accounts.
                let from_st = std::mem::take(&mut sim.users[f]);
                for group in &from_st.accounts_sent {
                    let g = GROUPS.iter().position(|x| x == group).unwrap_or(0);
                    if let Some(old) = sim.accounts.members.remove(&(g, f)) {
                        sim.account(g).set_member(Some(&old), None);
                        sim.evaluate_account(g, now);
                    }
                }
                // The survivor's task absorbs it and tells its (now more) accounts.
                let _ = engine.absorb(&mut sim.users[i], from_st, now);
                sim.save_user(i, now);
                let moved = std::mem::take(&mut profiles[f]);
                profiles[i].events.extend(moved.events);
                if plan_at[f] > plan_at[i] {
                    if let Some(p) = moved.traits.get("plan") {
                        profiles[i].traits.insert("plan".into(), p.clone());
                    }
                    plan_at[i] = plan_at[f];
                }
                for users in membership.values_mut() {
                    if users.remove(&f) {
                        users.insert(i);
                    }
                }
                merged[f] = Some(i);
            }
            Op::Advance(d) => now += d,
            Op::Check => {
                // Punctuation: due timers, as the service fires them.
                for (u, gone) in merged.iter().enumerate() {
                    if gone.is_some() {
                        continue;
                    }
                    if sim.users[u].wake_ms.is_some_and(|w| w <= now) {
                        let _ = engine.tick(&mut sim.users[u], now);
                        sim.save_user(u, now);
                    }
                }
                for (g, users) in &membership {
                    let account = Account {
                        traits: account_traits.get(g).cloned().unwrap_or_default(),
                        users: users.iter().map(|u| profiles[*u].clone()).collect(),
                    };
                    let st = &sim.accounts.state[g];
                    for (i, q) in queries.iter().enumerate() {
                        let want =
                            evaluate_audience(q, Subject::Account(&account), ts(now), &catalogue)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        let got = st
                            .profile
                            .results
                            .get(KEYS[i])
                            .is_some_and(|r| r.v == Value::Bool(true));
                        prop_assert_eq!(
                            got,
                            want,
                            "account {} definition {} `{}` at {}; users {:?}",
                            GROUPS[*g],
                            KEYS[i],
                            c.defs[i],
                            now,
                            users
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn account_engine_matches_reference_evaluator() {
    let cases = std::env::var("COMPUTE_ACCOUNTS_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&case(), |c| run_case(&c)) {
        panic!("{e}");
    }
}

#[test]
fn example_account_audiences_compile_and_follow_their_users() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/definitions.yaml"
    ))
    .expect("examples/definitions.yaml");
    let defs = corral_query::load_definitions_str(&text, "examples").expect("valid examples");
    let specs: Vec<DefinitionSpec> = defs
        .definitions
        .iter()
        .map(|d| DefinitionSpec {
            key: d.key.clone(),
            name: Some(d.name.clone()),
            target: d.target,
            kind: d.kind,
            version: 1,
            query: d.text.clone(),
            include_historical_data: d.include_historical_data,
        })
        .collect();
    let engine = Engine::new(EngineConfig::default(), specs);
    assert!(engine.rejected().is_empty(), "{:?}", engine.rejected());
    let side = engine
        .accounts()
        .expect("the examples have account audiences");
    assert!(side
        .engine
        .definitions()
        .contains_key("at_risk_business_accounts"));
    assert!(side
        .engine
        .definitions()
        .contains_key("accounts_no_dashboard_30d"));

    // A business account with two users; one logs in, then 31 days pass.
    let mut acct = AccountState::default();
    let t = json!({"plan": "business"});
    corral_compute::engine::record_traits(&mut acct.profile, t.as_object().unwrap(), 0);
    let mut users = [ProfileState::default(), ProfileState::default()];
    let now = 1_700_000_000_000;
    let empty = Map::new();
    let mut members: [Option<MemberState>; 2] = [None, None];
    let mut step = |users: &mut [ProfileState; 2], acct: &mut AccountState, now: i64| {
        let mut out = Vec::new();
        for (u, st) in users.iter_mut().enumerate() {
            st.accounts.insert("acme".into());
            if let Some((conds, _)) = pending_updates(st) {
                let new = MemberState {
                    ids: Vec::new(),
                    conditions: conds,
                };
                acct.set_member(members[u].as_ref(), Some(&new));
                members[u] = Some(new);
            }
        }
        for ch in side.evaluate(acct, now) {
            out.push((ch.key, ch.kind));
        }
        out
    };
    for st in users.iter_mut() {
        let _ = engine.evaluate(st, now);
    }
    let ch = step(&mut users, &mut acct, now);
    assert!(ch.contains(&("at_risk_business_accounts".into(), ChangeKind::Entered)));
    assert!(ch.contains(&("accounts_no_dashboard_30d".into(), ChangeKind::Entered)));
    let login = InEvent {
        name: "Logged In",
        ts_ms: now + 1,
        properties: &empty,
        context: &empty,
        source_id: None,
    };
    let _ = engine.apply_event(&mut users[0], &login, now + 1);
    let ch = step(&mut users, &mut acct, now + 1);
    assert_eq!(
        ch,
        vec![("at_risk_business_accounts".into(), ChangeKind::Exited)]
    );
    // The user's timer fires 30 days later: the account is at risk again.
    let wake = users[0].wake_ms.expect("a window timer");
    let _ = engine.tick(&mut users[0], wake);
    let ch = step(&mut users, &mut acct, wake);
    assert_eq!(
        ch,
        vec![("at_risk_business_accounts".into(), ChangeKind::Entered)]
    );
}
