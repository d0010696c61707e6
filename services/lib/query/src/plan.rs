//! The planner: compiles a checked definition into what an incremental engine maintains.
//!
//! A plan is a boolean (audience) or value (computed trait) structure over **leaves**. A leaf is
//! one filtered, windowed, reduced stream: event name (or entity slug), the `where` condition
//! evaluated per event, excluded sources, one window, one reducer. Its id is a hash of its
//! content (spans excluded), so the same leaf written in two definitions, or twice in one, has
//! the same id and the engine keeps its state once ([`PlanSet`]).
//!
//! Each leaf says which per-profile state answers it and how large that state can grow; each
//! windowed leaf, session and relative-date comparison says which timer re-evaluates it when
//! time alone changes the answer.

use crate::ast::*;
use crate::check::{check, CheckContext, DefinitionKind, Target};
use crate::error::Diagnostic;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Content-derived leaf id: 16 hex digits of FNV-1a over the leaf's canonical JSON.
pub type LeafId = String;

/// Whose events a leaf reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafLevel {
    /// One user's events (USERS definitions, and inside ANY/ALL/NONE).
    User,
    /// All the events of an account's users together (ACCOUNTS definitions, outside
    /// quantifiers).
    Account,
}

/// What a leaf streams over.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafSource {
    /// `event('name')`.
    Event {
        /// Event name.
        name: String,
    },
    /// `entity('slug')`.
    Entity {
        /// Relationship slug.
        slug: String,
    },
}

/// A leaf's time window, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// The whole history.
    Unbounded,
    /// `within(d)`: `[now - d, now]`.
    Last {
        /// `d`.
        seconds: u64,
    },
    /// `between(a, b)`: `[now - far, now - near]`.
    Between {
        /// `min(a, b)`.
        near: u64,
        /// `max(a, b)`.
        far: u64,
    },
    /// `within(parent: d)`: `[parent, parent + d]`.
    ParentWithin {
        /// `d`.
        seconds: u64,
    },
    /// `between(parent: a, b)`: `[parent + near, parent + far]`.
    ParentBetween {
        /// `min(a, b)`.
        near: u64,
        /// `max(a, b)`.
        far: u64,
    },
    /// `expires_after(d)`: the current session; empty after `d` without an event.
    Session {
        /// `d`.
        gap: u64,
    },
}

impl Window {
    /// How far back from its reference time the window reaches; `None` for the whole history.
    pub fn horizon(&self) -> Option<u64> {
        match *self {
            Window::Unbounded => None,
            Window::Last { seconds } | Window::ParentWithin { seconds } => Some(seconds),
            Window::Between { far, .. } | Window::ParentBetween { far, .. } => Some(far),
            Window::Session { gap } => Some(gap),
        }
    }
}

/// The per-profile state that answers a leaf incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateKind {
    /// One integer.
    Counter,
    /// One running sum.
    Sum,
    /// Sum and count (for `avg`).
    SumAndCount,
    /// Current minimum or maximum.
    Extremum,
    /// Earliest value with its timestamp.
    FirstValue,
    /// Latest value with its timestamp.
    LastValue,
    /// Set of distinct values (`unique`).
    DistinctSet,
    /// Value → frequency (`mode`).
    FrequencyMap,
    /// Counts/sums in time buckets over the horizon (windowed count, sum, avg).
    TimeBuckets,
    /// Timestamped values over the horizon (windowed min, max, first, last, unique, mode).
    TimedValues,
    /// The qualifying events themselves (the properties the leaf needs): funnels and
    /// conditions that depend on traits or other leaves, which can change after the event.
    RetainedEvents,
    /// The current session's aggregate plus the last event time.
    Session,
}

/// How large a leaf's state can grow per profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// A fixed number of values.
    Constant {
        /// How many.
        values: u32,
    },
    /// At most one entry per qualifying event in the horizon.
    EventsInHorizon {
        /// Horizon in seconds.
        seconds: u64,
    },
    /// One entry per distinct property value ever seen (in the horizon if any).
    DistinctValues,
    /// One entry per qualifying event in the whole history (unwindowed funnels and
    /// trait-dependent filters).
    EventsInHistory,
}

/// What the engine keeps for a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateSpec {
    /// Kind of state.
    pub kind: StateKind,
    /// Its size bound.
    pub bound: Bound,
}

