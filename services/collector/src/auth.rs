//! Write-key authentication, exactly as Segment's clients send it.
//!
//! Order (ecosystem.md §1.6): the HTTP Basic username (password empty) wins; otherwise the body's
//! `writeKey`; otherwise the request is rejected. A `Bearer` token (Segment OAuth) is not verified:
//! the body's `writeKey` is used, as Segment does.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;

use crate::error::IngestError;

/// Where a write key sends its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub source_id: String,
    pub space_id: String,
    /// Written to `events.raw` as `write_key_id`; never the key itself.
    pub key_id: String,
}

/// The configured write keys.
#[derive(Debug, Clone, Default)]
pub struct WriteKeys {
    keys: HashMap<String, Arc<Source>>,
}

impl WriteKeys {
    pub fn new(entries: impl IntoIterator<Item = (String, Source)>) -> Self {
        WriteKeys {
            keys: entries.into_iter().map(|(k, s)| (k, Arc::new(s))).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Source>> {
        self.keys.get(key).cloned()
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

    #[test]
    fn malformed_basic_is_rejected() {
        let err = header_credential(Some("Basic !!!")).unwrap_err();
        assert_eq!(err.code(), "invalid_authorization");
        assert_eq!(err.status().as_u16(), 401);
    }
}
