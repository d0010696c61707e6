//! Sources in the `definitions` topic: the file format of `corralctl sources apply`, write-key
//! hashing, the record the collector follows, and the operations behind
//! `corralctl sources apply|list|delete` (one place, used by the CLI, the collector and the tests).
//!
//! A source is stored under the Kafka key `{space_id}/source/{source_id}` as a `Definition` whose
//! `name` is the source's name and whose body is [`SourceBody`]:
//!
//! ```json
//! {"write_keys": [{"id": "web-2026", "sha256": "9f86d081…"}]}
//! ```
//!
//! Only the SHA-256 of a write key is stored (hex), never the key. Write keys are random tokens
//! (not passwords), so an unsalted fast hash is enough: the topic must not hand out a usable
//! credential, and a lookup must not need the plaintext. The file may name a key as `env:NAME`
//! so the secret lives in the environment (CI secret, vault agent) and not in git.

use std::collections::{BTreeMap, BTreeSet};

use corral_codec::Definition;
pub use corral_runtime::definitions::Applied;
use corral_runtime::definitions::{
    apply_versioned, definition_key, publish, read_all, Desired, READ_TIMEOUT,
};
use corral_runtime::RuntimeError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `kind` of a source record.
pub const KIND_SOURCE: &str = "source";

/// The SHA-256 of a write key.
///
/// Equality is constant-time (`subtle`), so a map lookup's final comparison does not reveal how
/// many leading bytes matched. The bucket hash of a `HashMap` is computed over the digest, which
/// the caller cannot steer (they choose the key, not its SHA-256), so it leaks nothing useful.
#[derive(Clone, Copy, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a plaintext write key.
    pub fn of(write_key: &str) -> KeyHash {
        KeyHash(Sha256::digest(write_key.as_bytes()).into())
    }

    /// Lowercase hex, as stored in the topic.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<KeyHash> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(KeyHash(out))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl std::fmt::Debug for KeyHash {
    // Short form: enough to tell keys apart in logs, not the whole digest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// One write key in a record body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKey {
    /// Written to `events.raw` as `write_key_id` (tells rotated keys apart); never secret.
    pub id: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
}

/// The body of a source record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBody {
    pub write_keys: Vec<StoredKey>,
}

impl SourceBody {
    pub fn from_json(v: &serde_json::Value) -> Result<SourceBody, SourcesError> {
        let body: SourceBody = serde_json::from_value(v.clone())
            .map_err(|e| SourcesError::Body(format!("not a source body: {e}")))?;
        for k in &body.write_keys {
            if KeyHash::from_hex(&k.sha256).is_none() {
                return Err(SourcesError::Body(format!(
                    "write key {} has no valid sha256 (64 hex digits)",
                    k.id
                )));
            }
        }
        Ok(body)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "write_keys": self.write_keys })
    }
}

/// Where a write key from the definitions topic sends its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinedSource {
    pub space_id: String,
    pub source_id: String,
    pub name: Option<String>,
    /// (hash, write_key_id) of every key.
    pub keys: Vec<(KeyHash, String)>,
}

/// Reads a source record. `None` when the record is not a source (another kind).
pub fn source_of_definition(d: &Definition) -> Option<Result<DefinedSource, SourcesError>> {
    if d.kind != KIND_SOURCE {
        return None;
    }
    Some(SourceBody::from_json(&d.body).map(|body| {
        DefinedSource {
            space_id: d.space_id.clone(),
            source_id: d.key.clone(),
            name: d.name.clone(),
            keys: body
                .write_keys
                .into_iter()
                .filter_map(|k| KeyHash::from_hex(&k.sha256).map(|h| (h, k.id)))
                .collect(),
        }
    }))
}

/// Whether a Kafka key of the definitions topic names a source (`{space}/source/{id}`).
pub fn is_source_key(kafka_key: &str) -> bool {
    let mut parts = kafka_key.splitn(3, '/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(s), Some(KIND_SOURCE), Some(id)) if !s.is_empty() && !id.is_empty()
    )
}

// ---------------------------------------------------------------------------------------------
// The file `corralctl sources apply` reads.

/// `sources.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesFile {
    pub space_id: String,
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
}

