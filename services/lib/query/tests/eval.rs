//! Reference-evaluator semantics: Part E decisions, one by one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, Duration, Utc};
use corral_query::{
    evaluate_audience, evaluate_trait, parse, Account, Catalogue, DefinitionKind, EntityRecord,
    Event, Profile, Subject, Target,
};
use serde_json::{json, Value};

fn now() -> DateTime<Utc> {
    "2026-04-01T12:00:00Z".parse().unwrap()
}

fn ago(days: i64) -> DateTime<Utc> {
    now() - Duration::days(days)
}

fn ev(name: &str, t: DateTime<Utc>) -> Event {
    Event::new(name, t)
}

fn p(events: Vec<Event>, traits: Value) -> Profile {
    Profile {
        events,
        traits: traits.as_object().cloned().unwrap_or_default(),
        ..Default::default()
    }
}

fn aud(src: &str, profile: &Profile) -> bool {
    evaluate_audience(
        &parse(src).unwrap(),
        Subject::User(profile),
        now(),
        &Catalogue::new(),
    )
    .unwrap()
}

fn val(src: &str, profile: &Profile) -> Option<Value> {
    evaluate_trait(
        &parse(src).unwrap(),
        Subject::User(profile),
        now(),
        &Catalogue::new(),
    )
    .unwrap()
}

#[test]
fn null_and_missing() {
    let u = p(vec![], json!({"a": null, "b": 5, "vip": true, "s": "true"}));
    // Comparisons are false against a missing value; differs too (Segment's rule).
    assert!(!aud("trait('missing') = 1", &u));
    assert!(!aud("trait('missing') != 1", &u));
    assert!(!aud("trait('missing') > 1", &u));
    assert!(!aud("trait('missing').contains('x')", &u));
    assert!(aud("trait('missing').absent()", &u));
    assert!(aud("trait('a').absent()", &u), "null is absent");
    assert!(
        aud("NOT trait('missing') = 1", &u),
        "NOT (x = v) counts nulls"
    );
    assert!(aud("trait('b') != 4 AND trait('b').exists()", &u));
    // Booleans equal the strings 'true' / 'false'; both directions.
    assert!(aud("trait('vip') = 'true'", &u));
    assert!(aud("trait('vip') = true", &u));
    assert!(aud("trait('s') = true", &u));
    assert!(!aud("trait('vip') = 'false'", &u));
    // Strings and numbers are interchangeable.
    assert!(aud("trait('b') = '5'", &u));
    assert!(aud("trait('b') >= 5.0", &u));
}

#[test]
fn not_of_and_is_plain_boolean_logic() {
    // NOT (A AND B) = NOT A OR NOT B (Part E.2).
    let src = "NOT ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )";
    let bought_poor = p(vec![ev("Shoes Bought", ago(1))], json!({"total_spend": 10}));
    let bought_rich = p(
        vec![ev("Shoes Bought", ago(1))],
        json!({"total_spend": 500}),
    );
    let none_rich = p(vec![], json!({"total_spend": 500}));
    assert!(aud(src, &bought_poor));
    assert!(!aud(src, &bought_rich));
    assert!(aud(src, &none_rich));
}

#[test]
fn windows() {
    let u = p(
        vec![
            ev("X", ago(7)),
            ev("X", ago(10)),
            ev("X", now() + Duration::days(1)),
        ],
        json!({}),
    );
    // within is inclusive of its edge; future events do not exist yet.
    assert_eq!(val("event('X').within(7 days).count()", &u), Some(json!(1)));
    assert_eq!(val("event('X').count()", &u), Some(json!(2)));
    // between: [now - max, now - min], order of arguments irrelevant, both ends inclusive.
    assert_eq!(
        val("event('X').between(7 days, 10 days).count()", &u),
        Some(json!(2))
    );
    assert_eq!(
        val("event('X').between(10 days, 7 days).count()", &u),
        Some(json!(2))
    );
    assert_eq!(val("event('X').between(8 days, 9 days).count()", &u), None);
    assert_eq!(val("event('X').within(36 hours).count()", &u), None);
    assert_eq!(
        val("event('X').within(2 weeks).count()", &u),
        Some(json!(2))
    );
}

