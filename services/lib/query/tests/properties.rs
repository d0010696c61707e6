//! Property tests: printer/parser round trip on generated ASTs, and no panics anywhere in the
//! pipeline on arbitrary input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{FixedOffset, NaiveDate, TimeZone};
use corral_query::ast::*;
use corral_query::{parse, print, Span};
use proptest::prelude::*;

fn sp() -> Span {
    Span::default()
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "Order Completed".to_string(),
            "a.b".into(),
            "a\\.b".into(),
            "Men's Shoes".into(),
            "\"quoted\"".into(),
            "back\\slash\\".into(),
            "".into(),
            "${x}".into(),
        ]),
        any::<String>(),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        name().prop_map(Literal::String),
        any::<i64>().prop_map(Literal::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Literal::Float),
        (1000i32..=9999, 1u32..=12, 1u32..=28)
            .prop_map(|(y, m, d)| Literal::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap())),
        (
            1000i32..=9999,
            1u32..=12,
            1u32..=28,
            0u32..24,
            0u32..60,
            0u32..60,
            prop_oneof![Just(0u32), 0u32..1_000_000_000],
            -(23 * 60 + 59)..=(23 * 60 + 59i32),
        )
            .prop_map(|(y, mo, d, h, mi, s, ns, off)| {
                let naive = NaiveDate::from_ymd_opt(y, mo, d)
                    .unwrap()
                    .and_hms_nano_opt(h, mi, s, ns)
                    .unwrap();
                let tz = FixedOffset::east_opt(off * 60).unwrap();
                Literal::Timestamp(tz.from_local_datetime(&naive).unwrap())
            }),
        any::<bool>().prop_map(Literal::Bool),
        Just(Literal::Null),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    (
        0u64..1_000_000,
        prop::sample::select(vec![
            TimeUnit::Second,
            TimeUnit::Minute,
            TimeUnit::Hour,
            TimeUnit::Day,
            TimeUnit::Week,
        ]),
    )
        .prop_map(|(amount, unit)| Duration {
            amount,
            unit,
            span: sp(),
        })
}

fn extractor() -> impl Strategy<Value = Extractor> {
    prop_oneof![
        name().prop_map(|name| ExtractorKind::Event { name }),
        name().prop_map(|name| ExtractorKind::Entity { name }),
        name().prop_map(|name| ExtractorKind::Trait { name }),
        (name(), any::<bool>()).prop_map(|(name, parent)| ExtractorKind::Property { name, parent }),
        name().prop_map(|name| ExtractorKind::Context { name }),
        literal().prop_map(|value| ExtractorKind::Literal { value }),
    ]
    .prop_map(|kind| Extractor { kind, span: sp() })
}

fn prop_ref() -> impl Strategy<Value = PropRef> {
    (
        prop::sample::select(vec![
            PropKind::Property,
            PropKind::ParentProperty,
            PropKind::Context,
        ]),
        name(),
    )
        .prop_map(|(kind, name)| PropRef {
            kind,
            name,
            span: sp(),
        })
}

fn as_type() -> impl Strategy<Value = Option<ValueType>> {
    prop::option::of(prop::sample::select(vec![
        ValueType::Number,
        ValueType::String,
        ValueType::Array,
    ]))
}

fn reducer() -> impl Strategy<Value = Reducer> {
    prop_oneof![
        Just(Reducer::Count),
        prop_ref().prop_map(|of| Reducer::Sum { of }),
        prop_ref().prop_map(|of| Reducer::Avg { of }),
        (prop_ref(), as_type()).prop_map(|(of, as_type)| Reducer::Min { of, as_type }),
        (prop_ref(), as_type()).prop_map(|(of, as_type)| Reducer::Max { of, as_type }),
        (prop_ref(), as_type(), 0u64..1000).prop_map(|(of, as_type, min_frequency)| {
            Reducer::Mode {
                of,
                as_type,
                min_frequency,
            }
        }),
        prop_ref().prop_map(|of| Reducer::First { of }),
        prop_ref().prop_map(|of| Reducer::Last { of }),
        prop_ref().prop_map(|of| Reducer::Unique { of }),
    ]
}

