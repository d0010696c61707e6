//! The schemas embedded in this build, their fingerprints, and the single-object framing.

use std::collections::HashMap;
use std::sync::OnceLock;

use std::borrow::Cow;

use apache_avro::Schema;

use crate::CodecError;

include!(concat!(env!("OUT_DIR"), "/history.rs"));

/// The marker that opens every single-object encoded record.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Marker plus the 8-byte CRC-64-AVRO fingerprint.
pub const HEADER_LEN: usize = 10;

/// Every topic with a schema, without the deployment prefix (`corral.` by default).
pub const TOPICS: &[&str] = &[
    "events.raw",
    "events.valid",
    "events.blocked",
    "events.violations",
    "events.dlq",
    "events.resolved",
    "profiles.merges",
    "audiences.membership",
    "traits.changes",
    "definitions",
];

/// The current schema text of each topic, compiled in.
const CURRENT: &[(&str, &str)] = &[
    (
        "events.raw",
        include_str!("../../../../schemas/events.raw.avsc"),
    ),
    (
        "events.valid",
        include_str!("../../../../schemas/events.valid.avsc"),
    ),
    (
        "events.blocked",
        include_str!("../../../../schemas/events.blocked.avsc"),
    ),
    (
        "events.violations",
        include_str!("../../../../schemas/events.violations.avsc"),
    ),
    (
        "events.dlq",
        include_str!("../../../../schemas/events.dlq.avsc"),
    ),
    (
        "events.resolved",
        include_str!("../../../../schemas/events.resolved.avsc"),
    ),
    (
        "profiles.merges",
        include_str!("../../../../schemas/profiles.merges.avsc"),
    ),
    (
        "audiences.membership",
        include_str!("../../../../schemas/audiences.membership.avsc"),
    ),
    (
        "traits.changes",
        include_str!("../../../../schemas/traits.changes.avsc"),
    ),
    (
        "definitions",
        include_str!("../../../../schemas/definitions.avsc"),
    ),
];

/// Upper bound for one allocation while decoding. A corrupt length prefix would otherwise make
/// apache-avro allocate up to its 512 MiB default before noticing the input is short. Kafka
/// records are far smaller than this.
const MAX_ALLOCATION_BYTES: usize = 64 * 1024 * 1024;

pub(crate) struct TopicSchemas {
    pub(crate) current: Schema,
    pub(crate) fingerprint: [u8; 8],
    /// Older writer schemas from schemas/history (the current one is matched first).
    pub(crate) history: Vec<([u8; 8], u32, Schema)>,
}

type Registry = HashMap<&'static str, TopicSchemas>;

fn registry() -> Result<&'static Registry, CodecError> {
    static REGISTRY: OnceLock<Result<Registry, CodecError>> = OnceLock::new();
    REGISTRY
        .get_or_init(build)
        .as_ref()
        .map_err(|e| CodecError::Schema {
            topic: match e {
                CodecError::Schema { topic, .. } => topic.clone(),
                _ => String::new(),
            },
            detail: e.to_string(),
        })
}

fn build() -> Result<Registry, CodecError> {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
    let mut reg = Registry::new();
    for (topic, json) in CURRENT {
        let current = parse(topic, json)?;
        let fingerprint = fingerprint_of(&current);
        let mut history = Vec::new();
        for (t, version, text) in HISTORY.iter().filter(|(t, _, _)| t == topic) {
            let schema = parse(&format!("{t}.v{version}"), text)?;
            history.push((fingerprint_of(&schema), *version, schema));
        }
        reg.insert(
            *topic,
            TopicSchemas {
                current,
                fingerprint,
                history,
            },
        );
    }
    Ok(reg)
}

fn parse(topic: &str, json: &str) -> Result<Schema, CodecError> {
    Schema::parse_str(json).map_err(|e| CodecError::Schema {
        topic: topic.to_string(),
        detail: e.to_string(),
    })
}

/// CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form, little-endian, as
/// Java's `SchemaNormalization` and fastavro compute it.
///
/// Not `Schema::fingerprint::<Rabin>()`: apache-avro 0.21 leaves a primitive with a logical type
/// as `{"type":"long"}` in the canonical form where the spec (and Java, fastavro) write `"long"`,
/// so its fingerprints of schemas with `timestamp-millis` fields match no other implementation.
/// The fastavro golden test checks every topic's fingerprint against fastavro's.
pub fn fingerprint_of(schema: &Schema) -> [u8; 8] {
    rabin(parsing_canonical_form(schema).as_bytes()).to_le_bytes()
}

