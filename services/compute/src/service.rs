//! The compute service on the stream runtime: stores, timers, merges, outputs.
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
use crate::backfill::{self, HistoryReader, HistorySource, LeafReg};
use crate::engine::{Absorbed, Change, ChangeKind, DefinitionSpec, Engine, EngineConfig, InEvent};
use crate::metrics::Metrics;
use crate::state::{ExtId, ProfileState};
use corral_codec::{
    AvroRecord, ExternalId, MembershipChange, MembershipChangeKind, MessageType, ProfileMerge,
    ResolvedEvent, TraitChange,
};
use corral_runtime::{InputRecord, ProcessContext, ProcessError, Processor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tracing::{debug, info, warn};

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

/// What travels on the merge-state topic: a merged-away profile's state, or history a
/// backfill read for a merged-away id, for the profile it went into.
#[derive(Debug, Serialize, Deserialize)]
struct MergeState {
    into: String,
    /// The merged-away profile the state comes from (absent in records of earlier builds):
    /// the survivor's task emits its exits from audiences the survivor does not carry on.
    #[serde(default)]
    from: Option<String>,
    state: ProfileState,
    trigger: Option<String>,
    at_ms: i64,
    /// Times this was forwarded because `into` had itself been merged away.
    #[serde(default)]
    hops: u32,
}

/// Merge chains longer than this are taken for a loop (identity never makes one).
const MAX_MERGE_HOPS: u32 = 64;

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
}

/// One task's backfill view.
#[derive(Default)]
struct TaskBackfill {
    generation: u64,
    regs: BTreeMap<(String, String), LeafReg>,
    held: BTreeMap<String, Arc<BTreeSet<String>>>,
    /// Reader of this partition's history (positioned at the lowest pending `applied`).
    reader: Option<HistoryReader>,
    /// This backfill's progress in this process (log and metrics).
    run: Option<Run>,
    /// This task's share of the remaining-events gauge.
    remaining: i64,
}

/// A task's backfill since this process started reading it.
struct Run {
    started: Instant,
    read: u64,
    applied: u64,
}

/// A profile's state while a history slice is applied (loaded once per slice).
struct Slot {
    st: ProfileState,
    old_wake: Option<i64>,
    dirty: bool,
    /// The profile was merged away before its history was read: the history goes to this one.
    merged_into: Option<String>,
}

const PROFILES: usize = 0;
const TIMERS: usize = 1;
const BACKFILL: usize = 2;
const BUCKET_MS: i64 = 60_000;

/// Store names, in the index order the processor uses.
pub const STORES: [&str; 3] = ["profiles", "timers", "backfill"];

fn timer_key(wake: i64, profile: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + profile.len());
    k.extend_from_slice(&((wake.max(0) / BUCKET_MS) as u64).to_be_bytes());
    k.extend_from_slice(&(wake.max(0) as u64).to_be_bytes());
    k.extend_from_slice(profile.as_bytes());
    k
}

fn ext_ids(ids: &[ExternalId]) -> Vec<ExtId> {
    ids.iter()
        .map(|i| ExtId {
            id_type: i.id_type.clone(),
            id: i.id.clone(),
            collection: i.collection.clone(),
        })
        .collect()
}

