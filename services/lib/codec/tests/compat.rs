//! Backward compatibility: every schema version kept in `schemas/history/` has a binary fixture
//! written with it in `tests/fixtures/`, and that fixture decodes with the current schema.
//!
//! Adding a version: copy the new `schemas/<topic>.avsc` to `schemas/history/<topic>.v<N>.avsc`
//! and run `CORRAL_WRITE_FIXTURES=1 cargo test -p corral-codec --test compat` once to write
//! `tests/fixtures/<topic>.v<N>.bin` (only the current version's fixture can be written; older
//! fixtures are frozen and must never be regenerated).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use corral_codec::*;
use serde_json::Value as Json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../schemas")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Decodes `bytes` as the record type of `topic`; returns the re-encoded record.
fn decode_as(topic: &str, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    fn go<T: AvroRecord>(b: &[u8]) -> Result<Vec<u8>, CodecError> {
        T::decode(b)?.encode()
    }
    match topic {
        "events.raw" => go::<RawEvent>(bytes),
        "events.valid" => go::<ValidEvent>(bytes),
        "events.blocked" => go::<BlockedEvent>(bytes),
        "events.violations" => go::<Violation>(bytes),
        "events.dlq" => go::<DeadLetter>(bytes),
        "events.resolved" => go::<ResolvedEvent>(bytes),
        "profiles.merges" => go::<ProfileMerge>(bytes),
        "audiences.membership" => go::<MembershipChange>(bytes),
        "traits.changes" => go::<TraitChange>(bytes),
        "definitions" => go::<Definition>(bytes),
        other => panic!("no record type for topic {other}: add it to decode_as"),
    }
}

/// The sample record of a topic, encoded with the current schema.
fn sample(topic: &str) -> Vec<u8> {
    match topic {
        "events.raw" => common::message().encode(),
        "events.valid" => common::valid().encode(),
        "events.blocked" => common::blocked().encode(),
        "events.violations" => common::violation().encode(),
        "events.dlq" => common::dead_letter().encode(),
        "events.resolved" => common::resolved().encode(),
        "profiles.merges" => common::merge().encode(),
        "audiences.membership" => common::membership().encode(),
        "traits.changes" => common::trait_change().encode(),
        "definitions" => common::definition().encode(),
        other => panic!("no sample for topic {other}"),
    }
    .unwrap()
}

/// (topic, version, path) of every history file.
fn history_files() -> Vec<(String, u32, PathBuf)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root().join("history")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let stem = file
            .strip_suffix(".avsc")
            .unwrap_or_else(|| panic!("schemas/history/{file}: not an .avsc file"));
        let (topic, v) = stem
            .rsplit_once(".v")
            .unwrap_or_else(|| panic!("schemas/history/{file}: expected <topic>.v<N>.avsc"));
        out.push((topic.to_string(), v.parse().unwrap(), path));
    }
    out.sort();
    out
}

