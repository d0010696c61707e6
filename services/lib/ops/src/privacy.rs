//! Privacy regulations (`corralctl privacy`): requests to suppress, delete, suppress-with-delete or
//! unsuppress the data of a person, named by one or more identifiers (`user_id:ada`,
//! `email:ada@example.com`, `anonymous_id:...`) of one space, after Segment's regulations.
//!
//! A regulation is a record of the compacted `definitions` topic (kind [`KIND`], key
//! `{space}/regulation/{id}`), so every service that follows definitions sees it; a regulation
//! is never changed after it was written, and an unsuppress is a new regulation, not the deletion
//! of the suppress (the history of requests stays auditable).
//!
//! What is pure here (unit-tested): the record's body ([`Regulation`]), parsing `TYPE:VALUE`
//! ([`Subject`]), the identifiers a Segment message carries ([`subjects_of`]) and the set of
//! identifiers suppressed in a space at the end of a sequence of regulations ([`Suppressions`]):
//! regulations apply in the order they were created (ties: by id), so an unsuppress undoes the
//! suppressions created before it and a later suppress is in force again.
//!
//! The edges are [`create`], [`list`] and [`status`] (reads and writes of the definitions topic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use corral_codec::{Definition, SegmentMessage};
use corral_runtime::definitions::{apply_versioned, read_all, Applied, Desired, READ_TIMEOUT};
use corral_runtime::RuntimeError;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The definition kind of a regulation.
pub const KIND: &str = "regulation";

/// What a regulation asks for (Segment's regulation types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegulationType {
    /// Drop the person's new events at ingest.
    Suppress,
    /// Delete what Corral holds about the person.
    Delete,
    /// Both.
    SuppressWithDelete,
    /// Stop dropping the person's events (undoes earlier suppressions of the same identifiers).
    Unsuppress,
}

impl RegulationType {
    pub fn as_str(self) -> &'static str {
        match self {
            RegulationType::Suppress => "suppress",
            RegulationType::Delete => "delete",
            RegulationType::SuppressWithDelete => "suppress_with_delete",
            RegulationType::Unsuppress => "unsuppress",
        }
    }

    /// Whether events of the identifiers are dropped from now on.
    pub fn suppresses(self) -> bool {
        matches!(
            self,
            RegulationType::Suppress | RegulationType::SuppressWithDelete
        )
    }

    /// Whether stored data of the identifiers is to be deleted.
    pub fn deletes(self) -> bool {
        matches!(
            self,
            RegulationType::Delete | RegulationType::SuppressWithDelete
        )
    }
}

/// One identifier a regulation names: an id type of the `users` collection and a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Subject {
    #[serde(rename = "type")]
    pub id_type: String,
    pub value: String,
}

impl Subject {
    pub fn new(id_type: impl Into<String>, value: impl Into<String>) -> Subject {
        Subject {
            id_type: id_type.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id_type, self.value)
    }
}

impl FromStr for Subject {
    type Err = String;

    /// `TYPE:VALUE`; the type is letters, digits and `_` (`user_id`, `email`, a custom id type),
    /// the value anything non-empty (it may contain `:`).
    fn from_str(s: &str) -> Result<Subject, String> {
        let Some((t, v)) = s.split_once(':') else {
            return Err(format!(
                "identifier {s:?} is not TYPE:VALUE (for example user_id:ada or email:ada@example.com)"
            ));
        };
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "identifier type {t:?} must be letters, digits and _ (user_id, anonymous_id, email, ...)"
            ));
        }
        if v.is_empty() {
            return Err(format!("identifier {s:?} has an empty value"));
        }
        Ok(Subject::new(t, v))
    }
}

/// The body of a regulation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regulation {
    #[serde(rename = "type")]
    pub regulation_type: RegulationType,
    pub subjects: Vec<Subject>,
    /// When the request was made (epoch ms); orders regulations.
    pub created_at_ms: i64,
}

impl Regulation {
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }
}

/// The regulation in a definition; `None` when the definition is of another kind.
pub fn regulation_of(def: &Definition) -> Option<Result<Regulation, String>> {
    (def.kind == KIND).then(|| {
        serde_json::from_value(def.body.clone())
            .map_err(|e| format!("regulation {}/{}: {e}", def.space_id, def.key))
    })
}

/// Whether a definitions key names a regulation (`{space}/regulation/{id}`).
pub fn is_regulation_key(key: &str) -> bool {
    key.split('/').nth(1) == Some(KIND)
}

