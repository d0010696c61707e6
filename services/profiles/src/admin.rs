//! The admin API for audiences and computed traits, shaped like Segment's Public API:
//!
//! | method and path | what |
//! |---|---|
//! | `POST /spaces/{space}/audiences` | create (`{name, key?, definition: {query, type}, options: {includeHistoricalData}}`) |
//! | `GET /spaces/{space}/audiences` | list |
//! | `GET /spaces/{space}/audiences/{id}` | get (the id is the key) |
//! | `PATCH /spaces/{space}/audiences/{id}` | update any of name, definition, options |
//! | `DELETE /spaces/{space}/audiences/{id}` | delete (a tombstone) |
//! | `POST /spaces/{space}/audiences/previews` | size and sample if applied now ([`crate::preview`]) |
//! | `GET /spaces/{space}/audiences/{id}/export?format=` | members as CSV ([`corral_ops::export`]) |
//!
//! and the same five for `/spaces/{space}/computed-traits`. Writes go to the `definitions` topic
//! through `corral_ops::audiences` (`check_one`, `apply_one`, `delete`): the record, the checks
//! and the versioning are those of `corralctl audiences apply`. Answers are `{"data": {...}}`;
//! errors `{"errors": [{"type", "message", "field"?, "data"?}]}`: a query error has `type:
//! "validation"`, `field: "definition.query"` and its position in the query text in `data`
//! (line, column, offset, length, the line, what was expected).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_ops::audiences::{
    self as ops, ApplyOneError, DefinitionBody, DefinitionKind, DefinitionsTopic, Listed,
    OneDefinition, QueryProblem, Target,
};
use corral_ops::export::{to_csv, Format, Member};
use corral_runtime::definitions::Applied;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::Params;
use crate::defs::SpaceDefinitions;
use crate::preview::{preview, History};
use crate::store::ProfileStore;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub bootstrap: String,
    pub kafka: std::collections::BTreeMap<String, String>,
    /// The `definitions` topic.
    pub definitions_topic: String,
    pub history: History,
    pub store: Arc<ProfileStore>,
    pub defs: Arc<SpaceDefinitions>,
    /// Where regulations are filed and their progress read ([`crate::regulations`]).
    pub privacy: PrivacyTopics,
}

/// The topics of privacy regulations.
#[derive(Clone, Debug)]
pub struct PrivacyTopics {
    /// `definitions` and identity's `identity.events-by-space`.
    pub request: corral_ops::privacy::RequestTopics,
    /// `profiles.merges` and compute's backfill changelog.
    pub progress: corral_ops::privacy::ProgressTopics,
}

impl AdminState {
    fn topic(&self, space: &str) -> DefinitionsTopic {
        DefinitionsTopic {
            bootstrap: self.bootstrap.clone(),
            kafka: self.kafka.clone(),
            topic: self.definitions_topic.clone(),
            space: space.to_string(),
        }
    }
}

/// A Public API error.
#[derive(Debug)]
pub struct AdminError {
    status: StatusCode,
    errors: Vec<Value>,
}

impl AdminError {
    fn one(status: StatusCode, kind: &str, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            errors: vec![json!({"type": kind, "message": message.into()})],
        }
    }
    /// One error about `field` of the request body (no `field` when it is empty).
    pub fn field(
        status: StatusCode,
        kind: &str,
        field: &str,
        message: impl Into<String>,
    ) -> AdminError {
        let mut e = json!({"type": kind, "message": message.into()});
        if !field.is_empty() {
            e["field"] = json!(field);
        }
        AdminError {
            status,
            errors: vec![e],
        }
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
    /// The first error's body.
    pub fn first(&self) -> Value {
        self.errors.first().cloned().unwrap_or(Value::Null)
    }
    pub fn not_found(what: &str, id: &str, space: &str) -> AdminError {
        AdminError::one(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no {what} `{id}` in space `{space}`"),
        )
    }
    fn bad(message: impl Into<String>) -> AdminError {
        AdminError::one(StatusCode::BAD_REQUEST, "validation", message)
    }
    pub fn internal(e: impl std::fmt::Display) -> AdminError {
        AdminError::one(
            StatusCode::BAD_GATEWAY,
            "internal",
            format!("{e}; retry when Kafka answers"),
        )
    }
    /// Query problems, each with its position.
    pub fn invalid(problems: &[QueryProblem]) -> AdminError {
        AdminError {
            status: StatusCode::BAD_REQUEST,
            errors: problems
                .iter()
                .map(|p| {
                    json!({
                        "type": "validation",
                        "message": if p.field == "query" {
                            format!("{} (line {}, column {})", p.message, p.line, p.column)
                        } else {
                            p.message.clone()
                        },
                        "field": if p.field == "query" { "definition.query" } else { "key" },
                        "data": p,
                    })
                })
                .collect(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"errors": self.errors}))).into_response()
    }
}

