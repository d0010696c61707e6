//! The compute service on the stream runtime: the processor, its stores and outputs. Its three
//! kinds of work live in their own modules: [`merge`] (the merge hand-over between tasks),
//! [`timers`] (window expiry, re-evaluation when definitions change) and [`history`] (backfill
//! slices read during punctuation).
//!
//! Inputs (co-partitioned by profile id): `events.resolved`, `profiles.merges` (keyed by the
//! merged-away id, so this task owns the merged-away state) and the internal
//! `{prefix}compute.merge-state` topic, keyed by the surviving id, that carries a merged-away
//! profile's state to the task owning the survivor. Going through that topic even when both
//! profiles share a partition makes the result independent of placement.
//!
//! Stores: `profiles` (profile id -> [`ProfileState`] JSON) and `timers` (`minute bucket (8 bytes
//! BE) | wake ms (8 bytes BE) | profile id` -> empty). `punctuate` scans the buckets up to now,
//! re-evaluates due profiles and re-schedules them; all inside the runtime's transaction.
//!
//! Definitions come from the `definitions` topic through [`Definitions`], shared by every
//! task; when they change, each task re-evaluates all of its profiles once (first computation
//! emits `entered` for every member; an edit emits only the differences).
//!
//! Backfill (see `backfill`): a task with leaves waiting for history reads its own partition
//! of `events.resolved` up to the cut during its punctuation, a bounded slice per call, and
//! applies it with the registrations' progress in the same transaction.

use crate::admin::DefinitionBody;
use crate::backfill::{self, HistorySource};
use crate::engine::{Change, ChangeKind, DefinitionSpec, Engine, EngineConfig, InEvent};
use crate::metrics::Metrics;
use crate::state::{ExtId, ProfileState};
use corral_codec::{
    AvroRecord, ExternalId, MembershipChange, MembershipChangeKind, MessageType, ResolvedEvent,
    TraitChange,
};
use corral_runtime::definitions::DefinitionEvent;
use corral_runtime::{InputRecord, ProcessContext, ProcessError, Processor, Store};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tracing::warn;

mod accounts;
mod erase;
mod history;
mod merge;
mod privacy;
mod timers;

pub use accounts::{account_profile_id, AccountMessage, ACCOUNTS};

use history::TaskBackfill;
use merge::MergeState;
use timers::timer_key;

/// Where "now" comes from: the wall clock in production, a settable one in tests.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// Wall clock plus an offset read from a file (tests move time forward without waiting).
#[derive(Debug, Clone)]
pub struct FileOffsetClock {
    /// File holding the offset in milliseconds.
    pub path: std::path::PathBuf,
}

impl Clock for FileOffsetClock {
    fn now_ms(&self) -> i64 {
        let off = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        chrono::Utc::now().timestamp_millis() + off
    }
}

/// Topic names.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `events.resolved`.
    pub resolved: String,
    /// `profiles.merges`.
    pub merges: String,
    /// Internal state hand-over for merges.
    pub merge_state: String,
    /// `audiences.membership`.
    pub membership: String,
    /// `traits.changes`.
    pub traits: String,
    /// Internal user side → account side messages (see `accounts`).
    pub accounts: String,
}

impl Topics {
    /// The standard topics under `names`.
    pub fn from_names(names: &corral_runtime::TopicNames) -> Self {
        use corral_codec::{MembershipChange, ProfileMerge, ResolvedEvent, TraitChange};
        Topics {
            resolved: names.of::<ResolvedEvent>(),
            merges: names.of::<ProfileMerge>(),
            merge_state: names.name(corral_runtime::cli::names::MERGE_STATE),
            membership: names.of::<MembershipChange>(),
            traits: names.of::<TraitChange>(),
            accounts: names.name(corral_ops::accounts::ACCOUNTS_TOPIC),
        }
    }
}

/// Engines by space.
pub type Engines = BTreeMap<String, Arc<Engine>>;

/// The active definitions of every space, rebuilt whenever the `definitions` topic changes.
#[derive(Clone, Default)]
pub struct Definitions {
    inner: Arc<RwLock<DefinitionsInner>>,
}

#[derive(Default)]
struct DefinitionsInner {
    specs: BTreeMap<String, BTreeMap<String, DefinitionSpec>>,
    engines: Arc<Engines>,
    generation: u64,
    cfg: EngineConfig,
}