#[test]
fn funnels_and_parent_references() {
    let bought = |d: i64, price: f64| ev("Shoes Bought", ago(d)).prop("price", price);
    let src = "event('Shoes Bought').where(
        property('price') >= trait('avg_spend')
        AND event('Shoes Returned').within(parent: 5 days).count() >= 1
    ).within(30 days).count() >= 1";
    let avg = json!({"avg_spend": 100});
    // Returned 3 days after buying.
    assert!(aud(
        src,
        &p(
            vec![bought(10, 150.0), ev("Shoes Returned", ago(7))],
            avg.clone()
        )
    ));
    // Returned 6 days after: too late. Returned before buying: not a return of it.
    assert!(!aud(
        src,
        &p(
            vec![bought(10, 150.0), ev("Shoes Returned", ago(4))],
            avg.clone()
        )
    ));
    assert!(!aud(
        src,
        &p(
            vec![bought(10, 150.0), ev("Shoes Returned", ago(11))],
            avg.clone()
        )
    ));
    // Price below the trait.
    assert!(!aud(
        src,
        &p(vec![bought(10, 50.0), ev("Shoes Returned", ago(7))], avg)
    ));
    // property(parent: ...) reads the parent event.
    let src = "event('Viewed').where(event('Ordered').where(property('id') = property(parent: 'id')).count() >= 1).count() >= 1";
    let v = |id: &str| ev("Viewed", ago(5)).prop("id", id);
    let o = |id: &str| ev("Ordered", ago(4)).prop("id", id);
    assert!(aud(src, &p(vec![v("a"), o("a")], json!({}))));
    assert!(!aud(src, &p(vec![v("a"), o("b")], json!({}))));
    // ...on either side of the comparison.
    let src2 = "event('Viewed').where(event('Ordered').where(property(parent: 'id') = property('id')).count() >= 1).count() >= 1";
    assert!(aud(src2, &p(vec![v("a"), o("a")], json!({}))));
    // between(parent: ...) is relative to the parent too.
    let src3 =
        "event('A').where(event('B').between(parent: 1 day, 3 days).count() >= 1).count() >= 1";
    assert!(aud(
        src3,
        &p(vec![ev("A", ago(10)), ev("B", ago(8))], json!({}))
    ));
    assert!(!aud(
        src3,
        &p(
            vec![ev("A", ago(10)), ev("B", ago(10) + Duration::hours(12))],
            json!({})
        )
    ));
}

#[test]
fn reducers() {
    let e = |v: Value| ev("X", ago(1)).prop("v", v);
    let u = p(
        vec![
            e(json!(3)),
            e(json!("10")),
            e(json!(2.5)),
            e(json!(null)),
            ev("X", ago(1)),
        ],
        json!({}),
    );
    assert_eq!(val("event('X').count()", &u), Some(json!(5)));
    assert_eq!(val("event('X').sum(property('v'))", &u), Some(json!(15.5)));
    assert_eq!(
        val("event('X').avg(property('v'))", &u),
        Some(json!(15.5 / 3.0))
    );
    assert_eq!(val("event('X').max(property('v'))", &u), Some(json!(10.0)));
    assert_eq!(val("event('X').min(property('v'))", &u), Some(json!(2.5)));
    // As strings: lexicographic ("10" < "2.5" < "3").
    assert_eq!(
        val("event('X').min(property('v') as string)", &u),
        Some(json!("10"))
    );
    assert_eq!(
        val("event('X').max(property('v') as string)", &u),
        Some(json!("3"))
    );
    assert_eq!(val("event('X').first(property('v'))", &u), Some(json!(3)));
    assert_eq!(val("event('X').last(property('v'))", &u), Some(json!(2.5)));
    assert_eq!(
        val("event('X').unique(property('v'))", &u),
        Some(json!(["3", "10", "2.5"]))
    );
    assert_eq!(
        val("event('X').unique(property('v')).count()", &u),
        Some(json!(3))
    );
    // mode: minimum frequency, ties to the alphabetically first value.
    let m = p(
        ["b", "a", "b", "a", "c"]
            .iter()
            .map(|s| ev("X", ago(1)).prop("v", *s))
            .collect(),
        json!({}),
    );
    assert_eq!(
        val("event('X').mode(property('v'), 2)", &m),
        Some(json!("a"))
    );
    assert_eq!(val("event('X').mode(property('v'), 3)", &m), None);
    let n = p(
        vec![ev("X", ago(1)).prop("v", 7), ev("X", ago(1)).prop("v", 7)],
        json!({}),
    );
    assert_eq!(
        val("event('X').mode(property('v') as number, 1)", &n),
        Some(json!(7))
    );
    // Arrays count per element unless `as array`.
    let arr = p(
        vec![
            ev("X", ago(1)).prop("v", json!(["a", "b"])),
            ev("X", ago(1)).prop("v", json!(["b"])),
        ],
        json!({}),
    );
    assert_eq!(
        val("event('X').mode(property('v'), 2)", &arr),
        Some(json!("b"))
    );
    assert_eq!(
        val("event('X').mode(property('v') as array, 1)", &arr),
        Some(json!("[\"a\",\"b\"]"))
    );
}

