//! The Profile API with Segment's paths, parameters, shapes and errors:
//!
//! `GET /v1/spaces/{space}/collections/{users|accounts}/profiles/{id}/{what}` where `{id}` is
//! `type:value` (users: any external id, or a profile id `use_...`; accounts: `group_id:...`) and
//! `{what}` is `traits`, `external_ids`, `events`, `metadata` or `links` (a trailing `/` is
//! accepted). Answers are JSON; errors are `{"error": {"code", "message"}}` with Segment's codes:
//! `validation_error` (a malformed id or collection, 400), `invalid_request_error` (a bad
//! parameter, 400), `not_found` (404, message `Profile was not found.`), `authentication_error`
//! (401, 403: see [`crate::auth`]), `unavailable` (503 until every replica has been read to its
//! end once, so a restarted instance never says "not found" for a profile it has not loaded).
//!
//! Lists page with `limit` and `next`; `cursor.next` is what to pass as `next` for the following
//! page, `cursor.url` that page's URL (empty on the last page). The handlers only read the
//! [`ProfileStore`]; everything they compute is a pure function of what it holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use corral_compute::accounts::AccountState;
use corral_compute::{DefinitionSpec, ProfileState};
use corral_identity::engine::Profile;
use corral_identity::view::ProfileRef;
use corral_query::{DefinitionKind, Target};
use serde_json::{json, Map, Value};
use tracing::warn;

use crate::defs::SpaceDefinitions;
use crate::store::{iso, Account, Meta, ProfileStore, StoreError, ACCOUNTS, USERS};

/// A Profile API error (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "Profile was not found.")
    }
    fn param(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    fn validation(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        warn!(error = %e, "reading the profile store");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("reading the profile store failed: {e}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// Whether each replica has been read to its end once.
#[derive(Default)]
pub struct Readiness {
    pub graph: Arc<AtomicBool>,
    pub compute: Arc<AtomicBool>,
    pub events: Arc<AtomicBool>,
    /// Compute's accounts changelog (set from the start when the topic does not exist).
    pub accounts: Arc<AtomicBool>,
    /// `profiles.merges`: deletions to apply to the events index.
    pub merges: Arc<AtomicBool>,
}

impl Readiness {
    /// `None` when ready; else what is still loading.
    pub fn waiting_for(&self) -> Option<&'static str> {
        if !self.graph.load(Ordering::SeqCst) {
            Some("identity's graph")
        } else if !self.compute.load(Ordering::SeqCst) {
            Some("compute's profiles")
        } else if !self.events.load(Ordering::SeqCst) {
            Some("events.resolved")
        } else if !self.accounts.load(Ordering::SeqCst) {
            Some("compute's accounts")
        } else if !self.merges.load(Ordering::SeqCst) {
            Some("profiles.merges")
        } else {
            None
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<ProfileStore>,
    pub defs: Arc<SpaceDefinitions>,
    pub ready: Arc<Readiness>,
}

/// Whom a request is about.
pub enum Subject {
    User {
        profile: Profile,
        /// The live id and every id merged into it.
        ids: Vec<String>,
    },
    Account {
        group_id: String,
        account: Account,
        /// Compute's view of the account (its ACCOUNTS results), when it has one.
        state: Option<Box<AccountState>>,
    },
}

/// The subject of `collection`/`id` in `space`.
pub fn subject(
    st: &ApiState,
    space: &str,
    collection: &str,
    id: &str,
) -> Result<Subject, ApiError> {
    if let Some(what) = st.ready.waiting_for() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("loading {what}; retry shortly"),
        ));
    }
    match collection {
        USERS => {
            let what = ProfileRef::parse(id).map_err(ApiError::validation)?;
            let profile = match &what {
                ProfileRef::External(ident) => st.store.profile_of(space, ident)?,
                ProfileRef::Profile(pid) => st.store.profile(space, pid)?,
            }
            .ok_or_else(ApiError::not_found)?;
            let ids = st.store.merged_ids(space, &profile.id)?;
            Ok(Subject::User { profile, ids })
        }
        ACCOUNTS => {
            let (t, gid) = id.split_once(':').ok_or_else(|| {
                ApiError::validation(format!(
                    "{id:?} is not an account id: accounts are looked up by group_id:<id>"
                ))
            })?;
            if !t.eq_ignore_ascii_case("group_id") || gid.is_empty() {
                return Err(ApiError::validation(format!(
                    "{id:?} is not an account id: accounts are looked up by group_id:<id>"
                )));
            }
            let account = st
                .store
                .account(space, gid)?
                .ok_or_else(ApiError::not_found)?;
            Ok(Subject::Account {
                group_id: gid.to_string(),
                account,
                state: st.store.account_state(space, gid)?.map(Box::new),
            })
        }
        other => Err(ApiError::validation(format!(
            "The parameter `collection` must be `users` or `accounts`, not `{other}`"
        ))),
    }
}

/// Query parameters, by name.
pub type Params = HashMap<String, String>;

/// `limit`: `default` when absent, else an integer within `1..=max`.
pub fn limit(p: &Params, default: usize, max: usize) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(default),
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::param(format!(
                "The parameter `limit` must be a number between 1 and {max}, not `{s}`"
            ))),
        },
    }
}