impl Definitions {
    /// Applies one record of the `definitions` topic (audiences and computed traits; other
    /// kinds are ignored) and updates the definition gauges.
    pub fn apply(&self, event: DefinitionEvent<'_>, metrics: &Metrics) {
        match event {
            DefinitionEvent::Upsert { key, definition } => match self.upsert(&definition) {
                Err(e) => warn!(key, error = %e, "definition not in force"),
                Ok(()) if matches!(definition.kind.as_str(), "audience" | "computed_trait") => {
                    tracing::info!(key, version = definition.version, "definition in force")
                }
                Ok(()) => {}
            },
            DefinitionEvent::Delete { key } => self.delete(key),
            DefinitionEvent::Undecodable { key, error } => {
                warn!(key, error, "skipping an undecodable definition")
            }
        }
        let (active, rejected) = self.counts();
        metrics.definitions_active.set(active as i64);
        metrics.definitions_rejected.set(rejected as i64);
    }

    /// Empty set with engine tuning.
    pub fn new(cfg: EngineConfig) -> Self {
        let d = Definitions::default();
        if let Ok(mut g) = d.inner.write() {
            g.cfg = cfg;
        }
        d
    }

    /// Applies an upserted definition record; `Err` says why it is not used.
    pub fn upsert(&self, def: &corral_codec::Definition) -> Result<(), String> {
        let Some(target) = crate::admin::target_of(&def.kind) else {
            return Ok(());
        };
        let body = DefinitionBody::from_json(&def.body)
            .map_err(|e| format!("definition {} has no usable body: {e}", def.key))?;
        let kind = body.definition_kind();
        let spec = DefinitionSpec {
            key: def.key.clone(),
            name: def.name.clone(),
            target,
            kind,
            version: def.version,
            query: body.query,
            include_historical_data: body.include_historical_data,
        };
        let mut g = self.inner.write().map_err(|_| "poisoned".to_string())?;
        g.specs
            .entry(def.space_id.clone())
            .or_default()
            .insert(def.key.clone(), spec);
        let r = g.rebuild(&def.space_id);
        r.get(&def.key).map_or(Ok(()), |e| Err(e.clone()))
    }

