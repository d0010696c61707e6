//! Accounts: ACCOUNTS definitions, pure (no Kafka).
//!
//! An ACCOUNTS definition is split (`corral_ops::accounts`) into per-user *conditions* (one
//! hidden USERS audience per `ANY`/`ALL`/`NONE`, evaluated by the ordinary engine with its
//! timers, backfill and merges) and an *account query* evaluated per account by an engine of
//! its own ([`AccountSide::engine`]) over the account's traits and one boolean per condition.
//!
//! The account side never looks at users' events: it keeps, per account, the number of users
//! and, per condition, the number of users satisfying it ([`AccountState`]), and per user the
//! set of conditions it satisfies ([`MemberState`]). A user's update changes those counters by
//! the difference between its old and new sets, so the work per update is bounded by the
//! number of conditions, whatever the account's size; ANY/ALL/NONE follow from the counters
//! (`corral_ops::accounts::quantify`).
//!
//! The user side tells its accounts what they need ([`pending_updates`]): when it joins an
//! account, and when the set of conditions it satisfies changes (then every account it
//! belongs to).

use crate::engine::{Change, DefinitionError, DefinitionSpec, Engine, EngineConfig};
use crate::state::{ExtId, ProfileState, TraitValue};
use corral_ops::accounts::{is_condition, quantify, split, unsupported};
use corral_query::ast::Quantifier;
use corral_query::check::{Catalogue, CheckContext, DefinitionKind, Target};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The account side of a space's ACCOUNTS definitions.
#[derive(Debug, Clone)]
pub struct AccountSide {
    /// The account queries (planned as USERS definitions over an account's traits).
    pub engine: Engine,
    /// Condition key → (account definition key, quantifier).
    pub conditions: BTreeMap<String, (String, Quantifier)>,
}

/// An account's state on the account side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    /// Group id.
    #[serde(rename = "g", default)]
    pub group_id: String,
    /// Traits (from group calls, latest event time wins), results, space.
    #[serde(rename = "p", default)]
    pub profile: ProfileState,
    /// Users in the account.
    #[serde(rename = "n", default)]
    pub users: u64,
    /// Per condition key: users satisfying it.
    #[serde(rename = "s", default)]
    pub satisfied: BTreeMap<String, u64>,
}

/// One user of an account, on the account side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberState {
    /// The user's external ids (for delivery).
    #[serde(rename = "i", default)]
    pub ids: Vec<ExtId>,
    /// Conditions the user satisfies.
    #[serde(rename = "c", default)]
    pub conditions: BTreeSet<String>,
}