fn flag(p: &Params, name: &str) -> Result<bool, ApiError> {
    match p.get(name).map(|s| s.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s == "true" || s == "1" => Ok(true),
        Some(s) if s == "false" || s == "0" || s.is_empty() => Ok(false),
        Some(s) => Err(ApiError::param(format!(
            "The parameter `{name}` must be true or false, not `{s}`"
        ))),
    }
}

fn list_param(p: &Params, name: &str) -> Option<Vec<String>> {
    p.get(name).map(|s| {
        s.split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()
    })
}

/// The `cursor` object: `next` and this list's URL for it when there is more.
fn cursor(uri: &Uri, p: &Params, next: Option<String>, limit: usize) -> Value {
    match next {
        Some(next) => {
            let mut q: Vec<(String, String)> = p
                .iter()
                .filter(|(k, _)| k.as_str() != "next")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            q.sort();
            q.push(("next".into(), next.clone()));
            let query: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                .collect();
            json!({
                "url": format!("{}?{}", uri.path(), query.join("&")),
                "has_more": true,
                "next": next,
                "limit": limit,
            })
        }
        None => json!({"url": "", "has_more": false, "next": "", "limit": limit}),
    }
}

/// Percent-encodes a query component (unreserved characters stay).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// traits

/// One trait with what verbose answers add.
#[derive(Debug, Clone, PartialEq)]
pub struct TraitEntry {
    pub value: Value,
    pub updated_ms: Option<i64>,
    pub source_id: Option<String>,
}

/// Which traits `class` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    All,
    Audience,
    ComputedTrait,
}

impl Class {
    pub fn parse(p: &Params) -> Result<Class, ApiError> {
        match p.get("class").map(String::as_str) {
            None | Some("") => Ok(Class::All),
            Some("audience") => Ok(Class::Audience),
            Some("computed_trait") => Ok(Class::ComputedTrait),
            Some(other) => Err(ApiError::param(format!(
                "The parameter `class` must be `audience` or `computed_trait`, not `{other}`"
            ))),
        }
    }
}

