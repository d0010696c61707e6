//! Tokens for the services' query interfaces (the Profile API reads). A token is a random secret
//! an operator creates (`corralctl tokens create --space S`); the `definitions` topic keeps only
//! its SHA-256 (kind `api_token`, key = the token's id, space = the one space it may read), so
//! every instance follows token changes live and nothing that reads the topic learns a secret.
//!
//! [`protect`] puts a router behind them: a request names its space in the path
//! (`/v1/spaces/{space}/...`) and carries the token as `Authorization: Bearer <token>` or, as
//! Segment's Profile API takes it, as the Basic username. No or an unknown token: 401; a token of
//! another space: 403. `/readyz` stays open.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::definitions::DefinitionEvent;

/// The definition kind of a token.
pub const KIND: &str = "api_token";

/// What the `definitions` topic holds for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// Hex SHA-256 of a token.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The space and id of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    space: String,
    id: String,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no token: send `Authorization: Bearer <token>` (create one with `corralctl tokens create --space <space>`)")]
    Missing,
    #[error("the token is not valid (unknown or deleted)")]
    Unknown,
    #[error("token {id} is for space {granted}, not {asked}")]
    OtherSpace {
        id: String,
        granted: String,
        asked: String,
    },
}

/// The tokens in force, by digest, followed from the `definitions` topic.
#[derive(Default)]
pub struct ApiTokens {
    by_digest: RwLock<HashMap<String, Grant>>,
}

impl ApiTokens {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Applies one record of the `definitions` topic (other kinds are ignored).
    pub fn apply(&self, event: &DefinitionEvent<'_>) {
        let mut g = self.by_digest.write().unwrap_or_else(|p| p.into_inner());
        match event {
            DefinitionEvent::Upsert { key, definition } => {
                if definition.kind != KIND {
                    return;
                }
                g.retain(|_, grant| key_of(grant) != *key);
                match serde_json::from_value::<TokenBody>(definition.body.clone()) {
                    Ok(body) => {
                        g.insert(
                            body.sha256,
                            Grant {
                                space: definition.space_id.clone(),
                                id: definition.key.clone(),
                            },
                        );
                    }
                    Err(e) => tracing::warn!(key, error = %e, "token definition not in force"),
                }
            }
            DefinitionEvent::Delete { key } => g.retain(|_, grant| key_of(grant) != *key),
            DefinitionEvent::Undecodable { .. } => {}
        }
    }

    /// Whether `authorization` (the header's value) may read `space`.
    pub fn check(&self, authorization: Option<&str>, space: &str) -> Result<(), Denied> {
        let token = authorization.and_then(token_of).ok_or(Denied::Missing)?;
        let g = self.by_digest.read().unwrap_or_else(|p| p.into_inner());
        let grant = g.get(&digest(&token)).ok_or(Denied::Unknown)?;
        if grant.space != space {
            return Err(Denied::OtherSpace {
                id: grant.id.clone(),
                granted: grant.space.clone(),
                asked: space.to_string(),
            });
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.by_digest.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key_of(grant: &Grant) -> String {
    crate::definitions::definition_key(&grant.space, KIND, &grant.id)
}

/// The token of a `Bearer` header, or the username of a `Basic` one.
fn token_of(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => Some(rest.trim().to_string()).filter(|t| !t.is_empty()),
        "basic" => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let user = text.split(':').next().unwrap_or_default();
            Some(user.to_string()).filter(|t| !t.is_empty())
        }
        _ => None,
    }
}

/// The space a query path names (`/v1/spaces/{space}/...`).
fn space_of(path: &str) -> Option<String> {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some("spaces"), Some(space)) if !space.is_empty() => Some(
            percent_encoding::percent_decode_str(space)
                .decode_utf8_lossy()
                .into_owned(),
        ),
        _ => None,
    }
}

/// `router` behind `tokens` (see the module doc).
pub fn protect(router: Router, tokens: Arc<ApiTokens>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let tokens = tokens.clone();
            async move {
                let path = req.uri().path().to_string();
                if path == "/readyz" {
                    return next.run(req).await;
                }
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let Some(space) = space_of(&path) else {
                    return refuse(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
                };
                match tokens.check(auth.as_deref(), &space) {
                    Ok(()) => next.run(req).await,
                    Err(e @ Denied::OtherSpace { .. }) => {
                        refuse(StatusCode::FORBIDDEN, e.to_string())
                    }
                    Err(e) => refuse(StatusCode::UNAUTHORIZED, e.to_string()),
                }
            }
        },
    ))
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_codec::Definition;

    fn token_def(space: &str, id: &str, token: &str) -> Definition {
        Definition {
            space_id: space.into(),
            kind: KIND.into(),
            key: id.into(),
            version: 1,
            name: None,
            body: serde_json::to_value(TokenBody {
                sha256: digest(token),
            })
            .unwrap(),
            updated_at_ms: 0,
            updated_by: None,
        }
    }

    #[test]
    fn a_token_reads_its_space_only_and_stops_when_deleted() {
        let t = ApiTokens::default();
        let key = "a/api_token/ops";
        t.apply(&DefinitionEvent::Upsert {
            key,
            definition: token_def("a", "ops", "secret-1"),
        });
        assert_eq!(t.check(Some("Bearer secret-1"), "a"), Ok(()));
        // Basic with the token as username, as Segment's Profile API takes it: "secret-1:".
        assert_eq!(t.check(Some("Basic c2VjcmV0LTE6"), "a"), Ok(()));
        assert!(matches!(
            t.check(Some("Bearer secret-1"), "b"),
            Err(Denied::OtherSpace { .. })
        ));
        assert_eq!(t.check(Some("Bearer nope"), "a"), Err(Denied::Unknown));
        assert_eq!(t.check(None, "a"), Err(Denied::Missing));
        assert_eq!(t.check(Some("Token x"), "a"), Err(Denied::Missing));
        // A new version replaces the secret; a tombstone removes it.
        t.apply(&DefinitionEvent::Upsert {
            key,
            definition: token_def("a", "ops", "secret-2"),
        });
        assert_eq!(t.check(Some("Bearer secret-1"), "a"), Err(Denied::Unknown));
        assert_eq!(t.check(Some("Bearer secret-2"), "a"), Ok(()));
        t.apply(&DefinitionEvent::Delete { key });
        assert!(t.is_empty());
    }

    #[test]
    fn paths_name_their_space() {
        assert_eq!(space_of("/v1/spaces/s%201/profiles/x"), Some("s 1".into()));
        assert_eq!(space_of("/v1/spaces//x"), None);
        assert_eq!(space_of("/metrics"), None);
    }
}