impl From<ApplyOneError> for AdminError {
    fn from(e: ApplyOneError) -> AdminError {
        match e {
            ApplyOneError::Invalid(p) => AdminError::invalid(&p),
            ApplyOneError::Kafka(k) => AdminError::internal(k),
        }
    }
}

/// Audiences or computed traits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Audience,
    ComputedTrait,
}

impl Resource {
    fn target(self) -> Target {
        match self {
            Resource::Audience => Target::Audience,
            Resource::ComputedTrait => Target::ComputedTrait,
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Resource::Audience => "audience",
            Resource::ComputedTrait => "computed trait",
        }
    }
    fn field(self) -> &'static str {
        match self {
            Resource::Audience => "audience",
            Resource::ComputedTrait => "computedTrait",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Resource::Audience => "audiences",
            Resource::ComputedTrait => "computedTraits",
        }
    }
    fn kind(self) -> &'static str {
        ops::kind_of(self.target())
    }
}

/// `definition` of a request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionIn {
    pub query: String,
    /// `USERS` (default) or `ACCOUNTS`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// `options` of a request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OptionsIn {
    #[serde(default)]
    pub include_historical_data: Option<bool>,
}

/// A create or update request body (every field optional for an update).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RequestIn {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    /// Accepted for compatibility; not stored.
    #[serde(default)]
    pub description: Option<String>,
    /// Accepted for compatibility; definitions are always enabled.
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub definition: Option<DefinitionIn>,
    #[serde(default)]
    pub options: Option<OptionsIn>,
    /// Previews: how many members to return (default 10, at most 1,000).
    #[serde(default, rename = "sampleSize")]
    pub sample_size: Option<usize>,
}

fn parse_body(body: &Bytes) -> Result<RequestIn, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| AdminError::bad(format!("the body is not a valid request: {e}")))
}

fn kind_of(s: Option<&str>) -> Result<DefinitionKind, AdminError> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None | Some("users") => Ok(DefinitionKind::Users),
        Some("accounts") => Ok(DefinitionKind::Accounts),
        Some(other) => Err(AdminError::bad(format!(
            "definition.type must be USERS or ACCOUNTS, not `{other}`"
        ))),
    }
}