/// One leaf aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leaf {
    /// Content-derived id.
    pub id: LeafId,
    /// Whose events.
    pub level: LeafLevel,
    /// Which stream.
    pub source: LeafSource,
    /// Per-event condition (the `where`s, joined by AND), if any.
    pub filter: Option<PlanExpr>,
    /// Source ids excluded by `sources(...)`.
    pub exclude_sources: Vec<String>,
    /// Time window.
    pub window: Window,
    /// Reducer.
    pub reducer: Reducer,
    /// True for a funnel child: evaluated relative to each parent event, its state lives with
    /// the parent's.
    pub correlated: bool,
    /// Property and context paths the state must keep (`property:x`, `context:y`).
    pub needs: Vec<String>,
    /// State and bound.
    pub state: StateSpec,
}

/// Comparison operators (the comparators without their operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    /// `=`.
    Equals,
    /// `!=`.
    Differs,
    /// `>`.
    GreaterThan,
    /// `>=`.
    AtLeast,
    /// `<`.
    LessThan,
    /// `<=`.
    AtMost,
    /// `absent()`.
    Absent,
    /// `exists()`.
    Exists,
    /// `contains(..)`.
    Contains,
    /// `omits(..)`.
    Omits,
    /// `starts_with(..)`.
    StartsWith,
    /// `ends_with(..)`.
    EndsWith,
    /// `one_of(..)`.
    OneOf,
    /// `none_of(..)`.
    NoneOf,
    /// `before_date(..)`.
    BeforeDate,
    /// `after_date(..)`.
    AfterDate,
    /// `within_last(d)`.
    WithinLast,
    /// `within_next(d)`.
    WithinNext,
    /// `before_last(d)`.
    BeforeLast,
    /// `after_next(d)`.
    AfterNext,
}

/// A value in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanValue {
    /// A leaf's result; `count_unique` for `unique(..).count()` (same state as `unique(..)`).
    Leaf {
        /// Leaf id.
        id: LeafId,
        /// Count the distinct list instead of returning it.
        count_unique: bool,
    },
    /// A profile (or, at account level, account) trait.
    Trait {
        /// Path.
        name: String,
    },
    /// Another definition's result.
    Reference {
        /// Its key.
        key: String,
        /// Audience (boolean membership) or computed trait.
        target: Target,
    },
    /// A property of the current (or parent) event, inside a leaf filter.
    Property {
        /// Path.
        name: String,
        /// Read the funnel parent.
        parent: bool,
    },
    /// A context field of the current event, inside a leaf filter.
    Context {
        /// Path.
        name: String,
    },
    /// A constant.
    Literal {
        /// The value.
        value: Literal,
    },
}

/// The boolean structure above (and inside the filters of) the leaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanExpr {
    /// All hold.
    And(Vec<PlanExpr>),
    /// Any holds.
    Or(Vec<PlanExpr>),
    /// Negation.
    Not(Box<PlanExpr>),
    /// ANY / ALL / NONE over the account's users.
    Quantified {
        /// Which.
        quantifier: Quantifier,
        /// User-level condition.
        expr: Box<PlanExpr>,
    },
    /// A comparison.
    Compare {
        /// Left-hand side.
        value: PlanValue,
        /// Operator.
        op: CompareOp,
        /// Right-hand sides.
        operands: Vec<PlanValue>,
        /// Duration of the relative-date comparators.
        duration: Option<Duration>,
    },
}

/// Why a timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// An event leaves the window: fire at `event time + delay`.
    WindowExit,
    /// An event enters a `between` window: fire at `event time + delay`.
    WindowEntry,
    /// A session ends: fire at `last event time + delay`.
    SessionExpiry,
    /// A funnel child's window closes: fire at `parent event time + delay`.
    FunnelDeadline,
    /// A relative-date comparison (`within_last` ...) changes with time: fire at
    /// `value ± delay`.
    RelativeDate,
}

/// A timer the engine must schedule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timer {
    /// Leaf concerned (none for relative dates on traits).
    pub leaf: Option<LeafId>,
    /// Why.
    pub kind: TimerKind,
    /// Delay in seconds.
    pub delay_seconds: u64,
}

/// The top of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanRoot {
    /// Audience: membership condition.
    Condition(PlanExpr),
    /// Computed trait: the value.
    Value(PlanValue),
}

