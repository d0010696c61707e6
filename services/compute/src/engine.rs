//! The incremental engine: pure, no Kafka, no RocksDB, no wall clock.
//!
//! The engine holds the active definitions of one space, compiled by the planner into leaves
//! (shared by id between definitions). It updates a [`ProfileState`] for each input (event,
//! identify, merge, timer), re-evaluates the boolean/value structure over the leaf states, and
//! returns a [`Change`] only where a definition's result differs from the one last emitted.
//!
//! Time: every call takes `now_ms` from the caller's clock. Evaluation also computes the next
//! instant at which time alone can change any result (an event leaving a `within` window or
//! entering a `between` one, a session expiring, a relative-date comparison flipping); the
//! caller keeps a timer for it (`ProfileState::wake_ms`) and calls [`Engine::tick`] then.
//!
//! Leaf state (see docs/compute.md for every bound):
//! - unwindowed leaves with a static filter: a running [`Agg`] (constant size, or one entry
//!   per distinct value for `unique`/`mode`);
//! - windowed leaves (`within`, `between`, `expires_after`): one [`Entry`] (time, property) per
//!   qualifying event still inside the horizon; pruned as time passes;
//! - funnels and filters that read traits, other definitions or the parent event: the
//!   qualifying events themselves, projected to the properties the plans read, inside the
//!   planner's horizon (all history when unwindowed).

use crate::agg::Agg;
use crate::state::{Entry, ExtId, LeafState, ProfileState, StoredEvent, StoredResult, TraitValue};
use crate::value::{as_ts_ms, context_value, date_cmp, first_segment};
use corral_query::ast::{PropKind, Reducer};
use corral_query::check::{Catalogue, CheckContext, DefinitionKind, Target};
use corral_query::eval::{contains_any, literal_value, lookup, loose_cmp, loose_eq, string_form};
use corral_query::plan::{
    plan, Bound, CompareOp, Leaf, LeafSource, Plan, PlanExpr, PlanRoot, PlanValue, StateKind,
    Window,
};
use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One audience or computed trait as compute receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionSpec {
    /// Definition key (unique within the space across audiences and computed traits).
    pub key: String,
    /// Display name.
    pub name: Option<String>,
    /// Audience or computed trait.
    pub target: Target,
    /// USERS or ACCOUNTS (ACCOUNTS is rejected for now).
    pub kind: DefinitionKind,
    /// Version (each edit is a new version).
    pub version: i64,
    /// Query text.
    pub query: String,
    /// Replay history when created.
    pub include_historical_data: bool,
}

/// Why a definition is not active.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// Planned, but compute cannot evaluate it (see `corral_ops::accounts::unsupported`).
    #[error("`{0}` {1}")]
    Unsupported(String, String),
    /// Linked Audiences (`entity(...)`) need the data graph.
    #[error("`{0}` uses entity(...) (Linked Audiences), which compute does not evaluate")]
    Entity(String),
    /// Parse, type or planning errors.
    #[error("`{key}` is invalid: {message}")]
    Invalid {
        /// Definition key.
        key: String,
        /// First diagnostic.
        message: String,
    },
}

/// Engine tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// How late an event may arrive and still join or bridge `expires_after` sessions:
    /// sessions that ended more than this (plus the gap) ago are dropped.
    pub allowed_lateness_ms: i64,
    /// Most entries/events one leaf keeps for one profile; beyond it the oldest are dropped.
    pub max_entries_per_leaf: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness_ms: 7 * 86_400_000,
            max_entries_per_leaf: 10_000,
        }
    }
}

/// What changed for a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Definition key.
    pub key: String,
    /// Definition version that computed it.
    pub version: i64,
    /// What happened.
    pub kind: ChangeKind,
}

/// What a merge changes ([`Engine::absorb`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Absorbed {
    /// The survivor's differences after evaluating the union.
    pub into: Vec<Change>,
    /// Exits of the merged-away profile: audiences it was in that the survivor does not carry.
    pub from_exits: Vec<Change>,
}

/// Records identify traits in a state without evaluating (latest event time wins per trait;
/// `null` is kept as a removal).
pub fn record_traits(st: &mut ProfileState, traits: &Map<String, Value>, ts_ms: i64) {
    for (k, v) in traits {
        let newer = st.traits.get(k).is_none_or(|cur| ts_ms >= cur.t);
        if newer {
            st.traits.insert(
                k.clone(),
                TraitValue {
                    v: v.clone(),
                    t: ts_ms,
                },
            );
        }
    }
}

/// Entered, exited, or a trait value changed.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    /// Became a member.
    Entered,
    /// Stopped being a member.
    Exited,
    /// Computed trait changed (`None`: no value).
    Trait {
        /// New value.
        value: Option<Value>,
        /// Previous value.
        previous: Option<Value>,
    },
}

/// An input event as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct InEvent<'a> {
    /// Event name (`Page Viewed`/`Screen Viewed` for page/screen calls).
    pub name: &'a str,
    /// Event time (ms).
    pub ts_ms: i64,
    /// Properties.
    pub properties: &'a Map<String, Value>,
    /// Context.
    pub context: &'a Map<String, Value>,
    /// Source id.
    pub source_id: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repr {
    Agg,
    Entries,
    Events,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retention {
    All,
    Horizon(i64),
    Session(i64),
}

#[derive(Debug, Clone)]
struct LeafInfo {
    leaf: Leaf,
    repr: Repr,
    retention: Retention,
}

/// An active definition.
#[derive(Debug, Clone)]
pub struct ActiveDefinition {
    /// As received.
    pub spec: DefinitionSpec,
    /// Compiled.
    pub plan: Plan,
}

/// The engine for one space's definitions.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    cfg: EngineConfig,
    defs: BTreeMap<String, ActiveDefinition>,
    leaves: BTreeMap<String, LeafInfo>,
    by_event: HashMap<String, Vec<String>>,
    /// Per leaf id: the definitions whose value can read it, directly or through references.
    readers: HashMap<String, BTreeSet<String>>,
    keep_props: BTreeSet<String>,
    keep_ctx: BTreeSet<String>,
    rejected: BTreeMap<String, DefinitionError>,
    /// ACCOUNTS definitions: the account side (none when the space has none).
    account: Option<Arc<crate::accounts::AccountSide>>,
}

