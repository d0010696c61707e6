//! Every expression of Part C of query-language.md: parses, type-checks, prints and re-parses
//! to the same AST (and the canonical JSON round-trips too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_query::{check, parse, print, Catalogue, CheckContext, DefinitionKind, Query, Target};

fn ok(src: &str, target: Target, kind: DefinitionKind) -> Query {
    let q =
        parse(src).unwrap_or_else(|d| panic!("parse failed for {src}:\n{}", d.render(src, "q")));
    let catalogue = Catalogue::new();
    let ctx = CheckContext {
        target,
        kind,
        catalogue: &catalogue,
        key: None,
    };
    if let Err(ds) = check(&q, &ctx) {
        panic!(
            "check failed for {src}:\n{}",
            corral_query::error::render_all(&ds, src, "q")
        );
    }
    let printed = print(&q);
    let again = parse(&printed).unwrap_or_else(|d| {
        panic!(
            "re-parse failed for {printed}:\n{}",
            d.render(&printed, "p")
        )
    });
    assert_eq!(again, q, "round trip changed the AST: {src} -> {printed}");
    assert_eq!(print(&again), printed, "printing is not idempotent");
    check(&again, &ctx).unwrap();
    let json = q.to_json().unwrap();
    assert_eq!(
        Query::from_json(&json).unwrap(),
        q,
        "JSON round trip: {json}"
    );
    q
}

fn audience(src: &str) -> Query {
    ok(src, Target::Audience, DefinitionKind::Users)
}

fn account_audience(src: &str) -> Query {
    ok(src, Target::Audience, DefinitionKind::Accounts)
}

fn computed(src: &str) -> Query {
    ok(src, Target::ComputedTrait, DefinitionKind::Users)
}

/// C.1 audience examples, C.3, C.4 and the S7c query (USERS).
const USER_AUDIENCES: &[&str] = &[
    "event('Shoes Bought').where( property('price') >= 100 ).within(7 days).count() >= 1",
    "event('Shoes Bought').where( \nproperty('price') >= trait('avg_spend')\nAND \nevent('Shoes Returned').within(parent: 5 days).count() >= 1 \n).within(30 days).count() >= 1",
    "NOT ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
    "entity('orders').where(entity('order-products').count() >= 1).count() >= 1",
    "entity('orders').count() >= 1 OR trait('VIP') = 'true'",
    "entity('orders').where(property('total') > 500).count() >= 1",
    // C.3
    "event('Shoes Bought').count() >= 1",
    // C.4
    "event('Page Viewed').where(property('path').contains('/user/')).count() >= 1 AND event('Subscription Created').where(property('email').exists()).count() >= 1",
    "event('Order Completed').count() >= 1 AND event('Page Viewed').where(property('page_name') = 'Docs').count() >= 1",
    "event('Quote Generated').where(property('quote_id') = trait('quote_id')).count() >= 1",
    "trait('primaryEmail').exists()",
    "trait('first_name_exists') = 'true' AND NOT trait('avatar_added') = 'true'",
    "trait('a') = 'true' OR trait('b') = 'true' OR trait('c') = 'true'",
    "trait('predictive_vip_665') <= .20 AND event('Page Viewed').within(90 days).count() = 0",
    "trait('predictive_vip_665') >= .80 AND trait('predictive_ready_859') >= .90 AND event('Page Viewed').within(14 days).count() >= 1",
    "event('Page Viewed').where(context('timestamp').before_date('2023-08-25T02:00:00-07:00')).count() >= 1",
    "trait('j_o_flow__step_ghgzm') = 'true'",
    "event('Product Added').where(NOT event('Order Completed').within(parent: 30 days).count() = 1).between(14 days, 30 days).count() >= 1",
    "event('User Registered').count() >= 3",
    "trait('email').contains('@') AND event('Motivation Submitted').count() >= 1",
    "event('Before Unload').within(30 days).count() >= 1",
    // S7c
    "event('Prequal Call').where( property('primary topic') = '${mostCommonTopicLowercase}' OR property('primary topic') = '${mostCommonTopic}').within(30 days).count() >= 1",
    // A.7's inferred dynamic property reference
    "event('Product Viewed').where( event('Order Completed').where( property('product_id') = property(parent: 'product_id') ).within(parent: 7 days).count() >= 1 ).within(30 days).count() >= 1",
];