impl AccountState {
    /// Replaces a user's entry (`None`: not a member) and adjusts the counters by the
    /// difference: O(conditions), independent of the number of users.
    pub fn set_member(&mut self, old: Option<&MemberState>, new: Option<&MemberState>) {
        match (old.is_some(), new.is_some()) {
            (false, true) => self.users += 1,
            (true, false) => self.users = self.users.saturating_sub(1),
            _ => {}
        }
        let empty = BTreeSet::new();
        let o = old.map_or(&empty, |m| &m.conditions);
        let n = new.map_or(&empty, |m| &m.conditions);
        for k in o.difference(n) {
            if let Some(c) = self.satisfied.get_mut(k) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.satisfied.remove(k);
                }
            }
        }
        for k in n.difference(o) {
            *self.satisfied.entry(k.clone()).or_default() += 1;
        }
    }

    /// Account audiences the account is a member of now.
    pub fn audiences(&self, side: &AccountSide) -> BTreeSet<String> {
        self.profile
            .results
            .iter()
            .filter(|(k, r)| {
                r.v == Value::Bool(true)
                    && side
                        .engine
                        .definitions()
                        .get(*k)
                        .is_some_and(|d| d.spec.target == Target::Audience)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl AccountSide {
    /// Evaluates every account definition for this account at `now`: the condition booleans
    /// from the counters, then the account queries; returns the differences from what was last
    /// emitted.
    pub fn evaluate(&self, acct: &mut AccountState, now_ms: i64) -> Vec<Change> {
        acct.profile
            .traits
            .retain(|k, _| !is_condition(k) || self.conditions.contains_key(k));
        for (key, (_, q)) in &self.conditions {
            let sat = acct.satisfied.get(key).copied().unwrap_or(0);
            acct.profile.traits.insert(
                key.clone(),
                TraitValue {
                    v: Value::Bool(quantify(*q, acct.users, sat)),
                    t: i64::MIN,
                },
            );
        }
        let out = self.engine.evaluate(&mut acct.profile, now_ms);
        // Time-dependent comparisons on account traits are re-evaluated at the account's next
        // update only (docs/compute.md, "Accounts"): no account timers.
        acct.profile.wake_ms = None;
        out
    }
}

/// What the user side owes its accounts after an update of `st`: the conditions the user
/// satisfies now and the accounts to tell (every account when that set changed, else only
/// the ones it joined since). Records it as told.
pub fn pending_updates(st: &mut ProfileState) -> Option<(BTreeSet<String>, Vec<String>)> {
    let now: BTreeSet<String> = st
        .results
        .iter()
        .filter(|(k, r)| is_condition(k) && r.v == Value::Bool(true))
        .map(|(k, _)| k.clone())
        .collect();
    let to: Vec<String> = if now != st.conditions_sent {
        st.accounts.iter().cloned().collect()
    } else {
        st.accounts.difference(&st.accounts_sent).cloned().collect()
    };
    st.conditions_sent = now.clone();
    st.accounts_sent = st.accounts.clone();
    (!to.is_empty()).then_some((now, to))
}

/// ACCOUNTS definitions split for the engine.
pub(crate) struct SplitSpecs {
    /// Hidden USERS audiences, one per quantifier.
    pub(crate) condition_specs: Vec<DefinitionSpec>,
    account_specs: Vec<DefinitionSpec>,
    conditions: BTreeMap<String, (String, Quantifier)>,
}

impl SplitSpecs {
    /// The account definition a condition key belongs to.
    pub(crate) fn parent_of(&self, key: &str) -> Option<String> {
        self.conditions.get(key).map(|(p, _)| p.clone())
    }

    /// Compiles the account queries of the definitions not in `failed`.
    pub(crate) fn into_engine(
        self,
        cfg: EngineConfig,
        failed: &BTreeSet<String>,
        rejected: &mut BTreeMap<String, DefinitionError>,
    ) -> AccountSide {
        let specs: Vec<DefinitionSpec> = self
            .account_specs
            .into_iter()
            .filter(|s| !failed.contains(&s.key))
            .collect();
        let engine = Engine::build(cfg, specs);
        for (k, e) in engine.rejected() {
            rejected.insert(k.clone(), e.clone());
        }
        let active = engine.definitions();
        let conditions = self
            .conditions
            .into_iter()
            .filter(|(_, (p, _))| active.contains_key(p))
            .collect();
        AccountSide { engine, conditions }
    }
}

/// Checks every ACCOUNTS definition against a catalogue of all the space's definitions and
/// splits the valid ones; the others go to `rejected`.
pub(crate) fn split_specs(
    accounts: &[DefinitionSpec],
    users: &[DefinitionSpec],
    rejected: &mut BTreeMap<String, DefinitionError>,
) -> SplitSpecs {
    let mut catalogue = Catalogue::new();
    let mut parsed = Vec::new();
    for s in users.iter().chain(accounts) {
        if let Ok(q) = corral_query::parse(&s.query) {
            catalogue.insert(s.key.clone(), s.target, s.kind, Some(q.clone()));
            if s.kind == DefinitionKind::Accounts {
                parsed.push((s, q));
            }
        }
    }
    let mut out = SplitSpecs {
        condition_specs: Vec::new(),
        account_specs: Vec::new(),
        conditions: BTreeMap::new(),
    };
    for s in accounts {
        let Some((_, q)) = parsed.iter().find(|(p, _)| p.key == s.key) else {
            let message = match corral_query::parse(&s.query) {
                Err(d) => d.message,
                Ok(_) => "does not parse".into(),
            };
            rejected.insert(
                s.key.clone(),
                DefinitionError::Invalid {
                    key: s.key.clone(),
                    message,
                },
            );
            continue;
        };
        let ctx = CheckContext {
            target: s.target,
            kind: DefinitionKind::Accounts,
            catalogue: &catalogue,
            key: Some(&s.key),
        };
        let plan = match corral_query::plan(q, &ctx) {
            Ok(p) => p,
            Err(ds) => {
                rejected.insert(
                    s.key.clone(),
                    DefinitionError::Invalid {
                        key: s.key.clone(),
                        message: ds
                            .first()
                            .map(|d| d.message.clone())
                            .unwrap_or_else(|| "invalid".into()),
                    },
                );
                continue;
            }
        };
        if let Some(why) = corral_ops::accounts::unsupported_key(&s.key)
            .or_else(|| unsupported(DefinitionKind::Accounts, &plan))
        {
            rejected.insert(
                s.key.clone(),
                DefinitionError::Unsupported(s.key.clone(), why),
            );
            continue;
        }
        let sp = split(&s.key, q);
        for c in sp.conditions {
            out.conditions
                .insert(c.key.clone(), (s.key.clone(), c.quantifier));
            out.condition_specs.push(DefinitionSpec {
                key: c.key,
                name: None,
                target: Target::Audience,
                kind: DefinitionKind::Users,
                version: s.version,
                query: c.query,
                include_historical_data: s.include_historical_data,
            });
        }
        out.account_specs.push(DefinitionSpec {
            kind: DefinitionKind::Users,
            query: sp.account_query,
            ..s.clone()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ChangeKind;

    fn spec(key: &str, kind: DefinitionKind, query: &str) -> DefinitionSpec {
        DefinitionSpec {
            key: key.into(),
            name: None,
            target: Target::Audience,
            kind,
            version: 1,
            query: query.into(),
            include_historical_data: false,
        }
    }

    fn member(conds: &[&str]) -> MemberState {
        MemberState {
            ids: Vec::new(),
            conditions: conds.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn account_definitions_split_into_hidden_user_audiences_and_an_account_engine() {
        let e = Engine::new(
            EngineConfig::default(),
            vec![
                spec(
                    "at_risk",
                    DefinitionKind::Accounts,
                    "trait('plan') = 'business' AND NONE event('Logged In').within(30 days).count() >= 1",
                ),
                spec(
                    "wide",
                    DefinitionKind::Accounts,
                    "event('Logged In').count() >= 1",
                ),
                spec("u", DefinitionKind::Users, "event('A').count() >= 1"),
            ],
        );
        assert!(e.definitions().contains_key("~acct/at_risk/0"));
        assert!(e.definitions().contains_key("u"));
        let side = e.accounts().unwrap();
        assert!(side.engine.definitions().contains_key("at_risk"));
        assert!(matches!(
            e.rejected().get("wide"),
            Some(DefinitionError::Unsupported(..))
        ));

        // Counters: three users, then one logs in, then leaves.
        let mut a = AccountState::default();
        let (m0, m1) = (member(&[]), member(&["~acct/at_risk/0"]));
        a.set_member(None, Some(&m0));
        a.set_member(None, Some(&m0));
        a.set_member(None, Some(&m0));
        crate::engine::record_traits(
            &mut a.profile,
            serde_json::json!({"plan": "business"}).as_object().unwrap(),
            1,
        );
        let ch = side.evaluate(&mut a, 10);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].kind, ChangeKind::Entered);
        a.set_member(Some(&m0), Some(&m1));
        assert_eq!(a.satisfied["~acct/at_risk/0"], 1);
        assert_eq!(side.evaluate(&mut a, 11)[0].kind, ChangeKind::Exited);
        a.set_member(Some(&m1), None);
        assert_eq!((a.users, a.satisfied.len()), (2, 0));
        assert_eq!(side.evaluate(&mut a, 12)[0].kind, ChangeKind::Entered);
    }

    #[test]
    fn users_tell_new_accounts_and_every_account_when_their_conditions_change() {
        let mut st = ProfileState::default();
        assert_eq!(pending_updates(&mut st), None);
        st.accounts.insert("g1".into());
        assert_eq!(
            pending_updates(&mut st),
            Some((BTreeSet::new(), vec!["g1".to_string()]))
        );
        assert_eq!(pending_updates(&mut st), None);
        st.accounts.insert("g2".into());
        assert_eq!(
            pending_updates(&mut st).map(|p| p.1),
            Some(vec!["g2".to_string()])
        );
        st.results.insert(
            "~acct/x/0".into(),
            crate::state::StoredResult {
                ver: 1,
                v: Value::Bool(true),
            },
        );
        st.results.insert(
            "plain".into(),
            crate::state::StoredResult {
                ver: 1,
                v: Value::Bool(true),
            },
        );
        let (conds, to) = pending_updates(&mut st).unwrap();
        assert_eq!(conds.into_iter().collect::<Vec<_>>(), vec!["~acct/x/0"]);
        assert_eq!(to, vec!["g1".to_string(), "g2".to_string()]);
        assert_eq!(pending_updates(&mut st), None);
    }
}