/// A view of one event for filter evaluation (incoming or stored).
#[derive(Clone, Copy)]
struct Ev<'a> {
    t: i64,
    p: &'a Map<String, Value>,
    c: &'a Map<String, Value>,
}

impl<'a> From<&'a StoredEvent> for Ev<'a> {
    fn from(e: &'a StoredEvent) -> Self {
        Ev {
            t: e.t,
            p: &e.p,
            c: &e.c,
        }
    }
}

struct Cx {
    now: i64,
    next: Option<i64>,
    traits: Map<String, Value>,
    memo: HashMap<String, Option<Value>>,
    depth: usize,
}

impl Cx {
    /// Records an instant at which a time-dependent predicate flips.
    fn flip(&mut self, at: i64) {
        if at > self.now && self.next.is_none_or(|n| at < n) {
            self.next = Some(at);
        }
    }
}

fn ms(seconds: u64) -> i64 {
    i64::try_from(seconds)
        .unwrap_or(i64::MAX / 2)
        .saturating_mul(1000)
}

fn walk_values<'p>(e: &'p PlanExpr, f: &mut dyn FnMut(&'p PlanValue)) {
    match e {
        PlanExpr::And(xs) | PlanExpr::Or(xs) => xs.iter().for_each(|x| walk_values(x, f)),
        PlanExpr::Not(x) => walk_values(x, f),
        PlanExpr::Quantified { expr, .. } => walk_values(expr, f),
        PlanExpr::Compare {
            value, operands, ..
        } => {
            f(value);
            operands.iter().for_each(&mut *f);
        }
    }
}

/// Per leaf id, the definitions that read it directly or through references to definitions
/// that do (transitively; reference cycles are rejected by the checker, and a depth cap keeps
/// this bounded regardless).
fn leaf_readers(defs: &BTreeMap<String, ActiveDefinition>) -> HashMap<String, BTreeSet<String>> {
    fn collect(
        defs: &BTreeMap<String, ActiveDefinition>,
        key: &str,
        depth: usize,
        out: &mut BTreeSet<String>,
    ) {
        let Some(d) = defs.get(key) else { return };
        out.extend(d.plan.leaves.iter().map(|l| l.id.clone()));
        if depth < corral_query::eval::MAX_REFERENCE_DEPTH {
            for r in &d.plan.references {
                collect(defs, r, depth + 1, out);
            }
        }
    }
    let mut readers: HashMap<String, BTreeSet<String>> = HashMap::new();
    for key in defs.keys() {
        let mut leaves = BTreeSet::new();
        collect(defs, key, 0, &mut leaves);
        for id in leaves {
            readers.entry(id).or_default().insert(key.clone());
        }
    }
    readers
}

impl Engine {
    /// Compiles a set of definitions. Invalid ones (and ones that reference them) are left
    /// out and reported by [`Engine::rejected`]. ACCOUNTS definitions are split
    /// (`corral_ops::accounts`): their per-user conditions become hidden audiences of this
    /// engine, their account queries an engine of their own ([`Engine::accounts`]).
    pub fn new(cfg: EngineConfig, specs: Vec<DefinitionSpec>) -> Engine {
        let (accounts, mut users): (Vec<_>, Vec<_>) = specs
            .into_iter()
            .partition(|s| s.kind == DefinitionKind::Accounts);
        let mut rejected = BTreeMap::new();
        users.retain(|s| match corral_ops::accounts::unsupported_key(&s.key) {
            Some(why) => {
                rejected.insert(
                    s.key.clone(),
                    DefinitionError::Unsupported(s.key.clone(), why),
                );
                false
            }
            None => true,
        });
        if accounts.is_empty() {
            let mut e = Engine::build(cfg, users);
            e.rejected.extend(rejected);
            return e;
        }
        let side = crate::accounts::split_specs(&accounts, &users, &mut rejected);
        let mut all_users = users.clone();
        all_users.extend(side.condition_specs.iter().cloned());
        let mut eng = Engine::build(cfg, all_users);
        // An account definition whose condition is rejected (it references a rejected users
        // definition) is rejected, and its other conditions dropped.
        let failed: BTreeSet<String> = eng
            .rejected
            .iter()
            .filter_map(|(k, e)| side.parent_of(k).map(|p| (p, e)))
            .map(|(p, e)| {
                rejected.insert(
                    p.clone(),
                    DefinitionError::Invalid {
                        key: p.clone(),
                        message: e.to_string(),
                    },
                );
                p
            })
            .collect();
        if !failed.is_empty() {
            let mut keep = users;
            keep.extend(
                side.condition_specs
                    .iter()
                    .filter(|s| side.parent_of(&s.key).is_none_or(|p| !failed.contains(&p)))
                    .cloned(),
            );
            eng = Engine::build(cfg, keep);
        }
        eng.rejected.retain(|k, _| side.parent_of(k).is_none());
        let account = side.into_engine(cfg, &failed, &mut rejected);
        eng.rejected.extend(rejected);
        eng.account = Some(Arc::new(account));
        eng
    }

