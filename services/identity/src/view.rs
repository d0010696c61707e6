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
//!
//! Answers: 200 with JSON; 404 `{"error": ...}` for an unknown id (or path); 400 `{"error": ...}`
//! for an id that is neither `type:value` nor a profile id; 503 `{"error": ...}` until the replica
//! has read the changelog to its end once (so a restarted instance never answers "unknown" for an
//! id it simply has not loaded yet). [`crate::client`] is the matching client.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_runtime::follow::{ChangelogRecord, Replica};

use crate::engine::Profile;
use crate::ids::Ident;
use crate::store::{alias_key, decode_profile, id_key, profile_key};

#[derive(Default)]
pub struct IdentityView {
    replica: Replica,
}

pub use corral_ops::query::identity::{ExternalIdView, ExternalIdsView, ProfileView};
pub use corral_ops::query::ErrorBody;

/// The live profile as the interface shows it.
pub fn profile_view(p: Profile) -> ProfileView {
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
                collection: "users".into(),
                first_seen_ms: m.first_seen_ms,
            })
            .collect(),
    }
}

/// What a request names: an external id or a profile id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileRef {
    External(Ident),
    Profile(String),
}

/// Profile ids are `use_` + base62 (see [`crate::engine::profile_id`]).
const PROFILE_PREFIX: &str = "use_";

impl ProfileRef {
    /// `type:value` (the type is matched case-insensitively, since every stored type is
    /// lower-case; the value is exact) or `use_...`. The error says what is wrong.
    pub fn parse(id: &str) -> Result<ProfileRef, String> {
        if id.trim().is_empty() {
            return Err(
                "the id is empty: give type:value (user_id:abc123) or a profile id (use_...)"
                    .into(),
            );
        }
        match id.split_once(':') {
            Some((t, v)) => {
                let t = t.trim();
                if t.is_empty() {
                    return Err(format!(
                        "{id:?} has no id type before ':' (as in user_id:abc123)"
                    ));
                }
                if v.trim().is_empty() {
                    return Err(format!(
                        "{id:?} has no value after ':' (as in user_id:abc123)"
                    ));
                }
                Ok(ProfileRef::External(Ident::new(t.to_ascii_lowercase(), v)))
            }
            None => match id.strip_prefix(PROFILE_PREFIX) {
                Some(rest)
                    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                {
                    Ok(ProfileRef::Profile(id.to_string()))
                }
                Some(_) => Err(format!(
                    "{id:?} is not a profile id (use_ followed by letters and digits)"
                )),
                None => Err(format!(
                    "{id:?} is neither type:value (user_id:abc123) nor a profile id (use_...)"
                )),
            },
        }
    }
}

impl IdentityView {
    pub fn new() -> Arc<IdentityView> {
        Arc::new(IdentityView::default())
    }

    /// Applies one changelog record (`None` is a tombstone).
    pub fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        self.apply_batch([(key.to_vec(), value.map(<[u8]>::to_vec))]);
    }

    /// Applies changelog records in order under one lock: readers see all of them or none.
    pub fn apply_batch(&self, records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) {
        self.replica.apply_batch(records);
    }

    pub fn set_caught_up(&self) {
        self.replica.set_caught_up();
    }

    pub fn is_caught_up(&self) -> bool {
        self.replica.is_caught_up()
    }

    /// The flag [`IdentityView::is_caught_up`] reads, for the follower to set.
    pub fn caught_up_flag(&self) -> Arc<AtomicBool> {
        self.replica.caught_up_flag()
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.replica.get(key)
    }

    /// Applies one `corral_runtime::follow::follow_topic` batch under one lock.
    pub fn apply_records(&self, batch: Vec<ChangelogRecord>) {
        self.replica.apply_records(batch);
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
                return decode_profile(&p).ok().map(profile_view);
            }
            cur = String::from_utf8(self.get(&alias_key(space, &cur))?).ok()?;
        }
        None
    }

    /// The live profile of an external id or a (possibly retired) profile id.
    pub fn resolve(&self, space: &str, what: &ProfileRef) -> Option<ProfileView> {
        match what {
            ProfileRef::Profile(pid) => self.profile(space, pid),
            ProfileRef::External(ident) => {
                let pid = self.profile_id_of(space, ident)?;
                self.profile(space, &pid)
            }
        }
    }

    /// `type:value` or a profile id; `Err` when `id` is neither.
    pub fn lookup(&self, space: &str, id: &str) -> Result<Option<ProfileView>, String> {
        Ok(self.resolve(space, &ProfileRef::parse(id)?))
    }

    /// Number of (identifier, profile, alias) entries held.
    pub fn len(&self) -> usize {
        self.replica.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn error(status: StatusCode, what: String) -> Response {
    (status, Json(ErrorBody { error: what })).into_response()
}

/// The profile `id` names in `space`, or the error's status and message.
fn answer(
    view: &IdentityView,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<ProfileView, (StatusCode, String)> {
    // A malformed path (bad percent-encoding, not UTF-8) is the client's mistake, said in JSON.
    let Path((space, id)) = path.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    let what = ProfileRef::parse(&id).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    if !view.is_caught_up() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "loading the identity graph; retry shortly".into(),
        ));
    }
    view.resolve(&space, &what).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            format!("no profile for {id} in space {space}"),
        )
    })
}