/// The spec's Parsing Canonical Form (see `fingerprint_of` for the fix applied).
pub fn parsing_canonical_form(schema: &Schema) -> String {
    let mut pcf = schema.canonical_form();
    // Safe as plain text: the PCF has no whitespace, docs or defaults, and names cannot contain
    // braces or quotes, so this pattern only ever matches a primitive type object.
    for p in [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ] {
        pcf = pcf.replace(&format!("{{\"type\":\"{p}\"}}"), &format!("\"{p}\""));
    }
    pcf
}

/// CRC-64-AVRO, exactly the algorithm in the Avro specification.
fn rabin(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: OnceLock<[u64; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        t
    });
    bytes.iter().fold(EMPTY, |fp, b| {
        (fp >> 8) ^ table[((fp ^ u64::from(*b)) & 0xff) as usize]
    })
}

pub(crate) fn topic(topic: &'static str) -> Result<&'static TopicSchemas, CodecError> {
    registry()?.get(topic).ok_or_else(|| CodecError::Schema {
        topic: topic.to_string(),
        detail: "no schema is embedded for this topic".to_string(),
    })
}

/// The current schema of a topic (unprefixed name, e.g. `events.raw`).
pub fn schema(topic_name: &str) -> Option<&'static Schema> {
    let reg = registry().ok()?;
    reg.get(topic_name).map(|t| &t.current)
}

/// The current `.avsc` text of a topic, as compiled in.
pub fn schema_json(topic_name: &str) -> Option<&'static str> {
    CURRENT
        .iter()
        .find(|(t, _)| *t == topic_name)
        .map(|(_, j)| *j)
}

/// The fingerprint of a topic's current schema (the 8 bytes after `C3 01`).
pub fn fingerprint(topic_name: &str) -> Option<[u8; 8]> {
    let reg = registry().ok()?;
    reg.get(topic_name).map(|t| t.fingerprint)
}

/// Every (version, fingerprint) of a topic kept in schemas/history, oldest first.
pub fn history(topic_name: &str) -> Vec<(u32, [u8; 8])> {
    match registry() {
        Ok(reg) => reg
            .get(topic_name)
            .map(|t| t.history.iter().map(|(fp, v, _)| (*v, *fp)).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

pub(crate) fn hex(fp: &[u8]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the single-object header without decoding: the writer schema's fingerprint.
pub fn peek_fingerprint(bytes: &[u8]) -> Result<[u8; 8], CodecError> {
    header("(any topic)", bytes)
}

fn header(topic: &'static str, bytes: &[u8]) -> Result<[u8; 8], CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::TruncatedHeader {
            topic,
            len: bytes.len(),
        });
    }
    if bytes[..2] != MAGIC {
        return Err(CodecError::BadMagic {
            topic,
            found: format!("{:02X} {:02X}", bytes[0], bytes[1]),
        });
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(fp)
}

/// Starts a record: header for the topic's current schema, then room for the datum.
pub(crate) fn begin(topic: &'static str, capacity: usize) -> Result<Vec<u8>, CodecError> {
    let t = self::topic(topic)?;
    let mut out = Vec::with_capacity(HEADER_LEN + capacity);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&t.fingerprint);
    Ok(out)
}

/// Checks the header and returns the writer's fingerprint and the datum in the current schema's
/// layout: borrowed as-is when the current schema wrote it; otherwise decoded with the writer
/// schema from schemas/history, resolved to the current schema and re-encoded by apache-avro
/// (slower, but only data from before a schema change takes this path).
pub(crate) fn decode_datum<'a>(
    topic: &'static str,
    bytes: &'a [u8],
) -> Result<([u8; 8], Cow<'a, [u8]>), CodecError> {
    let fp = header(topic, bytes)?;
    let t = self::topic(topic)?;
    let datum = &bytes[HEADER_LEN..];
    if fp == t.fingerprint {
        return Ok((fp, Cow::Borrowed(datum)));
    }
    let Some((_, _, writer)) = t.history.iter().find(|(h, _, _)| *h == fp) else {
        let mut known: Vec<String> = t
            .history
            .iter()
            .map(|(h, v, _)| format!("v{v}={}", hex(h)))
            .collect();
        known.push(format!("current={}", hex(&t.fingerprint)));
        return Err(CodecError::UnknownFingerprint {
            topic,
            fingerprint: hex(&fp),
            known: known.join(", "),
        });
    };
    convert(topic, fp, writer, &t.current, datum).map(|d| (fp, Cow::Owned(d)))
}