/// One source of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub write_keys: Vec<WriteKeySpec>,
}

/// A write key: `"plaintext"`, `"env:NAME"`, or `{key: ..., id: ...}` to name it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WriteKeySpec {
    Key(String),
    Named { key: String, id: Option<String> },
}

/// A file's source, keys resolved and hashed (no plaintext kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    pub id: String,
    pub name: Option<String>,
    pub body: SourceBody,
}

/// The file, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFile {
    pub space_id: String,
    pub sources: Vec<ResolvedSource>,
}

/// Why a file, record or operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not a sources file: {detail}")]
    Parse { origin: String, detail: String },
    /// Every problem of the file; nothing was applied.
    #[error("{origin}: {}", .problems.join("; "))]
    Invalid {
        origin: String,
        problems: Vec<String>,
    },
    #[error("{0}")]
    Body(String),
    #[error(transparent)]
    Kafka(#[from] RuntimeError),
    #[error("no source `{source_id}` in space `{space}`")]
    NotFound { space: String, source_id: String },
}

/// A space or source id is part of the Kafka key `{space}/source/{id}`: no `/`, no blanks.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'))
}

/// The default `write_key_id` of a key: the source id and the first 8 hex digits of its hash,
/// enough to tell rotated keys apart without revealing a usable part of the key.
pub fn default_key_id(source_id: &str, hash: &KeyHash) -> String {
    format!("{source_id}-{}", &hash.to_hex()[..8])
}

/// Parses and validates a sources file, resolving `env:NAME` keys with `env` and hashing every
/// key. Reports every problem at once; refuses the whole file on any.
pub fn resolve_text(
    text: &str,
    origin: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<ResolvedFile, SourcesError> {
    let file: SourcesFile = serde_yaml_ng::from_str(text).map_err(|e| SourcesError::Parse {
        origin: origin.to_string(),
        detail: e.to_string(),
    })?;
    let mut problems = Vec::new();
    if !valid_id(&file.space_id) {
        problems.push(format!(
            "space_id {:?} must be non-empty letters, digits, - _ . : @",
            file.space_id
        ));
    }
    let mut ids = BTreeSet::new();
    // Which source a key hash belongs to, to refuse a key given to two sources.
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut sources = Vec::new();
    for (i, s) in file.sources.iter().enumerate() {
        let at = format!("sources[{i}] ({})", s.id);
        if !valid_id(&s.id) {
            problems.push(format!(
                "{at}: id must be non-empty letters, digits, - _ . : @"
            ));
        }
        if !ids.insert(s.id.clone()) {
            problems.push(format!("{at}: duplicate source id"));
        }
        let mut keys = Vec::new();
        let mut key_ids = BTreeSet::new();
        for (j, k) in s.write_keys.iter().enumerate() {
            let (given, id) = match k {
                WriteKeySpec::Key(key) => (key, None),
                WriteKeySpec::Named { key, id } => (key, id.clone()),
            };
            let plain = match given.strip_prefix("env:") {
                Some(var) => match env(var) {
                    Some(v) if !v.is_empty() => v,
                    _ => {
                        problems.push(format!(
                            "{at}: write_keys[{j}]: environment variable {var} is not set or empty"
                        ));
                        continue;
                    }
                },
                None => given.clone(),
            };
            if plain.trim().is_empty() || plain.trim() != plain {
                problems.push(format!(
                    "{at}: write_keys[{j}]: a write key must be non-empty, without surrounding blanks"
                ));
                continue;
            }
            let hash = KeyHash::of(&plain);
            let hex = hash.to_hex();
            if let Some(other) = owners.insert(hex.clone(), s.id.clone()) {
                problems.push(format!(
                    "{at}: write_keys[{j}]: the same key is already given to source {other}"
                ));
            }
            let id = id.unwrap_or_else(|| default_key_id(&s.id, &hash));
            if !key_ids.insert(id.clone()) {
                problems.push(format!("{at}: write_keys[{j}]: duplicate key id {id}"));
            }
            keys.push(StoredKey { id, sha256: hex });
        }
        sources.push(ResolvedSource {
            id: s.id.clone(),
            name: s.name.clone(),
            body: SourceBody { write_keys: keys },
        });
    }
    if !problems.is_empty() {
        return Err(SourcesError::Invalid {
            origin: origin.to_string(),
            problems,
        });
    }
    Ok(ResolvedFile {
        space_id: file.space_id,
        sources,
    })
}

// ---------------------------------------------------------------------------------------------
// Operations on the topic.

/// Where the definitions live.
#[derive(Debug, Clone)]
pub struct DefinitionsTopic {
    pub bootstrap: String,
    /// Extra librdkafka settings.
    pub kafka: BTreeMap<String, String>,
    pub topic: String,
}

/// What `apply` did with one source, and how many write keys it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceApplied {
    pub applied: Applied,
    pub write_keys: usize,
}