/// A compiled definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Audience or computed trait.
    pub target: Target,
    /// Users or accounts.
    pub kind: DefinitionKind,
    /// Boolean or value structure.
    pub root: PlanRoot,
    /// Every leaf used, nested ones included, each once, in first-use order.
    pub leaves: Vec<Leaf>,
    /// Timers, each once.
    pub timers: Vec<Timer>,
    /// Catalogue keys referenced.
    pub references: Vec<String>,
}

/// Checks and compiles a definition.
pub fn plan(query: &Query, ctx: &CheckContext<'_>) -> Result<Plan, Vec<Diagnostic>> {
    let checked = check(query, ctx)?;
    let mut p = Planner {
        ctx,
        leaves: Vec::new(),
        timers: Vec::new(),
    };
    let env = Env {
        level: match ctx.kind {
            DefinitionKind::Users => LeafLevel::User,
            DefinitionKind::Accounts => LeafLevel::Account,
        },
        parent_horizon: None,
    };
    let root = match ctx.target {
        Target::Audience => PlanRoot::Condition(p.expr(&query.expr, &env)),
        Target::ComputedTrait => match &query.expr {
            Expr::Chain(c) => PlanRoot::Value(p.value(c, &c.calls, &env)),
            other => PlanRoot::Condition(p.expr(other, &env)),
        },
    };
    Ok(Plan {
        target: ctx.target,
        kind: ctx.kind,
        root,
        leaves: p.leaves,
        timers: p.timers,
        references: checked.references,
    })
}

/// Plans of many definitions with their leaves shared by id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanSet {
    /// Every distinct leaf.
    pub leaves: BTreeMap<LeafId, Leaf>,
    /// For each leaf, the definitions that use it.
    pub users: BTreeMap<LeafId, Vec<String>>,
    /// Plans by definition key.
    pub plans: BTreeMap<String, Plan>,
}

impl PlanSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a definition's plan.
    pub fn insert(&mut self, key: impl Into<String>, plan: Plan) {
        let key = key.into();
        self.remove(&key);
        for leaf in &plan.leaves {
            self.leaves
                .entry(leaf.id.clone())
                .or_insert_with(|| leaf.clone());
            self.users
                .entry(leaf.id.clone())
                .or_default()
                .push(key.clone());
        }
        self.plans.insert(key, plan);
    }

    /// Removes a definition; leaves nobody uses any more are dropped.
    pub fn remove(&mut self, key: &str) {
        if self.plans.remove(key).is_none() {
            return;
        }
        self.users.retain(|id, keys| {
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.leaves.remove(id);
                false
            } else {
                true
            }
        });
    }

    /// Leaves used by more than one definition, with their users.
    pub fn shared(&self) -> Vec<(&LeafId, &Vec<String>)> {
        self.users.iter().filter(|(_, u)| u.len() > 1).collect()
    }
}

#[derive(Clone)]
struct Env {
    level: LeafLevel,
    /// Inside an event's `where`: that event's horizon (`Some(None)` if unbounded).
    parent_horizon: Option<Option<u64>>,
}

struct Planner<'a, 'c> {
    ctx: &'a CheckContext<'c>,
    leaves: Vec<Leaf>,
    timers: Vec<Timer>,
}

/// FNV-1a 64: stable across runs and platforms, unlike `std`'s randomly seeded hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn compare_op(c: &Comparator) -> CompareOp {
    match c {
        Comparator::Equals(_) => CompareOp::Equals,
        Comparator::Differs(_) => CompareOp::Differs,
        Comparator::GreaterThan(_) => CompareOp::GreaterThan,
        Comparator::AtLeast(_) => CompareOp::AtLeast,
        Comparator::LessThan(_) => CompareOp::LessThan,
        Comparator::AtMost(_) => CompareOp::AtMost,
        Comparator::Absent => CompareOp::Absent,
        Comparator::Exists => CompareOp::Exists,
        Comparator::Contains(_) => CompareOp::Contains,
        Comparator::Omits(_) => CompareOp::Omits,
        Comparator::StartsWith(_) => CompareOp::StartsWith,
        Comparator::EndsWith(_) => CompareOp::EndsWith,
        Comparator::OneOf(_) => CompareOp::OneOf,
        Comparator::NoneOf(_) => CompareOp::NoneOf,
        Comparator::BeforeDate(_) => CompareOp::BeforeDate,
        Comparator::AfterDate(_) => CompareOp::AfterDate,
        Comparator::WithinLast(_) => CompareOp::WithinLast,
        Comparator::WithinNext(_) => CompareOp::WithinNext,
        Comparator::BeforeLast(_) => CompareOp::BeforeLast,
        Comparator::AfterNext(_) => CompareOp::AfterNext,
    }
}