/// A key from a display name, as Segment derives one: lower case, runs of other characters
/// as one `_`.
pub fn key_from_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// A definition in the Public API's shape.
pub fn shape(space: &str, l: &Listed) -> Value {
    let body = l.body.clone().unwrap_or(DefinitionBody {
        query: String::new(),
        kind: None,
        include_historical_data: false,
    });
    json!({
        "id": l.key,
        "key": l.key,
        "spaceId": space,
        "name": l.name.clone().unwrap_or_else(|| l.key.clone()),
        "enabled": true,
        "definition": {
            "query": body.query,
            "type": body.definition_kind().name().to_ascii_uppercase(),
        },
        "options": {"includeHistoricalData": body.include_historical_data},
        "version": l.version,
        "updatedAt": crate::store::iso(l.updated_at_ms),
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AdminError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AdminError::internal(format!("the request's worker failed: {e}")))?
}

fn find(all: Vec<Listed>, r: Resource, id: &str) -> Option<Listed> {
    all.into_iter().find(|l| l.key == id && l.kind == r.kind())
}

fn applied_to_status(a: &Applied) -> StatusCode {
    match a {
        Applied::Created { .. } => StatusCode::CREATED,
        _ => StatusCode::OK,
    }
}

async fn create(
    st: AdminState,
    r: Resource,
    space: String,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req = parse_body(&body)?;
    let name = req
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| AdminError::bad("name is required"))?;
    let definition = req
        .definition
        .clone()
        .ok_or_else(|| AdminError::bad("definition (with query) is required"))?;
    let key = req.key.clone().unwrap_or_else(|| key_from_name(&name));
    let def = OneDefinition {
        target: r.target(),
        key: key.clone(),
        name,
        kind: kind_of(definition.kind.as_deref())?,
        include_historical_data: req
            .options
            .as_ref()
            .and_then(|o| o.include_historical_data)
            .unwrap_or(true),
        query: definition.query,
    };
    blocking(move || {
        let at = st.topic(&space);
        let current = ops::list(&at).map_err(AdminError::internal)?;
        if current.iter().any(|l| l.key == key) {
            return Err(AdminError::one(
                StatusCode::CONFLICT,
                "conflict",
                format!("`{key}` already exists in space `{space}`; change it with PATCH"),
            ));
        }
        ops::check_one(&current, &def).map_err(|p| AdminError::invalid(&p))?;
        let applied = ops::apply_one(&at, &def, Some("profile-api"))?;
        let now = ops::list(&at).map_err(AdminError::internal)?;
        let l =
            find(now, r, &key).ok_or_else(|| AdminError::internal("written but not read back"))?;
        Ok((
            applied_to_status(&applied),
            Json(json!({"data": {r.field(): shape(&space, &l)}})),
        )
            .into_response())
    })
    .await
}

async fn update(
    st: AdminState,
    r: Resource,
    space: String,
    id: String,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req = parse_body(&body)?;
    blocking(move || {
        let at = st.topic(&space);
        let current = ops::list(&at).map_err(AdminError::internal)?;
        let l =
            find(current, r, &id).ok_or_else(|| AdminError::not_found(r.noun(), &id, &space))?;
        let body = l.body.clone().ok_or_else(|| {
            AdminError::bad(format!(
                "`{id}` has no readable body; replace it with corralctl"
            ))
        })?;
        let (query, kind) = match &req.definition {
            Some(d) => (d.query.clone(), kind_of(d.kind.as_deref())?),
            None => (body.query.clone(), body.definition_kind()),
        };
        let def = OneDefinition {
            target: r.target(),
            key: id.clone(),
            name: req
                .name
                .clone()
                .or(l.name.clone())
                .unwrap_or_else(|| id.clone()),
            kind,
            include_historical_data: req
                .options
                .as_ref()
                .and_then(|o| o.include_historical_data)
                .unwrap_or(body.include_historical_data),
            query,
        };
        ops::apply_one(&at, &def, Some("profile-api"))?;
        let now = ops::list(&at).map_err(AdminError::internal)?;
        let l =
            find(now, r, &id).ok_or_else(|| AdminError::internal("written but not read back"))?;
        Ok(Json(json!({"data": {r.field(): shape(&space, &l)}})).into_response())
    })
    .await
}

async fn list(st: AdminState, r: Resource, space: String) -> Result<Response, AdminError> {
    blocking(move || {
        let all = ops::list(&st.topic(&space)).map_err(AdminError::internal)?;
        let items: Vec<Value> = all
            .iter()
            .filter(|l| l.kind == r.kind())
            .map(|l| shape(&space, l))
            .collect();
        let n = items.len();
        Ok(Json(json!({"data": {
            r.plural(): items,
            "pagination": {"current": "", "totalEntries": n},
        }}))
        .into_response())
    })
    .await
}

async fn get_one(
    st: AdminState,
    r: Resource,
    space: String,
    id: String,
) -> Result<Response, AdminError> {
    blocking(move || {
        let all = ops::list(&st.topic(&space)).map_err(AdminError::internal)?;
        let l = find(all, r, &id).ok_or_else(|| AdminError::not_found(r.noun(), &id, &space))?;
        Ok(Json(json!({"data": {r.field(): shape(&space, &l)}})).into_response())
    })
    .await
}

