//! Value helpers of the engine on top of the reference evaluator's value semantics.
//!
//! Comparisons (`loose_eq`, `loose_cmp`, `contains_any`, `as_f64`, `as_ts`) are
//! `corral_query::eval`'s own, so the engine compares exactly as the evaluator; what is here is
//! only what the engine needs beyond them (JSON numbers from floats, timestamps in
//! milliseconds, context fields, projection paths).

use chrono::{DateTime, Utc};
use corral_query::eval::{as_ts, lookup};
use serde_json::{Map, Value};
use std::cmp::Ordering;

/// A float as a JSON number; `None` for NaN/inf (the evaluator's "missing").
pub fn number(f: f64) -> Option<Value> {
    serde_json::Number::from_f64(f).map(Value::Number)
}

/// A timestamp value (ISO strings and dates), in milliseconds.
pub fn as_ts_ms(v: &Value) -> Option<i64> {
    as_ts(v).map(|t| t.timestamp_millis())
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
