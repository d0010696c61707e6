//! Running aggregates: the state of one reducer over a set of qualifying events.
//!
//! An [`Agg`] is what an unwindowed leaf keeps for a profile (one integer for `count`, a sum,
//! sum and count for `avg`, the current extreme, the first/last value with its time, the
//! distinct values with their first time, value frequencies for `mode`). Windowed and retained
//! leaves keep entries instead and fold them into a fresh `Agg` when evaluated, so both paths
//! share the finalisation that must match the reference evaluator exactly.

use crate::value::number;
use corral_query::ast::{Reducer, ValueType};
use corral_query::eval::as_f64;
use corral_query::eval::string_form;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A reducer's running state; `n` is the number of qualifying events (a computed trait over an
/// empty stream has no value, whatever the reducer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Agg {
    /// `count()`.
    #[serde(rename = "c")]
    Count {
        /// Events.
        n: u64,
    },
    /// `sum(p)`.
    #[serde(rename = "s")]
    Sum {
        /// Events.
        n: u64,
        /// Running sum of the numeric values.
        s: f64,
    },
    /// `avg(p)`.
    #[serde(rename = "a")]
    Avg {
        /// Events.
        n: u64,
        /// Sum of numeric values.
        s: f64,
        /// How many numeric values.
        c: u64,
    },
    /// `min`/`max` by number.
    #[serde(rename = "x")]
    Ext {
        /// Events.
        n: u64,
        /// True for `max`.
        max: bool,
        /// Best numeric reading and the value as sent.
        b: Option<(f64, Value)>,
    },
    /// `min`/`max(.. as string)`.
    #[serde(rename = "xs")]
    ExtStr {
        /// Events.
        n: u64,
        /// True for `max`.
        max: bool,
        /// Best string.
        b: Option<String>,
    },
    /// `first(p)`: earliest value and its time.
    #[serde(rename = "f")]
    First {
        /// Events.
        n: u64,
        /// Time and value.
        v: Option<(i64, Value)>,
    },
    /// `last(p)`: latest value and its time.
    #[serde(rename = "l")]
    Last {
        /// Events.
        n: u64,
        /// Time and value.
        v: Option<(i64, Value)>,
    },
    /// `unique(p)`: each distinct string form with the time it was first seen (the list is in
    /// event order).
    #[serde(rename = "u")]
    Unique {
        /// Events.
        n: u64,
        /// Value -> first time.
        m: BTreeMap<String, i64>,
    },
    /// `mode(p, d)`: value frequencies.
    #[serde(rename = "m")]
    Mode {
        /// Events.
        n: u64,
        /// Value -> frequency.
        m: BTreeMap<String, u64>,
    },
}

impl Agg {
    /// The empty aggregate for a reducer.
    pub fn new(r: &Reducer) -> Agg {
        match r {
            Reducer::Count => Agg::Count { n: 0 },
            Reducer::Sum { .. } => Agg::Sum { n: 0, s: 0.0 },
            Reducer::Avg { .. } => Agg::Avg { n: 0, s: 0.0, c: 0 },
            Reducer::Min { as_type, .. } | Reducer::Max { as_type, .. } => {
                let max = matches!(r, Reducer::Max { .. });
                if *as_type == Some(ValueType::String) {
                    Agg::ExtStr { n: 0, max, b: None }
                } else {
                    Agg::Ext { n: 0, max, b: None }
                }
            }
            Reducer::First { .. } => Agg::First { n: 0, v: None },
            Reducer::Last { .. } => Agg::Last { n: 0, v: None },
            Reducer::Unique { .. } => Agg::Unique {
                n: 0,
                m: BTreeMap::new(),
            },
            Reducer::Mode { .. } => Agg::Mode {
                n: 0,
                m: BTreeMap::new(),
            },
        }
    }

    /// Number of qualifying events.
    pub fn events(&self) -> u64 {
        match self {
            Agg::Count { n }
            | Agg::Sum { n, .. }
            | Agg::Avg { n, .. }
            | Agg::Ext { n, .. }
            | Agg::ExtStr { n, .. }
            | Agg::First { n, .. }
            | Agg::Last { n, .. }
            | Agg::Unique { n, .. }
            | Agg::Mode { n, .. } => *n,
        }
    }

    /// Adds one qualifying event at `ts` whose reducer property is `v` (missing and null are
    /// `None`). Events may arrive in any time order; equal times keep arrival order.
    pub fn add(&mut self, r: &Reducer, ts: i64, v: Option<&Value>) {
        match self {
            Agg::Count { n } => *n += 1,
            Agg::Sum { n, s } => {
                *n += 1;
                if let Some(x) = v.and_then(as_f64) {
                    *s += x;
                }
            }
            Agg::Avg { n, s, c } => {
                *n += 1;
                if let Some(x) = v.and_then(as_f64) {
                    *s += x;
                    *c += 1;
                }
            }
            Agg::Ext { n, max, b } => {
                *n += 1;
                if let Some((x, v)) = v.and_then(|v| as_f64(v).map(|x| (x, v))) {
                    if b.as_ref().is_none_or(|(bx, _)| better(*max, x, *bx)) {
                        *b = Some((x, v.clone()));
                    }
                }
            }
            Agg::ExtStr { n, max, b } => {
                *n += 1;
                if let Some(v) = v {
                    let s = string_form(v);
                    let take = match b.as_ref() {
                        None => true,
                        Some(cur) if *max => s > *cur,
                        Some(cur) => s < *cur,
                    };
                    if take {
                        *b = Some(s);
                    }
                }
            }
            Agg::First { n, v: cur } => {
                *n += 1;
                if let Some(v) = v {
                    if cur.as_ref().is_none_or(|(t, _)| ts < *t) {
                        *cur = Some((ts, v.clone()));
                    }
                }
            }
            Agg::Last { n, v: cur } => {
                *n += 1;
                if let Some(v) = v {
                    if cur.as_ref().is_none_or(|(t, _)| ts >= *t) {
                        *cur = Some((ts, v.clone()));
                    }
                }
            }
            Agg::Unique { n, m } => {
                *n += 1;
                if let Some(v) = v {
                    let e = m.entry(string_form(v)).or_insert(ts);
                    *e = (*e).min(ts);
                }
            }
            Agg::Mode { n, m } => {
                *n += 1;
                let as_array = matches!(
                    r,
                    Reducer::Mode {
                        as_type: Some(ValueType::Array),
                        ..
                    }
                );
                match v {
                    Some(Value::Array(xs)) if !as_array => {
                        for x in xs.iter().filter(|x| !x.is_null()) {
                            *m.entry(string_form(x)).or_default() += 1;
                        }
                    }
                    Some(v) => *m.entry(string_form(v)).or_default() += 1,
                    None => {}
                }
            }
        }
    }