/// C.1 account examples and the C.4 ANY query (ACCOUNTS).
const ACCOUNT_AUDIENCES: &[&str] = &[
    "ALL ( event('Shoes Bought').count() >= 1 AND trait('total_spend') > 200 )",
    "ALL NOT event('Shoes Bought').count() >= 1",
    "ANY event('Shoes Bought').count() >= 1",
    "ANY event('Audience Entered').within(30 days).count() >= 1",
];

/// C.1 computed-trait examples.
const COMPUTED_TRAITS: &[&str] = &[
    "event('Shoes Bought').within(30 days).avg(property('spend'))",
    "event('Shoes Bought').where( property('price') > 100 AND property('brand') = 'My Brand' ).min(property('spend'))",
    "event('Shoes Bought').within(30 days).first(property('spend'))",
    "event('Shoes Bought').within(30 days).mode(property('spend'), 2)",
];

#[test]
fn c1_c3_c4_user_audiences() {
    for src in USER_AUDIENCES {
        audience(src);
    }
}

#[test]
fn c1_c4_account_audiences() {
    for src in ACCOUNT_AUDIENCES {
        account_audience(src);
    }
}

#[test]
fn c1_computed_traits() {
    for src in COMPUTED_TRAITS {
        computed(src);
    }
}

/// The function-table fragments of C.1 are not definitions on their own; each is embedded
/// verbatim in the smallest definition that gives it its documented role, and that definition
/// must pass the whole pipeline.
#[test]
fn c1_function_table_fragments() {
    let a = Target::Audience;
    let t = Target::ComputedTrait;
    let cases: &[(&str, &str, Target)] = &[
        ("event('Shoes Bought')", "{}.count() >= 1", a),
        ("trait('total_spend')", "{} > 200", a),
        ("entity('accounts')", "{}.count() >= 1", a),
        (
            "property('total')",
            "event('Order Completed').where({} > 100).count() >= 1",
            a,
        ),
        (
            "context('page.url')",
            "event('Page Viewed').where({}.contains('/pricing')).count() >= 1",
            a,
        ),
        ("literal(100)", "trait('total_spend') > {}", a),
        ("literal('value')", "trait('x') = {}", a),
        (
            "literal(2022-10-17T00:00:00)",
            "trait('signup_date').after_date({})",
            a,
        ),
        (
            "where({property('price_usd') > 100})",
            "event('Shoes Bought').{}.count() >= 1",
            a,
        ),
        (
            "sources({exclude: 'QgRHeujRJBM9j18yChyC', '/;hSBZDqGDPvXCKHbikPm'})",
            "event('Shoes Bought').{}.count() >= 1",
            a,
        ),
        ("within(7 days)", "event('Shoes Bought').{}.count() >= 1", a),
        (
            "between(7 days, 10 days)",
            "event('Shoes Bought').{}.count() >= 1",
            a,
        ),
        (
            "expires_after(1 hour)",
            "event('Page Viewed').{}.count()",
            t,
        ),
        ("count()", "event('Shoes Bought').{}", t),
        ("sum(property('spend'))", "event('Shoes Bought').{}", t),
        ("avg(property('spend'))", "event('Shoes Bought').{}", t),
        ("max(property('spend'))", "event('Shoes Bought').{}", t),
        (
            "max(property('spend') as string)",
            "event('Shoes Bought').{}",
            t,
        ),
        ("min(property('spend'))", "event('Shoes Bought').{}", t),
        (
            "min(property('spend') as string)",
            "event('Shoes Bought').{}",
            t,
        ),
        ("mode(property('spend'), 2)", "event('Shoes Bought').{}", t),
        (
            "mode(property('spend') as array, 2)",
            "event('Shoes Bought').{}",
            t,
        ),
        ("first(property('spend'))", "event('Shoes Bought').{}", t),
        ("last(property('spend'))", "event('Shoes Bought').{}", t),
        ("unique(property('spend'))", "event('Shoes Bought').{}", t),
        ("equals(500)", "trait('total_spend').{}", a),
        ("== 500", "trait('total_spend') {}", a),
        ("differs(500)", "trait('total_spend').{}", a),
        ("!= 500", "trait('total_spend') {}", a),
        ("absent()", "trait('total_spend').{}", a),
        ("exists()", "trait('total_spend').{}", a),
        ("greater_than(500)", "trait('total_spend').{}", a),
        ("> 500", "trait('total_spend') {}", a),
        ("at_least(500)", "trait('total_spend').{}", a),
        (">= 500", "trait('total_spend') {}", a),
        ("less_than(500)", "trait('total_spend').{}", a),
        ("< 500", "trait('total_spend') {}", a),
        ("at_most(500)", "trait('total_spend').{}", a),
        ("<= 500", "trait('total_spend') {}", a),
        ("contains('shoes','shirts')", "trait('category').{}", a),
        ("omits('shoes')", "trait('category').{}", a),
        ("starts_with('total')", "trait('category').{}", a),
        ("ends_with('total')", "trait('category').{}", a),
        ("one_of('shoes','shirts')", "trait('category').{}", a),
        ("none_of('shoes','shirts')", "trait('category').{}", a),
        (
            "before_date(2023-12-07T18:50:00Z)",
            "trait('last_seen').{}",
            a,
        ),
        (
            "before_date('2023-12-07T18:50:00Z')",
            "trait('last_seen').{}",
            a,
        ),
        (
            "after_date(2023-12-07T18:50:00Z)",
            "trait('last_seen').{}",
            a,
        ),
        (
            "after_date('2023-12-07T18:50:00Z')",
            "trait('last_seen').{}",
            a,
        ),
        ("within_last(7 days)", "trait('last_seen').{}", a),
        ("within_next(7 days)", "trait('renewal_date').{}", a),
        ("before_last(7 days)", "trait('last_seen').{}", a),
        ("after_next(7 days)", "trait('renewal_date').{}", a),
    ];
    for (fragment, host, target) in cases {
        let src = host.replace("{}", fragment);
        assert!(src.contains(fragment));
        ok(&src, *target, DefinitionKind::Users);
    }
}