    /// Removes a definition by its topic key `{space}/{kind}/{key}`.
    pub fn delete(&self, topic_key: &str) {
        let mut parts = topic_key.splitn(3, '/');
        let (Some(space), Some(_kind), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if let Ok(mut g) = self.inner.write() {
            let removed = g.specs.get_mut(space).and_then(|m| m.remove(key)).is_some();
            if removed {
                g.rebuild(space);
            }
        }
    }

    /// The engine for a space and the current generation.
    pub fn engine(&self, space: &str) -> (Option<Arc<Engine>>, u64) {
        match self.inner.read() {
            Ok(g) => (g.engines.get(space).cloned(), g.generation),
            Err(_) => (None, 0),
        }
    }

    /// Every space's engine and the generation, as one consistent snapshot.
    pub fn snapshot(&self) -> (Arc<Engines>, u64) {
        match self.inner.read() {
            Ok(g) => (g.engines.clone(), g.generation),
            Err(_) => (Arc::default(), 0),
        }
    }

    /// Generation counter (bumped on every change).
    pub fn generation(&self) -> u64 {
        self.inner.read().map(|g| g.generation).unwrap_or(0)
    }

    /// Counts of active and rejected definitions over all spaces.
    pub fn counts(&self) -> (usize, usize) {
        self.inner
            .read()
            .map(|g| {
                g.engines.values().fold((0, 0), |(a, r), e| {
                    (a + e.definitions().len(), r + e.rejected().len())
                })
            })
            .unwrap_or((0, 0))
    }
}

impl DefinitionsInner {
    fn rebuild(&mut self, space: &str) -> BTreeMap<String, String> {
        let specs: Vec<DefinitionSpec> = self
            .specs
            .get(space)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let engine = Engine::new(self.cfg, specs);
        let rejected = engine
            .rejected()
            .iter()
            .map(|(k, e)| (k.clone(), e.to_string()))
            .collect();
        Arc::make_mut(&mut self.engines).insert(space.to_string(), Arc::new(engine));
        self.generation += 1;
        rejected
    }
}

/// The compute processor (one per stream thread).
pub struct ComputeProcessor {
    topics: Arc<Topics>,
    defs: Definitions,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Per partition: last timer bucket scanned and definitions generation applied.
    cursors: HashMap<i32, (u64, u64)>,
    /// The definitions this call runs with (one snapshot per call, so the backfill cut and
    /// the engine that counts live events agree).
    snap: (Arc<Engines>, u64),
    /// Where history is read from (None: no backfill reading, e.g. in unit tests).
    history: Option<Arc<HistorySource>>,
    /// The current `events.resolved` writer fingerprint (for `backfill::peek`).
    fingerprint: Option<[u8; 8]>,
    /// Definitions generation whose first history read set the started-timestamp metric.
    wave: u64,
    /// Per partition: leaf registrations (cache of the `backfill` store) and held definitions.
    tasks: HashMap<i32, TaskBackfill>,
    /// Per partition: the reader of a running erasure scan (a cache of its committed position).
    erasers: HashMap<i32, crate::erase::KeyReader>,
}

/// Profile id -> [`ProfileState`].
pub const PROFILES: Store = Store::named("profiles");
/// Wake-up times (see `timers`).
const TIMERS: Store = Store::named("timers");
/// Backfill registrations and progress, and where merged-away profiles went (see `backfill`).
const BACKFILL: Store = Store::named("backfill");

/// Every store the processor uses, to declare in the runtime config.
pub const STORES: [Store; 4] = [PROFILES, TIMERS, BACKFILL, ACCOUNTS];

fn ext_ids(ids: &[ExternalId]) -> Vec<ExtId> {
    ids.iter()
        .map(|i| ExtId {
            id_type: i.id_type.clone(),
            id: i.id.clone(),
            collection: i.collection.clone(),
        })
        .collect()
}

/// A profile's ids as outputs carry them: its own identifiers, without the accounts
/// (collection `accounts`) it was grouped with; an account audience's change for a user names
/// its one account itself (see `accounts`).
fn codec_ids(ids: &[ExtId]) -> Vec<ExternalId> {
    ids.iter()
        .filter(|i| i.collection.as_deref() != Some("accounts"))
        .map(|i| ExternalId {
            id_type: i.id_type.clone(),
            id: i.id.clone(),
            collection: i.collection.clone().or_else(|| Some("users".into())),
        })
        .collect()
}

/// The event name definitions match a call by: the `track` event, `Page Viewed` for `page`
/// and `Screen Viewed` for `screen` calls (as Segment's audiences name them); `None` for calls
/// that are not events (identify, group, alias).
pub fn event_name(kind: MessageType, event: Option<&str>) -> Option<&str> {
    match kind {
        MessageType::Track => Some(event.unwrap_or_default()),
        MessageType::Page => Some("Page Viewed"),
        MessageType::Screen => Some("Screen Viewed"),
        _ => None,
    }
}

/// The traits of an identify call (none when they are not an object).
fn identify_traits(m: &corral_codec::SegmentMessage) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    match &m.traits {
        Some(Value::Object(o)) => o,
        _ => EMPTY.get_or_init(Map::new),
    }
}