    /// Combines another profile's aggregate into this one (merges).
    pub fn merge(&mut self, other: Agg) {
        match (self, other) {
            (Agg::Count { n }, Agg::Count { n: o }) => *n += o,
            (Agg::Sum { n, s }, Agg::Sum { n: on, s: os }) => {
                *n += on;
                *s += os;
            }
            (
                Agg::Avg { n, s, c },
                Agg::Avg {
                    n: on,
                    s: os,
                    c: oc,
                },
            ) => {
                *n += on;
                *s += os;
                *c += oc;
            }
            (Agg::Ext { n, max, b }, Agg::Ext { n: on, b: ob, .. }) => {
                *n += on;
                if let Some((x, v)) = ob {
                    if b.as_ref().is_none_or(|(bx, _)| better(*max, x, *bx)) {
                        *b = Some((x, v));
                    }
                }
            }
            (Agg::ExtStr { n, max, b }, Agg::ExtStr { n: on, b: ob, .. }) => {
                *n += on;
                if let Some(s) = ob {
                    let take = match b.as_ref() {
                        None => true,
                        Some(cur) if *max => s > *cur,
                        Some(cur) => s < *cur,
                    };
                    if take {
                        *b = Some(s);
                    }
                }
            }
            (Agg::First { n, v }, Agg::First { n: on, v: ov }) => {
                *n += on;
                if let Some((t, x)) = ov {
                    if v.as_ref().is_none_or(|(ct, _)| t < *ct) {
                        *v = Some((t, x));
                    }
                }
            }
            (Agg::Last { n, v }, Agg::Last { n: on, v: ov }) => {
                *n += on;
                if let Some((t, x)) = ov {
                    if v.as_ref().is_none_or(|(ct, _)| t > *ct) {
                        *v = Some((t, x));
                    }
                }
            }
            (Agg::Unique { n, m }, Agg::Unique { n: on, m: om }) => {
                *n += on;
                for (k, t) in om {
                    let e = m.entry(k).or_insert(t);
                    *e = (*e).min(t);
                }
            }
            (Agg::Mode { n, m }, Agg::Mode { n: on, m: om }) => {
                *n += on;
                for (k, c) in om {
                    *m.entry(k).or_default() += c;
                }
            }
            // Different reducers never share a leaf id; keep what we have.
            _ => {}
        }
    }

    /// The reducer's result (`None` is the evaluator's "missing"); `count_unique` turns the
    /// distinct list into its length.
    pub fn value(&self, r: &Reducer, count_unique: bool) -> Option<Value> {
        match self {
            Agg::Count { n } => Some(Value::from(*n)),
            Agg::Sum { s, .. } => number(*s),
            Agg::Avg { s, c, .. } => {
                if *c == 0 {
                    None
                } else {
                    number(*s / *c as f64)
                }
            }
            Agg::Ext { b, .. } => match b {
                Some((_, v @ Value::Number(_))) => Some(v.clone()),
                Some((x, _)) => number(*x),
                None => None,
            },
            Agg::ExtStr { b, .. } => b.clone().map(Value::String),
            Agg::First { v, .. } | Agg::Last { v, .. } => v.as_ref().map(|(_, v)| v.clone()),
            Agg::Unique { m, .. } => {
                if count_unique {
                    return Some(Value::from(m.len() as u64));
                }
                let mut xs: Vec<(&i64, &String)> = m.iter().map(|(k, t)| (t, k)).collect();
                xs.sort();
                Some(Value::Array(
                    xs.into_iter()
                        .map(|(_, k)| Value::String(k.clone()))
                        .collect(),
                ))
            }
            Agg::Mode { m, .. } => {
                let (min_frequency, as_type) = match r {
                    Reducer::Mode {
                        min_frequency,
                        as_type,
                        ..
                    } => (*min_frequency, *as_type),
                    _ => (1, None),
                };
                // Alphabetical iteration and a strict `>` give ties to the first value.
                let mut best: Option<(&String, u64)> = None;
                for (k, c) in m {
                    if *c >= min_frequency && best.is_none_or(|(_, bc)| *c > bc) {
                        best = Some((k, *c));
                    }
                }
                match best {
                    None => None,
                    Some((k, _)) if as_type == Some(ValueType::Number) => match k.parse::<f64>() {
                        Ok(x) => match k.parse::<i64>() {
                            Ok(i) => Some(Value::from(i)),
                            Err(_) => number(x),
                        },
                        Err(_) => Some(Value::String(k.clone())),
                    },
                    Some((k, _)) => Some(Value::String(k.clone())),
                }
            }
        }
    }
}

fn better(max: bool, x: f64, best: f64) -> bool {
    if max {
        x > best
    } else {
        x < best
    }
}