async fn external_ids(
    State(view): State<Arc<IdentityView>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match answer(&view, path) {
        Ok(p) => Json(ExternalIdsView::from(p)).into_response(),
        Err((status, what)) => error(status, what),
    }
}

async fn profile(
    State(view): State<Arc<IdentityView>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match answer(&view, path) {
        Ok(p) => Json(p).into_response(),
        Err((status, what)) => error(status, what),
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

async fn unknown_endpoint(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; reads are /v1/spaces/{{space}}/collections/users/profiles/{{id}}[/external_ids]",
            uri.path()
        ),
    )
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
        .fallback(unknown_endpoint)
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
        v.set_caught_up();
        let p = v.lookup("s", "anonymous_id:a1").unwrap().unwrap();
        assert_eq!(p.profile_id, second.profile_id());
        assert_eq!(p.external_ids.len(), 2);
        assert_eq!(
            v.lookup("s", first.profile_id())
                .unwrap()
                .unwrap()
                .profile_id,
            second.profile_id()
        );
        // Types match case-insensitively.
        assert_eq!(
            v.lookup("s", "Anonymous_ID:a1")
                .unwrap()
                .unwrap()
                .profile_id,
            second.profile_id()
        );
        assert_eq!(v.lookup("s", "user_id:nobody"), Ok(None));
        assert_eq!(v.lookup("other", "anonymous_id:a1"), Ok(None));
        assert_eq!(v.lookup("s", "use_0000000000000000000000"), Ok(None));
        // Tombstones remove.
        v.apply(&id_key("s", &Ident::new("anonymous_id", "a1")), None);
        assert_eq!(v.lookup("s", "anonymous_id:a1"), Ok(None));
        let _ = g.alias("s", "x");
    }

    #[test]
    fn ids_that_are_neither_type_value_nor_profile_ids_are_refused_with_a_reason() {
        assert_eq!(
            ProfileRef::parse("email:jane@example.com"),
            Ok(ProfileRef::External(Ident::new(
                "email",
                "jane@example.com"
            )))
        );
        // Only the first ':' separates; values may contain more.
        assert_eq!(
            ProfileRef::parse("ga_client_id:GA1.2:3"),
            Ok(ProfileRef::External(Ident::new("ga_client_id", "GA1.2:3")))
        );
        assert_eq!(
            ProfileRef::parse("use_3fQx9"),
            Ok(ProfileRef::Profile("use_3fQx9".into()))
        );
        for (bad, says) in [
            ("", "empty"),
            ("  ", "empty"),
            ("abc123", "neither type:value"),
            (":abc", "no id type"),
            ("user_id:", "no value"),
            ("use_", "not a profile id"),
            ("use_a-b", "not a profile id"),
        ] {
            let e = ProfileRef::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn answers_wait_for_the_load_then_say_400_404_or_the_profile() {
        let rules = Rules::default();
        let mut g = MemGraph::default();
        g.resolve(&rules, "s", &[Ident::new("user_id", "u1")], 1)
            .unwrap();
        let v = view_of(&g);
        let ask = |id: &str| answer(&v, Ok(Path(("s".to_string(), id.to_string()))));
        // Malformed ids are refused even while loading; known ones are not "unknown" yet.
        assert_eq!(ask("u1").unwrap_err().0, StatusCode::BAD_REQUEST);
        assert_eq!(
            ask("user_id:u1").unwrap_err().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        v.set_caught_up();
        assert_eq!(ask("user_id:u1").unwrap().external_ids.len(), 1);
        let (status, msg) = ask("user_id:u2").unwrap_err();
        assert_eq!(
            (status, msg.as_str()),
            (
                StatusCode::NOT_FOUND,
                "no profile for user_id:u2 in space s"
            )
        );
    }
}
