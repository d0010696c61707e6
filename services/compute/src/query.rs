//! Read-only query interface: a profile as compute holds it (`corralctl profile show`).
//!
//! [`ProfilesView`] is a read replica of the `profiles` store, filled from the store's compacted
//! changelog (`{prefix}{app}.profiles-changelog`, read_committed, all partitions) by
//! [`spawn_follower`], so it only shows committed state and any instance can answer for any
//! profile. It keeps the stored bytes and decodes a profile (with [`ProfileState`], the store's
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corral_query::Target;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::{error, info, warn};

use crate::service::Definitions;
use crate::state::ProfileState;

/// What a changelog read applies under one lock at most.
const MAX_BATCH: usize = 10_000;

/// A read replica of the `profiles` store.
#[derive(Default)]
pub struct ProfilesView {
    /// Profile id → stored state bytes.
    entries: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    caught_up: AtomicBool,
}

/// One external id of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdAnswer {
    #[serde(rename = "type")]
    pub id_type: String,
    pub id: String,
    pub collection: String,
}

/// `GET /v1/spaces/{space}/profiles/{profile_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileAnswer {
    pub profile_id: String,
    pub space: String,
    /// Every id seen on `events.resolved` for the profile (and profiles merged into it).
    pub external_ids: Vec<ExternalIdAnswer>,
    /// Custom traits from identify (removed ones are absent).
    pub traits: Map<String, Value>,
    /// Computed trait key → current value, for the computed traits in force.
    pub computed_traits: BTreeMap<String, Value>,
    /// Keys of the audiences in force the profile is a member of, sorted.
    pub audiences: Vec<String>,
}

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
        let mut g = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in records {
            match v {
                Some(v) => {
                    g.insert(k, v);
                }
                None => {
                    g.remove(&k);
                }
            }
        }
    }

    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::SeqCst);
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    /// Number of profiles held.
    pub fn len(&self) -> usize {
        self.entries.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored state of a profile of `space`; `Err` when the bytes do not decode.
    pub fn state(
        &self,
        space: &str,
        profile_id: &str,
    ) -> Result<Option<ProfileState>, serde_json::Error> {
        let bytes = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(profile_id.as_bytes())
            .cloned();
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let st = ProfileState::decode(&bytes)?;
        Ok((st.space_id == space).then_some(st))
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
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

/// librdkafka reports a partition's end both as a message error (what the follower uses to
/// know it caught up) and as a "global error" the default context logs at ERROR, i.e. a line
/// each time the replica catches up with a commit. The second is dropped here; real client
/// errors are still logged.
struct FollowerContext;

impl ClientContext for FollowerContext {
    fn error(&self, err: KafkaError, reason: &str) {
        if err == KafkaError::Global(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        error!(error = %err, reason, "librdkafka");
    }
}

impl ConsumerContext for FollowerContext {}

/// Why the follower could not start.
#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    #[error("creating the changelog consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("starting the changelog follower thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Follows `changelog` (every partition, from the beginning, read_committed) into `view` until
/// `stop`; marks the view caught up once every partition has been read to its end. Waits for
/// the topic to exist (the runtime creates it).
pub fn spawn_follower(
    bootstrap: &str,
    extra: &BTreeMap<String, String>,
    changelog: String,
    group: &str,
    view: Arc<ProfilesView>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, FollowerError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    for (k, v) in extra {
        cc.set(k, v);
    }
    let c: BaseConsumer<FollowerContext> = cc.create_with_context(FollowerContext)?;
    Ok(std::thread::Builder::new()
        .name("compute-view".into())
        .spawn(move || {
            let mut partitions = None;
            let mut at_end = HashSet::new();
            while !stop.load(Ordering::SeqCst) {
                let Some(n) = partitions else {
                    match assign_all(&c, &changelog) {
                        Ok(Some(n)) => partitions = Some(n),
                        Ok(None) => std::thread::sleep(Duration::from_millis(500)),
                        Err(e) => {
                            warn!(error = %e, "compute view: waiting for the changelog");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    continue;
                };
                let Some(first) = c.poll(Duration::from_millis(200)) else {
                    continue;
                };
                // A transaction's records become readable together and normally arrive in one
                // fetch: what is queued now is applied under one lock, so a merge (one profile
                // deleted, the survivor written) is not seen half done.
                let mut batch = Vec::new();
                let mut ends = Vec::new();
                let mut next = Some(first);
                while let Some(polled) = next.take() {
                    match polled {
                        Ok(m) => {
                            if let Some(k) = m.key() {
                                batch.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                            }
                        }
                        Err(KafkaError::PartitionEOF(p)) => ends.push(p),
                        Err(e) => warn!(error = %e, "compute view: reading the changelog"),
                    }
                    if batch.len() < MAX_BATCH {
                        next = c.poll(Duration::ZERO);
                    }
                }
                view.apply_batch(batch);
                // Caught up only once what was read before the ends is applied.
                for p in ends {
                    if at_end.insert(p) && at_end.len() as i32 == n && !view.is_caught_up() {
                        info!(profiles = view.len(), "compute view caught up");
                        view.set_caught_up();
                    }
                }
            }
        })?)
}

/// Assigns every partition of `topic` from the beginning; `None` when it does not exist yet.
fn assign_all(c: &BaseConsumer<FollowerContext>, topic: &str) -> Result<Option<i32>, KafkaError> {
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let n = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if n == 0 {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(Some(n))
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