/// Re-encodes a datum written with `writer` in the layout of `reader` (Avro schema resolution).
pub(crate) fn convert(
    topic: &'static str,
    fp: [u8; 8],
    writer: &Schema,
    reader: &Schema,
    datum: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let mut rest = datum;
    let value = apache_avro::from_avro_datum(writer, &mut rest, None)
        .map_err(|e| datum_error(topic, &fp, e))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            topic,
            fingerprint: hex(&fp),
            count: rest.len(),
        });
    }
    let mismatch = |e: apache_avro::Error| CodecError::SchemaMismatch {
        topic,
        detail: format!(
            "data written with schema {} does not resolve to the current schema: {e}",
            hex(&fp)
        ),
    };
    let value = value.resolve(reader).map_err(mismatch)?;
    apache_avro::to_avro_datum(reader, value).map_err(mismatch)
}

fn datum_error(topic: &'static str, fp: &[u8; 8], e: apache_avro::Error) -> CodecError {
    // apache-avro wraps the io error of a short read; find it to tell truncation from garbage.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    let mut truncated = false;
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            truncated |= io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        source = s.source();
    }
    let detail = e.to_string();
    if truncated {
        CodecError::TruncatedDatum {
            topic,
            fingerprint: hex(fp),
            detail,
        }
    } else {
        CodecError::MalformedDatum {
            topic,
            fingerprint: hex(fp),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{AvroRecord, MessageType, SegmentMessage};

    /// The older-version path (resolve + re-encode) works on the recursive message schema:
    /// an "old" events.raw without its last field reads as the current schema with the default.
    #[test]
    fn older_writer_schema_resolves_to_current() {
        let mut json: serde_json::Value =
            serde_json::from_str(schema_json("events.raw").unwrap()).unwrap();
        let fields = json["fields"].as_array_mut().unwrap();
        assert_eq!(fields.pop().unwrap()["name"], "client_ip");
        let old = Schema::parse_str(&json.to_string()).unwrap();

        let mut m = SegmentMessage::new("s", MessageType::Track, "m-1");
        m.properties =
            Some(serde_json::json!({"a": [1, 2.5, "x", null, {"b": true}], "c": u64::MAX}));
        m.extra
            .insert("k".into(), serde_json::json!({"z": 1, "y": 2}));
        let bytes = m.encode().unwrap();
        // client_ip is None: the datum ends with its null branch; without it, it is an old datum.
        let old_datum = &bytes[HEADER_LEN..bytes.len() - 1];

        let t = topic("events.raw").unwrap();
        let current_layout = convert("events.raw", [0; 8], &old, &t.current, old_datum).unwrap();
        let mut framed = bytes[..HEADER_LEN].to_vec();
        framed.extend_from_slice(&current_layout);
        assert_eq!(SegmentMessage::decode(&framed).unwrap(), m);
    }
}

#[cfg(test)]
mod fingerprint_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use apache_avro::rabin::Rabin;

    #[test]
    fn matches_the_published_vector_and_apache_avro_without_logical_types() {
        // ecosystem.md §6: fastavro and avro-rs agree on this one (no logical types).
        let s = Schema::parse_str(r#"{"type":"record","name":"test","fields":[{"name":"a","type":"long","default":42},{"name":"b","type":"string"}]}"#).unwrap();
        assert_eq!(hex(&fingerprint_of(&s)), "e8c6c20c615f2c47");
        assert_eq!(fingerprint_of(&s).to_vec(), s.fingerprint::<Rabin>().bytes);
    }

    #[test]
    fn logical_types_reduce_to_their_primitive() {
        let with = Schema::parse_str(r#"{"type":"record","name":"t","fields":[{"name":"a","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#).unwrap();
        let without = Schema::parse_str(
            r#"{"type":"record","name":"t","fields":[{"name":"a","type":"long"}]}"#,
        )
        .unwrap();
        assert_eq!(
            parsing_canonical_form(&with),
            parsing_canonical_form(&without)
        );
        assert_eq!(fingerprint_of(&with), fingerprint_of(&without));
    }
}