async fn delete(
    st: AdminState,
    r: Resource,
    space: String,
    id: String,
) -> Result<Response, AdminError> {
    blocking(move || {
        let at = st.topic(&space);
        let all = ops::list(&at).map_err(AdminError::internal)?;
        if find(all, r, &id).is_none() {
            return Err(AdminError::not_found(r.noun(), &id, &space));
        }
        ops::delete(&at, &id).map_err(AdminError::internal)?;
        Ok(Json(json!({"data": {"status": "SUCCESS"}})).into_response())
    })
    .await
}

async fn preview_handler(
    st: AdminState,
    space: String,
    body: Bytes,
) -> Result<Response, AdminError> {
    let req = parse_body(&body)?;
    let definition = req
        .definition
        .clone()
        .ok_or_else(|| AdminError::bad("definition (with query) is required"))?;
    let key = req
        .key
        .clone()
        .or_else(|| req.name.as_deref().map(key_from_name))
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "preview".into());
    let def = OneDefinition {
        target: Target::Audience,
        key,
        name: req.name.clone().unwrap_or_else(|| "preview".into()),
        kind: kind_of(definition.kind.as_deref())?,
        include_historical_data: true,
        query: definition.query,
    };
    let sample = req.sample_size.unwrap_or(10).min(1_000);
    blocking(move || {
        let current_specs = st.defs.of(&space);
        let current: Vec<Listed> = current_specs
            .values()
            .map(|s| Listed {
                kind: ops::kind_of(s.target).to_string(),
                key: s.key.clone(),
                version: s.version,
                name: s.name.clone(),
                body: Some(DefinitionBody {
                    query: s.query.clone(),
                    kind: Some(s.kind.name().to_string()),
                    include_historical_data: s.include_historical_data,
                }),
                updated_at_ms: 0,
            })
            .collect();
        // The same checks as create, except that previewing an existing key is allowed.
        let others: Vec<Listed> = current.into_iter().filter(|l| l.key != def.key).collect();
        ops::check_one(&others, &def).map_err(|p| AdminError::invalid(&p))?;
        let p = preview(&st.history, &st.store, &space, current_specs.into_values(), &def, sample)
            .map_err(|e| match e {
                crate::preview::PreviewError::NotPreviewable(m) => AdminError::bad(m),
                other => AdminError::internal(other),
            })?;
        let results: Vec<Value> = p
            .sample
            .iter()
            .map(|m| {
                json!({
                    "id": m.profile_id,
                    "externalIds": m.external_ids.iter().map(|(t, v)| json!({"type": t, "id": v, "collection": "users"})).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(Json(json!({"data": {"audiencePreview": {
            "id": format!("preview-{}", corral_ops::now_ms()),
            "status": "COMPLETED",
            "definition": {"query": def.query, "type": def.kind.name().to_ascii_uppercase()},
            "size": {"count": p.count},
            "results": results,
            "profilesEvaluated": p.profiles,
            "eventsRead": p.events_read,
            "durationMs": p.duration_ms,
        }}}))
        .into_response())
    })
    .await
}

/// The members of audience `key` of `space` as compute holds them now, sorted by profile id,
/// with their external ids from identity's graph.
pub fn members(
    store: &ProfileStore,
    space: &str,
    key: &str,
) -> Result<Vec<Member>, crate::store::StoreError> {
    let mut ids = Vec::new();
    store.each_compute_state(|pid, st| {
        if st.space_id == space
            && st
                .results
                .get(key)
                .is_some_and(|r| r.v == Value::Bool(true))
        {
            ids.push((pid.to_string(), st.external_ids));
        }
    })?;
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(ids.len());
    for (pid, computed_ids) in ids {
        let external_ids = match store.profile(space, &pid)? {
            Some(p) => p
                .identifiers
                .into_iter()
                .map(|m| (m.id_type, m.value))
                .collect(),
            None => computed_ids
                .into_iter()
                .map(|i| (i.id_type, i.id))
                .collect(),
        };
        out.push(Member {
            profile_id: pid,
            external_ids,
        });
    }
    Ok(out)
}

async fn export(
    st: AdminState,
    space: String,
    id: String,
    p: Params,
) -> Result<Response, AdminError> {
    let hashed = match p.get("hashed").map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(s) if s == "true" => Some(true),
        Some(s) if s == "false" => Some(false),
        Some(s) => {
            return Err(AdminError::bad(format!(
                "hashed must be true or false, not `{s}`"
            )))
        }
    };
    let format = Format::parse(
        p.get("format").map(String::as_str).unwrap_or("unformatted"),
        p.get("id_type")
            .or_else(|| p.get("idType"))
            .map(String::as_str),
        hashed,
    )
    .map_err(AdminError::bad)?;
    let known = st
        .defs
        .of(&space)
        .get(&id)
        .is_some_and(|d| d.target == Target::Audience);
    if !known {
        return Err(AdminError::not_found("audience", &id, &space));
    }
    blocking(move || {
        let m = members(&st.store, &space, &id).map_err(AdminError::internal)?;
        let csv = to_csv(&m, &format);
        Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{id}.csv\""),
                ),
            ],
            csv,
        )
            .into_response())
    })
    .await
}

