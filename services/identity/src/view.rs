//! Reads for the Profile API: the profile of an external id, and the external ids of a profile.
//!
//! [`IdentityView`] is a read replica of the graph store, filled from the store's compacted
//! changelog (read_committed, all partitions), so it only ever shows committed state and any
//! instance can answer for any space. [`router`] serves it over HTTP in the shape of Segment's
//! Profile API:
//!
//! - `GET /v1/spaces/{space}/collections/users/profiles/{id}/external_ids` where `{id}` is
//!   `type:value` (`user_id:abc123`) or a profile id (`use_...`, merged-away ids forward);
//! - `GET /v1/spaces/{space}/collections/users/profiles/{id}` for the profile summary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::engine::Profile;
use crate::ids::Ident;
use crate::store::{alias_key, decode_profile, id_key, profile_key};

#[derive(Default)]
pub struct IdentityView {
    entries: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    caught_up: AtomicBool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalIdView {
    #[serde(rename = "type")]
    pub id_type: String,
    pub id: String,
    pub collection: &'static str,
    pub first_seen_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileView {
    pub profile_id: String,
    pub created_at_ms: i64,
    pub merges: u32,
    pub external_ids: Vec<ExternalIdView>,
}

impl From<Profile> for ProfileView {
    fn from(p: Profile) -> Self {
        ProfileView {
            profile_id: p.id,
            created_at_ms: p.created_ms,
            merges: p.merges,
            external_ids: p
                .identifiers
                .into_iter()
                .map(|m| ExternalIdView {
                    id_type: m.id_type,
                    id: m.value,
                    collection: "users",
                    first_seen_ms: m.first_seen_ms,
                })
                .collect(),
        }
    }
}

impl IdentityView {
    pub fn new() -> Arc<IdentityView> {
        Arc::new(IdentityView::default())
    }

    /// Applies one changelog record (`None` is a tombstone).
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        let mut g = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match value {
            Some(v) => {
                g.insert(key.to_vec(), v.to_vec());
            }
            None => {
                g.remove(key);
            }
        }
    }

    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::SeqCst);
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The live profile id an identifier belongs to.
    pub fn profile_id_of(&self, space: &str, ident: &Ident) -> Option<String> {
        self.get(&id_key(space, ident))
            .and_then(|b| String::from_utf8(b).ok())
    }

    /// The live profile a (possibly merged-away) profile id resolves to.
    pub fn profile(&self, space: &str, pid: &str) -> Option<ProfileView> {
        let mut cur = pid.to_string();
        for _ in 0..10_000 {
            if let Some(p) = self.get(&profile_key(space, &cur)) {
                return decode_profile(&p).ok().map(ProfileView::from);
            }
            cur = String::from_utf8(self.get(&alias_key(space, &cur))?).ok()?;
        }
        None
    }

    /// `type:value` or a profile id.
    pub fn lookup(&self, space: &str, id: &str) -> Option<ProfileView> {
        if id.starts_with("use_") {
            if let Some(p) = self.profile(space, id) {
                return Some(p);
            }
        }
        let (t, v) = id.split_once(':')?;
        let pid = self.profile_id_of(space, &Ident::new(t, v))?;
        self.profile(space, &pid)
    }

    /// Number of (identifier, profile, alias) entries held.
    pub fn len(&self) -> usize {
        self.entries.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, Json(ErrorBody { error: what })).into_response()
}

async fn external_ids(
    State(view): State<Arc<IdentityView>>,
    Path((space, id)): Path<(String, String)>,
) -> Response {
    match view.lookup(&space, &id) {
        Some(p) => Json(serde_json::json!({
            "profile_id": p.profile_id,
            "data": p.external_ids,
        }))
        .into_response(),
        None => not_found(format!("no profile for {id} in space {space}")),
    }
}

async fn profile(
    State(view): State<Arc<IdentityView>>,
    Path((space, id)): Path<(String, String)>,
) -> Response {
    match view.lookup(&space, &id) {
        Some(p) => Json(p).into_response(),
        None => not_found(format!("no profile for {id} in space {space}")),
    }
}

async fn ready(State(view): State<Arc<IdentityView>>) -> Response {
    if view.is_caught_up() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the identity graph",
        )
            .into_response()
    }
}

/// The internal query interface (HTTP, JSON).
pub fn router(view: Arc<IdentityView>) -> Router {
    Router::new()
        .route(
            "/v1/spaces/{space}/collections/users/profiles/{id}/external_ids",
            get(external_ids),
        )
        .route(
            "/v1/spaces/{space}/collections/users/profiles/{id}",
            get(profile),
        )
        .route("/readyz", get(ready))
        .with_state(view)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::{Graph, MemGraph};
    use crate::rules::Rules;
    use crate::store::encode_profile;

    /// Copies a MemGraph into a view, as the changelog would.
    fn view_of(g: &MemGraph) -> Arc<IdentityView> {
        let v = IdentityView::new();
        for ((s, i), pid) in &g.mappings {
            v.apply(&id_key(s, i), Some(pid.as_bytes()));
        }
        for ((s, pid), p) in &g.profiles {
            v.apply(&profile_key(s, pid), Some(&encode_profile(p).unwrap()));
        }
        for ((s, from), into) in &g.aliases {
            v.apply(&alias_key(s, from), Some(into.as_bytes()));
        }
        v
    }

    #[test]
    fn lookups_by_external_id_and_by_retired_profile_id() {
        let rules = Rules::default();
        let mut g = MemGraph::default();
        let first = g
            .resolve(&rules, "s", &[Ident::new("anonymous_id", "a1")], 1)
            .unwrap();
        let second = g
            .resolve(
                &rules,
                "s",
                &[
                    Ident::new("anonymous_id", "a1"),
                    Ident::new("user_id", "u1"),
                ],
                2,
            )
            .unwrap();
        let v = view_of(&g);
        let p = v.lookup("s", "anonymous_id:a1").unwrap();
        assert_eq!(p.profile_id, second.profile_id());
        assert_eq!(p.external_ids.len(), 2);
        assert_eq!(
            v.lookup("s", first.profile_id()).unwrap().profile_id,
            second.profile_id()
        );
        assert!(v.lookup("s", "user_id:nobody").is_none());
        assert!(v.lookup("other", "anonymous_id:a1").is_none());
        // Tombstones remove.
        v.apply(&id_key("s", &Ident::new("anonymous_id", "a1")), None);
        assert!(v.lookup("s", "anonymous_id:a1").is_none());
        let _ = g.alias("s", "x");
    }
}
