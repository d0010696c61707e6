//! The service's disk-backed state: one RocksDB holding
//!
//! | tag | key parts | value |
//! |---|---|---|
//! | `G` | identity's graph key, as is | identity's value (replica of `identity.graph-changelog`) |
//! | `R` | space, surviving id, merged-away id | empty: the reverse of identity's aliases |
//! | `C` | compute's profile id, as is | compute's state (replica of `compute.profiles-changelog`) |
//! | `S` | space, group id | compute's account state (replica of `compute.accounts-changelog`, its `a/` keys) |
//! | `E` | space, collection, owner + 8-byte inverted time + message id | resolved time (8 bytes) and the event as the API shows it |
//! | `M` | space, profile id | first and last message of the profile ([`Meta`]) |
//! | `F` | space, id type, id value | the first message that carried the external id ([`Seen`]) |
//! | `A` | space, group id | an account built from group calls ([`Account`]) |
//! | `L` | space, profile id, group id | user → account link ([`Seen`]) |
//! | `K` | space, group id, profile id | account → user link ([`Seen`]) |
//! | `X` | space, profile id | deletion time (i64, big-endian): events resolved up to then are erased |
//! | `N` | space, into, from | merge time (i64, big-endian), from `profiles.merges`, to follow deletions |
//!
//! Parts are length-prefixed (as identity's keys are), so no part can run into the next and a
//! key's prefix of whole parts selects exactly that owner. Events are kept newest first and at
//! most `events_per_owner` per owner (profile id or group id): older ones are deleted after each
//! batch.
//!
//! Deletions (docs/privacy.md) arrive on `profiles.merges` as a record with an empty `into`:
//! [`ProfileStore::apply_merges`] erases what the index holds of the profile, and of the
//! profiles merged into it at or before the deletion, from before the request (events, first
//! and last message, first messages of its external ids, account links and its events in
//! accounts' lists), and keeps a mark (`X`) so an event of the deleted life that is indexed
//! later (the two topics are read by separate threads, in no common order) is skipped. The
//! index and the erasure take one lock, so neither can slip between the other's read and
//! write. Writes skip RocksDB's write-ahead log: the whole folder is rebuilt from Kafka at each
//! start (see [`ProfileStore::open_fresh`]), so a crash loses nothing that matters.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use chrono::SecondsFormat;
use corral_codec::{AvroRecord, MessageType, ResolvedEvent};
use corral_compute::ProfileState;
use corral_identity::engine::Profile;
use corral_identity::ids::Ident;
use corral_identity::store::{
    alias_key, decode_key, decode_profile, id_key, profile_key, TAG_ALIAS,
};
use corral_runtime::follow::ChangelogRecord;
use rocksdb::{Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const T_GRAPH: u8 = b'G';
pub const T_REVERSE: u8 = b'R';
pub const T_COMPUTE: u8 = b'C';
pub const T_ACCOUNT_STATE: u8 = b'S';
pub const T_EVENT: u8 = b'E';
pub const T_META: u8 = b'M';
pub const T_FIRST: u8 = b'F';
pub const T_ACCOUNT: u8 = b'A';
pub const T_LINK_USER: u8 = b'L';
pub const T_LINK_ACCOUNT: u8 = b'K';
pub const T_DELETED: u8 = b'X';
pub const T_MERGED: u8 = b'N';

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {source}")]
    Db {
        path: String,
        source: rocksdb::Error,
    },
    #[error("cannot clear the replica folder {path}: {source}; remove it by hand")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// `tag` then every part as a big-endian u32 length and its bytes.
pub fn key(tag: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    k.push(tag);
    for p in parts {
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// ISO 8601 in UTC with milliseconds, as Segment writes times.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A message seen first (an external id's, a link's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub ms: i64,
    pub message_id: String,
    #[serde(default)]
    pub source_id: Option<String>,
}

/// The first and last message of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub first: Seen,
    pub last: Seen,
}

impl Meta {
    fn fold(&mut self, s: &Seen) {
        if s.ms < self.first.ms {
            self.first = s.clone();
        }
        if s.ms >= self.last.ms {
            self.last = s.clone();
        }
    }

    /// The earliest first and latest last of several (a profile and those merged into it).
    pub fn combine(all: impl IntoIterator<Item = Meta>) -> Option<Meta> {
        let mut it = all.into_iter();
        let mut out = it.next()?;
        for m in it {
            out.fold(&m.first);
            out.fold(&m.last);
        }
        Some(out)
    }
}

/// A trait with the time and source of the call that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcedValue {
    pub v: Value,
    pub t: i64,
    #[serde(default)]
    pub src: Option<String>,
}

/// An account (a group id), built from the group calls that name it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub meta: Meta,
    /// Latest value per trait by event time; `null` values are kept (a removal).
    #[serde(default)]
    pub traits: std::collections::BTreeMap<String, SourcedValue>,
}

/// The store; see the module doc.
pub struct ProfileStore {
    db: DB,
    events_per_owner: usize,
    /// Held while events are indexed and while a deletion erases (see the module doc).
    index_lock: std::sync::Mutex<()>,
    /// Whether any deletion mark was written: until then no lookup is needed per event.
    any_deleted: std::sync::atomic::AtomicBool,
}

/// What a batch of `events.resolved` values did to the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsApplied {
    /// Values that did not decode (skipped).
    pub undecodable: usize,
    /// Events of a deleted life (resolved at or before their profile's deletion), skipped.
    pub erased: usize,
}