/// The identifiers of a message that a suppression can name: `user_id`, `anonymous_id`, and
/// `email` from `traits` or `context.traits` (where Segment's clients put it).
pub fn subjects_of(msg: &SegmentMessage) -> Vec<Subject> {
    let mut out = Vec::with_capacity(3);
    if let Some(u) = msg.user_id.as_deref().filter(|s| !s.is_empty()) {
        out.push(Subject::new("user_id", u));
    }
    if let Some(a) = msg.anonymous_id.as_deref().filter(|s| !s.is_empty()) {
        out.push(Subject::new("anonymous_id", a));
    }
    let emails = [
        msg.traits.as_ref().and_then(|t| t.get("email")),
        msg.context
            .as_ref()
            .and_then(|c| c.get("traits"))
            .and_then(|t| t.get("email")),
    ];
    for e in emails.into_iter().flatten() {
        if let Some(e) = e.as_str().filter(|s| !s.is_empty()) {
            let s = Subject::new("email", e);
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The regulations read so far and the identifiers suppressed per space at their end.
#[derive(Debug, Default, Clone)]
pub struct Suppressions {
    /// By definitions key: (space, regulation).
    regulations: BTreeMap<String, (String, Regulation)>,
    /// Space -> identifiers whose events are dropped.
    active: HashMap<String, HashSet<Subject>>,
}

impl Suppressions {
    /// A regulation was written (or rewritten) under `key`.
    pub fn upsert(&mut self, key: &str, space: &str, regulation: Regulation) {
        self.regulations
            .insert(key.to_string(), (space.to_string(), regulation));
        self.recompute();
    }

    /// The record under `key` was deleted (or became unreadable).
    pub fn remove(&mut self, key: &str) {
        if self.regulations.remove(key).is_some() {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        let mut ordered: Vec<(&String, &(String, Regulation))> = self.regulations.iter().collect();
        ordered.sort_by_key(|(k, (_, r))| (r.created_at_ms, k.as_str()));
        let mut active: HashMap<String, HashSet<Subject>> = HashMap::new();
        for (_, (space, r)) in ordered {
            let set = active.entry(space.clone()).or_default();
            if r.regulation_type.suppresses() {
                set.extend(r.subjects.iter().cloned());
            } else if r.regulation_type == RegulationType::Unsuppress {
                for s in &r.subjects {
                    set.remove(s);
                }
            }
        }
        active.retain(|_, s| !s.is_empty());
        self.active = active;
    }

    /// Identifiers suppressed in force, over every space.
    pub fn len(&self) -> usize {
        self.active.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Whether any of `subjects` is suppressed in `space`.
    pub fn suppressed(&self, space: &str, subjects: &[Subject]) -> bool {
        self.active
            .get(space)
            .is_some_and(|set| subjects.iter().any(|s| set.contains(s)))
    }

    /// Whether `msg` of `space` is to be dropped.
    pub fn drops(&self, space: &str, msg: &SegmentMessage) -> bool {
        !self.active.is_empty() && self.suppressed(space, &subjects_of(msg))
    }
}

/// The first byte of a deletion request on `identity.events-by-space` (events there are Avro
/// single-object records, which start with `0xC3 0x01`; links elsewhere use `L`).
pub const DELETION_TAG: u8 = b'R';

/// A deletion request for identity's coordinator: written by `corralctl privacy delete` to
/// `identity.events-by-space`, keyed by the space id, so the one task that owns the space's graph
/// processes it exactly once, in order with the space's events, and again after a crash until its
/// transaction commits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRequest {
    pub regulation_id: String,
    pub space_id: String,
    pub subjects: Vec<Subject>,
    /// When the request was made (epoch ms): what was received up to then is erased; events
    /// received later are a new life of the identifiers.
    #[serde(default)]
    pub requested_at_ms: i64,
}

impl DeletionRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![DELETION_TAG];
        v.extend(serde_json::to_vec(self).unwrap_or_default());
        v
    }

    /// `None` when `value` is not a deletion request (an event).
    pub fn decode(value: &[u8]) -> Option<Result<DeletionRequest, String>> {
        match value.split_first() {
            Some((&DELETION_TAG, body)) => Some(
                serde_json::from_slice(body)
                    .map_err(|e| format!("undecodable deletion request: {e}")),
            ),
            _ => None,
        }
    }
}

/// The `trigger_message_id` of the records a deletion causes (`profiles.merges`,
/// `audiences.membership`): `regulation:{id}`.
pub fn deletion_trigger(regulation_id: &str) -> String {
    format!("regulation:{regulation_id}")
}

/// The regulation a trigger names, if it is a deletion's.
pub fn regulation_of_trigger(trigger: &str) -> Option<&str> {
    trigger.strip_prefix("regulation:")
}

/// Sends `req` to identity (`by_space_topic`: `identity.events-by-space`), keyed by its space,
/// and waits for the broker's acknowledgement. Sending it again is harmless: a second request
/// finds nothing left to delete.
pub fn send_deletion(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    by_space_topic: &str,
    req: &DeletionRequest,
) -> Result<(), RuntimeError> {
    use rdkafka::producer::{BaseRecord, Producer};
    let p = corral_runtime::reader::idempotent_producer(bootstrap, kafka)?;
    let value = req.encode();
    let record: BaseRecord<'_, str, [u8]> = BaseRecord::to(by_space_topic)
        .key(req.space_id.as_str())
        .payload(value.as_slice());
    corral_runtime::produce::send_waiting(&p, record, std::time::Duration::from_millis(50))
        .map_err(|source| RuntimeError::Kafka {
            during: "sending a deletion request",
            source,
        })?;
    p.flush(std::time::Duration::from_secs(30))
        .map_err(|source| RuntimeError::Kafka {
            during: "sending a deletion request (is identity.events-by-space there?)",
            source,
        })
}

/// One regulation as `corralctl privacy list|status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    pub space_id: String,
    pub id: String,
    #[serde(flatten)]
    pub regulation: Regulation,
    /// `finished` or `pending`, see [`status_of`].
    pub status: String,
    /// What is finished and what is not, in words.
    pub detail: String,
}

/// How far a deletion went, read from the topics (see [`deletion_progress`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletionProgress {
    /// Identity carried out the request (its record is in `profiles.merges`).
    pub identity: bool,
    /// Profiles identity deleted.
    pub profiles: Vec<String>,
    /// Of those, the ones whose deletion compute committed (marker in its backfill changelog).
    pub compute: Vec<String>,
    /// Of those, the ones whose records in the retained history (`events.resolved`) compute's
    /// erasure scan tombstoned up to this request (`erased/{profile}` in its backfill changelog).
    pub erased: Vec<String>,
    /// The request's time (identity's deletion records carry it).
    pub requested_at_ms: i64,
}

