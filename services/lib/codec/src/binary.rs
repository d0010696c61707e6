//! Avro binary encoding of Corral's records, written directly.
//!
//! Why not apache-avro's writer: its `Value::Map` is a `HashMap`, so maps come out in a random
//! order and the same record encodes to different bytes on each run; building a `Value` tree and
//! validating it also costs more than the encoding itself. Writing the datum by hand keeps the
//! output deterministic (replays and golden vectors compare bytes) and fast. Every record's
//! writer follows its `.avsc` field by field; the round-trip tests decode the bytes with
//! apache-avro against the schema, and the fastavro golden test checks them from Python.

use serde_json::{Map, Number, Value as Json};

/// Zig-zag varint, the encoding of Avro `int` and `long`.
#[inline]
pub fn long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[inline]
pub fn int(out: &mut Vec<u8>, v: i32) {
    long(out, i64::from(v));
}

#[inline]
pub fn boolean(out: &mut Vec<u8>, v: bool) {
    out.push(u8::from(v));
}

#[inline]
pub fn double(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

#[inline]
pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
    long(out, v.len() as i64);
    out.extend_from_slice(v);
}

#[inline]
pub fn string(out: &mut Vec<u8>, v: &str) {
    bytes(out, v.as_bytes());
}

/// A union branch index (encoded as a long).
#[inline]
pub fn branch(out: &mut Vec<u8>, index: i64) {
    long(out, index);
}

/// `["null", "string"]`.
#[inline]
pub fn opt_string(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => branch(out, 0),
        Some(s) => {
            branch(out, 1);
            string(out, s);
        }
    }
}

/// `["null", "long"]`, also with a timestamp-millis logical type.
#[inline]
pub fn opt_long(out: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => branch(out, 0),
        Some(n) => {
            branch(out, 1);
            long(out, n);
        }
    }
}

/// `["null", "bytes"]`.
#[inline]
pub fn opt_bytes(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => branch(out, 0),
        Some(b) => {
            branch(out, 1);
            bytes(out, b);
        }
    }
}

/// An array written as one block (count, items, 0) or just 0 when empty.
pub fn array<T>(out: &mut Vec<u8>, items: &[T], mut item: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        long(out, items.len() as i64);
        for i in items {
            item(out, i);
        }
    }
    long(out, 0);
}

pub fn string_array(out: &mut Vec<u8>, items: &[String]) {
    array(out, items, |o, s| string(o, s));
}

// Branch indexes of the `JsonValue.v` union in schemas/*.avsc.
const J_NULL: i64 = 0;
const J_BOOL: i64 = 1;
const J_LONG: i64 = 2;
const J_DOUBLE: i64 = 3;
const J_STRING: i64 = 4;
const J_ARRAY: i64 = 5;
const J_MAP: i64 = 6;
const J_BIG: i64 = 7;

/// A `corral.v1.JsonValue` record (its single field `v`).
pub fn json(out: &mut Vec<u8>, v: &Json) {
    match v {
        Json::Null => branch(out, J_NULL),
        Json::Bool(b) => {
            branch(out, J_BOOL);
            boolean(out, *b);
        }
        Json::Number(n) => number(out, n),
        Json::String(s) => {
            branch(out, J_STRING);
            string(out, s);
        }
        Json::Array(items) => {
            branch(out, J_ARRAY);
            array(out, items, json);
        }
        Json::Object(map) => {
            branch(out, J_MAP);
            json_map(out, map);
        }
    }
}

/// An Avro `map<JsonValue>` from a JSON object, in the map's own (sorted) key order.
pub fn json_map(out: &mut Vec<u8>, map: &Map<String, Json>) {
    if !map.is_empty() {
        long(out, map.len() as i64);
        for (k, v) in map {
            string(out, k);
            json(out, v);
        }
    }
    long(out, 0);
}

/// `["null", JsonValue]`: `None` is an absent field, `Some(Json::Null)` an explicit JSON null.
pub fn opt_json(out: &mut Vec<u8>, v: Option<&Json>) {
    match v {
        None => branch(out, 0),
        Some(j) => {
            branch(out, 1);
            json(out, j);
        }
    }
}

fn number(out: &mut Vec<u8>, n: &Number) {
    if let Some(i) = n.as_i64() {
        branch(out, J_LONG);
        long(out, i);
        return;
    }
    if n.is_f64() {
        if let Some(f) = n.as_f64() {
            // With serde_json's arbitrary_precision (if any crate turns it on) a number may carry
            // more digits than an f64 holds; only use the double when it prints back identically.
            if !cfg_precise_text(n, f) {
                big(out, n);
                return;
            }
            branch(out, J_DOUBLE);
            double(out, f);
            return;
        }
    }
    // u64 above i64::MAX, or a number only arbitrary_precision can hold: keep the decimal text.
    big(out, n);
}

fn big(out: &mut Vec<u8>, n: &Number) {
    branch(out, J_BIG);
    string(out, &n.to_string());
}

/// True when the f64 reproduces the number's text, i.e. storing the double loses nothing.
/// Without arbitrary_precision a Number that is_f64 *is* an f64, so this is always true.
fn cfg_precise_text(n: &Number, f: f64) -> bool {
    match Number::from_f64(f) {
        Some(back) => back == *n || back.to_string() == n.to_string(),
        None => false,
    }
}
