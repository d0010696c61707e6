//! Exact error text for common mistakes, in queries and in definitions files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_query::{
    error::render_all, parse_and_check, validate_definitions_str, Catalogue, CheckContext,
    DefinitionKind, ErrorCode, Target,
};

fn errors(src: &str, target: Target, kind: DefinitionKind) -> String {
    let cat = Catalogue::new();
    let ctx = CheckContext {
        target,
        kind,
        catalogue: &cat,
        key: None,
    };
    match parse_and_check(src, &ctx) {
        Ok(_) => panic!("expected an error for {src}"),
        Err(ds) => render_all(&ds, src, "query"),
    }
}

fn audience_err(src: &str) -> String {
    errors(src, Target::Audience, DefinitionKind::Users)
}

#[test]
fn misspelled_function() {
    assert_eq!(
        audience_err("event('Feature Used').cont() >= 1"),
        "\
error: unknown function `cont`; did you mean `count`?
 --> query:1:23
  |
1 | event('Feature Used').cont() >= 1
  |                       ^^^^
  = expected: a filter (where, within, ...), a reducer (count, sum, ...) or a comparison (equals, exists, ...)
"
    );
}

#[test]
fn misspelled_unit() {
    assert_eq!(
        audience_err("event('Feature Used').within(7 dys).count() >= 1"),
        "\
error: unknown time unit `dys`; did you mean `days`?
 --> query:1:32
  |
1 | event('Feature Used').within(7 dys).count() >= 1
  |                                ^^^
  = expected: seconds, minutes, hours, days or weeks
"
    );
}

#[test]
fn missing_unit() {
    assert_eq!(
        audience_err("event('Feature Used').within(7).count() >= 1"),
        "\
error: missing time unit after `7`
 --> query:1:30
  |
1 | event('Feature Used').within(7).count() >= 1
  |                              ^
  = expected: a unit, e.g. `7 days`; units are seconds, minutes, hours, days or weeks
"
    );
}