/// The syntax templates keep `{name: Type}` placeholders. Verbatim they are rejected with a
/// message that says so; with the placeholders filled in they pass the pipeline.
#[test]
fn c1_syntax_templates() {
    let a = Target::Audience;
    let t = Target::ComputedTrait;
    let cases: &[(&str, &str, Target, DefinitionKind)] = &[
        ("event({s: String})", "event('Shoes Bought').count() >= 1", a, DefinitionKind::Users),
        ("trait({s: String})", "trait('total_spend') > 1", a, DefinitionKind::Users),
        ("entity({s: String})", "entity('orders').count() >= 1", a, DefinitionKind::Users),
        ("property({s: String})", "event('X').where(property('p') = 1).count() >= 1", a, DefinitionKind::Users),
        ("property(parent: {s: String})", "event('A').where(event('B').where(property('id') = property(parent: 'id')).count() >= 1).count() >= 1", a, DefinitionKind::Users),
        ("context({s: String})", "event('X').where(context('ip').exists()).count() >= 1", a, DefinitionKind::Users),
        ("literal({a: Any})", "trait('x') = literal(1)", a, DefinitionKind::Users),
        ("where({e: Comparator})", "event('X').where(property('p') > 1).count() >= 1", a, DefinitionKind::Users),
        ("sources({exclude: {a: Array}})", "event('X').sources({exclude: 'a', 'b'}).count() >= 1", a, DefinitionKind::Users),
        ("within({d: Integer} {u: TimeUnit})", "event('X').within(3 days).count() >= 1", a, DefinitionKind::Users),
        ("within(parent: {d: Integer} {u: TimeUnit})", "event('A').where(event('B').within(parent: 3 days).count() >= 1).count() >= 1", a, DefinitionKind::Users),
        ("between({s: Integer} {su: TimeUnit}, {e: Integer} {eu: TimeUnit})", "event('X').between(3 days, 9 days).count() >= 1", a, DefinitionKind::Users),
        ("expires_after({d: Integer} {u: TimeUnit})", "event('X').expires_after(30 minutes).count()", t, DefinitionKind::Users),
        ("sum({s: EventPropertyExtractor})", "event('X').sum(property('p'))", t, DefinitionKind::Users),
        ("max({s: EventPropertyExtractor} as type)", "event('X').max(property('p') as number)", t, DefinitionKind::Users),
        ("mode({s: EventPropertyExtractor} as type, {d: Integer})", "event('X').mode(property('p') as string, 1)", t, DefinitionKind::Users),
        ("{Comparator} AND {Comparator}", "trait('a') = 1 AND trait('b') = 2", a, DefinitionKind::Users),
        ("{Comparator} OR {Comparator}", "trait('a') = 1 OR trait('b') = 2", a, DefinitionKind::Users),
        ("NOT ({Comparator})", "NOT (trait('a') = 1)", a, DefinitionKind::Users),
        ("ANY ({Comparator})", "ANY (trait('a') = 1)", a, DefinitionKind::Accounts),
        ("ALL ({Comparator})", "ALL (trait('a') = 1)", a, DefinitionKind::Accounts),
    ];
    for (template, filled, target, kind) in cases {
        // Call templates are embedded after a stream, as they would be written.
        let starts_chain = [
            "event", "trait", "entity", "property", "context", "literal", "{", "NOT", "ANY", "ALL",
        ]
        .iter()
        .any(|p| template.starts_with(p));
        let raw = if starts_chain {
            template.to_string()
        } else {
            format!("event('X').{template}")
        };
        let err = parse(&raw).expect_err(&raw);
        assert!(
            err.message.contains("placeholder notation"),
            "{template}: {}",
            err.message
        );
        ok(filled, *target, *kind);
    }
}

