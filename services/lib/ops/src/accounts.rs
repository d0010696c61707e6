//! What compute evaluates, in one place for compute and `corralctl audiences apply`.
//!
//! An ACCOUNTS definition is split in two (compute's account design, docs/compute.md
//! "Accounts"):
//! - each `ANY x` / `ALL x` / `NONE x` becomes a hidden USERS audience `x` (its *condition*),
//!   evaluated per user by the ordinary engine (timers, backfill, merges as for any audience);
//! - the rest is the *account query*: the same expression with every quantifier replaced by
//!   `trait('<condition key>') = true`, evaluated per account over the account's traits and
//!   those booleans, which the account side derives from counters (users in the account, users
//!   satisfying the condition): ANY = satisfied > 0, ALL = users > 0 and satisfied = users,
//!   NONE = users > 0 and satisfied = 0.
//!
//! What compute cannot evaluate, and [`unsupported`] names: `entity(...)` (Linked Audiences)
//! and, in ACCOUNTS definitions, event streams outside ANY/ALL/NONE (account-wide aggregates
//! over every user's events).

use corral_query::ast::{Expr, Quantifier, Query};
use corral_query::check::DefinitionKind;
use corral_query::plan::{LeafLevel, LeafSource, Plan};

/// Compute's internal topic (under the topic prefix) from the user side to the account side,
/// keyed by `{space}/{groupId}`, partitioned like `events.resolved`.
pub const ACCOUNTS_TOPIC: &str = "compute.accounts";

/// Prefix of the hidden per-user condition keys; reserved: a definition whose own key starts
/// with it is refused ([`unsupported_key`]).
pub const CONDITION_PREFIX: &str = "~acct/";

/// The key of the `index`-th quantifier of account definition `key`.
pub fn condition_key(key: &str, index: usize) -> String {
    format!("{CONDITION_PREFIX}{key}/{index}")
}

/// Whether a definition key is a hidden per-user condition (never shown nor delivered).
pub fn is_condition(key: &str) -> bool {
    key.starts_with(CONDITION_PREFIX)
}

/// One quantifier of an account definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Hidden USERS audience key ([`condition_key`]).
    pub key: String,
    /// ANY / ALL / NONE.
    pub quantifier: Quantifier,
    /// The user-level expression, as query text.
    pub query: String,
}

/// An ACCOUNTS definition split for compute.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitAccount {
    /// The account-level query text, quantifiers replaced by condition traits.
    pub account_query: String,
    /// The quantifiers, in source order.
    pub conditions: Vec<Condition>,
}

/// Whether `quantifier` holds for an account with `users` users of which `satisfied` satisfy
/// the condition. An account without users is in neither ANY, ALL nor NONE.
pub fn quantify(quantifier: Quantifier, users: u64, satisfied: u64) -> bool {
    match quantifier {
        Quantifier::Any => satisfied > 0,
        Quantifier::All => users > 0 && satisfied >= users,
        Quantifier::None => users > 0 && satisfied == 0,
    }
}

/// Splits an ACCOUNTS definition (see the module doc).
pub fn split(key: &str, query: &Query) -> SplitAccount {
    let mut conditions = Vec::new();
    let expr = rewrite(key, &query.expr, &mut conditions);
    SplitAccount {
        account_query: Query { expr }.to_string(),
        conditions,
    }
}

fn rewrite(key: &str, e: &Expr, out: &mut Vec<Condition>) -> Expr {
    match e {
        Expr::Or { items, span } => Expr::Or {
            items: items.iter().map(|x| rewrite(key, x, out)).collect(),
            span: *span,
        },
        Expr::And { items, span } => Expr::And {
            items: items.iter().map(|x| rewrite(key, x, out)).collect(),
            span: *span,
        },
        Expr::Not { expr, span } => Expr::Not {
            expr: Box::new(rewrite(key, expr, out)),
            span: *span,
        },
        Expr::Quantified {
            quantifier, expr, ..
        } => {
            let ck = condition_key(key, out.len());
            out.push(Condition {
                key: ck.clone(),
                quantifier: *quantifier,
                query: Query {
                    expr: (**expr).clone(),
                }
                .to_string(),
            });
            // `.` in a trait path traverses objects; the key is one flat trait name.
            let text = format!("trait('{}') = true", ck.replace('.', "\\."));
            match corral_query::parse(&text) {
                Ok(q) => q.expr,
                // Unreachable for keys the loader accepts (no quotes, no spaces); keep the
                // node so the account query fails to plan and the definition is rejected.
                Err(_) => e.clone(),
            }
        }
        Expr::Chain(c) => Expr::Chain(c.clone()),
    }
}

/// Why a definition key cannot be used (`None`: it can).
pub fn unsupported_key(key: &str) -> Option<String> {
    is_condition(key).then(|| {
        format!(
            "keys starting with `{CONDITION_PREFIX}` are reserved for compute's account conditions"
        )
    })
}

/// Why compute cannot evaluate a definition that checked and planned (`None`: it can).
pub fn unsupported(kind: DefinitionKind, plan: &Plan) -> Option<String> {
    if plan
        .leaves
        .iter()
        .any(|l| matches!(l.source, LeafSource::Entity { .. }))
    {
        return Some(
            "uses entity(...) (Linked Audiences), which compute does not evaluate".to_string(),
        );
    }
    if kind == DefinitionKind::Accounts && plan.leaves.iter().any(|l| l.level == LeafLevel::Account)
    {
        return Some(
            "reads events outside ANY/ALL/NONE (an aggregate over all the account's users' events), which compute does not evaluate; put the event condition inside ANY, ALL or NONE"
                .to_string(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_quantifiers_into_conditions_and_keeps_account_traits() {
        let q = corral_query::parse(
            "trait('plan') = 'business' AND NONE event('Logged In').within(30 days).count() >= 1",
        )
        .unwrap();
        let s = split("at_risk", &q);
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].key, "~acct/at_risk/0");
        assert_eq!(s.conditions[0].quantifier, Quantifier::None);
        assert_eq!(
            s.conditions[0].query,
            "event('Logged In').within(30 days).count() >= 1"
        );
        assert_eq!(
            s.account_query,
            "trait('plan') = 'business' AND trait('~acct/at_risk/0') = true"
        );
    }

    #[test]
    fn quantifiers_follow_the_reference_semantics() {
        for q in [Quantifier::Any, Quantifier::All, Quantifier::None] {
            assert!(!quantify(q, 0, 0), "{q:?} on an account without users");
        }
        assert!(quantify(Quantifier::Any, 3, 1));
        assert!(!quantify(Quantifier::All, 3, 2));
        assert!(quantify(Quantifier::All, 3, 3));
        assert!(quantify(Quantifier::None, 3, 0));
        assert!(!quantify(Quantifier::None, 3, 1));
    }
}
