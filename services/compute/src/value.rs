//! Value semantics shared with the reference evaluator (`corral_query::eval`).
//!
//! The evaluator keeps its comparison helpers private, so the few that the engine needs are
//! mirrored here line for line; the differential test (`tests/differential.rs`) is what keeps
//! the two in step. (Asked upstream: make `loose_eq`, `loose_cmp`, `contains_any`, `as_f64` and
//! `as_ts` public in `corral-query` so this copy can go.)

use chrono::{DateTime, Utc};
use corral_query::eval::{lookup, parse_ts, string_form};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A float as a JSON number; `None` for NaN/inf (the evaluator's "missing").
pub fn number(f: f64) -> Option<Value> {
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// Numeric reading of a value (numbers, and strings that parse as finite numbers).
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// A timestamp value (ISO strings and dates), in milliseconds.
pub fn as_ts_ms(v: &Value) -> Option<i64> {
    let Value::String(s) = v else { return None };
    parse_ts(s).map(|t| t.timestamp_millis())
}

fn as_ts(v: &Value) -> Option<DateTime<Utc>> {
    let Value::String(s) = v else { return None };
    parse_ts(s)
}

/// Equality as the evaluator defines it (numbers across types, booleans vs 'true'/'false',
/// dates in different spellings).
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((as_f64(a), as_f64(b)), (Some(x), Some(y)) if x == y)
        }
        (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
            s.eq_ignore_ascii_case(if *x { "true" } else { "false" })
        }
        (Value::String(x), Value::String(y)) => {
            x == y
                || matches!((parse_ts(x), parse_ts(y)), (Some(p), Some(q)) if p == q && looks_like_date(x) && looks_like_date(y))
        }
        _ => a == b,
    }
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-'
}

/// Ordering as the evaluator defines it (numeric when both read as numbers, dates, strings).
pub fn loose_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x.partial_cmp(&y);
    }
    if let (Value::String(x), Value::String(y)) = (a, b) {
        if looks_like_date(x) && looks_like_date(y) {
            if let (Some(p), Some(q)) = (parse_ts(x), parse_ts(y)) {
                return Some(p.cmp(&q));
            }
        }
        return Some(x.cmp(y));
    }
    None
}

/// `contains`: element match for arrays, substring match otherwise.
pub fn contains_any(a: &Value, needles: &[Value]) -> bool {
    match a {
        Value::Array(xs) => xs.iter().any(|x| needles.iter().any(|n| loose_eq(x, n))),
        _ => {
            let hay = string_form(a);
            needles.iter().any(|n| hay.contains(&string_form(n)))
        }
    }
}

/// `before_date` / `after_date` comparison of two values.
pub fn date_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    Some(as_ts(a)?.cmp(&as_ts(b)?))
}

/// A context field; `context('timestamp')` falls back to the event's own time.
pub fn context_value(ctx: &Map<String, Value>, ts_ms: i64, name: &str) -> Option<Value> {
    match lookup(ctx, name) {
        Some(Value::Null) | None if name == "timestamp" => {
            DateTime::<Utc>::from_timestamp_millis(ts_ms).map(|t| Value::String(t.to_rfc3339()))
        }
        Some(Value::Null) | None => None,
        Some(v) => Some(v.clone()),
    }
}

/// The first segment of a dotted path (`\.` is a literal dot): what a projection must keep.
pub fn first_segment(path: &str) -> String {
    corral_query::ast::path_segments(path)
        .into_iter()
        .next()
        .unwrap_or_default()
}