/// A track, page or screen call as the engine reads it, handed to `f` (`None` for other calls).
fn as_event<R>(
    m: &corral_codec::SegmentMessage,
    ts_ms: i64,
    f: impl FnOnce(&InEvent<'_>) -> R,
) -> Option<R> {
    let name = event_name(m.message_type, m.event.as_deref())?;
    let empty = Map::new();
    let properties = match &m.properties {
        Some(Value::Object(o)) => o,
        _ => &empty,
    };
    let context = match &m.context {
        Some(Value::Object(o)) => o,
        _ => &empty,
    };
    Some(f(&InEvent {
        name,
        ts_ms,
        properties,
        context,
        source_id: m.source_id.as_deref(),
    }))
}

/// Event time: the skew-corrected `timestamp`, else when it was received.
pub fn event_time_ms(m: &corral_codec::SegmentMessage, fallback: i64) -> i64 {
    m.timestamp
        .as_deref()
        .and_then(corral_query::eval::parse_ts)
        .map(|t| t.timestamp_millis())
        .or(m.received_at_ms)
        .unwrap_or(fallback)
}

impl ComputeProcessor {
    /// A processor.
    pub fn new(
        topics: Arc<Topics>,
        defs: Definitions,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        ComputeProcessor {
            topics,
            defs,
            clock,
            metrics,
            cursors: HashMap::new(),
            snap: (Arc::default(), u64::MAX),
            history: None,
            fingerprint: backfill::current_fingerprint(),
            wave: u64::MAX,
            tasks: HashMap::new(),
            erasers: HashMap::new(),
        }
    }

    /// Reads history for `include_historical_data` from this source.
    pub fn with_history(mut self, src: Arc<HistorySource>) -> Self {
        self.history = Some(src);
        self
    }

    fn engine(&self, space: &str) -> (Option<Arc<Engine>>, u64) {
        (self.snap.0.get(space).cloned(), self.snap.1)
    }

    fn hold(&self, part: i32, space: &str) -> Option<Arc<BTreeSet<String>>> {
        self.tasks
            .get(&part)
            .and_then(|t| t.held.get(space))
            .filter(|h| !h.is_empty())
            .cloned()
    }

    fn load(ctx: &ProcessContext<'_>, profile: &str) -> Result<Option<ProfileState>, ProcessError> {
        match ctx.get(PROFILES, profile.as_bytes())? {
            None => Ok(None),
            Some(b) => ProfileState::decode(&b)
                .map(Some)
                .map_err(|e| ProcessError::Fatal(format!("corrupt state for a profile: {e}"))),
        }
    }

    /// Writes a profile's state and its timer, and first tells its accounts what changed
    /// (`accounts`), in the same transaction.
    fn save(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        st: &mut ProfileState,
        old_wake: Option<i64>,
    ) -> Result<(), ProcessError> {
        self.sync_accounts(ctx, profile, st)?;
        if old_wake != st.wake_ms {
            if let Some(w) = old_wake {
                ctx.delete(TIMERS, timer_key(w, profile));
                self.metrics.timers_pending.dec();
            }
            if let Some(w) = st.wake_ms {
                ctx.put(TIMERS, timer_key(w, profile), Vec::new());
                self.metrics.timers_pending.inc();
            }
        }
        let bytes = st.encode();
        self.metrics.state_bytes.observe(bytes.len() as f64);
        ctx.put(PROFILES, profile.as_bytes().to_vec(), bytes);
        Ok(())
    }

    fn emit(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        st: &ProfileState,
        changes: Vec<Change>,
        trigger: Option<&str>,
        at_ms: i64,
    ) -> Result<(), ProcessError> {
        for ch in changes {
            // Account conditions are the account side's input, never delivered.
            if corral_ops::accounts::is_condition(&ch.key) {
                continue;
            }
            let value = match ch.kind {
                ChangeKind::Entered | ChangeKind::Exited => {
                    let entered = ch.kind == ChangeKind::Entered;
                    self.metrics
                        .membership_changes
                        .with_label_values(&[
                            ch.key.as_str(),
                            if entered { "entered" } else { "exited" },
                        ])
                        .inc();
                    MembershipChange {
                        space_id: st.space_id.clone(),
                        profile_id: profile.to_string(),
                        audience_key: ch.key,
                        audience_version: ch.version,
                        change: if entered {
                            MembershipChangeKind::Entered
                        } else {
                            MembershipChangeKind::Exited
                        },
                        external_ids: codec_ids(&st.external_ids),
                        trigger_message_id: trigger.map(String::from),
                        changed_at_ms: at_ms,
                    }
                    .encode()
                    .map(|v| (self.topics.membership.as_str(), v))
                }
                ChangeKind::Trait { value, previous } => {
                    self.metrics.trait_changes.inc();
                    TraitChange {
                        space_id: st.space_id.clone(),
                        profile_id: profile.to_string(),
                        trait_key: ch.key,
                        value,
                        previous_value: previous,
                        definition_version: Some(ch.version),
                        external_ids: codec_ids(&st.external_ids),
                        changed_at_ms: at_ms,
                    }
                    .encode()
                    .map(|v| (self.topics.traits.as_str(), v))
                }
            };
            let (topic, v) = value.map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
            ctx.emit(topic, Some(profile.as_bytes().to_vec()), Some(v));
        }
        Ok(())
    }

    fn on_event(
        &self,
        ctx: &mut ProcessContext<'_>,
        key: Option<&[u8]>,
        bytes: &[u8],
    ) -> Result<(), ProcessError> {
        let ev = ResolvedEvent::decode(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        let now = self.clock.now_ms();
        let m = &ev.message;
        let (engine, _) = self.engine(&m.space_id);
        let profile = ev.profile_id.as_str();
        if profile.is_empty() {
            return Err(ProcessError::bad_input(
                "no_profile",
                "event without a profile id",
            ));
        }
        self.metrics.events.inc();
        if self.erased(ctx, profile, ev.resolved_at_ms)? {
            // Received before the profile's deletion (docs/privacy.md), but read after it: the
            // erasure scan does not reach this offset, so it is erased here.
            if let Some(k) = key {
                self.tombstone(ctx, k);
            }
            return Ok(());
        }
        let mut st = match Self::load(ctx, profile)? {
            Some(st) => st,
            None => match Self::merged_into(ctx, profile)? {
                // Read after the profile's merge record (another topic, no order between
                // them): the event belongs to the survivor's history.
                Some(into) => return self.forward(ctx, &ev, engine.as_deref(), into, now),
                None => ProfileState::default(),
            },
        };
        let old_wake = st.wake_ms;
        if st.space_id.is_empty() {
            st.space_id = m.space_id.clone();
        }
        st.add_ids(ext_ids(&ev.external_ids));
        st.hold = self.hold(ctx.partition(), &st.space_id);
        let ts = event_time_ms(m, now);
        if m.message_type == MessageType::Group {
            // Recorded whatever the definitions: membership and account traits are kept for
            // every account, like identify traits for every user (no backfill needed).
            self.on_group_call(ctx, m, &mut st, ts)?;
        }
        let changes = match engine {
            None => Vec::new(),
            Some(engine) => {
                self.metrics.evaluations.inc();
                match m.message_type {
                    MessageType::Identify => {
                        engine.apply_identify(&mut st, identify_traits(m), ts, now)
                    }
                    MessageType::Track | MessageType::Page | MessageType::Screen => {
                        as_event(m, ts, |ev| engine.apply_event(&mut st, ev, now))
                            .unwrap_or_default()
                    }
                    _ => {
                        if st.now_ms == 0 {
                            engine.evaluate(&mut st, now)
                        } else {
                            Vec::new()
                        }
                    }
                }
            }
        };
        self.emit(ctx, profile, &st, changes, Some(&m.message_id), now)?;
        self.save(ctx, profile, &mut st, old_wake)
    }

    fn reevaluate(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        mut st: ProfileState,
        now: i64,
    ) -> Result<(), ProcessError> {
        let old_wake = st.wake_ms;
        let (engine, _) = self.engine(&st.space_id);
        st.hold = self.hold(ctx.partition(), &st.space_id);
        let changes = match engine {
            Some(e) => {
                self.metrics.evaluations.inc();
                e.tick(&mut st, now)
            }
            None => {
                st.results.clear();
                st.wake_ms = None;
                Vec::new()
            }
        };
        self.emit(ctx, profile, &st, changes, None, now)?;
        self.save(ctx, profile, &mut st, old_wake)
    }
}

impl Processor for ComputeProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        self.snap = self.defs.snapshot();
        self.sync_backfill(ctx)?;
        if record.topic == self.topics.resolved {
            // Every live offset passes here: the next one is where a new leaf's history ends.
            ctx.put(
                BACKFILL,
                backfill::POS_KEY.to_vec(),
                (record.offset + 1).to_be_bytes().to_vec(),
            );
        }
        let Some(v) = record.value else {
            return Ok(());
        };
        if record.topic == self.topics.resolved {
            self.on_event(ctx, record.key, v)
        } else if record.topic == self.topics.merges {
            self.on_merge(ctx, v)
        } else if record.topic == self.topics.merge_state {
            self.on_merge_state(ctx, v)
        } else if record.topic == self.topics.accounts {
            self.on_account(ctx, v)
        } else {
            Err(ProcessError::bad_input(
                "unknown_topic",
                format!("compute does not read {}", record.topic),
            ))
        }
    }

    // The timer cursor is an in-memory cache of what was scanned: after an abort the deleted
    // timer keys are back, and a (re)assigned task may hold timers we never saw, so the next
    // punctuation of those tasks scans all their timers and re-evaluates all their profiles.
    fn on_assigned(&mut self, tasks: &[i32]) {
        for t in tasks {
            self.cursors.remove(t);
            self.drop_task(*t);
            self.drop_eraser(*t);
        }
    }

    fn on_revoked(&mut self, tasks: &[i32]) {
        for t in tasks {
            self.cursors.remove(t);
            self.drop_task(*t);
            self.drop_eraser(*t);
        }
    }

    fn on_abort(&mut self) {
        self.cursors.clear();
        let parts: Vec<i32> = self.tasks.keys().copied().collect();
        for t in parts {
            self.drop_task(t);
        }
        let parts: Vec<i32> = self.erasers.keys().copied().collect();
        for t in parts {
            self.drop_eraser(t);
        }
    }

    fn punctuate(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        _wall_ms: i64,
    ) -> Result<(), ProcessError> {
        let now = self.clock.now_ms();
        let part = ctx.partition();
        self.snap = self.defs.snapshot();
        self.sync_backfill(ctx)?;
        if self.run_history(ctx, now)? {
            // Released definitions: evaluate every profile below, in this transaction (the
            // first computation emits `entered` for every member, an edit the differences).
            self.cursors.remove(&part);
        }
        self.run_erasure(ctx)?;
        self.run_timers(ctx, now)
    }
}