/// Whether a filter's truth for a stored event can change later (it reads traits, other
/// definitions, other leaves or the parent event), which forces the leaf to keep its events.
fn filter_is_dynamic(e: &PlanExpr) -> bool {
    let dyn_value = |v: &PlanValue| {
        matches!(
            v,
            PlanValue::Leaf { .. }
                | PlanValue::Trait { .. }
                | PlanValue::Reference { .. }
                | PlanValue::Property { parent: true, .. }
        )
    };
    match e {
        PlanExpr::And(xs) | PlanExpr::Or(xs) => xs.iter().any(filter_is_dynamic),
        PlanExpr::Not(x) => filter_is_dynamic(x),
        PlanExpr::Quantified { expr, .. } => filter_is_dynamic(expr),
        PlanExpr::Compare {
            value,
            operands,
            op,
            ..
        } => {
            dyn_value(value)
                || operands.iter().any(dyn_value)
                || matches!(
                    op,
                    CompareOp::WithinLast
                        | CompareOp::WithinNext
                        | CompareOp::BeforeLast
                        | CompareOp::AfterNext
                )
        }
    }
}

fn reads_parent(e: &PlanExpr) -> bool {
    let parent = |v: &PlanValue| matches!(v, PlanValue::Property { parent: true, .. });
    match e {
        PlanExpr::And(xs) | PlanExpr::Or(xs) => xs.iter().any(reads_parent),
        PlanExpr::Not(x) => reads_parent(x),
        PlanExpr::Quantified { expr, .. } => reads_parent(expr),
        PlanExpr::Compare {
            value, operands, ..
        } => parent(value) || operands.iter().any(parent),
    }
}

fn collect_needs(e: &PlanExpr, out: &mut Vec<String>) {
    let mut add = |v: &PlanValue| match v {
        PlanValue::Property {
            name,
            parent: false,
        } => out.push(format!("property:{name}")),
        PlanValue::Context { name } => out.push(format!("context:{name}")),
        _ => {}
    };
    match e {
        PlanExpr::And(xs) | PlanExpr::Or(xs) => {
            for x in xs {
                collect_needs(x, out);
            }
        }
        PlanExpr::Not(x) => collect_needs(x, out),
        PlanExpr::Quantified { expr, .. } => collect_needs(expr, out),
        PlanExpr::Compare {
            value, operands, ..
        } => {
            add(value);
            for o in operands {
                add(o);
            }
        }
    }
}

fn state_for(
    reducer: &Reducer,
    window: &Window,
    retain: bool,
    retain_horizon: Option<u64>,
) -> StateSpec {
    if retain {
        return StateSpec {
            kind: StateKind::RetainedEvents,
            bound: match retain_horizon {
                Some(seconds) => Bound::EventsInHorizon { seconds },
                None => Bound::EventsInHistory,
            },
        };
    }
    let distinct = matches!(reducer, Reducer::Unique { .. } | Reducer::Mode { .. });
    match window {
        Window::Unbounded => {
            let (kind, values) = match reducer {
                Reducer::Count => (StateKind::Counter, 1),
                Reducer::Sum { .. } => (StateKind::Sum, 1),
                Reducer::Avg { .. } => (StateKind::SumAndCount, 2),
                Reducer::Min { .. } | Reducer::Max { .. } => (StateKind::Extremum, 1),
                // Value plus its timestamp, so late events are placed correctly.
                Reducer::First { .. } => (StateKind::FirstValue, 2),
                Reducer::Last { .. } => (StateKind::LastValue, 2),
                Reducer::Unique { .. } => (StateKind::DistinctSet, 0),
                Reducer::Mode { .. } => (StateKind::FrequencyMap, 0),
            };
            StateSpec {
                kind,
                bound: if distinct {
                    Bound::DistinctValues
                } else {
                    Bound::Constant { values }
                },
            }
        }
        Window::Session { .. } => StateSpec {
            kind: StateKind::Session,
            bound: if distinct {
                Bound::DistinctValues
            } else {
                // Aggregate (at most sum and count, or value and time) plus session start and
                // last event time.
                Bound::Constant { values: 4 }
            },
        },
        w => {
            let seconds = w.horizon().unwrap_or(0);
            let kind = match reducer {
                Reducer::Count | Reducer::Sum { .. } | Reducer::Avg { .. } => {
                    StateKind::TimeBuckets
                }
                _ => StateKind::TimedValues,
            };
            StateSpec {
                kind,
                bound: Bound::EventsInHorizon { seconds },
            }
        }
    }
}

