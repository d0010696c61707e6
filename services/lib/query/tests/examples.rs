//! `examples/definitions.yaml` validates, and every definition in it gives the known answer on
//! small hand-written histories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use corral_query::{
    load_definitions_file, validate_definitions_file, Account, Definitions, Evaluator, Event,
    Profile, Subject, Target,
};
use serde_json::{json, Value};
use std::path::PathBuf;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../examples/definitions.yaml")
}

fn defs() -> Definitions {
    load_definitions_file(&path()).unwrap()
}

fn now() -> DateTime<Utc> {
    "2026-04-01T12:00:00Z".parse().unwrap()
}

fn ago(days: i64) -> DateTime<Utc> {
    now() - Duration::days(days)
}

fn ev(name: &str, days_ago: i64) -> Event {
    Event::new(name, ago(days_ago))
}

fn user(events: Vec<Event>, traits: Value) -> Profile {
    Profile {
        events,
        traits: traits.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

fn member(d: &Definitions, key: &str, p: &Profile) -> bool {
    let def = d.get(key).unwrap();
    assert_eq!(def.target, Target::Audience);
    Evaluator::new(now(), &d.catalogue)
        .audience(&def.query, Subject::User(p))
        .unwrap()
}

fn account_member(d: &Definitions, key: &str, a: &Account) -> bool {
    let def = d.get(key).unwrap();
    Evaluator::new(now(), &d.catalogue)
        .audience(&def.query, Subject::Account(a))
        .unwrap()
}

fn value(d: &Definitions, key: &str, p: &Profile) -> Option<Value> {
    let def = d.get(key).unwrap();
    assert_eq!(def.target, Target::ComputedTrait);
    Evaluator::new(now(), &d.catalogue)
        .computed_trait(&def.query, Subject::User(p))
        .unwrap()
}

#[test]
fn file_validates_and_lists_everything_the_issue_asks_for() {
    let report = validate_definitions_file(&path()).unwrap();
    assert!(!report.has_errors(), "{report}");
    assert!(
        report.to_string().ends_with("21 definitions, no errors"),
        "{report}"
    );
    let d = defs();
    for key in [
        "re_engagement",
        "feature_adoption",
        "depth_nudge",
        "stuck_before_activation",
        "viewed_expensive_not_bought",
        "lapsed_30_to_90",
        "big_spenders",
        "abandoned_checkout",
        "viewed_not_ordered_same_product",
        "accounts_no_dashboard_30d",
        "order_completed_last_30days",
        "feature_uses_30d",
        "last_session_started_at",
        "unique_feature_count",
        "sessions_90d",
        "total_sessions",
        "total_revenue",
    ] {
        assert!(d.get(key).is_some(), "missing {key}");
    }
    // Every definition also plans, and identical leaves are shared across definitions.
    let set = d.plan_set().unwrap();
    assert_eq!(set.plans.len(), 21);
}

#[test]
fn re_engagement() {
    let d = defs();
    let sessions = |days: &[i64]| days.iter().map(|n| ev("Session Started", *n)).collect();
    assert!(member(
        &d,
        "re_engagement",
        &user(sessions(&[10, 20, 30, 40]), json!({}))
    ));
    assert!(!member(
        &d,
        "re_engagement",
        &user(sessions(&[2, 20, 30, 40]), json!({}))
    ));
    assert!(!member(
        &d,
        "re_engagement",
        &user(sessions(&[20, 30]), json!({}))
    ));
    assert!(!member(&d, "re_engagement", &user(vec![], json!({}))));
}

#[test]
fn feature_adoption() {
    let d = defs();
    let used = |names: &[&str]| -> Vec<Event> {
        names
            .iter()
            .map(|n| ev("Feature Used", 3).prop("feature_name", *n))
            .collect()
    };
    let with = |mut evs: Vec<Event>, onboarded: bool| {
        if onboarded {
            evs.push(ev("Onboarding Completed", 20));
        }
        evs
    };
    let old = json!({"created_at": ago(30).to_rfc3339()});
    assert!(member(
        &d,
        "feature_adoption",
        &user(with(used(&["a", "b", "a"]), true), old.clone())
    ));
    // No feature used at all: still fewer than 3.
    assert!(member(
        &d,
        "feature_adoption",
        &user(with(vec![], true), old.clone())
    ));
    assert!(!member(
        &d,
        "feature_adoption",
        &user(with(used(&["a", "b", "c"]), true), old.clone())
    ));
    assert!(!member(
        &d,
        "feature_adoption",
        &user(with(used(&["a"]), false), old)
    ));
    let young = json!({"created_at": ago(5).to_rfc3339()});
    assert!(!member(
        &d,
        "feature_adoption",
        &user(with(used(&["a"]), true), young)
    ));
}

#[test]
fn depth_nudge() {
    let d = defs();
    let sessions =
        |n: i64| -> Vec<Event> { (0..n).map(|i| ev("Session Started", i + 1)).collect() };
    let mut a = sessions(11);
    a.push(ev("Feature Used", 1).prop("feature_name", "report"));
    assert!(member(&d, "depth_nudge", &user(a.clone(), json!({}))));
    a.push(ev("Feature Used", 1).prop("feature_name", "export"));
    assert!(!member(&d, "depth_nudge", &user(a, json!({}))));
    assert!(!member(&d, "depth_nudge", &user(sessions(10), json!({}))));
}

#[test]
fn stuck_before_activation() {
    let d = defs();
    let trial = json!({"plan": "trial"});
    assert!(member(
        &d,
        "stuck_before_activation",
        &user(vec![ev("Account Created", 5)], trial.clone())
    ));
    assert!(!member(
        &d,
        "stuck_before_activation",
        &user(vec![ev("Account Created", 1)], trial.clone())
    ));
    assert!(!member(
        &d,
        "stuck_before_activation",
        &user(
            vec![
                ev("Account Created", 5),
                ev("Activation Milestone Reached", 4)
            ],
            trial
        )
    ));
    assert!(!member(
        &d,
        "stuck_before_activation",
        &user(vec![ev("Account Created", 5)], json!({"plan": "pro"}))
    ));
    assert!(!member(
        &d,
        "stuck_before_activation",
        &user(vec![], json!({"plan": "trial"}))
    ));
}

#[test]
fn viewed_expensive_not_bought() {
    let d = defs();
    let view = |price: f64| ev("Product Viewed", 2).prop("price", price);
    assert!(member(
        &d,
        "viewed_expensive_not_bought",
        &user(vec![view(150.0)], json!({}))
    ));
    assert!(!member(
        &d,
        "viewed_expensive_not_bought",
        &user(vec![view(50.0)], json!({}))
    ));
    assert!(!member(
        &d,
        "viewed_expensive_not_bought",
        &user(vec![view(100.0)], json!({}))
    ));
    assert!(!member(
        &d,
        "viewed_expensive_not_bought",
        &user(vec![view(150.0), ev("Order Completed", 1)], json!({}))
    ));
}

#[test]
fn lapsed_30_to_90() {
    let d = defs();
    let s = |days: &[i64]| -> Profile {
        user(
            days.iter().map(|n| ev("Session Started", *n)).collect(),
            json!({}),
        )
    };
    assert!(member(&d, "lapsed_30_to_90", &s(&[45])));
    // Both ends of between are inclusive.
    assert!(member(&d, "lapsed_30_to_90", &s(&[90])));
    assert!(!member(&d, "lapsed_30_to_90", &s(&[45, 10])));
    assert!(!member(&d, "lapsed_30_to_90", &s(&[100])));
    // Exactly 30 days ago is in both windows, so not lapsed.
    assert!(!member(&d, "lapsed_30_to_90", &s(&[30])));
}

#[test]
fn big_spenders_and_total_revenue() {
    let d = defs();
    let order = |rev: f64, days: i64| ev("Order Completed", days).prop("revenue", rev);
    let rich = user(vec![order(300.0, 10), order(250.5, 200)], json!({}));
    assert_eq!(value(&d, "total_revenue", &rich), Some(json!(550.5)));
    assert_eq!(
        value(&d, "total_revenue_180_days", &rich),
        Some(json!(300.0))
    );
    assert!(member(&d, "big_spenders", &rich));
    let exact = user(vec![order(300.0, 10), order(200.0, 20)], json!({}));
    assert!(!member(&d, "big_spenders", &exact));
    let none = user(vec![], json!({}));
    assert_eq!(value(&d, "total_revenue", &none), None);
    assert!(!member(&d, "big_spenders", &none));
}

#[test]
fn abandoned_checkout() {
    let d = defs();
    let k = "abandoned_checkout";
    assert!(member(
        &d,
        k,
        &user(vec![ev("Checkout Started", 3)], json!({}))
    ));
    assert!(!member(
        &d,
        k,
        &user(
            vec![ev("Checkout Started", 3), ev("Order Completed", 2)],
            json!({})
        )
    ));
    // An order before the checkout does not complete it.
    assert!(member(
        &d,
        k,
        &user(
            vec![ev("Checkout Started", 3), ev("Order Completed", 4)],
            json!({})
        )
    ));
    // Checkout more than a week ago is out of the window.
    assert!(!member(
        &d,
        k,
        &user(vec![ev("Checkout Started", 10)], json!({}))
    ));
    // An order more than 7 days after the checkout does not complete it.
    let late = user(
        vec![
            ev("Checkout Started", 6),
            Event::new(
                "Order Completed",
                ago(6) + Duration::days(7) + Duration::seconds(1),
            ),
        ],
        json!({}),
    );
    // That order would be in the future relative to now, so it does not exist yet either.
    assert!(member(&d, k, &late));
}

#[test]
fn viewed_not_ordered_same_product() {
    let d = defs();
    let k = "viewed_not_ordered_same_product";
    let view = |id: &str, days| ev("Product Viewed", days).prop("product_id", id);
    let order = |id: &str, days| ev("Order Completed", days).prop("product_id", id);
    assert!(member(
        &d,
        k,
        &user(vec![view("p1", 5), order("p2", 4)], json!({}))
    ));
    assert!(!member(
        &d,
        k,
        &user(vec![view("p1", 5), order("p1", 4)], json!({}))
    ));
    assert!(member(
        &d,
        k,
        &user(
            vec![view("p1", 5), view("p2", 5), order("p1", 4)],
            json!({})
        )
    ));
    assert!(!member(&d, k, &user(vec![], json!({}))));
}

#[test]
fn account_audiences() {
    let d = defs();
    let u = |evs: Vec<Event>| user(evs, json!({}));
    let acct = |plan: &str, users: Vec<Profile>| Account {
        traits: json!({"plan": plan}).as_object().cloned().unwrap(),
        users,
    };
    let quiet = acct(
        "business",
        vec![u(vec![ev("Dashboard Viewed", 40)]), u(vec![])],
    );
    assert!(account_member(&d, "accounts_no_dashboard_30d", &quiet));
    let busy = acct(
        "business",
        vec![
            u(vec![ev("Dashboard Viewed", 40)]),
            u(vec![ev("Dashboard Viewed", 5)]),
        ],
    );
    assert!(!account_member(&d, "accounts_no_dashboard_30d", &busy));
    // No users: neither ANY nor ALL holds (Part E.1).
    assert!(!account_member(
        &d,
        "accounts_no_dashboard_30d",
        &acct("business", vec![])
    ));

    let at_risk = acct("business", vec![u(vec![ev("Logged In", 45)]), u(vec![])]);
    assert!(account_member(&d, "at_risk_business_accounts", &at_risk));
    let active = acct("business", vec![u(vec![ev("Logged In", 3)]), u(vec![])]);
    assert!(!account_member(&d, "at_risk_business_accounts", &active));
    let small = acct("startup", vec![u(vec![])]);
    assert!(!account_member(&d, "at_risk_business_accounts", &small));
}

#[test]
fn order_audiences() {
    let d = defs();
    assert!(member(
        &d,
        "order_completed_last_30days",
        &user(vec![ev("Order Completed", 10)], json!({}))
    ));
    assert!(!member(
        &d,
        "order_completed_last_30days",
        &user(vec![ev("Order Completed", 31)], json!({}))
    ));
    assert!(member(
        &d,
        "first_time_shopper",
        &user(vec![ev("Order Completed", 31)], json!({}))
    ));
    assert!(!member(
        &d,
        "first_time_shopper",
        &user(
            vec![ev("Order Completed", 31), ev("Order Completed", 1)],
            json!({})
        )
    ));
}

#[test]
fn engagement_traits() {
    let d = defs();
    let p = user(
        vec![
            ev("Feature Used", 1).prop("feature_name", "a"),
            ev("Feature Used", 2).prop("feature_name", "b"),
            ev("Feature Used", 3).prop("feature_name", "a"),
            ev("Feature Used", 40).prop("feature_name", "c"),
            ev("Session Started", 2),
            ev("Session Started", 5),
            ev("Session Started", 100),
            // Out of order on purpose: last() is by timestamp, not history order.
            ev("Product Viewed", 1).prop("name", "Sweater"),
            ev("Product Viewed", 3).prop("name", "Shoes"),
        ],
        json!({}),
    );
    assert_eq!(value(&d, "feature_uses_30d", &p), Some(json!(3)));
    assert_eq!(value(&d, "unique_feature_count", &p), Some(json!(3)));
    assert_eq!(value(&d, "sessions_90d", &p), Some(json!(2)));
    assert_eq!(value(&d, "total_sessions", &p), Some(json!(3)));
    assert_eq!(
        value(&d, "last_session_started_at", &p),
        Some(json!(ago(2).to_rfc3339()))
    );
    assert_eq!(
        value(&d, "last_product_viewed_item", &p),
        Some(json!("Sweater"))
    );
    let empty = user(vec![], json!({}));
    for k in [
        "feature_uses_30d",
        "unique_feature_count",
        "last_session_started_at",
        "total_sessions",
    ] {
        assert_eq!(value(&d, k, &empty), None, "{k}");
    }
}