/// The status of a regulation as far as Corral can vouch for it.
///
/// A suppression or unsuppression is `finished` once its record is in the definitions topic:
/// every collector that follows the topic applies it within its follow lag (about a second) and
/// a collector that starts reads it before it turns ready. A deletion is `finished` when identity
/// carried out the request, compute committed the deletion of every profile identity deleted
/// (retired ids of profiles merged into them included), and its erasure scans tombstoned their
/// records in the retained history ([`status_with`]); without that progress it is `pending`.
pub fn status_of(r: &Regulation) -> (&'static str, String) {
    status_with(r, None)
}

/// [`status_of`] with what is known of the deletion.
pub fn status_with(r: &Regulation, progress: Option<&DeletionProgress>) -> (&'static str, String) {
    let parts = status_parts(r, progress);
    let detail = parts
        .done
        .iter()
        .map(|d| format!("done: {d}"))
        .chain(parts.left.iter().map(|l| format!("not done: {l}")))
        .collect::<Vec<_>>()
        .join("; ");
    (parts.status, detail)
}

/// A regulation's status with what is done and what is not, each part in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusParts {
    /// `finished` or `pending`.
    pub status: &'static str,
    pub done: Vec<String>,
    pub left: Vec<String>,
}

/// [`status_with`], its parts apart (for the admin API's answer).
pub fn status_parts(r: &Regulation, progress: Option<&DeletionProgress>) -> StatusParts {
    let mut done: Vec<&str> = Vec::new();
    let mut left: Vec<&str> = Vec::new();
    if r.regulation_type.suppresses() {
        done.push("new events dropped at the collector");
    }
    if r.regulation_type == RegulationType::Unsuppress {
        done.push("events accepted again at the collector");
    }
    let deletion_parts;
    let erasure_parts;
    if r.regulation_type.deletes() {
        match progress {
            Some(d) if d.identity => {
                done.push("identity graph and links deleted");
                let missing = d.profiles.len() - d.compute.len().min(d.profiles.len());
                deletion_parts = format!(
                    "compute state of {} of {} profiles deleted",
                    d.profiles.len() - missing,
                    d.profiles.len()
                );
                if missing == 0 {
                    done.push(deletion_parts.as_str());
                } else {
                    left.push(deletion_parts.as_str());
                }
                let unerased = d.profiles.len() - d.erased.len().min(d.profiles.len());
                erasure_parts = format!(
                    "retained history of {} of {} profiles erased (tombstoned; the log cleaner removes the records within events.resolved's max.compaction.lag.ms)",
                    d.profiles.len() - unerased,
                    d.profiles.len()
                );
                if unerased == 0 {
                    done.push(erasure_parts.as_str());
                } else {
                    left.push(erasure_parts.as_str());
                }
            }
            Some(_) => left.push("identity has not carried out the request yet"),
            None => left.push("deletion not checked (corralctl privacy status ID checks it)"),
        }
    }
    let status = if left.is_empty() {
        "finished"
    } else {
        "pending"
    };
    StatusParts {
        status,
        done: done.into_iter().map(String::from).collect(),
        left: left.into_iter().map(String::from).collect(),
    }
}