#[test]
fn empty_streams() {
    let u = p(vec![], json!({}));
    // In audiences count and sum of nothing are 0 ...
    assert!(aud("event('X').count() = 0", &u));
    assert!(aud("event('X').sum(property('v')) = 0", &u));
    assert!(aud("event('X').unique(property('v')).count() = 0", &u));
    // ... and avg/min/max/first/last/mode are missing.
    for r in [
        "avg(property('v'))",
        "min(property('v'))",
        "max(property('v'))",
        "first(property('v'))",
        "last(property('v'))",
        "mode(property('v'), 1)",
    ] {
        assert!(!aud(&format!("event('X').{r} = 0"), &u), "{r}");
        assert!(aud(&format!("event('X').{r}.absent()"), &u), "{r}");
    }
    // A computed trait over no qualifying event has no value, even count.
    assert_eq!(val("event('X').count()", &u), None);
    assert_eq!(val("event('X').sum(property('v'))", &u), None);
}

#[test]
fn session_windows() {
    let q = "event('Page Viewed').expires_after(30 minutes).count()";
    let t = |min: i64| ev("Page Viewed", now() - Duration::minutes(min));
    // Session: the events after the last gap longer than 30 minutes.
    assert_eq!(
        val(q, &p(vec![t(200), t(50), t(25), t(5)], json!({}))),
        Some(json!(3))
    );
    // Expired: nothing for more than 30 minutes.
    assert_eq!(val(q, &p(vec![t(45), t(40)], json!({}))), None);
}

#[test]
fn comparators() {
    let u = p(
        vec![],
        json!({
            "email": "ann@example.com",
            "tags": ["a", "b"],
            "seen": ago(3).to_rfc3339(),
            "renews": (now() + Duration::days(3)).to_rfc3339(),
            "signup": "2024-01-15",
            "nested": {"a.b": {"c": 1}},
        }),
    );
    assert!(aud("trait('email').contains('@', 'zzz')", &u));
    assert!(aud("trait('email').omits('zzz')", &u));
    assert!(aud(
        "trait('email').starts_with('ann') AND trait('email').ends_with('.com')",
        &u
    ));
    assert!(aud("trait('tags').contains('b')", &u));
    assert!(aud("trait('email').one_of('x', 'ann@example.com')", &u));
    assert!(aud("trait('email').none_of('x', 'y')", &u));
    assert!(!aud("trait('missing').none_of('x')", &u));
    assert!(aud("trait('seen').within_last(7 days)", &u));
    assert!(!aud("trait('seen').within_last(2 days)", &u));
    assert!(aud("trait('seen').before_last(2 days)", &u));
    assert!(aud("trait('renews').within_next(7 days)", &u));
    assert!(aud("trait('renews').after_next(2 days)", &u));
    assert!(aud("trait('signup').before_date(2024-02-01T00:00:00Z)", &u));
    assert!(aud("trait('signup').after_date('2024-01-14')", &u));
    assert!(aud("trait('signup') < 2024-02-01", &u));
    // Paths: `.` traverses, `\.` is a literal dot.
    assert!(aud("trait('nested.a\\.b.c') = 1", &u));
}