#[test]
fn every_history_version_decodes_with_the_current_schema() {
    let files = history_files();
    assert!(!files.is_empty(), "schemas/history is empty");
    let write = std::env::var("CORRAL_WRITE_FIXTURES").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for (topic, version, path) in &files {
        let name = format!("{topic}.v{version}");
        assert!(TOPICS.contains(&topic.as_str()), "{name}: unknown topic");
        let schema = Schema::parse_str(&fs::read_to_string(path).unwrap()).unwrap();
        let fp = fingerprint_of(&schema);
        assert!(
            history(topic).contains(&(*version, fp)),
            "{name}: not embedded in this build (rebuild: build.rs scans schemas/history)"
        );

        // Avro's own rules: the current schema can read data written with this version.
        let current = corral_codec::schema(topic).unwrap();
        if let Err(e) = SchemaCompatibility::can_read(&schema, current) {
            failures.push(format!("{name}: current schema cannot read it: {e}"));
            continue;
        }

        let fixture = fixtures().join(format!("{name}.bin"));
        if !fixture.exists() {
            if write && Some(fp) == fingerprint(topic) {
                fs::write(&fixture, sample(topic)).unwrap();
                eprintln!("wrote {}", fixture.display());
            } else {
                failures.push(format!(
                    "{name}: fixture {} is missing; it must be written with this version \
                     (CORRAL_WRITE_FIXTURES=1 writes it while the version is current)",
                    fixture.display()
                ));
                continue;
            }
        }
        let bytes = fs::read(&fixture).unwrap();
        if peek_fingerprint(&bytes).ok() != Some(fp) {
            failures.push(format!(
                "{name}: fixture was not written with this schema version"
            ));
            continue;
        }
        match decode_as(topic, &bytes) {
            Ok(reencoded) => {
                // Re-encoded with the current schema, it must decode again.
                decode_as(topic, &reencoded).unwrap();
            }
            Err(e) => failures.push(format!("{name}: fixture does not decode: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn current_schema_is_the_latest_history_version() {
    let files = history_files();
    for topic in TOPICS {
        let latest = files
            .iter()
            .filter(|(t, _, _)| t == topic)
            .max_by_key(|(_, v, _)| *v)
            .unwrap_or_else(|| panic!("{topic}: no version in schemas/history"));
        let schema = Schema::parse_str(&fs::read_to_string(&latest.2).unwrap()).unwrap();
        assert_eq!(
            Some(fingerprint_of(&schema)),
            fingerprint(topic),
            "schemas/{topic}.avsc differs from its latest history version v{}: copy it to \
             schemas/history/{topic}.v{}.avsc and write its fixture (see tests/compat.rs)",
            latest.1,
            latest.1 + 1
        );
    }
}

#[test]
fn every_topic_has_a_schema_file_and_space_id() {
    for topic in TOPICS {
        let text = fs::read_to_string(root().join(format!("{topic}.avsc"))).unwrap();
        assert_eq!(Some(text.as_str()), schema_json(topic));
        let json: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(json["namespace"], "corral.v1", "{topic}");
        let first = &json["fields"][0];
        assert_eq!(first["name"], "space_id", "{topic}: space_id comes first");
        assert_eq!(first["type"], "string", "{topic}");
    }
}

/// Named types are defined again in every file that uses them (each .avsc stands alone); all
/// copies must be identical, or the same type would mean different things on different topics.
#[test]
fn shared_named_types_are_identical_across_files() {
    fn collect(v: &Json, out: &mut Vec<(String, String)>) {
        match v {
            Json::Object(m) => {
                if let (Some(Json::String(name)), Some(Json::String(t))) =
                    (m.get("name"), m.get("type"))
                {
                    if t == "record" || t == "enum" {
                        out.push((name.clone(), strip_docs(v).to_string()));
                    }
                }
                m.values().for_each(|x| collect(x, out));
            }
            Json::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    fn strip_docs(v: &Json) -> Json {
        match v {
            Json::Object(m) => Json::Object(
                m.iter()
                    .filter(|(k, _)| *k != "doc" && *k != "namespace")
                    .map(|(k, v)| (k.clone(), strip_docs(v)))
                    .collect(),
            ),
            Json::Array(a) => Json::Array(a.iter().map(strip_docs).collect()),
            other => other.clone(),
        }
    }
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for topic in TOPICS {
        let json: Json = serde_json::from_str(schema_json(topic).unwrap()).unwrap();
        let mut types = Vec::new();
        collect(&json, &mut types);
        for (name, def) in types {
            if let Some((other_topic, other)) = seen.get(&name) {
                assert_eq!(
                    &def, other,
                    "{name} differs between {topic} and {other_topic}"
                );
            } else {
                seen.insert(name, (topic.to_string(), def));
            }
        }
    }
    for shared in [
        "SegmentMessage",
        "JsonValue",
        "ExternalId",
        "ViolationDetail",
        "MessageType",
    ] {
        assert!(seen.contains_key(shared), "{shared} not found");
    }
}