#[test]
fn unterminated_string() {
    assert_eq!(
        audience_err("event('Feature Used).count() >= 1"),
        "\
error: unterminated string; add the closing `'`
 --> query:1:7
  |
1 | event('Feature Used).count() >= 1
  |       ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = expected: `'`
"
    );
}

#[test]
fn missing_closing_parenthesis() {
    assert_eq!(
        audience_err("event('Feature Used'.count() >= 1"),
        "\
error: expected `)` to close `event(`, found `.`
 --> query:1:21
  |
1 | event('Feature Used'.count() >= 1
  |                     ^
  = expected: `)`
"
    );
}

#[test]
fn c_style_and() {
    assert_eq!(
        audience_err("trait('a') = 1 && trait('b') = 2"),
        "\
error: `&&` is not an operator in this language; use `AND`
 --> query:1:16
  |
1 | trait('a') = 1 && trait('b') = 2
  |                ^^
"
    );
}

#[test]
fn unquoted_event_name() {
    assert_eq!(
        audience_err("event(Feature Used).count() >= 1"),
        "\
error: the argument of `event` must be a quoted string
 --> query:1:7
  |
1 | event(Feature Used).count() >= 1
  |       ^^^^^^^^^^^^
  = expected: a string such as event('Order Completed')
"
    );
}

#[test]
fn audience_without_comparison() {
    assert_eq!(
        audience_err("event('Feature Used').count()"),
        "\
error: an audience must be a condition (end in a comparison such as `>= 1`), but this is a number
 --> query:1:1
  |
1 | event('Feature Used').count()
  | ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  = expected: a comparison, e.g. `>= 1`, `= 'value'` or `.exists()`
"
    );
}

#[test]
fn comparing_an_unreduced_stream() {
    assert_eq!(
        audience_err("event('Feature Used') >= 1"),
        "\
error: `at_least` cannot compare a stream; reduce it first
 --> query:1:23
  |
1 | event('Feature Used') >= 1
  |                       ^^^^
  = expected: a reducer before the comparison, e.g. `.count() >= 1`
"
    );
}

#[test]
fn property_outside_where() {
    assert_eq!(
        audience_err("property('price') > 100"),
        "\
error: `property` is only valid inside `where(...)` or as a reducer argument
 --> query:1:1
  |
1 | property('price') > 100
  | ^^^^^^^^^^^^^^^^^
  = help: filter a stream by a property: event('X').where(property('p') = 'v').count() >= 1
"
    );
}

#[test]
fn quantifier_in_users_definition() {
    assert_eq!(
        audience_err("ANY event('Login').count() >= 1"),
        "\
error: `ANY` is only valid in ACCOUNTS definitions
 --> query:1:1
  |
1 | ANY event('Login').count() >= 1
  | ^^^
  = help: set `type: accounts` on this definition, or remove the quantifier
"
    );
}

#[test]
fn parent_outside_child_event() {
    assert_eq!(
        audience_err("event('A').where(property(parent: 'id') = 1).count() >= 1"),
        "\
error: `property(parent: ...)` is only valid inside the `where` of an event nested in another event's `where`
 --> query:1:18
  |
1 | event('A').where(property(parent: 'id') = 1).count() >= 1
  |                  ^^^^^^^^^^^^^^^^^^^^^^
  = help: event('A').where(event('B').where(property('id') = property(parent: 'id')).count() >= 1)
"
    );
}

#[test]
fn draft_comparator_name() {
    assert_eq!(
        audience_err("trait('x').gte(5)"),
        "\
error: `gte` is an old name from a 2024 draft of the language; use `at_least`
 --> query:1:12
  |
1 | trait('x').gte(5)
  |            ^^^
"
    );
}

#[test]
fn missing_junction() {
    assert_eq!(
        audience_err("event('X').count() >= 1 ANDD trait('y') = 1"),
        "\
error: unexpected `ANDD` after a complete expression; did you mean `AND`?
 --> query:1:25
  |
1 | event('X').count() >= 1 ANDD trait('y') = 1
  |                         ^^^^
  = expected: AND, OR or the end of the query
"
    );
}

#[test]
fn computed_trait_with_comparison() {
    assert_eq!(
        errors(
            "event('X').within(30 days).count() >= 1",
            Target::ComputedTrait,
            DefinitionKind::Users
        ),
        "\
error: a computed trait must be a value, but this ends in a comparison
 --> query:1:36
  |
1 | event('X').within(30 days).count() >= 1
  |                                    ^^^^
  = help: remove the comparison, or define an audience instead
"
    );
}

#[test]
fn mode_without_frequency() {
    assert_eq!(
        errors(
            "event('X').mode(property('p'))",
            Target::ComputedTrait,
            DefinitionKind::Users
        ),
        "\
error: `mode` needs a minimum frequency, e.g. mode(property('x'), 2)
 --> query:1:30
  |
1 | event('X').mode(property('p'))
  |                              ^
  = expected: `,` and a minimum frequency
"
    );
}

#[test]
fn trailing_and() {
    assert_eq!(
        audience_err("event('X').count() >= 1 AND"),
        "\
error: the query ended where an expression was expected
 --> query:1:28
  |
1 | event('X').count() >= 1 AND
  |                            ^
  = expected: an expression such as event('…').count() >= 1 or trait('…') = '…'
"
    );
}

#[test]
fn second_line_position() {
    let src = "event('A').count() >= 1\nAND trait('b').contians('x')";
    assert_eq!(
        audience_err(src),
        "\
error: unknown function `contians`; did you mean `contains`?
 --> query:2:16
  |
2 | AND trait('b').contians('x')
  |                ^^^^^^^^
  = expected: a filter (where, within, ...), a reducer (count, sum, ...) or a comparison (equals, exists, ...)
"
    );
}

#[test]
fn too_many_expressions() {
    let src = (0..51)
        .map(|i| format!("trait('t{i}') = 1"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let cat = Catalogue::new();
    let ctx = CheckContext {
        target: Target::Audience,
        kind: DefinitionKind::Users,
        catalogue: &cat,
        key: None,
    };
    let errs = parse_and_check(&src, &ctx).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].code, ErrorCode::TooManyExpressions);
    assert_eq!(
        errs[0].message,
        "too many expressions: a definition may have at most 50"
    );
    assert_eq!(&src[errs[0].span.start..errs[0].span.end], "trait('t50')");
    // Exactly 50 is fine.
    let ok = (0..50)
        .map(|i| format!("trait('t{i}') = 1"))
        .collect::<Vec<_>>()
        .join(" AND ");
    assert_eq!(parse_and_check(&ok, &ctx).map(|_| ()), Ok(()));
}

#[test]
fn every_type_error_is_reported() {
    let out = audience_err("trait('x').count() > 1 AND property('p') = 1 AND event('Y') >= 2");
    assert_eq!(out.matches("error: ").count(), 3, "{out}");
}

#[test]
fn definitions_file_errors_point_into_the_file() {
    let yaml = "\
audiences:
  - key: a
    name: A
    query: >
      event('Feature Used').count() >= 1
      AND event('Login').within(7 dys).count() >= 1
  - key: b
    query: \"trait('a') = 'true' AND trait('c') = true\"
computed_traits:
  - key: c
    query: trait('b')
  - key: a
    query: event('X').count()
";
    let report = validate_definitions_str(yaml, "defs.yaml");
    assert!(report.has_errors());
    assert_eq!(
        report.to_string(),
        "\
error: unknown time unit `dys`; did you mean `days`?
 --> defs.yaml:6:35 (audience `a`)
  |
6 |       AND event('Login').within(7 dys).count() >= 1
  |                                   ^^^
  = expected: seconds, minutes, hours, days or weeks

error: reference cycle: `b` → `c` → `b`
 --> defs.yaml:8:37 (audience `b`)
  |
8 |     query: \"trait('a') = 'true' AND trait('c') = true\"
  |                                     ^^^^^^^^^^
  = help: a definition cannot depend on itself, directly or through other definitions

error: reference cycle: `c` → `b` → `c`
  --> defs.yaml:11:12 (computed trait `c`)
   |
11 |     query: trait('b')
   |            ^^^^^^^^^^
   = help: a definition cannot depend on itself, directly or through other definitions

error: duplicate key `a` (first defined on line 2); audience and computed-trait keys share one namespace
  --> defs.yaml:12:10 (computed trait `a`)
   |
12 |   - key: a
   |          ^

defs.yaml: 4 errors in 4 definitions"
    );
}

#[test]
fn definitions_file_yaml_errors() {
    let report = validate_definitions_str(
        "audiences:\n  - key: a\n    qeury: trait('x') = 1\n",
        "d.yaml",
    );
    let text = report.to_string();
    assert!(
        text.starts_with("error: invalid definitions file: audiences[0]: unknown field `qeury`"),
        "{text}"
    );
    assert!(text.contains("--> d.yaml:3:5"), "{text}");
    let report = validate_definitions_str(
        "audiences:\n  - key: a\n    type: people\n    query: trait('x') = 1\n",
        "d.yaml",
    );
    assert!(
        report.to_string().contains("unknown variant `people`"),
        "{report}"
    );
    let ok = validate_definitions_str("", "empty.yaml");
    assert_eq!(ok.to_string(), "empty.yaml: 0 definitions, no errors");
}