/// What a batch of `profiles.merges` records did to the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergesApplied {
    /// Deletion records (empty `into`).
    pub deletions: usize,
    /// Indexed events erased by them.
    pub erased_events: usize,
    /// Records that did not decode (skipped).
    pub undecodable: usize,
}

/// The 8-byte resolved time in front of a stored event, then its JSON.
fn stored_event(resolved_at_ms: i64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + json.len());
    v.extend_from_slice(&resolved_at_ms.to_be_bytes());
    v.extend_from_slice(json);
    v
}

/// (resolved time, JSON bytes) of a stored event.
fn split_stored_event(v: &[u8]) -> Option<(i64, &[u8])> {
    let (t, json) = v.split_at_checked(8)?;
    Some((i64::from_be_bytes(t.try_into().ok()?), json))
}

fn be_i64(v: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(v.try_into().ok()?))
}

fn db_err(path: &Path) -> impl Fn(rocksdb::Error) -> StoreError + '_ {
    move |source| StoreError::Db {
        path: path.display().to_string(),
        source,
    }
}

/// A key and its value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// The users collection's name in keys and answers.
pub const USERS: &str = "users";
/// The accounts collection's.
pub const ACCOUNTS: &str = "accounts";

impl ProfileStore {
    /// Removes whatever `path` held and opens an empty store there: the replicas are rebuilt
    /// from the beginning of their topics at every start.
    pub fn open_fresh(path: &Path, events_per_owner: usize) -> Result<ProfileStore, StoreError> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Bounded memory: the block cache and memtables stay small whatever the profile count.
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_write_buffer_number(3);
        let mut block = rocksdb::BlockBasedOptions::default();
        block.set_block_cache(&rocksdb::Cache::new_lru_cache(64 << 20));
        block.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&block);
        let db = DB::open(&opts, path).map_err(db_err(path))?;
        Ok(ProfileStore {
            db,
            events_per_owner: events_per_owner.max(1),
            index_lock: std::sync::Mutex::new(()),
            any_deleted: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn path(&self) -> &Path {
        self.db.path()
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo).map_err(db_err(self.path()))
    }

    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(k).map_err(db_err(self.path()))
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, k: &[u8]) -> Result<Option<T>, StoreError> {
        Ok(self.get(k)?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(db_err(self.path()))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    // ---------------------------------------------------------------------------------------
    // Applying the inputs.

    /// Applies records of identity's graph changelog in order, keeping the reverse alias index.
    pub fn apply_graph(&self, records: Vec<ChangelogRecord>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        // Values written earlier in this batch, as later records of it must see them.
        let mut overlay: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for r in records {
            let mut gk = Vec::with_capacity(r.key.len() + 1);
            gk.push(T_GRAPH);
            gk.extend_from_slice(&r.key);
            if let Some((TAG_ALIAS, parts)) = decode_key(&r.key) {
                if let [space, from] = parts.as_slice() {
                    let old = match overlay.get(&gk) {
                        Some(v) => v.clone(),
                        None => self.get(&gk)?,
                    };
                    if let Some(old) = old.and_then(|b| String::from_utf8(b).ok()) {
                        batch.delete(key(T_REVERSE, &[space, &old, from]));
                    }
                    if let Some(into) = r.value.as_deref().and_then(|b| std::str::from_utf8(b).ok())
                    {
                        batch.put(key(T_REVERSE, &[space, into, from]), b"");
                    }
                }
            }
            match &r.value {
                Some(v) => batch.put(&gk, v),
                None => batch.delete(&gk),
            }
            overlay.insert(gk, r.value);
        }
        self.write(batch)
    }

    /// Applies records of compute's profiles changelog.
    pub fn apply_compute(&self, records: Vec<ChangelogRecord>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for r in records {
            let mut k = Vec::with_capacity(r.key.len() + 1);
            k.push(T_COMPUTE);
            k.extend_from_slice(&r.key);
            match &r.value {
                Some(v) => batch.put(&k, v),
                None => batch.delete(&k),
            }
        }
        self.write(batch)
    }

    /// Applies records of compute's accounts changelog: the accounts (`a/{space}\0{group}`);
    /// the per-user records (`m/...`) are not needed here.
    pub fn apply_compute_accounts(&self, records: Vec<ChangelogRecord>) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for r in records {
            let Some(rest) = r.key.strip_prefix(b"a/") else {
                continue;
            };
            let Some((space, group)) = std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.split_once('\0'))
            else {
                continue;
            };
            let k = key(T_ACCOUNT_STATE, &[space, group]);
            match &r.value {
                Some(v) => batch.put(&k, v),
                None => batch.delete(&k),
            }
        }
        self.write(batch)
    }

    /// Compute's state of an account (`None`: none, or it does not decode).
    pub fn account_state(
        &self,
        space: &str,
        gid: &str,
    ) -> Result<Option<corral_compute::accounts::AccountState>, StoreError> {
        Ok(self
            .get(&key(T_ACCOUNT_STATE, &[space, gid]))?
            .and_then(|b| rmp_serde::from_slice(&b).ok()))
    }

    /// Indexes `events.resolved` values (see the module doc). Values that do not decode are
    /// counted and skipped (this replica never holds up on one bad record), and so are events
    /// of a deleted life. Tombstones (records without a value) are not passed here: the
    /// caller drops them (a deletion reaches this index through [`Self::apply_merges`]).
    pub fn apply_events(&self, values: &[Vec<u8>]) -> Result<EventsApplied, StoreError> {
        let _guard = self.index_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::default();
        let mut json_overlay: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut touched: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut out = EventsApplied::default();
        for v in values {
            let Ok(ev) = ResolvedEvent::decode(v) else {
                out.undecodable += 1;
                continue;
            };
            if self
                .deleted_at(&ev.message.space_id, &ev.profile_id)?
                .is_some_and(|t| ev.resolved_at_ms <= t)
            {
                out.erased += 1;
                continue;
            }
            self.index_event(&ev, &mut batch, &mut json_overlay, &mut touched)?;
        }
        for (k, v) in json_overlay {
            batch.put(k, v);
        }
        self.write(batch)?;
        self.trim(&touched)?;
        Ok(out)
    }

    /// [`Self::apply_events`] over records of `events.resolved` as read: tombstones (no value)
    /// are skipped, and the key is not read (the profile id is in the value; the key's shape is
    /// the writer's business: the profile id, or the profile id and the message id).
    pub fn apply_event_records(
        &self,
        records: Vec<ChangelogRecord>,
    ) -> Result<EventsApplied, StoreError> {
        let values: Vec<Vec<u8>> = records.into_iter().filter_map(|r| r.value).collect();
        self.apply_events(&values)
    }

    /// When `pid` of `space` was deleted (the latest deletion), if it was.
    pub fn deleted_at(&self, space: &str, pid: &str) -> Result<Option<i64>, StoreError> {
        if !self.any_deleted.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self
            .get(&key(T_DELETED, &[space, pid]))?
            .and_then(|v| be_i64(&v)))
    }

    /// Applies `profiles.merges` values: merges are remembered (`N`) so that a deletion also
    /// covers the profiles merged into the deleted one at or before it; a deletion (empty
    /// `into`, docs/privacy.md) erases the deleted life from the index (see the module doc).
    /// The order of merges and deletions between partitions does not matter: a merge into a
    /// profile deleted after the merge, read after the deletion, erases the merged profile too.
    pub fn apply_merges(&self, values: &[Vec<u8>]) -> Result<MergesApplied, StoreError> {
        use corral_codec::ProfileMerge;
        let _guard = self.index_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = MergesApplied::default();
        for v in values {
            let Ok(m) = ProfileMerge::decode(v) else {
                out.undecodable += 1;
                continue;
            };
            if m.from_profile_id.is_empty() {
                // A deletion that matched no profile: nothing to erase.
                continue;
            }
            let space = m.space_id.as_str();
            if m.into_profile_id.is_empty() {
                out.deletions += 1;
                out.erased_events += self.delete_life(space, &m.from_profile_id, m.merged_at_ms)?;
                continue;
            }
            let mut batch = WriteBatch::default();
            batch.put(
                key(T_MERGED, &[space, &m.into_profile_id, &m.from_profile_id]),
                m.merged_at_ms.to_be_bytes(),
            );
            self.write(batch)?;
            if let Some(t) = self.deleted_at(space, &m.into_profile_id)? {
                if m.merged_at_ms <= t {
                    out.erased_events += self.delete_life(space, &m.from_profile_id, t)?;
                }
            }
        }
        Ok(out)
    }

    /// Marks `pid` deleted at `at` and erases its indexed data from before then, and that of
    /// every profile merged into it at or before `at` (transitively). Returns the events erased.
    fn delete_life(&self, space: &str, pid: &str, at: i64) -> Result<usize, StoreError> {
        let mut todo = vec![pid.to_string()];
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut erased = 0;
        while let Some(p) = todo.pop() {
            if !done.insert(p.clone()) {
                continue;
            }
            self.any_deleted
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let mark = self.deleted_at(space, &p)?.map_or(at, |t| t.max(at));
            let mut batch = WriteBatch::default();
            batch.put(key(T_DELETED, &[space, &p]), mark.to_be_bytes());
            self.write(batch)?;
            erased += self.erase(space, &p, mark)?;
            for (k, v) in self.scan(&key(T_MERGED, &[space, &p]))? {
                if be_i64(&v).is_some_and(|t| t <= at) {
                    if let Some(from) = last_part(&k) {
                        todo.push(from);
                    }
                }
            }
        }
        Ok(erased)
    }

    /// Erases what the index holds of `pid` from events resolved at or before `at`: its events,
    /// its first and last message (rebuilt from the events that stay), the first messages of
    /// the external ids those events carried, its account links, and its events in the
    /// accounts' lists. Returns the profile's events erased.
    fn erase(&self, space: &str, pid: &str, at: i64) -> Result<usize, StoreError> {
        let mut batch = WriteBatch::default();
        let owner = key(T_EVENT, &[space, USERS, pid]);
        let mut erased = 0;
        let mut gone_ids: BTreeSet<(String, String)> = BTreeSet::new();
        let mut gone_messages: BTreeSet<String> = BTreeSet::new();
        let mut kept: Vec<(Seen, Value)> = Vec::new();
        for (k, v) in self.scan(&owner)? {
            let rest = &k[owner.len()..];
            let Some((resolved, json)) = split_stored_event(&v) else {
                batch.delete(&k);
                continue;
            };
            let json: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
            if resolved > at {
                let ts = rest
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, |b| (u64::MAX - u64::from_be_bytes(b)) as i64);
                let seen = Seen {
                    ms: ts,
                    message_id: json["message_id"].as_str().unwrap_or_default().to_string(),
                    source_id: json["source_id"].as_str().map(String::from),
                };
                kept.push((seen, json));
                continue;
            }
            batch.delete(&k);
            erased += 1;
            if let Some(m) = json["message_id"].as_str() {
                gone_messages.insert(m.to_string());
            }
            for id in json["external_ids"].as_array().into_iter().flatten() {
                if id["collection"] == ACCOUNTS {
                    continue;
                }
                if let (Some(t), Some(i)) = (id["type"].as_str(), id["id"].as_str()) {
                    gone_ids.insert((t.to_string(), i.to_string()));
                }
            }
        }
        // First and last message: from the events of the new life, if any.
        let mk = key(T_META, &[space, pid]);
        match kept.split_first() {
            Some(((first, _), rest)) => {
                let mut meta = Meta {
                    first: first.clone(),
                    last: first.clone(),
                };
                for (s, _) in rest {
                    meta.fold(s);
                }
                batch.put(&mk, serde_json::to_vec(&meta).unwrap_or_default());
            }
            None => batch.delete(&mk),
        }
        // The first message of each external id the erased events carried: the earliest event
        // of the new life that carries it, else none.
        let carries = |j: &Value, t: &str, i: &str| {
            j["external_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["type"] == t && x["id"] == i)
        };
        for (t, i) in &gone_ids {
            let fk = key(T_FIRST, &[space, t, i]);
            let first = kept
                .iter()
                .filter(|(_, j)| carries(j, t, i))
                .min_by_key(|(s, _)| s.ms);
            match first {
                Some((seen, _)) => batch.put(&fk, serde_json::to_vec(seen).unwrap_or_default()),
                None => batch.delete(&fk),
            }
        }
        // Account links, unless a group call of the new life made them again; the profile's
        // group calls in the accounts' event lists.
        for (gid, _) in self.accounts_of(space, pid)? {
            let relinked = kept
                .iter()
                .any(|(_, j)| j["type"] == "group" && j["group_id"] == gid.as_str());
            if !relinked {
                batch.delete(key(T_LINK_USER, &[space, pid, &gid]));
                batch.delete(key(T_LINK_ACCOUNT, &[space, &gid, pid]));
            }
            let acct = key(T_EVENT, &[space, ACCOUNTS, &gid]);
            for (k, v) in self.scan(&acct)? {
                let Some((resolved, json)) = split_stored_event(&v) else {
                    continue;
                };
                if resolved > at {
                    continue;
                }
                let json: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
                if json["related"]["users"] == pid {
                    batch.delete(&k);
                }
            }
        }
        self.write(batch)?;
        Ok(erased)
    }

    fn read_json_through<T: for<'de> Deserialize<'de>>(
        &self,
        overlay: &HashMap<Vec<u8>, Vec<u8>>,
        k: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match overlay.get(k) {
            Some(b) => Ok(serde_json::from_slice(b).ok()),
            None => self.get_json(k),
        }
    }

    fn index_event(
        &self,
        ev: &ResolvedEvent,
        batch: &mut WriteBatch,
        overlay: &mut HashMap<Vec<u8>, Vec<u8>>,
        touched: &mut BTreeSet<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let m = &ev.message;
        let space = m.space_id.as_str();
        let ts = corral_compute::service::event_time_ms(m, ev.resolved_at_ms);
        let seen = Seen {
            ms: ts,
            message_id: m.message_id.clone(),
            source_id: m.source_id.clone(),
        };
        let item = event_json(ev, ts);
        let bytes = stored_event(
            ev.resolved_at_ms,
            &serde_json::to_vec(&item).unwrap_or_default(),
        );
        let mut suffix = (u64::MAX - ts as u64).to_be_bytes().to_vec();
        suffix.extend_from_slice(m.message_id.as_bytes());

        // The profile's events and first/last message.
        let owner = key(T_EVENT, &[space, USERS, &ev.profile_id]);
        batch.put([owner.as_slice(), &suffix].concat(), &bytes);
        touched.insert(owner);
        let mk = key(T_META, &[space, &ev.profile_id]);
        let meta = match self.read_json_through::<Meta>(overlay, &mk)? {
            Some(mut meta) => {
                meta.fold(&seen);
                meta
            }
            None => Meta {
                first: seen.clone(),
                last: seen.clone(),
            },
        };
        overlay.insert(mk, serde_json::to_vec(&meta).unwrap_or_default());
        // The first message of each external id.
        for id in &ev.external_ids {
            if id.collection.as_deref() == Some(ACCOUNTS) {
                continue;
            }
            let fk = key(T_FIRST, &[space, &id.id_type, &id.id]);
            if !overlay.contains_key(&fk) && self.get(&fk)?.is_none() {
                overlay.insert(fk, serde_json::to_vec(&seen).unwrap_or_default());
            }
        }
        // Group calls build the account and link it with the profile.
        if m.message_type == MessageType::Group {
            if let Some(gid) = m.group_id.as_deref().filter(|g| !g.is_empty()) {
                let owner = key(T_EVENT, &[space, ACCOUNTS, gid]);
                batch.put([owner.as_slice(), &suffix].concat(), &bytes);
                touched.insert(owner);
                let ak = key(T_ACCOUNT, &[space, gid]);
                let mut acct = match self.read_json_through::<Account>(overlay, &ak)? {
                    Some(mut a) => {
                        a.meta.fold(&seen);
                        a
                    }
                    None => Account {
                        meta: Meta {
                            first: seen.clone(),
                            last: seen.clone(),
                        },
                        traits: Default::default(),
                    },
                };
                if let Some(Value::Object(traits)) = &m.traits {
                    for (k, v) in traits {
                        if acct.traits.get(k).is_none_or(|cur| ts >= cur.t) {
                            acct.traits.insert(
                                k.clone(),
                                SourcedValue {
                                    v: v.clone(),
                                    t: ts,
                                    src: m.source_id.clone(),
                                },
                            );
                        }
                    }
                }
                overlay.insert(ak, serde_json::to_vec(&acct).unwrap_or_default());
                for lk in [
                    key(T_LINK_USER, &[space, &ev.profile_id, gid]),
                    key(T_LINK_ACCOUNT, &[space, gid, &ev.profile_id]),
                ] {
                    if !overlay.contains_key(&lk) && self.get(&lk)?.is_none() {
                        overlay.insert(lk, serde_json::to_vec(&seen).unwrap_or_default());
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the newest `events_per_owner` events of each owner.
    fn trim(&self, owners: &BTreeSet<Vec<u8>>) -> Result<usize, StoreError> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for owner in owners {
            for item in self
                .db
                .iterator(IteratorMode::From(owner, Direction::Forward))
                .skip(self.events_per_owner)
            {
                let (k, _) = item.map_err(db_err(self.path()))?;
                if !k.starts_with(owner) {
                    break;
                }
                batch.delete(k);
                n += 1;
            }
        }
        if n > 0 {
            self.write(batch)?;
        }
        Ok(n)
    }

    // ---------------------------------------------------------------------------------------
    // Reads.

    fn graph(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut gk = Vec::with_capacity(k.len() + 1);
        gk.push(T_GRAPH);
        gk.extend_from_slice(k);
        self.get(&gk)
    }

    /// The live profile a (possibly merged-away) profile id resolves to.
    pub fn profile(&self, space: &str, pid: &str) -> Result<Option<Profile>, StoreError> {
        let mut cur = pid.to_string();
        for _ in 0..10_000 {
            if let Some(p) = self.graph(&profile_key(space, &cur))? {
                return Ok(decode_profile(&p).ok());
            }
            match self
                .graph(&alias_key(space, &cur))?
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(next) => cur = next,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The id `pid` forwards to through identity's aliases (itself when it was never merged
    /// away), without reading the profile: one lookup per hop, usually a bloom-filter miss.
    pub fn live_id(&self, space: &str, pid: &str) -> Result<String, StoreError> {
        let mut cur = pid.to_string();
        for _ in 0..10_000 {
            match self
                .graph(&alias_key(space, &cur))?
                .and_then(|b| String::from_utf8(b).ok())
            {
                Some(next) => cur = next,
                None => break,
            }
        }
        Ok(cur)
    }

    /// The live profile of an external id.
    pub fn profile_of(&self, space: &str, ident: &Ident) -> Result<Option<Profile>, StoreError> {
        match self
            .graph(&id_key(space, ident))?
            .and_then(|b| String::from_utf8(b).ok())
        {
            Some(pid) => self.profile(space, &pid),
            None => Ok(None),
        }
    }

    /// `live` and every profile id merged into it, directly or through others.
    pub fn merged_ids(&self, space: &str, live: &str) -> Result<Vec<String>, StoreError> {
        let mut out = vec![live.to_string()];
        let mut i = 0;
        while i < out.len() && out.len() < 10_000 {
            let prefix = key(T_REVERSE, &[space, &out[i]]);
            for (k, _) in self.scan(&prefix)? {
                if let Some(from) = last_part(&k) {
                    if !out.contains(&from) {
                        out.push(from);
                    }
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// Compute's state of a profile of `space` (`None`: compute holds none, or it does not
    /// decode).
    pub fn compute_state(
        &self,
        space: &str,
        pid: &str,
    ) -> Result<Option<ProfileState>, StoreError> {
        let mut k = vec![T_COMPUTE];
        k.extend_from_slice(pid.as_bytes());
        Ok(self
            .get(&k)?
            .and_then(|b| ProfileState::decode(&b).ok())
            .filter(|st| st.space_id == space))
    }

    /// Calls `f` with every profile id and state compute holds (any space).
    pub fn each_compute_state(
        &self,
        mut f: impl FnMut(&str, ProfileState),
    ) -> Result<(), StoreError> {
        for item in self
            .db
            .iterator(IteratorMode::From(&[T_COMPUTE], Direction::Forward))
        {
            let (k, v) = item.map_err(db_err(self.path()))?;
            if k.first() != Some(&T_COMPUTE) {
                break;
            }
            let (Ok(pid), Ok(st)) = (std::str::from_utf8(&k[1..]), ProfileState::decode(&v)) else {
                continue;
            };
            f(pid, st);
        }
        Ok(())
    }

    /// The stored events of the owners (profile ids or one group id), newest first.
    pub fn events(
        &self,
        space: &str,
        collection: &str,
        owners: &[String],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        for o in owners {
            let prefix = key(T_EVENT, &[space, collection, o]);
            for (k, v) in self.scan(&prefix)? {
                let rest = &k[prefix.len()..];
                if rest.len() < 8 {
                    continue;
                }
                let inv = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
                let Some(Ok(json)) =
                    split_stored_event(&v).map(|(_, j)| serde_json::from_slice::<Value>(j))
                else {
                    continue;
                };
                out.push(StoredEvent {
                    ts_ms: (u64::MAX - inv) as i64,
                    message_id: String::from_utf8_lossy(&rest[8..]).into_owned(),
                    json,
                });
            }
        }
        out.sort_by(|a, b| (b.ts_ms, &b.message_id).cmp(&(a.ts_ms, &a.message_id)));
        out.dedup_by(|a, b| a.message_id == b.message_id);
        Ok(out)
    }

    pub fn meta(&self, space: &str, pid: &str) -> Result<Option<Meta>, StoreError> {
        self.get_json(&key(T_META, &[space, pid]))
    }

    pub fn first_seen(
        &self,
        space: &str,
        id_type: &str,
        id: &str,
    ) -> Result<Option<Seen>, StoreError> {
        self.get_json(&key(T_FIRST, &[space, id_type, id]))
    }

    pub fn account(&self, space: &str, gid: &str) -> Result<Option<Account>, StoreError> {
        self.get_json(&key(T_ACCOUNT, &[space, gid]))
    }

    /// Group ids linked to a profile id, with the first call that linked them.
    pub fn accounts_of(&self, space: &str, pid: &str) -> Result<Vec<(String, Seen)>, StoreError> {
        self.links(&key(T_LINK_USER, &[space, pid]))
    }

    /// Profile ids (as resolved then) linked to a group id.
    pub fn users_of(&self, space: &str, gid: &str) -> Result<Vec<(String, Seen)>, StoreError> {
        self.links(&key(T_LINK_ACCOUNT, &[space, gid]))
    }

    fn links(&self, prefix: &[u8]) -> Result<Vec<(String, Seen)>, StoreError> {
        Ok(self
            .scan(prefix)?
            .into_iter()
            .filter_map(|(k, v)| Some((last_part(&k)?, serde_json::from_slice(&v).ok()?)))
            .collect())
    }

    /// RocksDB's own estimate of its live data, for the size gauge.
    pub fn estimated_bytes(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.estimate-live-data-size")
            .ok()
            .flatten()
            .unwrap_or(0)
    }
}

/// An event as stored, with its sort position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub ts_ms: i64,
    pub message_id: String,
    pub json: Value,
}

/// The last length-prefixed part of a key.
fn last_part(k: &[u8]) -> Option<String> {
    let mut rest = k.get(1..)?;
    let mut last = None;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        last = Some(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    last.and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// A resolved event in the shape of the Profile API's `/events` items.
pub fn event_json(ev: &ResolvedEvent, ts_ms: i64) -> Value {
    let m = &ev.message;
    let mut o = Map::new();
    o.insert(
        "external_ids".into(),
        Value::Array(
            ev.external_ids
                .iter()
                .map(|i| {
                    json!({
                        "collection": i.collection.clone().unwrap_or_else(|| USERS.into()),
                        "type": i.id_type,
                        "id": i.id,
                        "encoding": "none",
                    })
                })
                .collect(),
        ),
    );
    o.insert("context".into(), m.context.clone().unwrap_or(json!({})));
    o.insert("type".into(), json!(m.message_type.as_str()));
    o.insert("message_id".into(), json!(m.message_id));
    o.insert("source_id".into(), json!(m.source_id));
    o.insert("timestamp".into(), json!(iso(ts_ms)));
    match m.message_type {
        MessageType::Identify | MessageType::Group => {
            o.insert("traits".into(), m.traits.clone().unwrap_or(json!({})));
        }
        _ => {
            o.insert(
                "properties".into(),
                m.properties.clone().unwrap_or(json!({})),
            );
        }
    }
    if let Some(e) = corral_compute::service::event_name(m.message_type, m.event.as_deref()) {
        o.insert("event".into(), json!(e));
    }
    if let Some(n) = &m.name {
        o.insert("name".into(), json!(n));
    }
    if let Some(g) = &m.group_id {
        o.insert("group_id".into(), json!(g));
    }
    o.insert("related".into(), json!({ "users": ev.profile_id }));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_codec::{ExternalId, SegmentMessage};

    fn ev(pid: &str, mid: &str, kind: MessageType, ts: i64) -> Vec<u8> {
        let mut m = SegmentMessage::new("s", kind, mid);
        m.timestamp = Some(iso(ts));
        m.event = Some("Order Completed".into());
        m.source_id = Some("src1".into());
        if kind == MessageType::Group {
            m.group_id = Some("g1".into());
            m.traits = Some(json!({"plan": format!("p{ts}")}));
        }
        ResolvedEvent {
            message: m,
            profile_id: pid.into(),
            external_ids: vec![ExternalId {
                id_type: "user_id".into(),
                id: pid.into(),
                collection: Some("users".into()),
            }],
            resolved_at_ms: ts,
        }
        .encode()
        .unwrap()
    }

    #[test]
    fn events_are_newest_first_and_bounded_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 3).unwrap();
        let vals: Vec<Vec<u8>> = (1..=5)
            .map(|i| ev("p1", &format!("m{i}"), MessageType::Track, 1_000 * i))
            .collect();
        assert_eq!(st.apply_events(&vals).unwrap().undecodable, 0);
        assert_eq!(st.apply_events(&[b"junk".to_vec()]).unwrap().undecodable, 1);
        let got = st.events("s", USERS, &["p1".into()]).unwrap();
        let ids: Vec<&str> = got.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, ["m5", "m4", "m3"]);
        assert_eq!(got[0].json["event"], "Order Completed");
        assert_eq!(got[0].json["related"]["users"], "p1");
        let meta = st.meta("s", "p1").unwrap().unwrap();
        assert_eq!(
            (
                meta.first.message_id.as_str(),
                meta.last.message_id.as_str()
            ),
            ("m1", "m5")
        );
        assert_eq!(
            st.first_seen("s", "user_id", "p1")
                .unwrap()
                .unwrap()
                .message_id,
            "m1"
        );
    }

    #[test]
    fn group_calls_build_accounts_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        st.apply_events(&[
            ev("p1", "g-late", MessageType::Group, 2_000),
            ev("p1", "g-early", MessageType::Group, 1_000),
            ev("p2", "g-p2", MessageType::Group, 1_500),
        ])
        .unwrap();
        let a = st.account("s", "g1").unwrap().unwrap();
        assert_eq!(
            a.traits["plan"].v,
            json!("p2000"),
            "latest by event time wins"
        );
        assert_eq!(a.meta.first.message_id, "g-early");
        let users: Vec<String> = st
            .users_of("s", "g1")
            .unwrap()
            .into_iter()
            .map(|u| u.0)
            .collect();
        assert_eq!(users, ["p1", "p2"]);
        assert_eq!(st.accounts_of("s", "p1").unwrap()[0].0, "g1");
        assert_eq!(st.accounts_of("s", "p1").unwrap()[0].1.message_id, "g-late");
        assert_eq!(st.events("s", ACCOUNTS, &["g1".into()]).unwrap().len(), 3);
    }

    #[test]
    fn compute_accounts_are_kept_by_space_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        let acct = corral_compute::accounts::AccountState {
            group_id: "g1".into(),
            users: 2,
            ..Default::default()
        };
        let rec = |k: &[u8], v: Option<Vec<u8>>| ChangelogRecord {
            partition: 0,
            key: k.to_vec(),
            value: v,
        };
        st.apply_compute_accounts(vec![
            rec(b"a/s\0g1", Some(rmp_serde::to_vec_named(&acct).unwrap())),
            rec(b"m/s\0g1\0p1", Some(b"ignored".to_vec())),
        ])
        .unwrap();
        assert_eq!(st.account_state("s", "g1").unwrap().unwrap().users, 2);
        st.apply_compute_accounts(vec![rec(b"a/s\0g1", None)])
            .unwrap();
        assert_eq!(st.account_state("s", "g1").unwrap(), None);
    }

    #[test]
    fn aliases_are_followed_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        let p = Profile {
            id: "c".into(),
            created_ms: 5,
            merges: 2,
            identifiers: vec![],
        };
        let rec = |k: Vec<u8>, v: Option<&[u8]>| ChangelogRecord {
            partition: 0,
            key: k,
            value: v.map(<[u8]>::to_vec),
        };
        st.apply_graph(vec![
            rec(alias_key("s", "a"), Some(b"b")),
            rec(alias_key("s", "b"), Some(b"c")),
            rec(
                profile_key("s", "c"),
                Some(&serde_json::to_vec(&p).unwrap()),
            ),
            rec(id_key("s", &Ident::new("user_id", "u")), Some(b"c")),
        ])
        .unwrap();
        assert_eq!(st.profile("s", "a").unwrap().unwrap().id, "c");
        assert_eq!(st.live_id("s", "a").unwrap(), "c");
        assert_eq!(st.live_id("s", "c").unwrap(), "c");
        assert_eq!(
            st.profile_of("s", &Ident::new("user_id", "u"))
                .unwrap()
                .unwrap()
                .id,
            "c"
        );
        let mut ids = st.merged_ids("s", "c").unwrap();
        ids.sort();
        assert_eq!(ids, ["a", "b", "c"]);
        // Re-pointing and deleting an alias updates the reverse index.
        st.apply_graph(vec![
            rec(alias_key("s", "a"), Some(b"c")),
            rec(alias_key("s", "b"), None),
        ])
        .unwrap();
        let mut ids = st.merged_ids("s", "c").unwrap();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(st.profile("s", "b").unwrap(), None);
    }

    /// `ev` with an explicit resolved time and email.
    fn ev_at(pid: &str, mid: &str, kind: MessageType, ts: i64, resolved: i64) -> Vec<u8> {
        let mut e = ResolvedEvent::decode(&ev(pid, mid, kind, ts)).unwrap();
        e.resolved_at_ms = resolved;
        e.external_ids.push(ExternalId {
            id_type: "email".into(),
            id: format!("{pid}@x.io"),
            collection: Some("users".into()),
        });
        e.encode().unwrap()
    }

    fn merge(from: &str, into: &str, at: i64) -> Vec<u8> {
        corral_codec::ProfileMerge {
            space_id: "s".into(),
            from_profile_id: from.into(),
            into_profile_id: into.into(),
            trigger_message_id: Some(if into.is_empty() {
                "regulation:reg-1".into()
            } else {
                "m".into()
            }),
            trigger_ids: vec![],
            merged_at_ms: at,
        }
        .encode()
        .unwrap()
    }

    fn ids(st: &ProfileStore, owner: &str) -> Vec<String> {
        st.events("s", USERS, &[owner.into()])
            .unwrap()
            .into_iter()
            .map(|e| e.message_id)
            .collect()
    }

    #[test]
    fn a_deletion_erases_the_deleted_life_and_keeps_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        st.apply_events(&[
            ev_at("p1", "old-1", MessageType::Track, 1_000, 1_000),
            ev_at("p1", "old-group", MessageType::Group, 1_500, 1_500),
            ev_at("p2", "other", MessageType::Track, 1_200, 1_200),
            // Resolved after the request: the new life (already indexed when the deletion
            // arrives, the topics being read independently).
            ev_at("p1", "new-1", MessageType::Track, 900, 5_000),
        ])
        .unwrap();
        assert_eq!(st.accounts_of("s", "p1").unwrap().len(), 1);
        let applied = st.apply_merges(&[merge("p1", "", 2_000)]).unwrap();
        assert_eq!((applied.deletions, applied.erased_events), (1, 2));
        assert_eq!(ids(&st, "p1"), ["new-1"]);
        assert_eq!(ids(&st, "p2"), ["other"], "others are untouched");
        let meta = st.meta("s", "p1").unwrap().unwrap();
        assert_eq!(
            (
                meta.first.message_id.as_str(),
                meta.last.message_id.as_str()
            ),
            ("new-1", "new-1")
        );
        // The first message of its ids was the new life's: kept; the link and the account's
        // copy of the old group call are gone, the account itself stays.
        assert_eq!(
            st.first_seen("s", "email", "p1@x.io")
                .unwrap()
                .unwrap()
                .message_id,
            "new-1"
        );
        assert!(st.accounts_of("s", "p1").unwrap().is_empty());
        assert!(st.users_of("s", "g1").unwrap().is_empty());
        assert!(st.events("s", ACCOUNTS, &["g1".into()]).unwrap().is_empty());
        assert!(st.account("s", "g1").unwrap().is_some());
        // An event of the deleted life read after the deletion (in flight, or a restart that
        // reads the merges first) is skipped; one of the new life is indexed.
        let late = st
            .apply_events(&[
                ev_at("p1", "old-2", MessageType::Track, 1_100, 2_000),
                ev_at("p1", "new-2", MessageType::Track, 6_000, 6_000),
            ])
            .unwrap();
        assert_eq!(late.erased, 1);
        assert_eq!(ids(&st, "p1"), ["new-2", "new-1"]);
        assert_eq!(st.deleted_at("s", "p1").unwrap(), Some(2_000));
        assert_eq!(st.deleted_at("s", "p2").unwrap(), None);
    }

    #[test]
    fn a_deleted_profile_with_no_new_life_has_nothing_left() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        st.apply_events(&[ev_at("p1", "a", MessageType::Identify, 1_000, 1_000)])
            .unwrap();
        st.apply_merges(&[merge("p1", "", 2_000), merge("", "", 2_000)])
            .unwrap();
        assert!(ids(&st, "p1").is_empty());
        assert_eq!(st.meta("s", "p1").unwrap(), None);
        assert_eq!(st.first_seen("s", "user_id", "p1").unwrap(), None);
        assert_eq!(st.first_seen("s", "email", "p1@x.io").unwrap(), None);
    }

    #[test]
    fn a_deletion_covers_profiles_merged_into_it_before_whatever_the_read_order() {
        for merge_first in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
            st.apply_events(&[
                ev_at("q", "q-old", MessageType::Track, 500, 500),
                ev_at("r", "r-old", MessageType::Track, 600, 600),
                ev_at("p", "p-old", MessageType::Track, 700, 700),
                ev_at("late", "late-1", MessageType::Track, 800, 800),
            ])
            .unwrap();
            // q merged into p before the deletion (r into q too: transitively); `late` merged
            // into the new life after it.
            let merges = [
                merge("q", "p", 1_000),
                merge("r", "q", 900),
                merge("late", "p", 3_000),
            ];
            let deletion = merge("p", "", 2_000);
            if merge_first {
                st.apply_merges(&merges).unwrap();
                st.apply_merges(std::slice::from_ref(&deletion)).unwrap();
            } else {
                // Read from other partitions after the deletion.
                st.apply_merges(std::slice::from_ref(&deletion)).unwrap();
                st.apply_merges(&merges).unwrap();
            }
            for gone in ["p", "q", "r"] {
                assert!(
                    ids(&st, gone).is_empty(),
                    "{gone} (merge_first={merge_first})"
                );
                assert_eq!(st.deleted_at("s", gone).unwrap(), Some(2_000));
            }
            assert_eq!(
                ids(&st, "late"),
                ["late-1"],
                "merged after the deletion: kept"
            );
            // q's events still in flight are skipped too.
            assert_eq!(
                st.apply_events(&[ev_at("q", "q-2", MessageType::Track, 1_500, 1_500)])
                    .unwrap()
                    .erased,
                1
            );
        }
    }

    #[test]
    fn event_records_skip_tombstones_and_do_not_read_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let st = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        let rec = |k: &[u8], v: Option<Vec<u8>>| ChangelogRecord {
            partition: 0,
            key: k.to_vec(),
            value: v,
        };
        let applied = st
            .apply_event_records(vec![
                rec(b"p1\0m1", Some(ev("p1", "m1", MessageType::Track, 1_000))),
                rec(b"p1\0m0", None),
                rec(b"p1", None),
                rec(
                    b"someone-else",
                    Some(ev("p1", "m2", MessageType::Track, 2_000)),
                ),
            ])
            .unwrap();
        assert_eq!(applied, EventsApplied::default());
        assert_eq!(
            ids(&st, "p1"),
            ["m2", "m1"],
            "the profile comes from the value"
        );
    }
}