fn chain_with(expr: BoxedStrategy<Expr>, depth: u32) -> BoxedStrategy<Chain> {
    let operand: BoxedStrategy<Chain> = if depth == 0 {
        extractor()
            .prop_map(|source| Chain {
                source,
                calls: vec![],
                span: sp(),
            })
            .boxed()
    } else {
        chain_with(expr.clone(), depth - 1)
    };
    let b = || operand.clone().prop_map(Box::new);
    let list = || prop::collection::vec(operand.clone(), 1..3);
    let comparator = prop_oneof![
        b().prop_map(Comparator::Equals),
        b().prop_map(Comparator::Differs),
        b().prop_map(Comparator::GreaterThan),
        b().prop_map(Comparator::AtLeast),
        b().prop_map(Comparator::LessThan),
        b().prop_map(Comparator::AtMost),
        Just(Comparator::Absent),
        Just(Comparator::Exists),
        list().prop_map(Comparator::Contains),
        b().prop_map(Comparator::Omits),
        b().prop_map(Comparator::StartsWith),
        b().prop_map(Comparator::EndsWith),
        list().prop_map(Comparator::OneOf),
        list().prop_map(Comparator::NoneOf),
        b().prop_map(Comparator::BeforeDate),
        b().prop_map(Comparator::AfterDate),
        duration().prop_map(Comparator::WithinLast),
        duration().prop_map(Comparator::WithinNext),
        duration().prop_map(Comparator::BeforeLast),
        duration().prop_map(Comparator::AfterNext),
    ];
    let call =
        prop_oneof![
            expr.prop_map(|e| CallKind::Where {
                condition: Box::new(e)
            }),
            prop::collection::vec(name(), 1..3).prop_map(|exclude| CallKind::Sources { exclude }),
            (any::<bool>(), duration())
                .prop_map(|(parent, duration)| CallKind::Within { parent, duration }),
            (any::<bool>(), duration(), duration())
                .prop_map(|(parent, from, to)| CallKind::Between { parent, from, to }),
            duration().prop_map(|duration| CallKind::ExpiresAfter { duration }),
            reducer().prop_map(CallKind::Reduce),
            comparator.prop_map(CallKind::Compare),
        ]
        .prop_map(|kind| Call { kind, span: sp() });
    (extractor(), prop::collection::vec(call, 0..4))
        .prop_map(|(source, calls)| Chain {
            source,
            calls,
            span: sp(),
        })
        .boxed()
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = chain_with(Just(placeholder()).boxed(), 0)
        .prop_map(Expr::Chain)
        .boxed();
    leaf.prop_recursive(4, 24, 3, |inner| {
        let quant = prop::sample::select(vec![Quantifier::Any, Quantifier::All, Quantifier::None]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|items| Expr::Or { items, span: sp() }),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|items| Expr::And { items, span: sp() }),
            inner.clone().prop_map(|e| Expr::Not {
                expr: Box::new(e),
                span: sp()
            }),
            (quant, inner.clone()).prop_map(|(quantifier, e)| Expr::Quantified {
                quantifier,
                expr: Box::new(e),
                span: sp()
            }),
            chain_with(inner, 1).prop_map(Expr::Chain),
        ]
    })
}

/// A trivially valid condition, used where the generator needs a `where` body at depth 0.
fn placeholder() -> Expr {
    parse("trait('x') = 1").unwrap().expr
}

/// Token soup: random sequences of the language's own tokens reach far deeper into the parser
/// and checker than random bytes do.
fn token_soup() -> impl Strategy<Value = String> {
    let tokens = prop::sample::select(vec![
        "event('A')",
        "event('B')",
        "trait('t')",
        "trait('aud')",
        "property('p')",
        "property(parent: 'p')",
        "context('timestamp')",
        "entity('e')",
        "literal(1)",
        ".",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "where(",
        "within(",
        "between(",
        "parent:",
        "7 days",
        "1 hour",
        "count()",
        "sum(property('p'))",
        "unique(property('p'))",
        "mode(property('p'), 2)",
        "min(property('p') as string)",
        ">=",
        "=",
        "==",
        "!=",
        "<",
        ">",
        "<=",
        "1",
        ".5",
        "-3",
        "'s'",
        "\"d\"",
        "2024-01-02",
        "2024-01-02T03:04:05Z",
        "true",
        "null",
        "AND",
        "OR",
        "NOT",
        "ANY",
        "ALL",
        "NONE",
        "exists()",
        "contains('x')",
        "one_of(['a','b'])",
        "within_last(3 days)",
        "expires_after(1 hour)",
        "sources({exclude: 'a'})",
        "as",
        "number",
        " ",
        "\n",
        "'",
        "\\",
    ]);
    prop::collection::vec(tokens, 0..40).prop_map(|v| v.concat())
}

fn exercise(src: &str) {
    corral_query::fuzz::harness(src.as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn print_parse_round_trip(e in expr()) {
        let q = Query { expr: e };
        let printed = print(&q);
        let parsed = parse(&printed);
        prop_assert!(parsed.is_ok(), "{printed}: {:?}", parsed.err());
        prop_assert_eq!(parsed.unwrap(), q.clone(), "{}", printed);
        let json = q.to_json().unwrap();
        prop_assert_eq!(Query::from_json(&json).unwrap(), q);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(s in any::<String>()) {
        exercise(&s);
    }

    #[test]
    fn pipeline_never_panics_on_token_soup(s in token_soup()) {
        exercise(&s);
    }

    #[test]
    fn definitions_loader_never_panics(s in any::<String>(), q in token_soup()) {
        let _ = corral_query::validate_definitions_str(&s, "x.yaml").to_string();
        let yaml = format!("audiences:\n  - key: a\n    query: >\n      {}\n", q.replace('\n', " "));
        let _ = corral_query::validate_definitions_str(&yaml, "x.yaml").to_string();
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for open in ["(", "NOT ", "ANY ", "event('a').where("] {
        let src = format!("{}trait('x') = 1", open.repeat(100_000));
        let err = parse(&src).unwrap_err();
        assert_eq!(err.code, corral_query::ErrorCode::TooDeep, "{open}");
    }
    let src = format!(
        "trait('x') = {}1{}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    assert_eq!(
        parse(&src).unwrap_err().code,
        corral_query::ErrorCode::TooDeep
    );
}

#[test]
fn long_flat_definitions_are_fine() {
    let src = vec!["trait('x') = 1"; 20_000].join(" OR ");
    let q = parse(&src).unwrap();
    assert_eq!(parse(&print(&q)).unwrap(), q);
}

// The cargo-fuzz harness over generated input: a short run in every `cargo test`, and the fallback
// of `fuzz/run.sh` (with PROPTEST_CASES raised) where cargo-fuzz cannot be used.
proptest! {
    #[test]
    fn fuzz_harness_fallback(data in prop_oneof![
        any::<Vec<u8>>(),
        any::<String>().prop_map(String::into_bytes),
        token_soup().prop_map(String::into_bytes),
    ]) {
        corral_query::fuzz::harness(&data);
    }
}