    /// Compiles USERS definitions (and account queries, planned as USERS over the account's
    /// traits).
    pub(crate) fn build(cfg: EngineConfig, specs: Vec<DefinitionSpec>) -> Engine {
        let mut rejected = BTreeMap::new();
        let mut parsed = Vec::new();
        for s in specs {
            match corral_query::parse(&s.query) {
                Ok(q) => parsed.push((s, q)),
                Err(d) => {
                    rejected.insert(
                        s.key.clone(),
                        DefinitionError::Invalid {
                            key: s.key.clone(),
                            message: d.message.clone(),
                        },
                    );
                }
            }
        }
        // Plan against a catalogue of the survivors; drop failures and repeat, so a definition
        // referencing a rejected one is checked against what is really active.
        loop {
            let mut catalogue = Catalogue::new();
            for (s, q) in &parsed {
                catalogue.insert(s.key.clone(), s.target, s.kind, Some(q.clone()));
            }
            let mut failed = Vec::new();
            let mut defs = BTreeMap::new();
            for (i, (s, q)) in parsed.iter().enumerate() {
                let ctx = CheckContext {
                    target: s.target,
                    kind: s.kind,
                    catalogue: &catalogue,
                    key: Some(&s.key),
                };
                match plan(q, &ctx) {
                    Ok(p) => {
                        if p.leaves
                            .iter()
                            .any(|l| matches!(l.source, LeafSource::Entity { .. }))
                        {
                            rejected.insert(s.key.clone(), DefinitionError::Entity(s.key.clone()));
                            failed.push(i);
                        } else {
                            defs.insert(
                                s.key.clone(),
                                ActiveDefinition {
                                    spec: s.clone(),
                                    plan: p,
                                },
                            );
                        }
                    }
                    Err(ds) => {
                        let message = ds
                            .first()
                            .map(|d| d.message.clone())
                            .unwrap_or_else(|| "invalid".into());
                        rejected.insert(
                            s.key.clone(),
                            DefinitionError::Invalid {
                                key: s.key.clone(),
                                message,
                            },
                        );
                        failed.push(i);
                    }
                }
            }
            if failed.is_empty() {
                return Engine::from_defs(cfg, defs, rejected);
            }
            for i in failed.into_iter().rev() {
                parsed.remove(i);
            }
        }
    }

    fn from_defs(
        cfg: EngineConfig,
        defs: BTreeMap<String, ActiveDefinition>,
        rejected: BTreeMap<String, DefinitionError>,
    ) -> Engine {
        let mut leaves = BTreeMap::new();
        let mut by_event: HashMap<String, Vec<String>> = HashMap::new();
        let mut keep_props = BTreeSet::new();
        let mut keep_ctx = BTreeSet::new();
        for d in defs.values() {
            for leaf in &d.plan.leaves {
                if leaves.contains_key(&leaf.id) {
                    continue;
                }
                let repr = if leaf.state.kind == StateKind::RetainedEvents {
                    Repr::Events
                } else if leaf.window == Window::Unbounded {
                    Repr::Agg
                } else {
                    Repr::Entries
                };
                let retention = match (leaf.window, leaf.state.bound) {
                    (Window::Session { gap }, _) => Retention::Session(ms(gap)),
                    (_, Bound::EventsInHorizon { seconds }) if repr != Repr::Agg => {
                        Retention::Horizon(ms(seconds))
                    }
                    _ => Retention::All,
                };
                if repr == Repr::Events {
                    for n in &leaf.needs {
                        if let Some(p) = n.strip_prefix("property:") {
                            keep_props.insert(first_segment(p));
                        } else if let Some(c) = n.strip_prefix("context:") {
                            keep_ctx.insert(first_segment(c));
                        }
                    }
                }
                if let Some(f) = &leaf.filter {
                    walk_values(f, &mut |v| {
                        if let PlanValue::Property { name, parent: true } = v {
                            keep_props.insert(first_segment(name));
                        }
                    });
                }
                if let LeafSource::Event { name } = &leaf.source {
                    by_event
                        .entry(name.clone())
                        .or_default()
                        .push(leaf.id.clone());
                }
                leaves.insert(
                    leaf.id.clone(),
                    LeafInfo {
                        leaf: leaf.clone(),
                        repr,
                        retention,
                    },
                );
            }
        }
        let readers = leaf_readers(&defs);
        Engine {
            cfg,
            defs,
            leaves,
            by_event,
            readers,
            keep_props,
            keep_ctx,
            rejected,
            account: None,
        }
    }

    /// Active definitions by key.
    pub fn definitions(&self) -> &BTreeMap<String, ActiveDefinition> {
        &self.defs
    }

    /// The account side: ACCOUNTS definitions' account queries and their per-user conditions
    /// (which are hidden audiences of this engine).
    pub fn accounts(&self) -> Option<&crate::accounts::AccountSide> {
        self.account.as_deref()
    }

    /// Definitions that could not be activated, with why.
    pub fn rejected(&self) -> &BTreeMap<String, DefinitionError> {
        &self.rejected
    }

    /// Number of distinct leaves (shared state).
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// Whether any leaf reads events of this name.
    pub fn reads_event(&self, name: &str) -> bool {
        self.by_event.contains_key(name)
    }