/// The pattern expressions of the notes, with `(expression)`, `(value)` and `<argument>`
/// filled in; parentheses around a chain are transparent, so the shapes parse as written.
#[test]
fn c1_pattern_expressions() {
    for src in [
        "NOT (trait('x')) = ('v')",
        "(trait('x')) != ('v') OR (trait('x')).absent()",
        "NOT (trait('x')).exists()",
        "NOT (trait('x')).absent()",
        "NOT (trait('x')).contains('a')",
    ] {
        audience(src);
    }
    // And the parentheses vanish in the canonical form.
    assert_eq!(
        print(&parse("(trait('x')) != ('v') OR (trait('x')).absent()").unwrap()),
        "trait('x') != 'v' OR trait('x').absent()"
    );
}

/// C.2: the bracketed list forms are accepted (Part E.5) and print bracket-free; the 2024
/// draft names and typographic quotes are rejected with a pointer to the current spelling.
#[test]
fn c2_superseded_spellings() {
    for (old, canonical) in [
        ("trait('c').one_of(['shoes','shirts'])", "trait('c').one_of('shoes', 'shirts')"),
        ("trait('c').contains(['shoes','shirts'])", "trait('c').contains('shoes', 'shirts')"),
        (
            "event('X').sources({exclude: ['QgRHeujRJBM9j18yChyC', '/;hSBZDqGDPvXCKHbikPm']}).count() >= 1",
            "event('X').sources({exclude: 'QgRHeujRJBM9j18yChyC', '/;hSBZDqGDPvXCKHbikPm'}).count() >= 1",
        ),
        ("trait('c').contains('shoes')", "trait('c').contains('shoes')"),
    ] {
        let q = audience(old);
        assert_eq!(print(&q), canonical);
    }
    for (old, new) in [
        ("eq(500)", "equals"),
        ("neq(500)", "differs"),
        ("is_null()", "absent"),
        ("is_set()", "exists"),
        ("gt(500)", "greater_than"),
        ("gte(500)", "at_least"),
        ("lt(500)", "less_than"),
        ("lte(500)", "at_most"),
        ("contains_one(['shoes','shirts'])", "contains"),
    ] {
        let src = format!("trait('x').{old}");
        let err = parse(&src).expect_err(&src);
        assert_eq!(
            err.suggestion.as_deref(),
            Some(new),
            "{src}: {}",
            err.message
        );
        assert!(err.message.contains("old name"), "{}", err.message);
    }
    for src in [
        "event(‘Shoes Bought’).where( property(‘price’) > 100 AND property(“brand”) = ‘My Brand’ ).min(property(‘spend’))",
        "event(“Shoes Bought”).within(30 days).first(property(“spend”))",
    ] {
        let err = parse(src).expect_err(src);
        assert!(err.message.starts_with("typographic quote"), "{}", err.message);
    }
}

