//! Planner: leaves, state, bounds, timers, sharing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_query::plan::*;
use corral_query::{parse, plan, Catalogue, CheckContext, DefinitionKind, Target};

fn compile(src: &str, target: Target, kind: DefinitionKind, cat: &Catalogue) -> Plan {
    let ctx = CheckContext {
        target,
        kind,
        catalogue: cat,
        key: None,
    };
    plan(&parse(src).unwrap(), &ctx).unwrap()
}

fn aud(src: &str) -> Plan {
    compile(
        src,
        Target::Audience,
        DefinitionKind::Users,
        &Catalogue::new(),
    )
}

fn ct(src: &str) -> Plan {
    compile(
        src,
        Target::ComputedTrait,
        DefinitionKind::Users,
        &Catalogue::new(),
    )
}

#[test]
fn stuck_before_activation_leaves() {
    let p = aud("event('Account Created').count() >= 1
         AND event('Account Created').within(2 days).count() = 0
         AND event('Activation Milestone Reached').count() = 0
         AND trait('plan') = 'trial'");
    assert_eq!(p.leaves.len(), 3);
    let ids: Vec<&str> = p.leaves.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    let l0 = &p.leaves[0];
    assert_eq!(
        l0.source,
        LeafSource::Event {
            name: "Account Created".into()
        }
    );
    assert_eq!(l0.window, Window::Unbounded);
    assert_eq!(
        l0.state,
        StateSpec {
            kind: StateKind::Counter,
            bound: Bound::Constant { values: 1 }
        }
    );
    let l1 = &p.leaves[1];
    assert_eq!(
        l1.window,
        Window::Last {
            seconds: 2 * 86_400
        }
    );
    assert_eq!(
        l1.state,
        StateSpec {
            kind: StateKind::TimeBuckets,
            bound: Bound::EventsInHorizon { seconds: 172_800 }
        }
    );
    assert_eq!(
        p.timers,
        vec![Timer {
            leaf: Some(l1.id.clone()),
            kind: TimerKind::WindowExit,
            delay_seconds: 172_800
        }]
    );
    let PlanRoot::Condition(PlanExpr::And(items)) = &p.root else {
        panic!("{:?}", p.root)
    };
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[3],
        PlanExpr::Compare {
            value: PlanValue::Trait {
                name: "plan".into()
            },
            op: CompareOp::Equals,
            operands: vec![PlanValue::Literal {
                value: corral_query::ast::Literal::String("trial".into())
            }],
            duration: None,
        }
    );
}

#[test]
fn leaf_ids_are_content_derived_and_stable() {
    let a = aud("event('Feature Used').within(30 days).count() >= 1");
    let b = aud("event( \"Feature Used\" )\n  .within( 30 days )\n  .count().at_least(5)");
    assert_eq!(a.leaves[0].id, b.leaves[0].id);
    // Pinned: the id is part of the engine's state keys, so it must not drift between builds.
    assert_eq!(a.leaves[0].id, "5a2634b645ec4cd7");
    let c = aud("event('Feature Used').within(31 days).count() >= 1");
    assert_ne!(a.leaves[0].id, c.leaves[0].id);
    // The same leaf twice in one definition is planned once.
    let d = aud("event('X').count() >= 1 AND event('X').count() < 10");
    assert_eq!(d.leaves.len(), 1);
}

#[test]
fn definitions_share_leaves() {
    let mut set = PlanSet::new();
    set.insert(
        "feature_uses_30d",
        ct("event('Feature Used').within(30 days).count()"),
    );
    set.insert(
        "active_feature_users",
        aud("event('Feature Used').within(30 days).count() >= 5"),
    );
    set.insert("other", aud("event('Login').count() >= 1"));
    assert_eq!(set.leaves.len(), 2);
    let shared = set.shared();
    assert_eq!(shared.len(), 1);
    assert_eq!(
        shared[0].1,
        &vec![
            "feature_uses_30d".to_string(),
            "active_feature_users".to_string()
        ]
    );
    set.remove("feature_uses_30d");
    assert_eq!(set.leaves.len(), 2);
    set.remove("active_feature_users");
    assert_eq!(set.leaves.len(), 1);
}

#[test]
fn funnel_state_and_timers() {
    let p = aud("event('Checkout Started').within(7 days).where(
           NOT event('Order Completed').within(parent: 7 days).count() >= 1
         ).count() >= 1");
    assert_eq!(p.leaves.len(), 2);
    // The child is planned first (it is inside the parent's filter).
    let child = p.leaves.iter().find(|l| l.correlated).unwrap();
    let parent = p.leaves.iter().find(|l| !l.correlated).unwrap();
    assert_eq!(child.window, Window::ParentWithin { seconds: 604_800 });
    assert_eq!(
        child.state,
        StateSpec {
            kind: StateKind::RetainedEvents,
            bound: Bound::EventsInHorizon { seconds: 1_209_600 }
        }
    );
    assert_eq!(
        parent.state,
        StateSpec {
            kind: StateKind::RetainedEvents,
            bound: Bound::EventsInHorizon { seconds: 604_800 }
        }
    );
    assert!(p.timers.contains(&Timer {
        leaf: Some(child.id.clone()),
        kind: TimerKind::FunnelDeadline,
        delay_seconds: 604_800
    }));
    assert!(p.timers.contains(&Timer {
        leaf: Some(parent.id.clone()),
        kind: TimerKind::WindowExit,
        delay_seconds: 604_800
    }));
    // Dynamic property reference: the child reads the parent, so it is correlated too.
    let p = aud("event('V').where(event('O').where(property('id') = property(parent: 'id')).count() >= 1).count() >= 1");
    let child = p
        .leaves
        .iter()
        .find(|l| l.source == LeafSource::Event { name: "O".into() })
        .unwrap();
    assert!(child.correlated);
    assert_eq!(child.state.bound, Bound::EventsInHistory);
    assert_eq!(child.needs, vec!["property:id".to_string()]);
}