    /// Applies a track/page/screen event, then re-evaluates if it touched any leaf.
    pub fn apply_event(&self, st: &mut ProfileState, ev: &InEvent<'_>, now_ms: i64) -> Vec<Change> {
        let now = now_ms.max(st.now_ms);
        // A profile's first input evaluates it even when no leaf reads the event: audiences
        // such as `count() = 0` hold for every known profile.
        let first = st.now_ms == 0;
        let touched = match self.by_event.get(ev.name) {
            Some(ids) => self.add_to_leaves(st, ev, ids.iter(), now),
            None => Vec::new(),
        };
        if first {
            self.evaluate(st, now)
        } else if !touched.is_empty() {
            self.evaluate_readers_of(st, &touched, now)
        } else {
            Vec::new()
        }
    }

    /// Re-evaluates only the definitions that read one of `leaves`. Exact because every other
    /// definition's inputs are unchanged and, before the profile's wake time, so is time's
    /// effect on it (each time-dependent flip is recorded in `wake_ms`); at or after the wake
    /// time every definition is evaluated.
    fn evaluate_readers_of(
        &self,
        st: &mut ProfileState,
        leaves: &[&String],
        now_ms: i64,
    ) -> Vec<Change> {
        let now = now_ms.max(st.now_ms);
        if st.wake_ms.is_some_and(|w| now >= w) {
            return self.evaluate(st, now);
        }
        let mut only: BTreeSet<&str> = BTreeSet::new();
        for id in leaves {
            if let Some(keys) = self.readers.get(*id) {
                only.extend(keys.iter().map(String::as_str));
            }
        }
        let earlier_wake = st.wake_ms;
        let out = self.evaluate_some(st, now, Some(&only));
        // Skipped definitions keep their flip times: the earlier wake stays a bound (at worst
        // it wakes a profile early, which then evaluates everything and sets it exactly).
        st.wake_ms = match (st.wake_ms, earlier_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        out
    }

    /// Backfill: adds a historical event to the given leaves only (those still being
    /// backfilled), without evaluating; the definitions using them are held until their
    /// backfill completes, then evaluated once. Returns whether any leaf took the event.
    pub fn backfill_event(
        &self,
        st: &mut ProfileState,
        ev: &InEvent<'_>,
        only: &BTreeSet<String>,
        now_ms: i64,
    ) -> bool {
        self.record_event_where(st, ev, now_ms, |id| only.contains(id))
    }

    /// Adds an event to every leaf reading it, without evaluating. For an input of a profile
    /// that was merged away: it is recorded in a fresh state that the survivor absorbs (and
    /// evaluates). Returns whether any leaf took the event.
    pub fn record_event(&self, st: &mut ProfileState, ev: &InEvent<'_>, now_ms: i64) -> bool {
        self.record_event_where(st, ev, now_ms, |_| true)
    }

    fn record_event_where(
        &self,
        st: &mut ProfileState,
        ev: &InEvent<'_>,
        now_ms: i64,
        wanted: impl Fn(&String) -> bool,
    ) -> bool {
        let Some(ids) = self.by_event.get(ev.name) else {
            return false;
        };
        let now = now_ms.max(st.now_ms);
        let touched = !self
            .add_to_leaves(st, ev, ids.iter().filter(|i| wanted(i)), now)
            .is_empty();
        if touched {
            // Keep the state inside its bounds while inputs stream in unevaluated.
            self.prune(st, now);
        }
        touched
    }

    /// Every leaf id, with whether a definition using it asks for historical data.
    pub fn leaves_with_history(&self) -> BTreeMap<String, bool> {
        let mut out: BTreeMap<String, bool> =
            self.leaves.keys().map(|k| (k.clone(), false)).collect();
        for d in self.defs.values() {
            if d.spec.include_historical_data {
                for l in &d.plan.leaves {
                    out.insert(l.id.clone(), true);
                }
            }
        }
        out
    }

    /// Event names read by these leaves.
    pub fn event_names(&self, leaves: &BTreeSet<String>) -> BTreeSet<String> {
        leaves
            .iter()
            .filter_map(|id| match &self.leaves.get(id)?.leaf.source {
                LeafSource::Event { name } => Some(name.clone()),
                LeafSource::Entity { .. } => None,
            })
            .collect()
    }

    /// Definitions that cannot be evaluated while these leaves are incomplete: those using
    /// one of them, and (transitively) those referencing such a definition.
    pub fn held_by(&self, pending: &BTreeSet<String>) -> BTreeSet<String> {
        let mut held: BTreeSet<String> = self
            .defs
            .iter()
            .filter(|(_, d)| d.plan.leaves.iter().any(|l| pending.contains(&l.id)))
            .map(|(k, _)| k.clone())
            .collect();
        loop {
            let more: Vec<String> = self
                .defs
                .iter()
                .filter(|(k, d)| {
                    !held.contains(*k) && d.plan.references.iter().any(|r| held.contains(r))
                })
                .map(|(k, _)| k.clone())
                .collect();
            if more.is_empty() {
                return held;
            }
            held.extend(more);
        }
    }

    fn add_to_leaves<'i>(
        &self,
        st: &mut ProfileState,
        ev: &InEvent<'_>,
        ids: impl Iterator<Item = &'i String>,
        now: i64,
    ) -> Vec<&'i String> {
        let view = Ev {
            t: ev.ts_ms,
            p: ev.properties,
            c: ev.context,
        };
        let mut touched = Vec::new();
        for id in ids {
            let Some(info) = self.leaves.get(id) else {
                continue;
            };
            let leaf = &info.leaf;
            if let Some(src) = ev.source_id {
                if leaf.exclude_sources.iter().any(|x| x == src) {
                    continue;
                }
            }
            match info.repr {
                Repr::Events => {
                    let stored = StoredEvent {
                        t: ev.ts_ms,
                        p: project(ev.properties, &self.keep_props),
                        c: project(ev.context, &self.keep_ctx),
                    };
                    let slot = st
                        .leaves
                        .entry(id.clone())
                        .or_insert_with(|| LeafState::Events(Vec::new()));
                    if let LeafState::Events(xs) = slot {
                        let at = xs.partition_point(|e| e.t <= stored.t);
                        xs.insert(at, stored);
                    }
                    touched.push(id);
                }
                Repr::Agg | Repr::Entries => {
                    if let Some(f) = &leaf.filter {
                        // Static filter: it reads only this event, so decide once.
                        let mut cx = Cx {
                            now,
                            next: None,
                            traits: Map::new(),
                            memo: HashMap::new(),
                            depth: 0,
                        };
                        if !self.eval_expr(f, st, &[view], &mut cx) {
                            continue;
                        }
                    }
                    let v = prop_value(&leaf.reducer, &view);
                    if info.repr == Repr::Agg {
                        let slot = st
                            .leaves
                            .entry(id.clone())
                            .or_insert_with(|| LeafState::Agg(Agg::new(&leaf.reducer)));
                        if let LeafState::Agg(a) = slot {
                            a.add(&leaf.reducer, ev.ts_ms, v.as_ref());
                        }
                    } else {
                        let slot = st
                            .leaves
                            .entry(id.clone())
                            .or_insert_with(|| LeafState::Entries(Vec::new()));
                        if let LeafState::Entries(xs) = slot {
                            let at = xs.partition_point(|e| e.t <= ev.ts_ms);
                            xs.insert(at, Entry { t: ev.ts_ms, v });
                        }
                    }
                    touched.push(id);
                }
            }
        }
        touched
    }

    /// Applies identify traits (latest event time wins per trait; `null` removes).
    pub fn apply_identify(
        &self,
        st: &mut ProfileState,
        traits: &Map<String, Value>,
        ts_ms: i64,
        now_ms: i64,
    ) -> Vec<Change> {
        record_traits(st, traits, ts_ms);
        self.evaluate(st, now_ms)
    }

    /// Re-evaluates because time passed (a timer fired).
    pub fn tick(&self, st: &mut ProfileState, now_ms: i64) -> Vec<Change> {
        self.evaluate(st, now_ms)
    }

    /// Combines a merged-away profile's state into the survivor and re-evaluates the
    /// survivor on the union. The merged-away profile's memberships are carried on by the
    /// survivor: it exits only the audiences the survivor is not a member of after the
    /// merge (and whose evaluation is not held), so a merge alone never makes a user leave
    /// and re-enter. Like Segment, the survivor may enter an audience the merged-away
    /// profile was already in ("a merge can emit another Audience Entered").
    pub fn absorb(&self, into: &mut ProfileState, from: ProfileState, now_ms: i64) -> Absorbed {
        let was_member: Vec<(String, i64)> = from
            .results
            .iter()
            .filter(|(k, r)| r.v == Value::Bool(true) && self.is_audience(k))
            .map(|(k, r)| (k.clone(), r.ver))
            .collect();
        into.add_ids(from.external_ids);
        into.accounts.extend(from.accounts);
        if into.space_id.is_empty() {
            into.space_id = from.space_id;
        }
        for (k, t) in from.traits {
            let newer = into.traits.get(&k).is_none_or(|cur| t.t > cur.t);
            if newer {
                into.traits.insert(k, t);
            }
        }
        for (id, s) in from.leaves {
            match (into.leaves.remove(&id), s) {
                (None, s) => {
                    into.leaves.insert(id, s);
                }
                (Some(LeafState::Agg(mut a)), LeafState::Agg(b)) => {
                    a.merge(b);
                    into.leaves.insert(id, LeafState::Agg(a));
                }
                (Some(LeafState::Entries(mut a)), LeafState::Entries(b)) => {
                    a.extend(b);
                    a.sort_by_key(|e| e.t);
                    into.leaves.insert(id, LeafState::Entries(a));
                }
                (Some(LeafState::Events(mut a)), LeafState::Events(b)) => {
                    a.extend(b);
                    a.sort_by_key(|e| e.t);
                    into.leaves.insert(id, LeafState::Events(a));
                }
                (Some(keep), _) => {
                    into.leaves.insert(id, keep);
                }
            }
        }
        into.now_ms = into.now_ms.max(from.now_ms);
        let changes = self.evaluate(into, now_ms);
        let from_exits = was_member
            .into_iter()
            .filter(|(k, _)| {
                let carried = into
                    .results
                    .get(k)
                    .is_some_and(|r| r.v == Value::Bool(true));
                // A held result is decided later, for the survivor only: keep the membership.
                let held = into.hold.as_ref().is_some_and(|h| h.contains(k));
                !carried && !held
            })
            .map(|(key, version)| Change {
                key,
                version,
                kind: ChangeKind::Exited,
            })
            .collect();
        Absorbed {
            into: changes,
            from_exits,
        }
    }

    /// Whether `key` is an audience in force (not a computed trait).
    pub fn is_audience_key(&self, key: &str) -> bool {
        self.is_audience(key)
    }

    fn is_audience(&self, key: &str) -> bool {
        self.defs
            .get(key)
            .is_some_and(|d| d.spec.target == Target::Audience)
    }

    /// Current value of every active definition for this profile, without touching state:
    /// `Some(Bool)` for audiences, the trait value for computed traits.
    pub fn values(&self, st: &ProfileState, now_ms: i64) -> BTreeMap<String, Option<Value>> {
        let mut cx = self.cx(st, now_ms);
        self.defs
            .keys()
            .map(|k| (k.clone(), self.def_value(k, st, &mut cx)))
            .collect()
    }

    fn cx(&self, st: &ProfileState, now: i64) -> Cx {
        Cx {
            now,
            next: None,
            traits: st.trait_map(),
            memo: HashMap::new(),
            depth: 0,
        }
    }

    /// Prunes, evaluates every definition, records results and the next wake-up, and returns
    /// the differences from what was last emitted.
    pub fn evaluate(&self, st: &mut ProfileState, now_ms: i64) -> Vec<Change> {
        self.evaluate_some(st, now_ms, None)
    }

    /// Evaluates the definitions in `only` (all when `None`); sets `wake_ms` from them.
    fn evaluate_some(
        &self,
        st: &mut ProfileState,
        now_ms: i64,
        only: Option<&BTreeSet<&str>>,
    ) -> Vec<Change> {
        let now = now_ms.max(st.now_ms);
        st.now_ms = now;
        self.prune(st, now);
        let mut cx = self.cx(st, now);
        let mut out = Vec::new();
        for (key, d) in &self.defs {
            if only.is_some_and(|o| !o.contains(key.as_str())) {
                continue;
            }
            if st.hold.as_ref().is_some_and(|h| h.contains(key)) {
                // Backfill in progress: keep the last emitted result, emit nothing.
                continue;
            }
            let v = self.def_value(key, st, &mut cx);
            let version = d.spec.version;
            let old = st.results.get(key).map(|r| r.v.clone());
            match d.spec.target {
                Target::Audience => {
                    let member = v == Some(Value::Bool(true));
                    let was = old == Some(Value::Bool(true));
                    if member && !was {
                        out.push(Change {
                            key: key.clone(),
                            version,
                            kind: ChangeKind::Entered,
                        });
                    } else if was && !member {
                        out.push(Change {
                            key: key.clone(),
                            version,
                            kind: ChangeKind::Exited,
                        });
                    }
                    if member {
                        st.results.insert(
                            key.clone(),
                            StoredResult {
                                ver: version,
                                v: Value::Bool(true),
                            },
                        );
                    } else {
                        st.results.remove(key);
                    }
                }
                Target::ComputedTrait => {
                    if v != old {
                        out.push(Change {
                            key: key.clone(),
                            version,
                            kind: ChangeKind::Trait {
                                value: v.clone(),
                                previous: old,
                            },
                        });
                    }
                    match v {
                        Some(v) => {
                            st.results
                                .insert(key.clone(), StoredResult { ver: version, v });
                        }
                        None => {
                            st.results.remove(key);
                        }
                    }
                }
            }
        }
        // Results of deleted definitions are dropped silently (deletion emits nothing).
        st.results.retain(|k, _| self.defs.contains_key(k));
        st.wake_ms = cx.next;
        out
    }

    fn prune(&self, st: &mut ProfileState, now: i64) {
        st.leaves.retain(|id, _| self.leaves.contains_key(id));
        let lateness = self.cfg.allowed_lateness_ms;
        let cap = self.cfg.max_entries_per_leaf;
        for (id, s) in st.leaves.iter_mut() {
            let Some(info) = self.leaves.get(id) else {
                continue;
            };
            match s {
                LeafState::Agg(_) => {}
                LeafState::Entries(xs) => {
                    prune_times(xs, |e| e.t, info.retention, now, lateness, cap)
                }
                LeafState::Events(xs) => {
                    prune_times(xs, |e| e.t, info.retention, now, lateness, cap)
                }
            }
        }
        st.leaves.retain(|_, s| match s {
            LeafState::Agg(_) => true,
            LeafState::Entries(xs) => !xs.is_empty(),
            LeafState::Events(xs) => !xs.is_empty(),
        });
    }

    fn def_value(&self, key: &str, st: &ProfileState, cx: &mut Cx) -> Option<Value> {
        if let Some(v) = cx.memo.get(key) {
            return v.clone();
        }
        let d = self.defs.get(key)?;
        if cx.depth > corral_query::eval::MAX_REFERENCE_DEPTH {
            return None;
        }
        cx.depth += 1;
        let v = match &d.plan.root {
            PlanRoot::Condition(e) => Some(Value::Bool(self.eval_expr(e, st, &[], cx))),
            PlanRoot::Value(PlanValue::Leaf { id, count_unique }) => {
                let (v, n) = self.leaf_value(id, *count_unique, st, &[], cx);
                if n == 0 {
                    None
                } else {
                    v
                }
            }
            PlanRoot::Value(v) => self.eval_value(v, st, &[], cx),
        };
        cx.depth -= 1;
        cx.memo.insert(key.to_string(), v.clone());
        v
    }

    fn eval_expr(&self, e: &PlanExpr, st: &ProfileState, items: &[Ev<'_>], cx: &mut Cx) -> bool {
        match e {
            PlanExpr::And(xs) => xs.iter().all(|x| self.eval_expr(x, st, items, cx)),
            PlanExpr::Or(xs) => xs.iter().any(|x| self.eval_expr(x, st, items, cx)),
            PlanExpr::Not(x) => !self.eval_expr(x, st, items, cx),
            // Rejected at definition time (ACCOUNTS).
            PlanExpr::Quantified { .. } => false,
            PlanExpr::Compare {
                value,
                op,
                operands,
                duration,
            } => {
                let lhs = self.eval_value(value, st, items, cx);
                let d = duration.map(|d| ms(d.seconds()));
                self.compare(lhs, *op, operands, d, st, items, cx)
            }
        }
    }

    fn eval_value(
        &self,
        v: &PlanValue,
        st: &ProfileState,
        items: &[Ev<'_>],
        cx: &mut Cx,
    ) -> Option<Value> {
        let v = match v {
            PlanValue::Leaf { id, count_unique } => {
                self.leaf_value(id, *count_unique, st, items, cx).0
            }
            PlanValue::Trait { name } => lookup(&cx.traits, name).cloned(),
            PlanValue::Reference { key, .. } => self.def_value(key, st, cx),
            PlanValue::Property { name, parent } => {
                let idx = if *parent { 2 } else { 1 };
                let it = items.len().checked_sub(idx).and_then(|i| items.get(i))?;
                lookup(it.p, name).cloned()
            }
            PlanValue::Context { name } => {
                let it = items.last()?;
                context_value(it.c, it.t, name)
            }
            PlanValue::Literal { value } => literal_value(value),
        };
        v.filter(|v| !v.is_null())
    }

    #[allow(clippy::too_many_arguments)]
    fn compare(
        &self,
        lhs: Option<Value>,
        op: CompareOp,
        operands: &[PlanValue],
        d: Option<i64>,
        st: &ProfileState,
        items: &[Ev<'_>],
        cx: &mut Cx,
    ) -> bool {
        if op == CompareOp::Absent {
            return lhs.is_none();
        }
        let Some(a) = lhs else { return false };
        let one = |cx: &mut Cx| -> Option<Value> {
            operands
                .first()
                .and_then(|o| self.eval_value(o, st, items, cx))
        };
        let ord = |b: Option<Value>, f: fn(Ordering) -> bool| -> bool {
            b.is_some_and(|b| loose_cmp(&a, &b).is_some_and(f))
        };
        let now = cx.now;
        let rel = |cx: &mut Cx, f: &dyn Fn(i64, i64) -> (bool, Vec<i64>)| -> bool {
            match (as_ts_ms(&a), d) {
                (Some(t), Some(d)) => {
                    let (r, flips) = f(t, d);
                    for x in flips {
                        cx.flip(x);
                    }
                    r
                }
                _ => false,
            }
        };
        match op {
            CompareOp::Absent => false,
            CompareOp::Exists => true,
            CompareOp::Equals => one(cx).is_some_and(|b| loose_eq(&a, &b)),
            CompareOp::Differs => one(cx).is_some_and(|b| !loose_eq(&a, &b)),
            CompareOp::GreaterThan => ord(one(cx), |x| x == Ordering::Greater),
            CompareOp::AtLeast => ord(one(cx), |x| x != Ordering::Less),
            CompareOp::LessThan => ord(one(cx), |x| x == Ordering::Less),
            CompareOp::AtMost => ord(one(cx), |x| x != Ordering::Greater),
            CompareOp::Contains => {
                let needles = self.many(operands, st, items, cx);
                contains_any(&a, &needles)
            }
            CompareOp::Omits => match one(cx) {
                Some(n) => !contains_any(&a, &[n]),
                None => false,
            },
            CompareOp::StartsWith => {
                one(cx).is_some_and(|n| string_form(&a).starts_with(&string_form(&n)))
            }
            CompareOp::EndsWith => {
                one(cx).is_some_and(|n| string_form(&a).ends_with(&string_form(&n)))
            }
            CompareOp::OneOf => self
                .many(operands, st, items, cx)
                .iter()
                .any(|b| loose_eq(&a, b)),
            CompareOp::NoneOf => !self
                .many(operands, st, items, cx)
                .iter()
                .any(|b| loose_eq(&a, b)),
            CompareOp::BeforeDate => one(cx)
                .and_then(|b| date_cmp(&a, &b))
                .is_some_and(|o| o == Ordering::Less),
            CompareOp::AfterDate => one(cx)
                .and_then(|b| date_cmp(&a, &b))
                .is_some_and(|o| o == Ordering::Greater),
            // Each relative-date comparison is true on an interval of "now"; its ends are
            // the instants a timer must re-evaluate at.
            CompareOp::WithinLast => rel(cx, &|t, d| {
                (
                    t <= now && t >= now.saturating_sub(d),
                    vec![t, t.saturating_add(d).saturating_add(1)],
                )
            }),
            CompareOp::WithinNext => rel(cx, &|t, d| {
                (
                    t >= now && t <= now.saturating_add(d),
                    vec![t.saturating_sub(d), t.saturating_add(1)],
                )
            }),
            CompareOp::BeforeLast => rel(cx, &|t, d| {
                (t <= now.saturating_sub(d), vec![t.saturating_add(d)])
            }),
            CompareOp::AfterNext => rel(cx, &|t, d| {
                (
                    t >= now.saturating_add(d),
                    vec![t.saturating_sub(d).saturating_add(1)],
                )
            }),
        }
    }

    fn many(
        &self,
        operands: &[PlanValue],
        st: &ProfileState,
        items: &[Ev<'_>],
        cx: &mut Cx,
    ) -> Vec<Value> {
        operands
            .iter()
            .filter_map(|o| self.eval_value(o, st, items, cx))
            .collect()
    }

    /// A leaf's value and the number of events in its (filtered, windowed) stream.
    fn leaf_value(
        &self,
        id: &str,
        count_unique: bool,
        st: &ProfileState,
        items: &[Ev<'_>],
        cx: &mut Cx,
    ) -> (Option<Value>, u64) {
        let Some(info) = self.leaves.get(id) else {
            return (None, 0);
        };
        let leaf = &info.leaf;
        let r = &leaf.reducer;
        let now = cx.now;
        let parent_t = items.last().map(|e| e.t);
        let parent_window = matches!(
            leaf.window,
            Window::ParentWithin { .. } | Window::ParentBetween { .. }
        );
        if parent_window && parent_t.is_none() {
            return (None, 0);
        }
        let mut agg = Agg::new(r);
        match (info.repr, st.leaves.get(id)) {
            (_, None) => {}
            (Repr::Agg, Some(LeafState::Agg(a))) => agg = a.clone(),
            (_, Some(LeafState::Entries(xs))) => {
                let mut kept: Vec<&Entry> = Vec::new();
                for e in xs {
                    if e.t > now {
                        cx.flip(e.t);
                        continue;
                    }
                    if in_window(leaf.window, e.t, now, parent_t, cx) {
                        kept.push(e);
                    }
                }
                let start = session_start(leaf.window, &kept, |e| e.t, now, cx);
                for e in &kept[start..] {
                    agg.add(r, e.t, e.v.as_ref());
                }
            }
            (_, Some(LeafState::Events(xs))) => {
                let mut kept: Vec<&StoredEvent> = Vec::new();
                let mut stack: Vec<Ev<'_>> = items.to_vec();
                for e in xs {
                    if e.t > now {
                        cx.flip(e.t);
                        continue;
                    }
                    if !in_window(leaf.window, e.t, now, parent_t, cx) {
                        continue;
                    }
                    if let Some(f) = &leaf.filter {
                        stack.push(Ev::from(e));
                        let ok = self.eval_expr(f, st, &stack, cx);
                        stack.pop();
                        if !ok {
                            continue;
                        }
                    }
                    kept.push(e);
                }
                let start = session_start(leaf.window, &kept, |e| e.t, now, cx);
                for e in &kept[start..] {
                    let v = prop_value(r, &Ev::from(*e));
                    agg.add(r, e.t, v.as_ref());
                }
            }
            _ => {}
        }
        (agg.value(r, count_unique), agg.events())
    }
}

fn project(m: &Map<String, Value>, keep: &BTreeSet<String>) -> Map<String, Value> {
    if keep.is_empty() {
        return Map::new();
    }
    m.iter()
        .filter(|(k, _)| keep.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The reducer's property of an event (missing and null are `None`).
fn prop_value(r: &Reducer, e: &Ev<'_>) -> Option<Value> {
    let p = r.prop()?;
    let v = match p.kind {
        PropKind::Property => lookup(e.p, &p.name).cloned(),
        PropKind::Context => context_value(e.c, e.t, &p.name),
        PropKind::ParentProperty => None,
    };
    v.filter(|v| !v.is_null())
}

/// Whether an event at `t` is inside the window at `now`; records when that flips.
fn in_window(w: Window, t: i64, now: i64, parent: Option<i64>, cx: &mut Cx) -> bool {
    match w {
        Window::Unbounded | Window::Session { .. } => true,
        Window::Last { seconds } => {
            let d = ms(seconds);
            cx.flip(t.saturating_add(d).saturating_add(1));
            t >= now.saturating_sub(d)
        }
        Window::Between { near, far } => {
            let (n, f) = (ms(near), ms(far));
            cx.flip(t.saturating_add(n));
            cx.flip(t.saturating_add(f).saturating_add(1));
            t >= now.saturating_sub(f) && t <= now.saturating_sub(n)
        }
        Window::ParentWithin { seconds } => {
            let p = parent.unwrap_or(i64::MIN);
            t >= p && t <= p.saturating_add(ms(seconds))
        }
        Window::ParentBetween { near, far } => {
            let p = parent.unwrap_or(i64::MIN);
            t >= p.saturating_add(ms(near)) && t <= p.saturating_add(ms(far))
        }
    }
}

/// For `expires_after`, the index where the current session starts (`len` when it expired).
fn session_start<T>(w: Window, xs: &[T], t: impl Fn(&T) -> i64, now: i64, cx: &mut Cx) -> usize {
    let Window::Session { gap } = w else { return 0 };
    let gap = ms(gap);
    let Some(last) = xs.last().map(&t) else {
        return 0;
    };
    if now.saturating_sub(last) > gap {
        return xs.len();
    }
    cx.flip(last.saturating_add(gap).saturating_add(1));
    let mut start = xs.len() - 1;
    while start > 0 && t(&xs[start]).saturating_sub(t(&xs[start - 1])) <= gap {
        start -= 1;
    }
    start
}

/// Drops what can no longer matter: entries older than the horizon, sessions that ended more
/// than the allowed lateness ago, and the oldest entries beyond the cap.
fn prune_times<T>(
    xs: &mut Vec<T>,
    t: impl Fn(&T) -> i64,
    r: Retention,
    now: i64,
    lateness: i64,
    cap: usize,
) {
    match r {
        Retention::All => {}
        Retention::Horizon(h) => {
            let lo = now.saturating_sub(h);
            let cut = xs.partition_point(|e| t(e) < lo);
            xs.drain(..cut);
        }
        Retention::Session(gap) => {
            let lo = now.saturating_sub(gap).saturating_sub(lateness);
            // Drop whole sessions whose last event is older than `lo`: a later (late) event
            // can then no longer bridge into them.
            let mut cut = 0;
            let mut i = 0;
            while i < xs.len() {
                let mut j = i;
                while j + 1 < xs.len() && t(&xs[j + 1]).saturating_sub(t(&xs[j])) <= gap {
                    j += 1;
                }
                if t(&xs[j]) < lo {
                    cut = j + 1;
                    i = j + 1;
                } else {
                    break;
                }
            }
            xs.drain(..cut);
        }
    }
    if xs.len() > cap {
        let extra = xs.len() - cap;
        xs.drain(..extra);
    }
}

/// Turns engine changes into (key, ext ids) for convenience in callers.
pub fn ext_ids_of(st: &ProfileState) -> Vec<ExtId> {
    st.external_ids.clone()
}