/// Part E decisions visible in the syntax.
#[test]
fn part_e_syntax_decisions() {
    let same = |a: &str, b: &str| {
        assert_eq!(parse(a).unwrap(), parse(b).unwrap(), "{a} vs {b}");
    };
    // E.3: `=` and `==`; printer writes `=`.
    same("trait('x') == 500", "trait('x') = 500");
    assert_eq!(
        print(&parse("trait('x') == 500").unwrap()),
        "trait('x') = 500"
    );
    // Sugar and named comparators are one AST.
    same("event('X').count() >= 1", "event('X').count().at_least(1)");
    same("trait('x') > 100", "trait('x').greater_than(literal(100))");
    // E.4: braces in where are ignored.
    same(
        "event('X').where({property('p') > 1}).count() >= 1",
        "event('X').where(property('p') > 1).count() >= 1",
    );
    // E.7: double quotes and escapes.
    same(
        "event(\"Men's Shoes\").count() >= 1",
        "event('Men\\'s Shoes').count() >= 1",
    );
    assert_eq!(
        print(&parse("event(\"Men's Shoes\").count() >= 1").unwrap()),
        "event('Men\\'s Shoes').count() >= 1"
    );
    // E.6: `\.` stays in the name and means a literal dot.
    let q = parse("trait('a\\.b.c') = 1").unwrap();
    assert_eq!(print(&q), "trait('a\\.b.c') = 1");
    assert_eq!(
        corral_query::ast::path_segments("a\\.b.c"),
        vec!["a.b", "c"]
    );
    // E.8: boolean and null literals.
    audience("trait('vip') = true AND trait('churned') = false AND trait('x') != null");
    // E.9: units, singular or plural, any integer.
    same(
        "event('X').within(1 days).count() >= 1",
        "event('X').within(1 day).count() >= 1",
    );
    for unit in ["seconds", "minute", "hours", "day", "weeks"] {
        audience(&format!("event('X').within(7 {unit}).count() >= 1"));
    }
    // E.22: keyword case.
    same(
        "trait('a') = 1 and not trait('b') = 2 or trait('c') = 3",
        "trait('a') = 1 AND NOT trait('b') = 2 OR trait('c') = 3",
    );
    // E.23: NOT binds to the next primary, AND over OR.
    let q = parse("NOT trait('a') = 1 AND trait('b') = 2 OR trait('c') = 3").unwrap();
    assert_eq!(
        print(&q),
        "NOT trait('a') = 1 AND trait('b') = 2 OR trait('c') = 3"
    );
    assert!(matches!(q.expr, corral_query::Expr::Or { .. }));
    // Parenthesised sub-conjunctions stay nested and print back with their parentheses.
    let q = audience("trait('a') = 1 AND (trait('b') = 2 AND trait('c') = 3)");
    assert_eq!(
        print(&q),
        "trait('a') = 1 AND (trait('b') = 2 AND trait('c') = 3)"
    );
    // E.1: NONE.
    account_audience("NONE event('Dashboard Viewed').within(30 days).count() >= 1");
    // Numbers: leading dot, exponent, negatives; dates and timestamps with offsets.
    audience("trait('x') >= .5 AND trait('y') < -3 AND trait('z') > 1e3");
    audience(
        "trait('d').after_date(2023-12-07) AND trait('t').before_date(2023-08-25T02:00:00-07:00)",
    );
    assert_eq!(
        print(&parse("trait('t').before_date(2023-08-25T02:00:00-07:00)").unwrap()),
        "trait('t').before_date(2023-08-25T02:00:00-07:00)"
    );
    // Unique count (E.14).
    audience("event('Feature Used').unique(property('feature_name')).count() >= 3");
}

#[test]
fn spans_are_populated() {
    let src = "event('Shoes Bought').within(7 days).count() >= 1";
    let q = parse(src).unwrap();
    let corral_query::Expr::Chain(c) = &q.expr else {
        panic!()
    };
    assert_eq!(
        &src[c.source.span.start..c.source.span.end],
        "event('Shoes Bought')"
    );
    assert_eq!(
        &src[c.calls[0].span.start..c.calls[0].span.end],
        "within(7 days)"
    );
    assert_eq!(&src[c.calls[1].span.start..c.calls[1].span.end], "count()");
    assert_eq!(&src[c.calls[2].span.start..c.calls[2].span.end], ">= 1");
    assert_eq!(&src[c.span.start..c.span.end], src);
}