/// A user's traits: custom traits from identify calls, computed traits with a value, and every
/// USERS audience of the space (`true` for members, `false` otherwise), as `class` selects.
pub fn user_traits(
    st: Option<&ProfileState>,
    defs: &BTreeMap<String, DefinitionSpec>,
    class: Class,
) -> BTreeMap<String, TraitEntry> {
    let mut out = BTreeMap::new();
    if class == Class::All {
        if let Some(st) = st {
            for (k, t) in &st.traits {
                if !t.v.is_null() {
                    out.insert(
                        k.clone(),
                        TraitEntry {
                            value: t.v.clone(),
                            updated_ms: Some(t.t),
                            source_id: None,
                        },
                    );
                }
            }
        }
    }
    for (k, d) in defs {
        if d.kind != DefinitionKind::Users {
            continue;
        }
        let result = st.and_then(|s| s.results.get(k)).map(|r| r.v.clone());
        match d.target {
            Target::Audience if class != Class::ComputedTrait => {
                out.insert(
                    k.clone(),
                    TraitEntry {
                        value: Value::Bool(result == Some(Value::Bool(true))),
                        updated_ms: None,
                        source_id: None,
                    },
                );
            }
            Target::ComputedTrait if class != Class::Audience => {
                if let Some(v) = result.filter(|v| !v.is_null()) {
                    out.insert(
                        k.clone(),
                        TraitEntry {
                            value: v,
                            updated_ms: None,
                            source_id: None,
                        },
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// An account's traits: those of its group calls, and compute's results for the space's
/// ACCOUNTS definitions (audiences `true`/`false`, computed traits with a value).
pub fn account_traits(
    a: &Account,
    state: Option<&AccountState>,
    defs: &BTreeMap<String, DefinitionSpec>,
    class: Class,
) -> BTreeMap<String, TraitEntry> {
    let mut out = BTreeMap::new();
    if class == Class::All {
        for (k, t) in a.traits.iter().filter(|(_, t)| !t.v.is_null()) {
            out.insert(
                k.clone(),
                TraitEntry {
                    value: t.v.clone(),
                    updated_ms: Some(t.t),
                    source_id: t.src.clone(),
                },
            );
        }
    }
    for (k, d) in defs {
        if d.kind != DefinitionKind::Accounts {
            continue;
        }
        let result = state
            .and_then(|s| s.profile.results.get(k))
            .map(|r| r.v.clone());
        match d.target {
            Target::Audience if class != Class::ComputedTrait => {
                out.insert(
                    k.clone(),
                    TraitEntry {
                        value: Value::Bool(result == Some(Value::Bool(true))),
                        updated_ms: None,
                        source_id: None,
                    },
                );
            }
            Target::ComputedTrait if class != Class::Audience => {
                if let Some(v) = result.filter(|v| !v.is_null()) {
                    out.insert(
                        k.clone(),
                        TraitEntry {
                            value: v,
                            updated_ms: None,
                            source_id: None,
                        },
                    );
                }
            }
            _ => {}
        }
    }
    out
}

/// Filters, pages and shapes traits: `(traits object, next key)`.
pub fn traits_page(
    all: BTreeMap<String, TraitEntry>,
    include: Option<&[String]>,
    next: Option<&str>,
    limit: usize,
    verbose: bool,
) -> (Map<String, Value>, Option<String>) {
    let mut it = all
        .into_iter()
        .filter(|(k, _)| include.is_none_or(|inc| inc.iter().any(|i| i == k)))
        .filter(|(k, _)| next.is_none_or(|n| k.as_str() >= n))
        .peekable();
    let mut out = Map::new();
    while out.len() < limit {
        let Some((k, t)) = it.next() else { break };
        let v = if verbose {
            json!({
                "value": t.value,
                "source_id": t.source_id,
                "updated_at": t.updated_ms.map(iso),
            })
        } else {
            t.value
        };
        out.insert(k, v);
    }
    (out, it.peek().map(|(k, _)| k.clone()))
}

async fn traits(
    State(st): State<ApiState>,
    Path((space, collection, id)): Path<(String, String, String)>,
    Query(p): Query<Params>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let class = Class::parse(&p)?;
    let limit = limit(&p, 10, 200)?;
    let verbose = flag(&p, "verbose")?;
    let include = list_param(&p, "include");
    let all = match subject(&st, &space, &collection, &id)? {
        Subject::User { profile, .. } => {
            let state = st.store.compute_state(&space, &profile.id)?;
            user_traits(state.as_ref(), &st.defs.of(&space), class)
        }
        Subject::Account { account, state, .. } => {
            account_traits(&account, state.as_deref(), &st.defs.of(&space), class)
        }
    };
    let (traits, next) = traits_page(
        all,
        include.as_deref(),
        p.get("next").map(String::as_str).filter(|s| !s.is_empty()),
        limit,
        verbose,
    );
    Ok(Json(
        json!({"traits": traits, "cursor": cursor(&uri, &p, next, limit)}),
    ))
}

// ---------------------------------------------------------------------------------------------
// external_ids

fn external_id_json(
    st: &ApiState,
    space: &str,
    collection: &str,
    id_type: &str,
    id: &str,
    fallback_ms: i64,
) -> Result<Value, ApiError> {
    let seen = st.store.first_seen(space, id_type, id)?;
    Ok(json!({
        "id": id,
        "type": id_type,
        "source_id": seen.as_ref().and_then(|s| s.source_id.clone()),
        "collection": collection,
        "created_at": iso(fallback_ms),
        "encoding": "none",
        "first_message_id": seen.map(|s| s.message_id),
    }))
}

/// Every external id of the subject, in the profile's order.
fn external_ids_of(st: &ApiState, space: &str, s: &Subject) -> Result<Vec<Value>, ApiError> {
    match s {
        Subject::User { profile, .. } => profile
            .identifiers
            .iter()
            .map(|m| external_id_json(st, space, USERS, &m.id_type, &m.value, m.first_seen_ms))
            .collect(),
        Subject::Account {
            group_id, account, ..
        } => Ok(vec![json!({
            "id": group_id,
            "type": "group_id",
            "source_id": account.meta.first.source_id,
            "collection": ACCOUNTS,
            "created_at": iso(account.meta.first.ms),
            "encoding": "none",
            "first_message_id": account.meta.first.message_id,
        })]),
    }
}

/// Pages a list by position: `next` is the index of the first item to return.
fn offset_page(
    items: Vec<Value>,
    next: Option<&str>,
    limit: usize,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let start = match next.filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<usize>().map_err(|_| {
            ApiError::param(format!(
                "The parameter `next` is not a cursor this list gave: `{s}`"
            ))
        })?,
    };
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(start).take(limit).collect();
    let end = start + page.len();
    Ok((page, (end < total).then(|| end.to_string())))
}

async fn external_ids(
    State(st): State<ApiState>,
    Path((space, collection, id)): Path<(String, String, String)>,
    Query(p): Query<Params>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&p, 25, 100)?;
    flag(&p, "verbose")?;
    let include = list_param(&p, "include");
    let s = subject(&st, &space, &collection, &id)?;
    let all: Vec<Value> = external_ids_of(&st, &space, &s)?
        .into_iter()
        .filter(|v| {
            include
                .as_ref()
                .is_none_or(|inc| inc.iter().any(|i| v["type"] == i.as_str()))
        })
        .collect();
    let (data, next) = offset_page(all, p.get("next").map(String::as_str), limit)?;
    Ok(Json(
        json!({"data": data, "cursor": cursor(&uri, &p, next, limit)}),
    ))
}

// ---------------------------------------------------------------------------------------------
// events

/// `start` / `end`: an RFC 3339 time or a date (midnight UTC).
fn time_param(p: &Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(s) = p.get(name).map(|s| s.trim()).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.timestamp_millis()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Some(t.and_utc().timestamp_millis()));
        }
    }
    Err(ApiError::param(format!(
        "The parameter `{name}` must be an ISO 8601 date or time (2018-01-02 or 2018-01-02T15:04:05Z), not `{s}`"
    )))
}

/// An events cursor: base64 of `{time_ms}::{message_id}` of the first event of the next page.
pub fn encode_event_cursor(ts_ms: i64, message_id: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{ts_ms}::{message_id}"))
}

fn decode_event_cursor(s: &str) -> Result<(i64, String), ApiError> {
    let bad = || {
        ApiError::param(format!(
            "The parameter `next` is not a cursor this list gave: `{s}`"
        ))
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ts, mid) = text.split_once("::").ok_or_else(bad)?;
    Ok((ts.parse().map_err(|_| bad())?, mid.to_string()))
}

async fn events(
    State(st): State<ApiState>,
    Path((space, collection, id)): Path<(String, String, String)>,
    Query(p): Query<Params>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&p, 10, 100)?;
    let include = list_param(&p, "include");
    let exclude = list_param(&p, "exclude");
    let start = time_param(&p, "start")?;
    let end = time_param(&p, "end")?;
    let asc = match p.get("sort").map(String::as_str) {
        None | Some("") | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(ApiError::param(format!(
                "The parameter `sort` must be `asc` or `desc`, not `{other}`"
            )))
        }
    };
    let from = match p.get("next").filter(|s| !s.is_empty()) {
        Some(s) => Some(decode_event_cursor(s)?),
        None => None,
    };
    let mut all = match subject(&st, &space, &collection, &id)? {
        Subject::User { ids, .. } => st.store.events(&space, USERS, &ids)?,
        Subject::Account { group_id, .. } => st.store.events(&space, ACCOUNTS, &[group_id])?,
    };
    if asc {
        all.reverse();
    }
    let key_of = |v: &Value| -> String {
        v.get("event")
            .or_else(|| v.get("type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut it = all
        .into_iter()
        .filter(|e| start.is_none_or(|s| e.ts_ms > s) && end.is_none_or(|en| e.ts_ms < en))
        .filter(|e| {
            let k = key_of(&e.json);
            include.as_ref().is_none_or(|i| i.contains(&k))
                && exclude.as_ref().is_none_or(|x| !x.contains(&k))
        })
        .filter(|e| match &from {
            None => true,
            Some((ts, mid)) => {
                let here = (e.ts_ms, e.message_id.as_str());
                let at = (*ts, mid.as_str());
                if asc {
                    here >= at
                } else {
                    here <= at
                }
            }
        })
        .peekable();
    let mut data = Vec::new();
    while data.len() < limit {
        let Some(e) = it.next() else { break };
        data.push(e.json);
    }
    let next = it
        .peek()
        .map(|e| encode_event_cursor(e.ts_ms, &e.message_id));
    Ok(Json(
        json!({"data": data, "cursor": cursor(&uri, &p, next, limit)}),
    ))
}

// ---------------------------------------------------------------------------------------------
// metadata

async fn metadata(
    State(st): State<ApiState>,
    Path((space, collection, id)): Path<(String, String, String)>,
    Query(p): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    flag(&p, "verbose")?;
    let (created, meta) = match subject(&st, &space, &collection, &id)? {
        Subject::User { profile, ids } => {
            let mut metas = Vec::new();
            for i in &ids {
                metas.extend(st.store.meta(&space, i)?);
            }
            (profile.created_ms, Meta::combine(metas))
        }
        Subject::Account { account, .. } => (account.meta.first.ms, Some(account.meta)),
    };
    Ok(Json(json!({"metadata": {
        "created_at": iso(created),
        "updated_at": meta.as_ref().map(|m| iso(m.last.ms.max(created))).unwrap_or_else(|| iso(created)),
        "expires_at": null,
        "first_message_id": meta.as_ref().map(|m| m.first.message_id.clone()),
        "first_source_id": meta.as_ref().and_then(|m| m.first.source_id.clone()),
        "last_message_id": meta.as_ref().map(|m| m.last.message_id.clone()),
        "last_source_id": meta.as_ref().and_then(|m| m.last.source_id.clone()),
    }})))
}

// ---------------------------------------------------------------------------------------------
// links

async fn links(
    State(st): State<ApiState>,
    Path((space, collection, id)): Path<(String, String, String)>,
    Query(p): Query<Params>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(&p, 20, 100)?;
    let all: Vec<Value> = match subject(&st, &space, &collection, &id)? {
        Subject::User { ids, .. } => {
            // Earliest link per group id, over the profile and those merged into it.
            let mut by_group: BTreeMap<String, crate::store::Seen> = BTreeMap::new();
            for i in &ids {
                for (gid, seen) in st.store.accounts_of(&space, i)? {
                    let e = by_group.entry(gid).or_insert_with(|| seen.clone());
                    if seen.ms < e.ms {
                        *e = seen;
                    }
                }
            }
            by_group
                .into_iter()
                .map(|(gid, seen)| {
                    json!({
                        "to_collection": ACCOUNTS,
                        "external_ids": [{
                            "id": gid,
                            "type": "group_id",
                            "source_id": seen.source_id,
                            "collection": ACCOUNTS,
                            "created_at": iso(seen.ms),
                            "encoding": "none",
                        }],
                    })
                })
                .collect()
        }
        Subject::Account { group_id, .. } => {
            // Linked profiles as they are now (merged ones once, under their survivor).
            let mut live: BTreeMap<String, Profile> = BTreeMap::new();
            for (pid, _) in st.store.users_of(&space, &group_id)? {
                if let Some(pr) = st.store.profile(&space, &pid)? {
                    live.insert(pr.id.clone(), pr);
                }
            }
            let mut out = Vec::new();
            for pr in live.values() {
                let ids: Result<Vec<Value>, ApiError> = pr
                    .identifiers
                    .iter()
                    .map(|m| {
                        external_id_json(&st, &space, USERS, &m.id_type, &m.value, m.first_seen_ms)
                    })
                    .collect();
                out.push(json!({"to_collection": USERS, "external_ids": ids?}));
            }
            out
        }
    };
    let (data, next) = offset_page(all, p.get("next").map(String::as_str), limit)?;
    let mut body = json!({ "data": data });
    if next.is_some() {
        body["cursor"] = cursor(&uri, &p, next, limit);
    }
    Ok(Json(body))
}

async fn unknown(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no endpoint {}; the Profile API is /v1/spaces/{{space}}/collections/{{users|accounts}}/profiles/{{id}}/{{traits|external_ids|events|metadata|links}}",
            uri.path()
        ),
    )
}