/// Reads how far deletion `regulation_id` went: identity's records in `merges_topic`
/// (`profiles.merges`, read in full: its retention bounds the cost) and compute's markers in
/// `compute_changelog` (`{prefix}{compute app}.backfill-changelog`).
pub fn deletion_progress(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    merges_topic: &str,
    compute_changelog: &str,
    regulation_id: &str,
) -> Result<DeletionProgress, RuntimeError> {
    let mut all = deletions_progress(
        bootstrap,
        kafka,
        merges_topic,
        compute_changelog,
        &[regulation_id],
    )?;
    Ok(all.remove(regulation_id).unwrap_or_default())
}

/// [`deletion_progress`] of several regulations with one read of each topic.
pub fn deletions_progress(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    merges_topic: &str,
    compute_changelog: &str,
    regulation_ids: &[&str],
) -> Result<HashMap<String, DeletionProgress>, RuntimeError> {
    use corral_codec::{AvroRecord, ProfileMerge};
    use corral_runtime::reader::{read_to_end, Flow, Start};
    use rdkafka::message::Message;
    let mut out: HashMap<String, DeletionProgress> = regulation_ids
        .iter()
        .map(|id| (id.to_string(), DeletionProgress::default()))
        .collect();
    if out.is_empty() {
        return Ok(out);
    }
    read_to_end(
        bootstrap,
        kafka,
        corral_runtime::definitions::READER_GROUP,
        merges_topic,
        Start::Beginning,
        READ_TIMEOUT,
        |m| {
            if let Some(mg) = m.payload().and_then(|v| ProfileMerge::decode(v).ok()) {
                let reg = mg
                    .trigger_message_id
                    .as_deref()
                    .and_then(regulation_of_trigger);
                if let (true, Some(p)) = (
                    mg.into_profile_id.is_empty(),
                    reg.and_then(|r| out.get_mut(r)),
                ) {
                    p.identity = true;
                    p.requested_at_ms = p.requested_at_ms.max(mg.merged_at_ms);
                    if !mg.from_profile_id.is_empty() && !p.profiles.contains(&mg.from_profile_id) {
                        p.profiles.push(mg.from_profile_id);
                    }
                }
            }
            Ok::<_, RuntimeError>(Flow::Continue)
        },
    )?;
    // Compute's marks: `deleted/{profile}` keys, live at the end of the changelog.
    let mut wanted: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for (id, p) in &out {
        for pid in &p.profiles {
            wanted
                .entry(format!("deleted/{pid}").into_bytes())
                .or_default()
                .push(id.clone());
        }
    }
    if wanted.is_empty() {
        return Ok(out);
    }
    // And `erased/{profile}` -> the latest deletion time its erasure scan covered.
    for (id, p) in &out {
        for pid in &p.profiles {
            wanted
                .entry(format!("erased/{pid}").into_bytes())
                .or_default()
                .push(id.clone());
        }
    }
    let mut found: HashSet<Vec<u8>> = HashSet::new();
    let mut erased: HashMap<Vec<u8>, i64> = HashMap::new();
    read_to_end(
        bootstrap,
        kafka,
        corral_runtime::definitions::READER_GROUP,
        compute_changelog,
        Start::Beginning,
        READ_TIMEOUT,
        |m| {
            if let Some(k) = m.key().filter(|k| wanted.contains_key(*k)) {
                if k.starts_with(b"erased/") {
                    match m
                        .payload()
                        .and_then(|v| v.get(..8))
                        .and_then(|b| b.try_into().ok())
                    {
                        Some(b) => erased.insert(k.to_vec(), i64::from_be_bytes(b)),
                        None => erased.remove(k),
                    };
                } else if m.payload().is_some() {
                    found.insert(k.to_vec());
                } else {
                    found.remove(k);
                }
            }
            Ok::<_, RuntimeError>(Flow::Continue)
        },
    )?;
    for p in out.values_mut() {
        p.compute = p
            .profiles
            .iter()
            .filter(|pid| found.contains(format!("deleted/{pid}").as_bytes()))
            .cloned()
            .collect();
        // A profile deleted again later (a new life) counts once a scan covered this request.
        p.erased = p
            .profiles
            .iter()
            .filter(|pid| {
                erased
                    .get(format!("erased/{pid}").as_bytes())
                    .is_some_and(|t| *t >= p.requested_at_ms)
            })
            .cloned()
            .collect();
    }
    Ok(out)
}