impl std::fmt::Display for SourceApplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = self.applied.to_string();
        match &self.applied {
            Applied::Unchanged { .. } => f.write_str(&line),
            _ => write!(
                f,
                "{}, {} write keys)",
                line.trim_end_matches(')'),
                self.write_keys
            ),
        }
    }
}

/// Writes every source of `file` whose name or keys differ from the current version as a new
/// version (previous + 1). Sources of the space missing from the file are left alone (delete
/// them with [`delete`]).
pub fn apply(
    at: &DefinitionsTopic,
    file: &ResolvedFile,
    updated_by: Option<String>,
) -> Result<Vec<SourceApplied>, SourcesError> {
    let desired: Vec<Desired> = file
        .sources
        .iter()
        .map(|s| Desired {
            space_id: file.space_id.clone(),
            kind: KIND_SOURCE.into(),
            key: s.id.clone(),
            name: s.name.clone(),
            body: s.body.to_json(),
        })
        .collect();
    let applied = apply_versioned(
        &at.bootstrap,
        &at.kafka,
        &at.topic,
        &desired,
        updated_by.as_deref(),
        |_| Ok::<_, SourcesError>(()),
    )?;
    Ok(applied
        .into_iter()
        .zip(&file.sources)
        .map(|(applied, s)| SourceApplied {
            applied,
            write_keys: s.body.write_keys.len(),
        })
        .collect())
}

/// Reads, resolves (environment of this process) and applies a file.
pub fn apply_file(
    at: &DefinitionsTopic,
    path: &std::path::Path,
    updated_by: Option<String>,
) -> Result<Vec<SourceApplied>, SourcesError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourcesError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let file = resolve_text(&text, &path.display().to_string(), |v| {
        std::env::var(v).ok()
    })?;
    apply(at, &file, updated_by)
}

/// One current source.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub space_id: String,
    pub id: String,
    pub version: i64,
    pub name: Option<String>,
    /// Key ids (`None`: the body does not parse).
    pub key_ids: Option<Vec<String>>,
    pub updated_at_ms: i64,
    pub updated_by: Option<String>,
}

/// Every current source of `space` (every space when `None`), by key.
pub fn list(at: &DefinitionsTopic, space: Option<&str>) -> Result<Vec<Listed>, SourcesError> {
    let current = read_all(&at.bootstrap, &at.kafka, &at.topic, READ_TIMEOUT)?;
    Ok(current
        .into_values()
        .filter(|d| d.kind == KIND_SOURCE && space.is_none_or(|s| d.space_id == s))
        .map(|d| Listed {
            key_ids: SourceBody::from_json(&d.body)
                .ok()
                .map(|b| b.write_keys.into_iter().map(|k| k.id).collect()),
            space_id: d.space_id,
            id: d.key,
            version: d.version,
            name: d.name,
            updated_at_ms: d.updated_at_ms,
            updated_by: d.updated_by,
        })
        .collect())
}