fn routes_for(r: Resource, path: &str) -> Router<AdminState> {
    Router::new()
        .route(
            &format!("/spaces/{{space}}/{path}"),
            post(
                move |State(st): State<AdminState>, Path(space): Path<String>, body: Bytes| {
                    create(st, r, space, body)
                },
            )
            .get(move |State(st): State<AdminState>, Path(space): Path<String>| list(st, r, space)),
        )
        .route(
            &format!("/spaces/{{space}}/{path}/{{id}}"),
            get(
                move |State(st): State<AdminState>, Path((space, id)): Path<(String, String)>| {
                    get_one(st, r, space, id)
                },
            )
            .patch(
                move |State(st): State<AdminState>,
                      Path((space, id)): Path<(String, String)>,
                      body: Bytes| { update(st, r, space, id, body) },
            )
            .delete(
                move |State(st): State<AdminState>, Path((space, id)): Path<(String, String)>| {
                    delete(st, r, space, id)
                },
            ),
        )
}

/// The admin API's routes (the caller adds authentication).
pub fn router(state: AdminState) -> Router {
    routes_for(Resource::Audience, "audiences")
        .merge(routes_for(Resource::ComputedTrait, "computed-traits"))
        .route(
            "/spaces/{space}/audiences/previews",
            post(
                |State(st): State<AdminState>, Path(space): Path<String>, body: Bytes| {
                    preview_handler(st, space, body)
                },
            ),
        )
        .merge(crate::regulations::routes())
        .route(
            "/spaces/{space}/audiences/{id}/export",
            get(
                |State(st): State<AdminState>,
                 Path((space, id)): Path<(String, String)>,
                 Query(p): Query<Params>| export(st, space, id, p),
            ),
        )
        .with_state(state)
}

/// Timeout of a preview's read of the history.
pub const PREVIEW_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_names_as_segment_derives_them() {
        assert_eq!(key_from_name("High Value Users!"), "high_value_users");
        assert_eq!(key_from_name("  Trial -- ended (30d) "), "trial_ended_30d");
        assert_eq!(ops::KIND_AUDIENCE, Resource::Audience.kind());
    }

    #[test]
    fn query_errors_carry_their_position() {
        let def = OneDefinition {
            target: Target::Audience,
            key: "k".into(),
            name: "k".into(),
            kind: DefinitionKind::Users,
            include_historical_data: true,
            query: "event('A').cont() >= 1".into(),
        };
        let problems = ops::check_one(&[], &def).unwrap_err();
        let e = AdminError::invalid(&problems);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.errors[0]["field"], "definition.query");
        assert_eq!(e.errors[0]["data"]["line"], 1);
        assert_eq!(e.errors[0]["data"]["column"], 12);
        assert!(e.errors[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("line 1, column 12"));
    }
}