#[test]
fn sources_context_and_entities() {
    let mut a = ev("X", ago(1));
    a.source_id = Some("bad".into());
    a.context
        .insert("page".into(), json!({"url": "https://x/pricing"}));
    let b = ev("X", ago(2));
    let u = Profile {
        events: vec![a, b],
        entities: [(
            "orders".to_string(),
            vec![
                EntityRecord {
                    properties: json!({"total": 600}).as_object().cloned().unwrap(),
                    relations: [("order-products".to_string(), vec![EntityRecord::default()])]
                        .into(),
                },
                EntityRecord {
                    properties: json!({"total": 20}).as_object().cloned().unwrap(),
                    ..Default::default()
                },
            ],
        )]
        .into(),
        ..Default::default()
    };
    assert_eq!(
        val("event('X').sources({exclude: 'bad'}).count()", &u),
        Some(json!(1))
    );
    assert!(aud(
        "event('X').where(context('page.url').contains('/pricing')).count() = 1",
        &u
    ));
    assert!(aud(
        "event('X').where(context('timestamp').before_date('2026-03-31T00:00:00Z')).count() = 1",
        &u
    ));
    assert!(aud(
        "entity('orders').where(property('total') > 500).count() >= 1",
        &u
    ));
    assert!(aud(
        "entity('orders').where(entity('order-products').count() >= 1).count() = 1",
        &u
    ));
    assert!(!aud(
        "entity('orders').count() >= 3 OR trait('VIP') = 'true'",
        &u
    ));
}

#[test]
fn accounts() {
    let cat = Catalogue::new();
    let run = |src: &str, a: &Account| {
        evaluate_audience(&parse(src).unwrap(), Subject::Account(a), now(), &cat).unwrap()
    };
    let user = |n: usize, spend: i64| {
        p(
            (0..n).map(|_| ev("Shoes Bought", ago(1))).collect(),
            json!({"total_spend": spend}),
        )
    };
    let a = Account {
        traits: json!({"plan": "business", "total_spend": 0})
            .as_object()
            .cloned()
            .unwrap(),
        users: vec![user(1, 300), user(2, 100)],
    };
    assert!(run("ANY event('Shoes Bought').count() >= 2", &a));
    assert!(!run(
        "ALL ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
        &a
    ));
    assert!(run("ALL event('Shoes Bought').count() >= 1", &a));
    assert!(!run("ALL NOT event('Shoes Bought').count() >= 1", &a));
    assert!(!run("NONE event('Shoes Bought').count() >= 1", &a));
    // Outside quantifiers: account traits, and events of all users together.
    assert!(run(
        "trait('plan') = 'business' AND trait('total_spend') = 0",
        &a
    ));
    assert!(run("event('Shoes Bought').count() = 3", &a));
    let empty = Account::default();
    for q in [
        "ANY trait('x').absent()",
        "ALL trait('x').absent()",
        "NONE trait('x').exists()",
    ] {
        assert!(!run(q, &empty), "{q}");
    }
}

#[test]
fn references() {
    let mut cat = Catalogue::new();
    cat.insert(
        "spend",
        Target::ComputedTrait,
        DefinitionKind::Users,
        Some(parse("event('Order').sum(property('rev'))").unwrap()),
    );
    cat.insert(
        "big",
        Target::Audience,
        DefinitionKind::Users,
        Some(parse("trait('spend') > 100").unwrap()),
    );
    // A stale stored trait is ignored in favour of the definition.
    let u = p(
        vec![ev("Order", ago(1)).prop("rev", 150)],
        json!({"spend": 1, "big": false}),
    );
    let yes = |src: &str| {
        evaluate_audience(&parse(src).unwrap(), Subject::User(&u), now(), &cat).unwrap()
    };
    assert!(yes("trait('big') = 'true'"));
    assert!(yes("trait('big') = true"));
    assert!(!yes("trait('big') = false"));
    let small = p(vec![], json!({}));
    assert!(evaluate_audience(
        &parse("trait('big') = false").unwrap(),
        Subject::User(&small),
        now(),
        &cat
    )
    .unwrap());
}
