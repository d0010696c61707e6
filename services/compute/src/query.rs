//! Read-only query interface: a profile as compute holds it (`corralctl profile show`).
//!
//! [`ProfilesView`] is a read replica of the `profiles` store, filled from the store's compacted
//! changelog (`{prefix}{app}.profiles-changelog`, read_committed, all partitions) by
//! the service scaffold's store follower (`Service::follow_store`), so it only shows committed state and any
//! instance can answer for any profile. It keeps the stored bytes and decodes a profile (with [`ProfileState`], the store's
//! own type) only when asked. [`router`] serves it over HTTP:
//!
//! - `GET /v1/spaces/{space}/profiles/{profile_id}`: [`ProfileAnswer`] (custom traits, computed
//!   trait values, audience memberships, external ids);
//! - `GET /readyz`: 200 once the replica has read the changelog to its end once.
//!
//! Answers: 200 with JSON; 404 `{"error": ...}` for an unknown profile (or one of another
//! space, or an unknown path); 400 `{"error": ...}` for a malformed path; 503 `{"error": ...}`
//! until caught up once (a restarted instance never answers "unknown" for a profile it simply
//! has not loaded yet). [`crate::client`] is the matching client.
//!
//! Memory: the replica holds every profile's stored state (see docs/compute.md, "State");
//! enable it on the instances that should answer, not necessarily on all.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_query::Target;
use corral_runtime::follow::Replica;
use serde_json::Value;
use tracing::warn;

use crate::service::Definitions;
use crate::state::ProfileState;

/// A read replica of the `profiles` store.
#[derive(Default)]
pub struct ProfilesView {
    /// Profile id → stored state bytes.
    replica: Replica,
}

pub use corral_ops::query::compute::{ExternalIdAnswer, ProfileAnswer};
pub use corral_ops::query::ErrorBody;

/// The answer for a stored state. `target` says what a result key is in the profile's space
/// (`None`: no longer defined; its result is dropped at the profile's next write, so it is not
/// shown); a result of a definition whose backfill is in progress is its last emitted one.
pub fn profile_answer(
    profile_id: &str,
    st: &ProfileState,
    target: impl Fn(&str) -> Option<Target>,
) -> ProfileAnswer {
    let mut computed_traits = BTreeMap::new();
    let mut audiences = Vec::new();
    for (key, r) in &st.results {
        match target(key) {
            _ if corral_ops::accounts::is_condition(key) => {}
            Some(Target::Audience) if r.v == Value::Bool(true) => audiences.push(key.clone()),
            Some(Target::ComputedTrait) => {
                computed_traits.insert(key.clone(), r.v.clone());
            }
            _ => {}
        }
    }
    ProfileAnswer {
        profile_id: profile_id.to_string(),
        space: st.space_id.clone(),
        external_ids: st
            .external_ids
            .iter()
            .map(|i| ExternalIdAnswer {
                id_type: i.id_type.clone(),
                id: i.id.clone(),
                collection: i.collection.clone().unwrap_or_else(|| "users".into()),
            })
            .collect(),
        traits: st.trait_map(),
        computed_traits,
        audiences,
    }
}

impl ProfilesView {
    pub fn new() -> Arc<ProfilesView> {
        Arc::new(ProfilesView::default())
    }

    /// Applies changelog records in order under one lock (`None` is a tombstone): readers see
    /// a transaction's writes all or none when they arrive in one batch.
    pub fn apply_batch(&self, records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) {
        self.replica.apply_batch(records);
    }

    pub fn set_caught_up(&self) {
        self.replica.set_caught_up();
    }

    pub fn is_caught_up(&self) -> bool {
        self.replica.is_caught_up()
    }

    /// The flag [`ProfilesView::is_caught_up`] reads, for the follower to set.
    pub fn caught_up_flag(&self) -> Arc<AtomicBool> {
        self.replica.caught_up_flag()
    }