/// Tombstones source `source_id` of `space`: collectors stop accepting its keys.
pub fn delete(at: &DefinitionsTopic, space: &str, source_id: &str) -> Result<(), SourcesError> {
    let current = read_all(&at.bootstrap, &at.kafka, &at.topic, READ_TIMEOUT)?;
    let key = definition_key(space, KIND_SOURCE, source_id);
    if !current.contains_key(&key) {
        return Err(SourcesError::NotFound {
            space: space.to_string(),
            source_id: source_id.to_string(),
        });
    }
    publish(&at.bootstrap, &at.kafka, &at.topic, &key, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "WEB_KEY" => Some("web-secret-0123456789".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn sha256_is_the_standard_digest_in_hex() {
        // FIPS 180-2 test vector.
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = KeyHash::of("k");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_ne!(KeyHash::of("k"), KeyHash::of("K"));
        assert!(KeyHash::from_hex("abc").is_none());
        assert!(KeyHash::from_hex(&"g".repeat(64)).is_none());
        // Debug never prints the whole digest.
        assert!(format!("{h:?}").len() < 24);
    }

    #[test]
    fn file_resolves_env_keys_and_stores_only_hashes() {
        let text = r#"
space_id: acme
sources:
  - id: web
    name: Website
    write_keys: ["env:WEB_KEY", {key: literal-key, id: web-old}]
  - id: ios
    write_keys: []
"#;
        let f = resolve_text(text, "t.yaml", env).unwrap();
        assert_eq!(f.space_id, "acme");
        assert_eq!(f.sources.len(), 2);
        let web = &f.sources[0];
        assert_eq!(web.name.as_deref(), Some("Website"));
        let h = KeyHash::of("web-secret-0123456789");
        assert_eq!(web.body.write_keys[0].sha256, h.to_hex());
        assert_eq!(web.body.write_keys[0].id, default_key_id("web", &h));
        assert_eq!(web.body.write_keys[1].id, "web-old");
        let json = web.body.to_json().to_string();
        assert!(!json.contains("web-secret") && !json.contains("literal-key"));
        assert_eq!(
            SourceBody::from_json(&web.body.to_json()).unwrap(),
            web.body
        );
    }

    #[test]
    fn every_problem_is_reported_and_nothing_resolves() {
        let text = r#"
space_id: "a/b"
sources:
  - {id: web, write_keys: ["env:MISSING", "env:EMPTY", " padded", dup]}
  - {id: web, write_keys: [dup]}
  - {id: "x y", write_keys: [{key: k1, id: same}, {key: k2, id: same}]}
"#;
        let Err(SourcesError::Invalid { problems, .. }) = resolve_text(text, "t", env) else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        for needle in [
            "space_id",
            "MISSING is not set",
            "EMPTY is not set",
            "surrounding blanks",
            "duplicate source id",
            "already given to source web",
            "id must be",
            "duplicate key id same",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
        assert!(matches!(
            resolve_text("space_id: a\nsourcez: []", "t", env),
            Err(SourcesError::Parse { .. })
        ));
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../../examples/sources.yaml");
        let f = resolve_text(text, "examples/sources.yaml", |v| {
            Some(format!("secret-{v}"))
        })
        .unwrap();
        assert_eq!(f.sources.len(), 2);
        assert_eq!(f.sources[1].body.write_keys[1].id, "ios-2025");
        // Without the environment, every missing variable is named.
        let Err(SourcesError::Invalid { problems, .. }) = resolve_text(text, "x", |_| None) else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 3);
    }

    #[test]
    fn records_read_back_and_other_kinds_are_ignored() {
        let f = resolve_text(
            "space_id: s1\nsources: [{id: web, name: W, write_keys: [k]}]",
            "t",
            env,
        )
        .unwrap();
        let mut d = Definition {
            space_id: "s1".into(),
            kind: KIND_SOURCE.into(),
            key: "web".into(),
            version: 3,
            name: Some("W".into()),
            body: f.sources[0].body.to_json(),
            updated_at_ms: 0,
            updated_by: None,
        };
        let s = source_of_definition(&d).unwrap().unwrap();
        assert_eq!((s.space_id.as_str(), s.source_id.as_str()), ("s1", "web"));
        assert_eq!(s.keys[0].0, KeyHash::of("k"));
        d.body = serde_json::json!({"write_keys": [{"id": "x", "sha256": "nothex"}]});
        assert!(source_of_definition(&d).unwrap().is_err());
        d.kind = "audience".into();
        assert!(source_of_definition(&d).is_none());
        assert!(is_source_key("s1/source/web"));
        assert!(!is_source_key("s1/audience/web"));
        assert!(!is_source_key("s1/source/"));
    }
}
