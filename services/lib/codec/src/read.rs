//! Avro binary decoding of Corral's records in the layout of the current schemas.
//!
//! Why not apache-avro's generic decoder: it builds a `Value` tree with an allocated field name
//! per record and a schema-name lookup per recursive `JsonValue`, which made decoding a 1 KB track
//! call about 4x slower than this reader (see docs/wire-format.md). Data written with an older
//! schema version is first resolved and re-encoded to the current layout by apache-avro (see
//! `registry::decode_datum`), so this reader only ever sees the current layout.
//!
//! Every length is checked against the remaining input before allocating, and JSON nesting is
//! bounded, so hostile bytes cause an error, never a huge allocation or a stack overflow.

use serde_json::{Map, Number, Value as Json};

use crate::registry::hex;
use crate::CodecError;

/// Deeper JSON than this is rejected (serde_json's own parser stops at 128 too).
const MAX_JSON_DEPTH: usize = 128;

pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    topic: &'static str,
    fingerprint: [u8; 8],
}

impl<'a> Reader<'a> {
    pub fn new(topic: &'static str, fingerprint: [u8; 8], buf: &'a [u8]) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            topic,
            fingerprint,
        }
    }

    pub fn topic(&self) -> &'static str {
        self.topic
    }

    /// Fails unless the whole datum was consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        let left = self.buf.len() - self.pos;
        if left == 0 {
            Ok(())
        } else {
            Err(CodecError::TrailingBytes {
                topic: self.topic,
                fingerprint: hex(&self.fingerprint),
                count: left,
            })
        }
    }

    fn truncated(&self, what: &str, needed: usize) -> CodecError {
        CodecError::TruncatedDatum {
            topic: self.topic,
            fingerprint: hex(&self.fingerprint),
            detail: format!(
                "{what} needs {needed} bytes at offset {}, only {} left",
                self.pos,
                self.buf.len() - self.pos
            ),
        }
    }

    pub fn malformed(&self, detail: String) -> CodecError {
        CodecError::MalformedDatum {
            topic: self.topic,
            fingerprint: hex(&self.fingerprint),
            detail: format!("{detail} (at offset {})", self.pos),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() - self.pos < n {
            return Err(self.truncated(what, n));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn long(&mut self) -> Result<i64, CodecError> {
        let mut n: u64 = 0;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.truncated("a varint", 1));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.malformed("varint overflows 64 bits".into()));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        Err(self.malformed("varint longer than 10 bytes".into()))
    }

    pub fn int(&mut self) -> Result<i32, CodecError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| self.malformed(format!("int {n} out of range")))
    }

    pub fn boolean(&mut self) -> Result<bool, CodecError> {
        match self.take(1, "a boolean")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.malformed(format!("boolean byte {b}"))),
        }
    }

    pub fn double(&mut self) -> Result<f64, CodecError> {
        let b = self.take(8, "a double")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    /// A length prefix, checked against what is left so corrupt input cannot force a huge
    /// allocation.
    fn len(&mut self, what: &str) -> Result<usize, CodecError> {
        let n = self.long()?;
        let n = usize::try_from(n)
            .map_err(|_| self.malformed(format!("negative {what} length {n}")))?;
        if n > self.buf.len() - self.pos {
            return Err(self.truncated(what, n));
        }
        Ok(n)
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.len("bytes")?;
        Ok(self.take(n, "bytes")?.to_vec())
    }

    pub fn string(&mut self) -> Result<String, CodecError> {
        let n = self.len("a string")?;
        let b = self.take(n, "a string")?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(self.malformed(format!("string is not UTF-8: {e}"))),
        }
    }

    /// A union branch or enum index below `count`.
    pub fn index(&mut self, count: i64, what: &str) -> Result<i64, CodecError> {
        let i = self.long()?;
        if (0..count).contains(&i) {
            Ok(i)
        } else {
            Err(self.malformed(format!("{what} index {i}, expected 0..{count}")))
        }
    }

    fn nullable(&mut self) -> Result<bool, CodecError> {
        Ok(self.index(2, "union")? == 1)
    }

    pub fn opt_string(&mut self) -> Result<Option<String>, CodecError> {
        if self.nullable()? {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_long(&mut self) -> Result<Option<i64>, CodecError> {
        if self.nullable()? {
            self.long().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn opt_bytes(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if self.nullable()? {
            self.bytes().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Reads the block structure of an array or map; `item` reads one element.
    fn blocks(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes (skippable blocks).
                let _size = self.long()?;
            }
            let count = count.unsigned_abs();
            // Every element takes at least one byte, except null / empty-record items, which
            // Corral's schemas never have in arrays.
            if count > (self.buf.len() - self.pos) as u64 {
                return Err(self.truncated("an array or map block", count as usize));
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    pub fn array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let mut out = Vec::new();
        self.blocks(|r| {
            out.push(item(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn string_array(&mut self) -> Result<Vec<String>, CodecError> {
        self.array(|r| r.string())
    }

    /// A `corral.v1.JsonValue` record.
    pub fn json(&mut self) -> Result<Json, CodecError> {
        self.json_at(0)
    }

    fn json_at(&mut self, depth: usize) -> Result<Json, CodecError> {
        if depth > MAX_JSON_DEPTH {
            return Err(self.malformed(format!("JSON nested deeper than {MAX_JSON_DEPTH}")));
        }
        // Branch order of JsonValue.v in the schemas (see binary.rs).
        Ok(match self.index(8, "JsonValue union")? {
            0 => Json::Null,
            1 => Json::Bool(self.boolean()?),
            2 => Json::Number(self.long()?.into()),
            3 => {
                let f = self.double()?;
                match Number::from_f64(f) {
                    Some(n) => Json::Number(n),
                    None => return Err(self.malformed(format!("{f} is not a JSON number"))),
                }
            }
            4 => Json::String(self.string()?),
            5 => Json::Array(self.array(|r| r.json_at(depth + 1))?),
            6 => Json::Object(self.json_map_at(depth + 1)?),
            _ => {
                let text = self.string()?;
                match serde_json::from_str::<Number>(&text) {
                    Ok(n) => Json::Number(n),
                    Err(e) => {
                        return Err(self.malformed(format!(
                            "JsonBigNumber {text:?} is not a JSON number: {e}"
                        )))
                    }
                }
            }
        })
    }

    /// `["null", JsonValue]`.
    pub fn opt_json(&mut self) -> Result<Option<Json>, CodecError> {
        if self.nullable()? {
            self.json().map(Some)
        } else {
            Ok(None)
        }
    }

    /// `map<JsonValue>`.
    pub fn json_map(&mut self) -> Result<Map<String, Json>, CodecError> {
        self.json_map_at(0)
    }

    fn json_map_at(&mut self, depth: usize) -> Result<Map<String, Json>, CodecError> {
        let mut out = Map::new();
        self.blocks(|r| {
            let k = r.string()?;
            let v = r.json_at(depth)?;
            out.insert(k, v);
            Ok(())
        })?;
        Ok(out)
    }
}

pub fn mismatch(topic: &'static str, detail: String) -> CodecError {
    CodecError::SchemaMismatch { topic, detail }
}
