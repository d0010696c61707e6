//! Write-key authentication, exactly as Segment's clients send it.
//!
//! Order (ecosystem.md §1.6): the HTTP Basic username (password empty) wins; otherwise the body's
//! `writeKey`; otherwise the request is rejected. A `Bearer` token (Segment OAuth) is not verified:
//! the body's `writeKey` is used, as Segment does.
//!
//! Keys are held and compared as SHA-256 digests ([`KeyHash`], constant-time equality); the
//! precedence of their origins is on [`WriteKeys`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use base64::Engine;

use crate::error::IngestError;
use crate::sources::{DefinedSource, KeyHash};

/// Where a write key sends its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub source_id: String,
    pub space_id: String,
    /// Written to `events.raw` as `write_key_id`; never the key itself.
    pub key_id: String,
}

/// The write keys the collector accepts, looked up by SHA-256 (no plaintext kept in memory).
///
/// Two layers, in order: the *fixed* keys (flags, environment, config file), then the keys of
/// the sources in the `definitions` topic (updated live, see [`DefinedKeys`]). There is no
/// implicit key: the local demo configures its own with `--write-key`. A fixed key wins over
/// a defined one with the same hash, so an operator's explicit configuration cannot be taken
/// over by a record in the topic. Clones share the defined layer.
#[derive(Debug, Clone, Default)]
pub struct WriteKeys {
    fixed: HashMap<KeyHash, Arc<Source>>,
    defined: Arc<RwLock<DefinedKeys>>,
}

impl WriteKeys {
    pub fn new(entries: impl IntoIterator<Item = (String, Source)>) -> Self {
        WriteKeys {
            fixed: entries
                .into_iter()
                .map(|(k, s)| (KeyHash::of(&k), Arc::new(s)))
                .collect(),
            ..WriteKeys::default()
        }
    }

    /// Fixed keys.
    pub fn len(&self) -> usize {
        self.fixed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fixed.is_empty()
    }

    /// The live layer fed from the `definitions` topic.
    pub fn defined(&self) -> &Arc<RwLock<DefinedKeys>> {
        &self.defined
    }

    pub fn get(&self, key: &str) -> Option<Arc<Source>> {
        let hash = KeyHash::of(key);
        if let Some(s) = self.fixed.get(&hash) {
            return Some(s.clone());
        }
        // A poisoned lock means a writer panicked mid-update: fail closed (401), not open.
        let defined = self.defined.read().ok()?;
        defined.get(&hash)
    }

    /// Whether `hash` is a fixed key (shadows a defined one).
    pub fn is_fixed(&self, hash: &KeyHash) -> bool {
        self.fixed.contains_key(hash)
    }
}

/// Write keys of the sources in the `definitions` topic, by definition key
/// (`{space}/source/{id}`). When two sources carry the same key, the first definition key in
/// order wins (deterministic on every collector).
#[derive(Debug, Default)]
pub struct DefinedKeys {
    by_hash: HashMap<KeyHash, BTreeMap<String, Arc<Source>>>,
    by_definition: HashMap<String, Vec<KeyHash>>,
}

impl DefinedKeys {
    /// Replaces the keys of the source under `definition_key`.
    pub fn upsert(&mut self, definition_key: &str, source: &DefinedSource) {
        self.remove(definition_key);
        let mut hashes = Vec::with_capacity(source.keys.len());
        for (hash, key_id) in &source.keys {
            let s = Arc::new(Source {
                source_id: source.source_id.clone(),
                space_id: source.space_id.clone(),
                key_id: key_id.clone(),
            });
            self.by_hash
                .entry(*hash)
                .or_default()
                .insert(definition_key.to_string(), s);
            hashes.push(*hash);
        }
        self.by_definition
            .insert(definition_key.to_string(), hashes);
    }

    /// Forgets the source under `definition_key` (deleted, or its new version is unreadable).
    pub fn remove(&mut self, definition_key: &str) {
        if let Some(hashes) = self.by_definition.remove(definition_key) {
            for h in hashes {
                if let Some(owners) = self.by_hash.get_mut(&h) {
                    owners.remove(definition_key);
                    if owners.is_empty() {
                        self.by_hash.remove(&h);
                    }
                }
            }
        }
    }

    pub fn get(&self, hash: &KeyHash) -> Option<Arc<Source>> {
        self.by_hash
            .get(hash)
            .and_then(|owners| owners.values().next().cloned())
    }

    /// Other definitions already holding `hash` (a conflict to warn about).
    pub fn owners(&self, hash: &KeyHash) -> Vec<String> {
        self.by_hash
            .get(hash)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sources loaded (including ones with no keys).
    pub fn sources(&self) -> usize {
        self.by_definition.len()
    }

    /// Distinct key hashes loaded.
    pub fn keys(&self) -> usize {
        self.by_hash.len()
    }
}

/// The credential the `Authorization` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderCredential {
    /// No header, or a scheme that does not carry the write key (Bearer).
    None,
    /// The Basic username (the write key).
    WriteKey(String),
}