    /// Number of profiles held.
    pub fn len(&self) -> usize {
        self.replica.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored state of a profile of `space`; `Err` when the bytes do not decode.
    pub fn state(
        &self,
        space: &str,
        profile_id: &str,
    ) -> Result<Option<ProfileState>, crate::state::StateDecodeError> {
        let Some(bytes) = self.replica.get(profile_id.as_bytes()) else {
            return Ok(None);
        };
        let st = ProfileState::decode(&bytes)?;
        Ok((st.space_id == space).then_some(st))
    }
}

fn error(status: StatusCode, what: String) -> Response {
    (status, Json(ErrorBody { error: what })).into_response()
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct QueryState {
    pub view: Arc<ProfilesView>,
    /// The definitions in force (what each result key is).
    pub definitions: Definitions,
}

fn answer(
    q: &QueryState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<ProfileAnswer, (StatusCode, String)> {
    // A malformed path (bad percent-encoding, not UTF-8) is the client's mistake, said in JSON.
    let Path((space, pid)) = path.map_err(|e| (StatusCode::BAD_REQUEST, e.body_text()))?;
    if pid.trim().is_empty() || space.trim().is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "the space and the profile id must not be empty".into(),
        ));
    }
    if !q.view.is_caught_up() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "loading compute's profiles; retry shortly".into(),
        ));
    }
    let st = q
        .view
        .state(&space, &pid)
        .map_err(|e| {
            warn!(error = %e, "undecodable profile state in the changelog");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the stored state of {pid} does not decode: {e}"),
            )
        })?
        .ok_or_else(|| {
            (
                StatusCode::NOT_FOUND,
                format!("compute holds no profile {pid} in space {space}"),
            )
        })?;
    let engine = q.definitions.engine(&space).0;
    Ok(profile_answer(&pid, &st, |key| {
        engine
            .as_ref()
            .and_then(|e| e.definitions().get(key))
            .map(|d| d.spec.target)
    }))
}

async fn profile(
    State(q): State<QueryState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match answer(&q, path) {
        Ok(p) => Json(p).into_response(),
        Err((status, what)) => error(status, what),
    }
}

async fn ready(State(q): State<QueryState>) -> Response {
    if q.view.is_caught_up() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "loading compute's profiles",
        )
            .into_response()
    }
}

async fn unknown_endpoint(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; reads are /v1/spaces/{{space}}/profiles/{{profile_id}}",
            uri.path()
        ),
    )
}

/// The query interface (HTTP, JSON).
pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/v1/spaces/{space}/profiles/{profile_id}", get(profile))
        .route("/readyz", get(ready))
        .fallback(unknown_endpoint)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::{ExtId, StoredResult, TraitValue};
    use serde_json::json;

    fn state() -> ProfileState {
        let mut st = ProfileState {
            space_id: "s".into(),
            ..ProfileState::default()
        };
        st.add_ids([ExtId {
            id_type: "user_id".into(),
            id: "u1".into(),
            collection: None,
        }]);
        st.traits.insert(
            "plan".into(),
            TraitValue {
                v: json!("pro"),
                t: 1,
            },
        );
        st.traits.insert(
            "gone".into(),
            TraitValue {
                v: Value::Null,
                t: 2,
            },
        );
        for (k, v) in [
            ("buyers", json!(true)),
            ("orders", json!(3)),
            ("deleted_def", json!(true)),
        ] {
            st.results.insert(k.into(), StoredResult { ver: 1, v });
        }
        st
    }

    fn kinds(key: &str) -> Option<Target> {
        match key {
            "buyers" => Some(Target::Audience),
            "orders" => Some(Target::ComputedTrait),
            _ => None,
        }
    }

    #[test]
    fn answer_splits_results_by_kind_and_hides_removed_traits_and_deleted_definitions() {
        let a = profile_answer("p1", &state(), kinds);
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            json!({
                "profile_id": "p1",
                "space": "s",
                "external_ids": [{"type": "user_id", "id": "u1", "collection": "users"}],
                "traits": {"plan": "pro"},
                "computed_traits": {"orders": 3},
                "audiences": ["buyers"],
            })
        );
    }

    #[test]
    fn answers_wait_for_the_load_then_say_404_or_the_profile() {
        let view = ProfilesView::new();
        view.apply_batch([(b"p1".to_vec(), Some(state().encode()))]);
        let q = QueryState {
            view: view.clone(),
            definitions: Definitions::default(),
        };
        let ask = |space: &str, id: &str| answer(&q, Ok(Path((space.into(), id.into()))));
        assert_eq!(
            ask("s", "p1").unwrap_err().0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(ask("s", " ").unwrap_err().0, StatusCode::BAD_REQUEST);
        view.set_caught_up();
        let a = ask("s", "p1").unwrap();
        // No definitions in force: results are not shown.
        assert!(a.audiences.is_empty() && a.computed_traits.is_empty());
        assert_eq!(a.traits.len(), 1);
        assert_eq!(ask("other", "p1").unwrap_err().0, StatusCode::NOT_FOUND);
        assert_eq!(ask("s", "p2").unwrap_err().0, StatusCode::NOT_FOUND);
        view.apply_batch([(b"p1".to_vec(), None)]);
        assert_eq!(ask("s", "p1").unwrap_err().0, StatusCode::NOT_FOUND);
    }
}