impl Planner<'_, '_> {
    fn timer(&mut self, leaf: Option<LeafId>, kind: TimerKind, delay_seconds: u64) {
        let t = Timer {
            leaf,
            kind,
            delay_seconds,
        };
        if !self.timers.contains(&t) {
            self.timers.push(t);
        }
    }

    fn expr(&mut self, e: &Expr, env: &Env) -> PlanExpr {
        match e {
            Expr::Or { items, .. } => {
                PlanExpr::Or(items.iter().map(|i| self.expr(i, env)).collect())
            }
            Expr::And { items, .. } => {
                PlanExpr::And(items.iter().map(|i| self.expr(i, env)).collect())
            }
            Expr::Not { expr, .. } => PlanExpr::Not(Box::new(self.expr(expr, env))),
            Expr::Quantified {
                quantifier, expr, ..
            } => {
                let inner = Env {
                    level: LeafLevel::User,
                    parent_horizon: env.parent_horizon,
                };
                PlanExpr::Quantified {
                    quantifier: *quantifier,
                    expr: Box::new(self.expr(expr, &inner)),
                }
            }
            Expr::Chain(c) => self.condition(c, env),
        }
    }

    fn condition(&mut self, c: &Chain, env: &Env) -> PlanExpr {
        let (head, last) = match c.calls.split_last() {
            Some((last, head)) => (head, Some(last)),
            None => (&c.calls[..], None),
        };
        let Some(Call {
            kind: CallKind::Compare(cmp),
            ..
        }) = last
        else {
            // Unreachable after the checker; a literal-true keeps the plan total.
            return PlanExpr::Compare {
                value: PlanValue::Literal {
                    value: Literal::Bool(true),
                },
                op: CompareOp::Equals,
                operands: vec![PlanValue::Literal {
                    value: Literal::Bool(true),
                }],
                duration: None,
            };
        };
        let value = self.value(c, head, env);
        let operands = cmp
            .operands()
            .into_iter()
            .map(|o| self.value(o, &o.calls, env))
            .collect();
        let duration = match cmp {
            Comparator::WithinLast(d)
            | Comparator::WithinNext(d)
            | Comparator::BeforeLast(d)
            | Comparator::AfterNext(d) => Some(*d),
            _ => None,
        };
        if let Some(d) = duration {
            let leaf = match &value {
                PlanValue::Leaf { id, .. } => Some(id.clone()),
                _ => None,
            };
            self.timer(leaf, TimerKind::RelativeDate, d.seconds());
        }
        PlanExpr::Compare {
            value,
            op: compare_op(cmp),
            operands,
            duration,
        }
    }