/// Reads the `Authorization` header. A malformed Basic value is an error (401).
pub fn header_credential(header: Option<&str>) -> Result<HeaderCredential, IngestError> {
    let Some(h) = header.map(str::trim) else {
        return Ok(HeaderCredential::None);
    };
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(HeaderCredential::None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|e| {
            IngestError::InvalidAuthorization(format!("Basic value is not base64: {e}"))
        })?;
    let text = String::from_utf8(decoded)
        .map_err(|_| IngestError::InvalidAuthorization("Basic value is not UTF-8".to_string()))?;
    // "Include a colon before encoding": username = everything before the first colon.
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    if user.is_empty() {
        Ok(HeaderCredential::None)
    } else {
        Ok(HeaderCredential::WriteKey(user.to_string()))
    }
}

/// Resolves the request's source: Basic username first, then the body's `writeKey`.
pub fn resolve(
    keys: &WriteKeys,
    header: &HeaderCredential,
    body_key: Option<&str>,
) -> Result<Arc<Source>, IngestError> {
    let key = match header {
        HeaderCredential::WriteKey(k) => Some(k.as_str()),
        HeaderCredential::None => body_key.filter(|k| !k.is_empty()),
    };
    match key {
        None => Err(IngestError::MissingWriteKey),
        Some(k) => keys.get(k).ok_or(IngestError::InvalidWriteKey),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn keys() -> WriteKeys {
        WriteKeys::new([(
            "wk".to_string(),
            Source {
                source_id: "demo".into(),
                space_id: "default".into(),
                key_id: "demo".into(),
            },
        )])
    }

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn basic_username_is_the_key() {
        let h = header_credential(Some(&basic("wk:"))).unwrap();
        assert_eq!(h, HeaderCredential::WriteKey("wk".into()));
        assert_eq!(resolve(&keys(), &h, None).unwrap().source_id, "demo");
        // Without a colon (some hand-written clients) the whole value is the username.
        let h = header_credential(Some(&basic("wk"))).unwrap();
        assert_eq!(h, HeaderCredential::WriteKey("wk".into()));
    }

    #[test]
    fn basic_wins_over_body() {
        let h = header_credential(Some(&basic("other:"))).unwrap();
        assert_eq!(
            resolve(&keys(), &h, Some("wk")).unwrap_err(),
            IngestError::InvalidWriteKey
        );
    }

    #[test]
    fn body_key_when_no_basic() {
        for header in [None, Some("Bearer abc.def"), Some(basic(":").as_str())] {
            let h = header_credential(header).unwrap();
            assert_eq!(
                resolve(&keys(), &h, Some("wk")).unwrap().space_id,
                "default"
            );
        }
    }

    #[test]
    fn missing_and_unknown_keys() {
        let none = HeaderCredential::None;
        assert_eq!(
            resolve(&keys(), &none, None).unwrap_err(),
            IngestError::MissingWriteKey
        );
        assert_eq!(
            resolve(&keys(), &none, Some("")).unwrap_err(),
            IngestError::MissingWriteKey
        );
        assert_eq!(
            resolve(&keys(), &none, Some("nope")).unwrap_err(),
            IngestError::InvalidWriteKey
        );
    }

    fn src(id: &str) -> Source {
        Source {
            source_id: id.into(),
            space_id: "sp".into(),
            key_id: id.into(),
        }
    }

    fn defined(id: &str, keys: &[&str]) -> DefinedSource {
        DefinedSource {
            space_id: "acme".into(),
            source_id: id.into(),
            name: None,
            keys: keys
                .iter()
                .map(|k| (KeyHash::of(k), format!("{id}-key")))
                .collect(),
        }
    }

    #[test]
    fn defined_keys_follow_upserts_and_deletes() {
        let keys = WriteKeys::new([("fixed".to_string(), src("cfg"))]);
        let live = keys.clone();
        assert!(keys.get("new").is_none());
        live.defined()
            .write()
            .unwrap()
            .upsert("acme/source/web", &defined("web", &["new", "fixed"]));
        let s = keys.get("new").unwrap();
        assert_eq!(
            (s.source_id.as_str(), s.space_id.as_str(), s.key_id.as_str()),
            ("web", "acme", "web-key")
        );
        // A fixed key wins over the same key in a definition.
        assert_eq!(keys.get("fixed").unwrap().source_id, "cfg");
        assert!(keys.is_fixed(&KeyHash::of("fixed")));
        // A new version replaces the old keys (rotation).
        live.defined()
            .write()
            .unwrap()
            .upsert("acme/source/web", &defined("web", &["newer"]));
        assert!(keys.get("new").is_none());
        assert_eq!(keys.get("newer").unwrap().source_id, "web");
        live.defined().write().unwrap().remove("acme/source/web");
        assert!(keys.get("newer").is_none());
        assert_eq!(keys.defined().read().unwrap().keys(), 0);
    }

    #[test]
    fn shared_key_goes_to_the_first_definition_and_survives_one_delete() {
        let keys = WriteKeys::default();
        let mut d = keys.defined().write().unwrap();
        d.upsert("acme/source/b", &defined("b", &["k"]));
        d.upsert("acme/source/a", &defined("a", &["k"]));
        assert_eq!(d.owners(&KeyHash::of("k")).len(), 2);
        drop(d);
        assert_eq!(keys.get("k").unwrap().source_id, "a");
        keys.defined().write().unwrap().remove("acme/source/a");
        assert_eq!(keys.get("k").unwrap().source_id, "b");
    }

    #[test]
    fn malformed_basic_is_rejected() {
        let err = header_credential(Some("Basic !!!")).unwrap_err();
        assert_eq!(err.code(), "invalid_authorization");
        assert_eq!(err.status().as_u16(), 401);
    }
}