fn codec_ids(ids: &[ExtId]) -> Vec<ExternalId> {
    ids.iter()
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

    fn save(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        st: &ProfileState,
        old_wake: Option<i64>,
    ) {
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

    fn on_event(&self, ctx: &mut ProcessContext<'_>, bytes: &[u8]) -> Result<(), ProcessError> {
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
        self.save(ctx, profile, &st, old_wake);
        Ok(())
    }

    /// The merged-away side: records where the profile went (always, even when it has no
    /// state yet, so its events read later follow it), and hands its state to the survivor's
    /// task. No exits here: only the survivor's task knows which memberships it carries on.
    fn on_merge(&self, ctx: &mut ProcessContext<'_>, bytes: &[u8]) -> Result<(), ProcessError> {
        let mg = ProfileMerge::decode(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        if mg.from_profile_id == mg.into_profile_id {
            return Ok(());
        }
        let now = self.clock.now_ms();
        ctx.put(
            BACKFILL,
            backfill::merged_key(&mg.from_profile_id),
            mg.into_profile_id.clone().into_bytes(),
        );
        let Some(st) = Self::load(ctx, &mg.from_profile_id)? else {
            return Ok(());
        };
        if let Some(w) = st.wake_ms {
            ctx.delete(TIMERS, timer_key(w, &mg.from_profile_id));
            self.metrics.timers_pending.dec();
        }
        ctx.delete(PROFILES, mg.from_profile_id.as_bytes().to_vec());
        self.hand_over(
            ctx,
            MergeState {
                into: mg.into_profile_id,
                from: Some(mg.from_profile_id),
                state: st,
                trigger: mg.trigger_message_id,
                at_ms: now,
                hops: 0,
            },
        )
    }

    /// An event of a profile merged away before compute read the event: recorded, without
    /// evaluation, in a fresh state that goes to the survivor like merged state (so the leaves
    /// it counts for are the ones this task counts live events for, as for any merge).
    fn forward(
        &self,
        ctx: &mut ProcessContext<'_>,
        ev: &ResolvedEvent,
        engine: Option<&Engine>,
        into: String,
        now: i64,
    ) -> Result<(), ProcessError> {
        let m = &ev.message;
        let mut st = ProfileState {
            space_id: m.space_id.clone(),
            ..ProfileState::default()
        };
        st.add_ids(ext_ids(&ev.external_ids));
        let ts = event_time_ms(m, now);
        match (m.message_type, engine) {
            (MessageType::Identify, _) => {
                crate::engine::record_traits(&mut st, identify_traits(m), ts);
            }
            (_, Some(engine)) => {
                as_event(m, ts, |ev| engine.record_event(&mut st, ev, now));
            }
            (_, None) => {}
        }
        self.metrics.merge_forwarded.inc();
        self.hand_over(
            ctx,
            MergeState {
                into,
                from: Some(ev.profile_id.clone()),
                state: st,
                trigger: Some(m.message_id.clone()),
                at_ms: now,
                hops: 0,
            },
        )
    }

    /// Sends state to the task of the profile it belongs to now.
    fn hand_over(&self, ctx: &mut ProcessContext<'_>, ms: MergeState) -> Result<(), ProcessError> {
        let v = serde_json::to_vec(&ms)
            .map_err(|e| ProcessError::Fatal(format!("encoding merge state: {e}")))?;
        ctx.emit(
            &self.topics.merge_state,
            Some(ms.into.into_bytes()),
            Some(v),
        );
        Ok(())
    }

    /// The profile `profile` was merged into, if it was merged away on this partition.
    fn merged_into(
        ctx: &ProcessContext<'_>,
        profile: &str,
    ) -> Result<Option<String>, ProcessError> {
        Ok(ctx
            .get(BACKFILL, &backfill::merged_key(profile))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn on_merge_state(
        &self,
        ctx: &mut ProcessContext<'_>,
        bytes: &[u8],
    ) -> Result<(), ProcessError> {
        let mut ms: MergeState = serde_json::from_slice(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        if let Some(next) = Self::merged_into(ctx, &ms.into)? {
            // `into` was itself merged away meanwhile (a chain): follow it.
            if ms.hops >= MAX_MERGE_HOPS {
                return Err(ProcessError::bad_input(
                    "merge_loop",
                    format!("merge state followed {} merges without reaching a live profile; the merges form a loop", ms.hops),
                ));
            }
            ms.into = next;
            ms.hops += 1;
            return self.hand_over(ctx, ms);
        }
        let now = self.clock.now_ms();
        self.metrics.merges.inc();
        let mut into = Self::load(ctx, &ms.into)?.unwrap_or_default();
        let old_wake = into.wake_ms;
        let space = if into.space_id.is_empty() {
            ms.state.space_id.clone()
        } else {
            into.space_id.clone()
        };
        let (engine, _) = self.engine(&space);
        into.hold = self.hold(ctx.partition(), &space);
        // Who the merged-away profile's exits (if any) are addressed to.
        let from = ms.from.as_ref().map(|id| {
            (
                id.clone(),
                ProfileState {
                    space_id: space.clone(),
                    external_ids: ms.state.external_ids.clone(),
                    ..ProfileState::default()
                },
            )
        });
        let absorbed = match engine {
            Some(e) => e.absorb(&mut into, ms.state, now),
            None => {
                into.add_ids(ms.state.external_ids);
                into.space_id = space;
                Absorbed::default()
            }
        };
        if let Some((from_id, from_st)) = from {
            self.emit(
                ctx,
                &from_id,
                &from_st,
                absorbed.from_exits,
                ms.trigger.as_deref(),
                now,
            )?;
        }
        self.emit(
            ctx,
            &ms.into,
            &into,
            absorbed.into,
            ms.trigger.as_deref(),
            now,
        )?;
        self.save(ctx, &ms.into, &into, old_wake);
        Ok(())
    }

    /// Forgets a task's backfill cache (reloaded from the store on next use) and its share of
    /// the pending gauge.
    fn drop_task(&mut self, part: i32) {
        if let Some(mut t) = self.tasks.remove(&part) {
            for held in t.held.values() {
                for d in held.iter() {
                    self.metrics.backfill_pending.with_label_values(&[d]).dec();
                }
            }
            if t.run.take().is_some() {
                self.metrics.backfill_tasks_active.dec();
            }
            backfill::close(t.reader.take());
            self.report_remaining(&mut t, 0);
        }
    }

    /// Registers leaves this task has not seen yet (cut = next live offset) and forgets
    /// removed ones, once per definitions generation; recomputes held definitions.
    fn sync_backfill(&mut self, ctx: &mut ProcessContext<'_>) -> Result<(), ProcessError> {
        let part = ctx.partition();
        let generation = self.snap.1;
        if self
            .tasks
            .get(&part)
            .is_some_and(|t| t.generation == generation)
        {
            return Ok(());
        }
        let mut task = match self.tasks.remove(&part) {
            Some(t) => t,
            None => {
                let mut t = TaskBackfill::default();
                for (k, v) in ctx.scan_prefix(BACKFILL, b"leaf/")? {
                    let (Some(id), Ok(reg)) = (
                        backfill::parse_reg_key(&k),
                        serde_json::from_slice::<LeafReg>(&v),
                    ) else {
                        return Err(ProcessError::Fatal("corrupt backfill registration".into()));
                    };
                    t.regs.insert(id, reg);
                }
                t
            }
        };
        let pos = match ctx.get(BACKFILL, backfill::POS_KEY)? {
            Some(b) if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b);
                i64::from_be_bytes(a)
            }
            _ => 0,
        };
        let mut wanted: BTreeMap<(String, String), bool> = BTreeMap::new();
        for (space, engine) in self.snap.0.iter() {
            for (leaf, hist) in engine.leaves_with_history() {
                wanted.insert((space.clone(), leaf), hist);
            }
        }
        let gone: Vec<(String, String)> = task
            .regs
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            task.regs.remove(&k);
            ctx.delete(BACKFILL, backfill::reg_key(&k.0, &k.1));
        }
        for (k, hist) in wanted {
            if task.regs.contains_key(&k) {
                continue;
            }
            // pos 0: this task has processed nothing yet, so live processing covers history.
            let hist = hist && pos > 0;
            let reg = LeafReg {
                cut: pos,
                hist,
                done: !hist,
                applied: 0,
            };
            let v = serde_json::to_vec(&reg)
                .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
            ctx.put(BACKFILL, backfill::reg_key(&k.0, &k.1), v);
            task.regs.insert(k, reg);
        }
        self.set_held(&mut task);
        task.generation = generation;
        self.tasks.insert(part, task);
        Ok(())
    }

    /// Held definitions per space from the pending leaves; returns whether any was released.
    fn set_held(&self, task: &mut TaskBackfill) -> bool {
        let mut pending: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for ((space, leaf), reg) in &task.regs {
            if reg.pending() {
                pending.entry(space).or_default().insert(leaf.clone());
            }
        }
        let mut held = BTreeMap::new();
        for (space, leaves) in pending {
            if let Some(e) = self.snap.0.get(space) {
                held.insert(space.to_string(), Arc::new(e.held_by(&leaves)));
            }
        }
        let mut released = false;
        for (space, old) in &task.held {
            let new = held.get(space);
            for d in old.iter() {
                if !new.is_some_and(|n| n.contains(d)) {
                    self.metrics.backfill_pending.with_label_values(&[d]).dec();
                    released = true;
                }
            }
        }
        for (space, new) in &held {
            let old = task.held.get(space);
            for d in new.iter() {
                if !old.is_some_and(|o| o.contains(d)) {
                    self.metrics.backfill_pending.with_label_values(&[d]).inc();
                }
            }
        }
        task.held = held;
        released
    }

    /// Reads and applies a slice of this task's history (bounded by the source's budget,
    /// shared by the tasks with history pending, and its record cap), writing the states it
    /// changed and every pending registration's progress in the open transaction. Returns
    /// whether definitions were released (every profile must then be re-evaluated).
    ///
    /// The reader's position is in memory only: it always equals the lowest pending `applied`
    /// of the committed-or-open state, because this call either writes all its effects or
    /// returns a fatal error (the runtime aborts, `on_abort` drops the reader, and the next
    /// call reopens it from the restored registrations).
    fn run_history(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        now: i64,
    ) -> Result<bool, ProcessError> {
        let part = ctx.partition();
        let Some(src) = self.history.clone() else {
            return Ok(false);
        };
        let busy = self
            .tasks
            .values()
            .filter(|t| t.regs.values().any(LeafReg::pending))
            .count()
            .max(1);
        let Some(mut task) = self.tasks.remove(&part) else {
            return Ok(false);
        };
        if task.run.is_none()
            && self.wave != self.snap.1
            && task.regs.values().any(LeafReg::pending)
        {
            // The first history read since the definitions last changed (tasks run one after
            // the other on this thread, so "no task active" would restart the clock per task).
            self.wave = self.snap.1;
            self.metrics
                .backfill_started
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        let r = self.history_slice(ctx, &mut task, &src, busy, now);
        self.tasks.insert(part, task);
        r
    }

    fn history_slice(
        &self,
        ctx: &mut ProcessContext<'_>,
        task: &mut TaskBackfill,
        src: &HistorySource,
        busy: usize,
        now: i64,
    ) -> Result<bool, ProcessError> {
        let part = ctx.partition();
        let pending: Vec<((String, String), LeafReg)> = task
            .regs
            .iter()
            .filter(|(_, r)| r.pending())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        if pending.is_empty() {
            backfill::close(task.reader.take());
            self.report_remaining(task, 0);
            return Ok(false);
        }
        let from = pending.iter().map(|(_, r)| r.applied).min().unwrap_or(0);
        let end = pending.iter().map(|(_, r)| r.cut).max().unwrap_or(0);
        if task.reader.as_ref().is_none_or(|r| r.at != from) {
            backfill::close(task.reader.take());
            match HistoryReader::open(src, part, from, end) {
                Ok(r) => task.reader = Some(r),
                Err(e) => {
                    warn!(partition = part, error = %e, "cannot open the backfill reader; retrying at the next punctuation");
                    return Ok(false);
                }
            }
        }
        let Some(reader) = task.reader.as_mut() else {
            return Ok(false);
        };
        reader.end = end;
        if task.run.is_none() {
            self.metrics.backfill_tasks_active.inc();
            info!(
                partition = part,
                from,
                end,
                leaves = pending.len(),
                "backfill started"
            );
            task.run = Some(Run {
                started: Instant::now(),
                read: 0,
                applied: 0,
            });
        }

        // Per space: engine, pending leaves and the names they read (the cheap filter).
        let mut spaces: BTreeMap<&str, (Arc<Engine>, BTreeSet<String>)> = BTreeMap::new();
        for ((space, leaf), _) in &pending {
            if let Some(e) = self.snap.0.get(space) {
                spaces
                    .entry(space.as_str())
                    .or_insert_with(|| (e.clone(), BTreeSet::new()))
                    .1
                    .insert(leaf.clone());
            }
        }
        let names: BTreeMap<&str, BTreeSet<String>> = spaces
            .iter()
            .map(|(s, (e, leaves))| (*s, e.event_names(leaves)))
            .collect();
        // The leaves an offset still goes to change only at registration boundaries.
        let mut bounds: Vec<i64> = pending
            .iter()
            .flat_map(|(_, r)| [r.applied, r.cut])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let mut only_cache: HashMap<(&str, usize), Arc<BTreeSet<String>>> = HashMap::new();

        let mut cache: HashMap<String, Slot> = HashMap::new();
        let mut applied = 0u64;
        let mut failure: Option<ProcessError> = None;
        let deadline = Instant::now() + src.budget / busy as u32;
        let fp = self.fingerprint;
        let slice_start = Instant::now();
        let mut first_record_ms = None;
        let read = reader.read(deadline, src.max_records, |offset, bytes| {
            if first_record_ms.is_none() {
                first_record_ms = Some(slice_start.elapsed().as_millis());
            }
            if failure.is_some() {
                return;
            }
            // Cheap filter first; undecodable events were dead-lettered by the live path.
            if let Some(p) = fp.as_ref().and_then(|fp| backfill::peek(bytes, fp)) {
                let wanted = p
                    .name
                    .is_some_and(|n| names.get(p.space).is_some_and(|set| set.contains(n)));
                if !wanted {
                    return;
                }
            }
            let Ok(ev) = ResolvedEvent::decode(bytes) else {
                return;
            };
            let m = &ev.message;
            let Some(name) = event_name(m.message_type, m.event.as_deref()) else {
                return;
            };
            let Some((engine, _)) = spaces.get(m.space_id.as_str()) else {
                return;
            };
            if !names
                .get(m.space_id.as_str())
                .is_some_and(|n| n.contains(name))
                || ev.profile_id.is_empty()
            {
                return;
            }
            let b = bounds.partition_point(|x| *x <= offset);
            let Some((space_key, _)) = spaces.get_key_value(m.space_id.as_str()) else {
                return;
            };
            let only = only_cache
                .entry((*space_key, b))
                .or_insert_with(|| {
                    Arc::new(
                        pending
                            .iter()
                            .filter(|((s, _), r)| *s == m.space_id && r.wants(offset))
                            .map(|((_, l), _)| l.clone())
                            .collect(),
                    )
                })
                .clone();
            if only.is_empty() {
                return;
            }
            let slot = match cache.get_mut(&ev.profile_id) {
                Some(s) => s,
                None => {
                    let loaded = Self::load(ctx, &ev.profile_id).and_then(|st| match st {
                        Some(st) => Ok((st, None)),
                        // No state: new, or merged away (then its history joins the survivor).
                        None => Self::merged_into(ctx, &ev.profile_id)
                            .map(|into| (ProfileState::default(), into)),
                    });
                    match loaded {
                        Ok((st, merged_into)) => {
                            let old_wake = st.wake_ms;
                            cache.entry(ev.profile_id.clone()).or_insert(Slot {
                                st,
                                old_wake,
                                dirty: false,
                                merged_into,
                            })
                        }
                        Err(e) => {
                            failure = Some(e);
                            return;
                        }
                    }
                }
            };
            let st = &mut slot.st;
            let empty = Map::new();
            fn obj<'v>(
                v: &'v Option<Value>,
                empty: &'v Map<String, Value>,
            ) -> &'v Map<String, Value> {
                match v {
                    Some(Value::Object(o)) => o,
                    _ => empty,
                }
            }
            let applies = engine.backfill_event(
                st,
                &InEvent {
                    name,
                    ts_ms: event_time_ms(m, now),
                    properties: obj(&m.properties, &empty),
                    context: obj(&m.context, &empty),
                    source_id: m.source_id.as_deref(),
                },
                &only,
                now,
            );
            if applies {
                if st.space_id.is_empty() {
                    st.space_id = m.space_id.clone();
                }
                // Usually known already (live processing saw every event): skip the sort.
                let known = ev.external_ids.iter().all(|i| {
                    st.external_ids.iter().any(|e| {
                        e.id == i.id && e.id_type == i.id_type && e.collection == i.collection
                    })
                });
                if !known {
                    st.add_ids(ext_ids(&ev.external_ids));
                }
                slot.dirty = true;
                applied += 1;
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let (n, reader_failed) = match read {
            Ok(n) => (n, false),
            Err(e) => {
                // What was delivered before the error is applied and recorded below; the rest
                // is read again by a new reader from the recorded progress.
                warn!(partition = part, error = %e, "backfill read failed; reopening at the next punctuation");
                (0, true)
            }
        };
        let at = reader.at;
        let reader_end = reader.end;
        if reader_failed {
            backfill::close(task.reader.take());
        }
        let read_ms = slice_start.elapsed().as_millis();
        let profiles_in_slice = cache.len();
        for (profile, slot) in cache {
            if !slot.dirty {
                continue;
            }
            match slot.merged_into {
                // Only the pending leaves' history: the survivor's task adds it to its state.
                Some(into) => self.hand_over(
                    ctx,
                    MergeState {
                        into,
                        from: Some(profile),
                        state: slot.st,
                        trigger: None,
                        at_ms: now,
                        hops: 0,
                    },
                )?,
                None => self.save(ctx, &profile, &slot.st, slot.old_wake),
            }
        }
        debug!(
            partition = part,
            records = n,
            applied,
            profiles = profiles_in_slice,
            first_record_ms,
            read_ms,
            total_ms = slice_start.elapsed().as_millis(),
            "backfill slice"
        );
        let mut completed = false;
        for ((space, leaf), reg) in task.regs.iter_mut() {
            if !reg.pending() {
                continue;
            }
            let before = reg.clone();
            completed |= reg.advance(at);
            if *reg != before {
                let v = serde_json::to_vec(&*reg)
                    .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
                ctx.put(BACKFILL, backfill::reg_key(space, leaf), v);
            }
        }
        if !reader_failed && task.regs.values().any(LeafReg::pending) {
            // More history: read the next slice as soon as live input leaves time for it.
            ctx.punctuate_again_when_idle();
        }
        self.metrics.backfill_read.inc_by(n as u64);
        self.metrics.backfill_applied.inc_by(applied);
        self.report_remaining(task, (reader_end - at).max(0));
        if let Some(run) = task.run.as_mut() {
            run.read += n as u64;
            run.applied += applied;
        }
        if !completed {
            return Ok(false);
        }
        let released = self.set_held(task);
        if !task.regs.values().any(LeafReg::pending) {
            backfill::close(task.reader.take());
            if let Some(run) = task.run.take() {
                let secs = run.started.elapsed().as_secs_f64();
                self.metrics.backfill_tasks_active.dec();
                self.metrics
                    .backfill_completed
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
                info!(
                    partition = part,
                    read = run.read,
                    applied = run.applied,
                    seconds = secs,
                    events_per_s = (run.read as f64 / secs.max(1e-9)) as u64,
                    "backfill complete"
                );
            }
        }
        Ok(released)
    }

    /// Sets this task's share of the remaining-events gauge.
    fn report_remaining(&self, task: &mut TaskBackfill, left: i64) {
        self.metrics.backfill_remaining.add(left - task.remaining);
        task.remaining = left;
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
        self.save(ctx, profile, &st, old_wake);
        Ok(())
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
            self.on_event(ctx, v)
        } else if record.topic == self.topics.merges {
            self.on_merge(ctx, v)
        } else if record.topic == self.topics.merge_state {
            self.on_merge_state(ctx, v)
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
        }
    }

    fn on_revoked(&mut self, tasks: &[i32]) {
        for t in tasks {
            self.cursors.remove(t);
            self.drop_task(*t);
        }
    }

    fn on_abort(&mut self) {
        self.cursors.clear();
        let parts: Vec<i32> = self.tasks.keys().copied().collect();
        for t in parts {
            self.drop_task(t);
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
        let generation = self.snap.1;
        let now_bucket = (now.max(0) / BUCKET_MS) as u64;
        let cursor = self.cursors.get(&part).copied();
        // Definitions changed (or first punctuation of this task): evaluate every profile, so
        // new audiences emit their members and edits their differences. Idempotent: results
        // already emitted are stored with the profile.
        if cursor.is_none_or(|(_, g)| g != generation) {
            let all = ctx.scan_prefix(PROFILES, &[])?;
            for (k, v) in all {
                let profile = String::from_utf8_lossy(&k).into_owned();
                let st = ProfileState::decode(&v)
                    .map_err(|e| ProcessError::Fatal(format!("corrupt state: {e}")))?;
                self.reevaluate(ctx, &profile, st, now)?;
            }
            // Everything was just evaluated at `now`; stale timer keys are skipped below.
        }
        let timers: Vec<(Vec<u8>, Vec<u8>)> = match cursor {
            // Far behind (clock jump, long pause): one scan beats a scan per minute bucket.
            Some((from, _)) if now_bucket.saturating_sub(from) > 1000 => {
                ctx.scan_prefix(TIMERS, &[])?
            }
            Some((from, _)) => {
                let mut out = Vec::new();
                for b in from..=now_bucket {
                    out.extend(ctx.scan_prefix(TIMERS, &b.to_be_bytes())?);
                }
                out
            }
            None => ctx.scan_prefix(TIMERS, &[])?,
        };
        for (k, _) in timers {
            if k.len() < 16 {
                ctx.delete(TIMERS, k);
                continue;
            }
            let mut w = [0u8; 8];
            w.copy_from_slice(&k[8..16]);
            let wake = u64::from_be_bytes(w) as i64;
            if wake > now {
                // Sorted by time within the scanned buckets, but buckets are scanned whole.
                continue;
            }
            let profile = String::from_utf8_lossy(&k[16..]).into_owned();
            ctx.delete(TIMERS, k);
            self.metrics.timers_pending.dec();
            self.metrics.timers_fired.inc();
            let Some(mut st) = Self::load(ctx, &profile)? else {
                continue;
            };
            if st.wake_ms != Some(wake) {
                continue;
            }
            // The key is gone already; make `save` schedule afresh.
            st.wake_ms = None;
            let old = None;
            let (engine, _) = self.engine(&st.space_id);
            st.hold = self.hold(part, &st.space_id);
            let changes = match engine {
                Some(e) => {
                    self.metrics.evaluations.inc();
                    e.tick(&mut st, now)
                }
                None => Vec::new(),
            };
            self.emit(ctx, &profile, &st, changes, None, now)?;
            self.save(ctx, &profile, &st, old);
        }
        self.cursors.insert(part, (now_bucket, generation));
        Ok(())
    }
}