    /// Plans `c.source` followed by `calls` (the chain without its comparison).
    fn value(&mut self, c: &Chain, calls: &[Call], env: &Env) -> PlanValue {
        let source = match &c.source.kind {
            ExtractorKind::Event { name } => LeafSource::Event { name: name.clone() },
            ExtractorKind::Entity { name } => LeafSource::Entity { slug: name.clone() },
            ExtractorKind::Trait { name } => {
                return match self.ctx.catalogue.get(name) {
                    Some(e) => PlanValue::Reference {
                        key: name.clone(),
                        target: e.target,
                    },
                    None => PlanValue::Trait { name: name.clone() },
                }
            }
            ExtractorKind::Property { name, parent } => {
                return PlanValue::Property {
                    name: name.clone(),
                    parent: *parent,
                }
            }
            ExtractorKind::Context { name } => return PlanValue::Context { name: name.clone() },
            ExtractorKind::Literal { value } => {
                return PlanValue::Literal {
                    value: value.clone(),
                }
            }
        };
        // Window first: nested `where`s need this stream's horizon.
        let mut window = Window::Unbounded;
        let mut exclude = Vec::new();
        let mut reducer = Reducer::Count;
        let mut count_unique = false;
        for call in calls {
            match &call.kind {
                CallKind::Within { parent, duration } => {
                    let seconds = duration.seconds();
                    window = if *parent {
                        Window::ParentWithin { seconds }
                    } else {
                        Window::Last { seconds }
                    };
                }
                CallKind::Between { parent, from, to } => {
                    let (a, b) = (from.seconds(), to.seconds());
                    let (near, far) = (a.min(b), a.max(b));
                    window = if *parent {
                        Window::ParentBetween { near, far }
                    } else {
                        Window::Between { near, far }
                    };
                }
                CallKind::ExpiresAfter { duration } => {
                    window = Window::Session {
                        gap: duration.seconds(),
                    }
                }
                CallKind::Sources { exclude: e } => exclude.extend(e.iter().cloned()),
                CallKind::Reduce(Reducer::Count) if matches!(reducer, Reducer::Unique { .. }) => {
                    count_unique = true
                }
                CallKind::Reduce(r) => reducer = r.clone(),
                _ => {}
            }
        }
        exclude.sort();
        exclude.dedup();
        let correlated_window = matches!(
            window,
            Window::ParentWithin { .. } | Window::ParentBetween { .. }
        );
        // The horizon of events this leaf must remember, seen from "now": a funnel child must
        // remember as far back as its parent does, plus its own window after the parent.
        let own_horizon = match (correlated_window, env.parent_horizon) {
            (true, Some(parent)) => parent
                .zip(window.horizon())
                .map(|(a, b)| a.saturating_add(b)),
            _ => window.horizon(),
        };
        let inner_env = Env {
            level: env.level,
            parent_horizon: match source {
                LeafSource::Event { .. } => Some(own_horizon),
                LeafSource::Entity { .. } => None,
            },
        };
        let mut conds = Vec::new();
        for call in calls {
            if let CallKind::Where { condition } = &call.kind {
                conds.push(self.expr(condition, &inner_env));
            }
        }
        let filter = match conds.len() {
            0 => None,
            1 => conds.pop(),
            _ => Some(PlanExpr::And(conds)),
        };
        let dynamic = filter.as_ref().is_some_and(filter_is_dynamic);
        let correlated = correlated_window || filter.as_ref().is_some_and(reads_parent);
        let mut needs = Vec::new();
        if let Some(f) = &filter {
            collect_needs(f, &mut needs);
        }
        if let Some(p) = reducer.prop() {
            let kind = if p.kind == PropKind::Context {
                "context"
            } else {
                "property"
            };
            needs.push(format!("{kind}:{}", p.name));
        }
        needs.sort();
        needs.dedup();
        let state = state_for(&reducer, &window, dynamic || correlated, own_horizon);
        let mut leaf = Leaf {
            id: String::new(),
            level: env.level,
            source,
            filter,
            exclude_sources: exclude,
            window,
            reducer,
            correlated,
            needs,
            state,
        };
        // Spans are not serialised, so the id depends on content only.
        let id = format!(
            "{:016x}",
            fnv1a(serde_json::to_string(&leaf).unwrap_or_default().as_bytes())
        );
        leaf.id = id.clone();
        match window {
            Window::Last { seconds } => {
                self.timer(Some(id.clone()), TimerKind::WindowExit, seconds)
            }
            Window::Between { near, far } => {
                self.timer(Some(id.clone()), TimerKind::WindowEntry, near);
                self.timer(Some(id.clone()), TimerKind::WindowExit, far);
            }
            Window::ParentWithin { seconds } => {
                self.timer(Some(id.clone()), TimerKind::FunnelDeadline, seconds)
            }
            Window::ParentBetween { far, .. } => {
                self.timer(Some(id.clone()), TimerKind::FunnelDeadline, far)
            }
            Window::Session { gap } => self.timer(Some(id.clone()), TimerKind::SessionExpiry, gap),
            Window::Unbounded => {}
        }
        if !self.leaves.iter().any(|l| l.id == id) {
            self.leaves.push(leaf);
        }
        PlanValue::Leaf { id, count_unique }
    }
}