/// A fresh regulation id (`reg-` and 16 hex digits from the OS's generator).
pub fn new_id() -> String {
    let bytes: [u8; 8] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("reg-{hex}")
}

/// Writes a new regulation `id` of `space`.
pub fn create(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: &str,
    id: &str,
    regulation: &Regulation,
    updated_by: Option<&str>,
) -> Result<Applied, RuntimeError> {
    if regulation.subjects.is_empty() {
        return Err(RuntimeError::Processor(
            "a regulation names at least one identifier (TYPE:VALUE)".into(),
        ));
    }
    let desired = Desired {
        space_id: space.to_string(),
        kind: KIND.to_string(),
        key: id.to_string(),
        name: None,
        body: regulation.to_json(),
    };
    let mut applied = apply_versioned(
        bootstrap,
        kafka,
        topic,
        std::slice::from_ref(&desired),
        updated_by,
        |_| Ok::<_, RuntimeError>(()),
    )?;
    applied
        .pop()
        .ok_or_else(|| RuntimeError::Processor("nothing was applied".into()))
}

/// Every regulation, of `space` or of every space, oldest first, with its status.
pub fn list(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: Option<&str>,
) -> Result<Vec<Listed>, RuntimeError> {
    let mut out: Vec<Listed> = read_all(bootstrap, kafka, topic, READ_TIMEOUT)?
        .into_values()
        .filter(|d| space.is_none_or(|s| d.space_id == s))
        .filter_map(|d| match regulation_of(&d)? {
            Ok(regulation) => {
                let (status, detail) = status_of(&regulation);
                Some(Listed {
                    space_id: d.space_id,
                    id: d.key,
                    regulation,
                    status: status.into(),
                    detail,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable regulation skipped");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.regulation.created_at_ms, &a.id).cmp(&(b.regulation.created_at_ms, &b.id))
    });
    Ok(out)
}

/// Where a deletion's progress is read: `profiles.merges` and compute's backfill changelog.
#[derive(Debug, Clone)]
pub struct ProgressTopics {
    pub merges: String,
    pub compute_changelog: String,
}

/// Regulation `id` (of any space when `space` is `None`) with its status, a deletion's progress
/// read from `progress`; `None` when there is no such regulation.
pub fn status(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: Option<&str>,
    id: &str,
    progress: &ProgressTopics,
) -> Result<Option<Listed>, RuntimeError> {
    let Some(mut l) = list(bootstrap, kafka, topic, space)?
        .into_iter()
        .find(|l| l.id == id)
    else {
        return Ok(None);
    };
    if l.regulation.regulation_type.deletes() {
        let d = deletion_progress(
            bootstrap,
            kafka,
            &progress.merges,
            &progress.compute_changelog,
            id,
        )?;
        let (s, detail) = status_with(&l.regulation, Some(&d));
        l.status = s.into();
        l.detail = detail;
    }
    Ok(Some(l))
}

/// Where a request is written: the `definitions` topic and identity's
/// `identity.events-by-space`.
#[derive(Debug, Clone)]
pub struct RequestTopics {
    pub definitions: String,
    pub by_space: String,
}

/// Files regulation `id` of `space`: writes it to the definitions topic, then, for a deletion,
/// sends the request to identity's coordinator of the space, in order with its events. The one
/// implementation behind `corralctl privacy` and the admin API. A failure after the write
/// leaves the regulation pending; filing it again with the same id and body finishes it (the
/// unchanged definition is not written twice, and identity finds nothing left of a second
/// request).
pub fn request(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topics: &RequestTopics,
    space: &str,
    id: &str,
    regulation: &Regulation,
    updated_by: Option<&str>,
) -> Result<Applied, RuntimeError> {
    let applied = create(
        bootstrap,
        kafka,
        &topics.definitions,
        space,
        id,
        regulation,
        updated_by,
    )?;
    if regulation.regulation_type.deletes() {
        send_deletion(
            bootstrap,
            kafka,
            &topics.by_space,
            &DeletionRequest {
                regulation_id: id.to_string(),
                space_id: space.to_string(),
                subjects: regulation.subjects.clone(),
                requested_at_ms: regulation.created_at_ms,
            },
        )?;
    }
    Ok(applied)
}

/// The regulations of `space` (or only `id`), oldest first, each with its status in parts; the
/// progress of every deletion among them read with one pass over each progress topic.
pub fn checked(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: Option<&str>,
    id: Option<&str>,
    progress: &ProgressTopics,
) -> Result<Vec<(Listed, StatusParts)>, RuntimeError> {
    let listed: Vec<Listed> = list(bootstrap, kafka, topic, space)?
        .into_iter()
        .filter(|l| id.is_none_or(|i| l.id == i))
        .collect();
    let deleting: Vec<&str> = listed
        .iter()
        .filter(|l| l.regulation.regulation_type.deletes())
        .map(|l| l.id.as_str())
        .collect();
    let mut found = deletions_progress(
        bootstrap,
        kafka,
        &progress.merges,
        &progress.compute_changelog,
        &deleting,
    )?;
    Ok(listed
        .into_iter()
        .map(|mut l| {
            let d = found.remove(&l.id);
            let parts = status_parts(&l.regulation, d.as_ref());
            let (status, detail) = status_with(&l.regulation, d.as_ref());
            l.status = status.into();
            l.detail = detail;
            (l, parts)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn reg(t: RegulationType, subjects: &[&str], at: i64) -> Regulation {
        Regulation {
            regulation_type: t,
            subjects: subjects.iter().map(|s| s.parse().unwrap()).collect(),
            created_at_ms: at,
        }
    }

    fn msg(v: Json) -> SegmentMessage {
        let mut base = json!({"space_id": "acme", "type": "track", "messageId": "m1",
            "event": "x", "receivedAt": "2026-01-01T00:00:00.000Z"});
        if let (Json::Object(b), Json::Object(o)) = (&mut base, v) {
            b.extend(o);
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn identifiers_parse_as_type_colon_value() {
        assert_eq!(
            "user_id:ada".parse::<Subject>().unwrap(),
            Subject::new("user_id", "ada")
        );
        assert_eq!(
            "email:a:b@x".parse::<Subject>().unwrap(),
            Subject::new("email", "a:b@x")
        );
        for bad in ["ada", ":ada", "user_id:", "user id:ada"] {
            assert!(bad.parse::<Subject>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_body_round_trips_in_snake_case() {
        let r = reg(RegulationType::SuppressWithDelete, &["user_id:ada"], 5);
        let j = r.to_json();
        assert_eq!(j["type"], "suppress_with_delete");
        assert_eq!(j["subjects"][0], json!({"type": "user_id", "value": "ada"}));
        assert_eq!(serde_json::from_value::<Regulation>(j).unwrap(), r);
        assert!(is_regulation_key("acme/regulation/reg-1"));
        assert!(!is_regulation_key("acme/source/web"));
    }

    #[test]
    fn a_message_names_its_user_anonymous_id_and_emails() {
        let m = msg(json!({"userId": "ada", "anonymousId": "anon-1",
            "traits": {"email": "ada@x.io"}, "context": {"traits": {"email": "ada@x.io"}}}));
        assert_eq!(
            subjects_of(&m),
            vec![
                Subject::new("user_id", "ada"),
                Subject::new("anonymous_id", "anon-1"),
                Subject::new("email", "ada@x.io")
            ]
        );
        assert!(subjects_of(&msg(json!({}))).is_empty());
    }

    #[test]
    fn regulations_apply_in_creation_order_per_space() {
        let mut s = Suppressions::default();
        let ada = msg(json!({"userId": "ada"}));
        let by_mail =
            msg(json!({"anonymousId": "z", "context": {"traits": {"email": "ada@x.io"}}}));
        assert!(!s.drops("acme", &ada));
        s.upsert(
            "acme/regulation/r1",
            "acme",
            reg(
                RegulationType::Suppress,
                &["user_id:ada", "email:ada@x.io"],
                10,
            ),
        );
        assert!(s.drops("acme", &ada) && s.drops("acme", &by_mail));
        assert!(!s.drops("other", &ada), "suppressions are per space");
        assert!(!s.drops("acme", &msg(json!({"userId": "bob"}))));
        // A delete alone does not suppress.
        s.upsert(
            "acme/regulation/r0",
            "acme",
            reg(RegulationType::Delete, &["user_id:bob"], 11),
        );
        assert!(!s.drops("acme", &msg(json!({"userId": "bob"}))));
        // Unsuppress undoes what was suppressed before it, only for the ids it names.
        s.upsert(
            "acme/regulation/r2",
            "acme",
            reg(RegulationType::Unsuppress, &["user_id:ada"], 20),
        );
        assert!(!s.drops("acme", &ada));
        assert!(s.drops("acme", &by_mail));
        assert_eq!(s.len(), 1);
        // A later suppress-with-delete is in force again; one created before the unsuppress is not.
        s.upsert(
            "acme/regulation/r3",
            "acme",
            reg(RegulationType::SuppressWithDelete, &["user_id:ada"], 15),
        );
        assert!(!s.drops("acme", &ada));
        s.upsert(
            "acme/regulation/r4",
            "acme",
            reg(RegulationType::SuppressWithDelete, &["user_id:ada"], 25),
        );
        assert!(s.drops("acme", &ada));
        s.remove("acme/regulation/r4");
        s.remove("acme/regulation/r1");
        assert!(!s.drops("acme", &by_mail) && !s.drops("acme", &ada));
        assert!(s.is_empty());
    }

    #[test]
    fn deletion_requests_round_trip_and_are_told_from_events() {
        let r = DeletionRequest {
            regulation_id: "reg-1".into(),
            space_id: "acme".into(),
            subjects: vec![Subject::new("user_id", "ada")],
            requested_at_ms: 7,
        };
        assert_eq!(DeletionRequest::decode(&r.encode()), Some(Ok(r)));
        assert_eq!(DeletionRequest::decode(&[0xC3, 0x01, 1]), None);
        assert!(DeletionRequest::decode(b"R{").unwrap().is_err());
        assert_eq!(
            regulation_of_trigger(&deletion_trigger("reg-1")),
            Some("reg-1")
        );
        assert_eq!(regulation_of_trigger("msg-1"), None);
    }

    #[test]
    fn status_is_finished_only_when_every_part_is_done() {
        let (st, _) = status_of(&reg(RegulationType::Suppress, &["user_id:a"], 1));
        assert_eq!(st, "finished");
        let r = reg(RegulationType::SuppressWithDelete, &["user_id:a"], 1);
        let (st, detail) = status_of(&r);
        assert_eq!(st, "pending");
        assert!(
            detail.contains("not done: deletion not checked"),
            "{detail}"
        );
        let mut d = DeletionProgress::default();
        assert_eq!(status_with(&r, Some(&d)).0, "pending");
        d.identity = true;
        assert_eq!(status_with(&r, Some(&d)).0, "finished", "nothing matched");
        d.profiles = vec!["use_1".into(), "use_2".into()];
        d.compute = vec!["use_1".into()];
        let (st, detail) = status_with(&r, Some(&d));
        assert_eq!(st, "pending");
        assert!(
            detail.contains("not done: compute state of 1 of 2"),
            "{detail}"
        );
        d.compute.push("use_2".into());
        let (st, detail) = status_with(&r, Some(&d));
        assert_eq!(st, "pending", "the retained history is not erased yet");
        assert!(
            detail.contains("not done: retained history of 0 of 2"),
            "{detail}"
        );
        d.erased = vec!["use_2".into()];
        assert_eq!(status_with(&r, Some(&d)).0, "pending");
        d.erased.push("use_1".into());
        assert_eq!(status_with(&r, Some(&d)).0, "finished");
    }
}