async fn ready(State(st): State<ApiState>) -> Response {
    match st.ready.waiting_for() {
        None => (StatusCode::OK, "ready").into_response(),
        Some(what) => (StatusCode::SERVICE_UNAVAILABLE, format!("loading {what}")).into_response(),
    }
}

/// The Profile API's routes (the caller adds authentication).
pub fn router(state: ApiState) -> Router {
    let base = "/v1/spaces/{space}/collections/{collection}/profiles/{id}";
    let mut r = Router::new();
    for slash in ["", "/"] {
        r = r
            .route(&format!("{base}/traits{slash}"), get(traits))
            .route(&format!("{base}/external_ids{slash}"), get(external_ids))
            .route(&format!("{base}/events{slash}"), get(events))
            .route(&format!("{base}/metadata{slash}"), get(metadata))
            .route(&format!("{base}/links{slash}"), get(links));
    }
    r.route("/readyz", get(ready))
        .fallback(unknown)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_compute::state::{StoredResult, TraitValue};

    fn spec(key: &str, target: Target) -> DefinitionSpec {
        DefinitionSpec {
            key: key.into(),
            name: None,
            target,
            kind: DefinitionKind::Users,
            version: 1,
            query: String::new(),
            include_historical_data: false,
        }
    }

    #[test]
    fn traits_show_custom_computed_and_every_audience_by_class() {
        let mut st = ProfileState::default();
        st.traits.insert(
            "plan".into(),
            TraitValue {
                v: json!("pro"),
                t: 1_000,
            },
        );
        st.traits.insert(
            "gone".into(),
            TraitValue {
                v: Value::Null,
                t: 2,
            },
        );
        st.results.insert(
            "buyers".into(),
            StoredResult {
                ver: 1,
                v: json!(true),
            },
        );
        st.results.insert(
            "orders".into(),
            StoredResult {
                ver: 1,
                v: json!(3),
            },
        );
        let defs: BTreeMap<String, DefinitionSpec> = [
            ("buyers", Target::Audience),
            ("churned", Target::Audience),
            ("orders", Target::ComputedTrait),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), spec(k, t)))
        .collect();
        let all = user_traits(Some(&st), &defs, Class::All);
        let values: BTreeMap<&str, &Value> =
            all.iter().map(|(k, v)| (k.as_str(), &v.value)).collect();
        assert_eq!(
            serde_json::to_value(values).unwrap(),
            json!({"buyers": true, "churned": false, "orders": 3, "plan": "pro"})
        );
        let aud: Vec<String> = user_traits(Some(&st), &defs, Class::Audience)
            .into_keys()
            .collect();
        assert_eq!(aud, ["buyers", "churned"]);
        let ct: Vec<String> = user_traits(Some(&st), &defs, Class::ComputedTrait)
            .into_keys()
            .collect();
        assert_eq!(ct, ["orders"]);

        // Pages of two, then the rest; include picks; verbose adds the time.
        let (page, next) = traits_page(all.clone(), None, None, 2, false);
        assert_eq!(
            Value::Object(page),
            json!({"buyers": true, "churned": false})
        );
        assert_eq!(next.as_deref(), Some("orders"));
        let (page, next) = traits_page(all.clone(), None, Some("orders"), 2, false);
        assert_eq!(Value::Object(page), json!({"orders": 3, "plan": "pro"}));
        assert_eq!(next, None);
        let inc = vec!["plan".to_string()];
        let (page, _) = traits_page(all, Some(&inc), None, 10, true);
        assert_eq!(
            Value::Object(page),
            json!({"plan": {"value": "pro", "source_id": null, "updated_at": "1970-01-01T00:00:01.000Z"}})
        );
    }

    #[test]
    fn parameters_are_checked_with_segment_codes() {
        let p = |k: &str, v: &str| -> Params { [(k.to_string(), v.to_string())].into() };
        assert_eq!(limit(&Params::new(), 10, 200), Ok(10));
        assert_eq!(limit(&p("limit", "200"), 10, 200), Ok(200));
        let e = limit(&p("limit", "201"), 10, 200).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_request_error")
        );
        assert!(limit(&p("limit", "0"), 10, 200).is_err());
        assert_eq!(Class::parse(&p("class", "audience")), Ok(Class::Audience));
        assert!(Class::parse(&p("class", "traits")).is_err());
        assert_eq!(
            time_param(&p("start", "2018-01-02"), "start").unwrap(),
            Some(1_514_851_200_000)
        );
        assert!(time_param(&p("start", "yesterday"), "start").is_err());
        let c = encode_event_cursor(1_513_755_436_867, "ajs-1");
        assert_eq!(
            decode_event_cursor(&c).unwrap(),
            (1_513_755_436_867, "ajs-1".into())
        );
        assert!(decode_event_cursor("%%%").is_err());
    }
}