#[test]
fn state_kinds() {
    let leaf = |src: &str| ct(src).leaves.remove(0);
    assert_eq!(
        leaf("event('X').sum(property('v'))").state.kind,
        StateKind::Sum
    );
    assert_eq!(
        leaf("event('X').avg(property('v'))").state,
        StateSpec {
            kind: StateKind::SumAndCount,
            bound: Bound::Constant { values: 2 }
        }
    );
    assert_eq!(
        leaf("event('X').unique(property('v')).count()").state,
        StateSpec {
            kind: StateKind::DistinctSet,
            bound: Bound::DistinctValues
        }
    );
    assert_eq!(
        leaf("event('X').mode(property('v'), 2)").state.kind,
        StateKind::FrequencyMap
    );
    assert_eq!(
        leaf("event('X').within(3 days).max(property('v'))")
            .state
            .kind,
        StateKind::TimedValues
    );
    let s = ct("event('X').expires_after(30 minutes).count()");
    assert_eq!(s.leaves[0].state.kind, StateKind::Session);
    assert_eq!(s.timers[0].kind, TimerKind::SessionExpiry);
    assert_eq!(s.timers[0].delay_seconds, 1800);
    let b = aud("event('X').between(30 days, 90 days).count() >= 1");
    assert_eq!(
        b.leaves[0].window,
        Window::Between {
            near: 2_592_000,
            far: 7_776_000
        }
    );
    assert_eq!(
        b.timers.iter().map(|t| t.kind).collect::<Vec<_>>(),
        vec![TimerKind::WindowEntry, TimerKind::WindowExit]
    );
    // unique(...) and unique(...).count() share one leaf.
    let u = aud("event('X').unique(property('v')).count() >= 3");
    let PlanRoot::Condition(PlanExpr::Compare {
        value: PlanValue::Leaf { count_unique, .. },
        ..
    }) = &u.root
    else {
        panic!()
    };
    assert!(count_unique);
    assert_eq!(
        u.leaves[0].id,
        ct("event('X').unique(property('v'))").leaves[0].id
    );
    // A filter that reads a trait can change after the event: keep the events.
    let t = aud("event('Bought').where(property('price') >= trait('avg_spend')).count() >= 1");
    assert_eq!(
        t.leaves[0].state,
        StateSpec {
            kind: StateKind::RetainedEvents,
            bound: Bound::EventsInHistory
        }
    );
    // A static filter does not.
    let s = aud("event('Bought').where(property('price') >= 100).count() >= 1");
    assert_eq!(s.leaves[0].state.kind, StateKind::Counter);
    assert_eq!(s.leaves[0].needs, vec!["property:price".to_string()]);
    // Relative dates on traits need a timer but no leaf.
    let r = aud("trait('last_seen').within_last(7 days)");
    assert_eq!(
        r.timers,
        vec![Timer {
            leaf: None,
            kind: TimerKind::RelativeDate,
            delay_seconds: 604_800
        }]
    );
    assert!(r.leaves.is_empty());
}

#[test]
fn account_levels_and_references() {
    let mut cat = Catalogue::new();
    cat.insert(
        "vip",
        Target::Audience,
        DefinitionKind::Users,
        Some(parse("trait('tier') = 'gold'").unwrap()),
    );
    let p = compile(
        "event('Login').count() >= 100 AND ANY (event('Login').count() >= 1 AND trait('vip') = true)",
        Target::Audience,
        DefinitionKind::Accounts,
        &cat,
    );
    assert_eq!(p.leaves.len(), 2);
    assert_eq!(p.leaves[0].level, LeafLevel::Account);
    assert_eq!(p.leaves[1].level, LeafLevel::User);
    assert_ne!(p.leaves[0].id, p.leaves[1].id);
    assert_eq!(p.references, vec!["vip".to_string()]);
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\"reference\":{\"key\":\"vip\",\"target\":\"audience\"}"),
        "{json}"
    );
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn plan_rejects_invalid_definitions() {
    let cat = Catalogue::new();
    let ctx = CheckContext {
        target: Target::Audience,
        kind: DefinitionKind::Users,
        catalogue: &cat,
        key: None,
    };
    assert!(plan(&parse("event('X').count()").unwrap(), &ctx).is_err());
}
