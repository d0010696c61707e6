//! The reference evaluator: membership or trait value computed directly from a profile's full
//! history. Written to be obviously correct, not fast; the incremental engine is tested
//! against it.
//!
//! Semantics (Part E, plus the choices noted inline):
//! - Only events with `timestamp <= now` exist, so one history can be evaluated "as of" any
//!   time.
//! - `within(d)`: `now - d <= ts`. `between(a, b)`: `now - max(a,b) <= ts <= now - min(a,b)`.
//! - `within(parent: d)`: `parent.ts <= ts <= parent.ts + d`; `between(parent: a, b)`:
//!   `parent.ts + min <= ts <= parent.ts + max`.
//! - `expires_after(d)`: the current session (the events after the last gap longer than `d`),
//!   empty once `now - last > d`.
//! - Comparisons are false against a missing value (null counts as missing), except `absent`.
//! - In ACCOUNTS definitions, outside ANY/ALL/NONE, `trait` reads the account's traits and an
//!   event stream ranges over the events of all the account's users together.

use crate::ast::*;
use crate::check::{Catalogue, DefinitionKind, Target};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

/// One event in a profile's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event name (`track` event, `Page Viewed`, `Screen Viewed`).
    pub name: String,
    /// Event time.
    pub timestamp: DateTime<Utc>,
    /// Event properties.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Event context.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// Id of the source that sent it (for `sources({exclude: ...})`).
    #[serde(default)]
    pub source_id: Option<String>,
}

impl Event {
    /// An event with no properties.
    pub fn new(name: impl Into<String>, timestamp: DateTime<Utc>) -> Self {
        Event {
            name: name.into(),
            timestamp,
            properties: Map::new(),
            context: Map::new(),
            source_id: None,
        }
    }

    /// Builder: adds a property.
    pub fn prop(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(key.to_string(), value.into());
        self
    }
}

/// A Linked Audiences entity row and its related entities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityRecord {
    /// Column values.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Related entities by relationship slug.
    #[serde(default)]
    pub relations: BTreeMap<String, Vec<EntityRecord>>,
}

/// A user profile: history, traits and linked entities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Full event history, any order.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Profile traits.
    #[serde(default)]
    pub traits: Map<String, Value>,
    /// Linked entities by relationship slug.
    #[serde(default)]
    pub entities: BTreeMap<String, Vec<EntityRecord>>,
}

/// An account (group) and its users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Account (group) traits.
    #[serde(default)]
    pub traits: Map<String, Value>,
    /// The account's users.
    #[serde(default)]
    pub users: Vec<Profile>,
}

/// Who a definition is evaluated for.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A USERS definition.
    User(&'a Profile),
    /// An ACCOUNTS definition.
    Account(&'a Account),
}

/// Evaluation failures. A query that passed [`crate::check()`] only fails on reference chains
/// deeper than [`MAX_REFERENCE_DEPTH`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// The AST breaks a rule the checker enforces.
    #[error("cannot evaluate: {0} (run the type checker first)")]
    IllTyped(String),
    /// Definition references nested too deeply (or a cycle that bypassed the checker).
    #[error("definition references nested more than {MAX_REFERENCE_DEPTH} deep at `{0}`")]
    ReferenceDepth(String),
    /// The definition's level does not match the subject.
    #[error("a {0} definition cannot be evaluated for this subject")]
    WrongSubject(&'static str),
}

/// Deepest chain of `trait('<key>')` references the evaluator follows.
pub const MAX_REFERENCE_DEPTH: usize = 32;

/// Evaluates definitions at a fixed "now", resolving references through a catalogue.
#[derive(Debug)]
pub struct Evaluator<'a> {
    now: DateTime<Utc>,
    catalogue: &'a Catalogue,
    depth: Cell<usize>,
}

/// Membership of `subject` in the audience `query` at `now`.
pub fn evaluate_audience(
    query: &Query,
    subject: Subject<'_>,
    now: DateTime<Utc>,
    catalogue: &Catalogue,
) -> Result<bool, EvalError> {
    Evaluator::new(now, catalogue).audience(query, subject)
}

/// Value of the computed trait `query` for `subject` at `now`; `None` when it has no value
/// (no qualifying event, or a missing result).
pub fn evaluate_trait(
    query: &Query,
    subject: Subject<'_>,
    now: DateTime<Utc>,
    catalogue: &Catalogue,
) -> Result<Option<Value>, EvalError> {
    Evaluator::new(now, catalogue).computed_trait(query, subject)
}

#[derive(Clone, Copy)]
enum Item<'a> {
    Event(&'a Event),
    Entity(&'a EntityRecord),
}

enum V<'a> {
    Missing,
    Val(Value),
    List(Vec<Value>),
    Bool(bool),
    Stream(Vec<Item<'a>>),
}

struct Scope<'a> {
    subject: Subject<'a>,
    traits: &'a Map<String, Value>,
    events: Vec<&'a Event>,
    entities: Option<&'a BTreeMap<String, Vec<EntityRecord>>>,
}

impl<'a> Evaluator<'a> {
    /// An evaluator for time `now`.
    pub fn new(now: DateTime<Utc>, catalogue: &'a Catalogue) -> Self {
        Evaluator {
            now,
            catalogue,
            depth: Cell::new(0),
        }
    }

    fn scope<'s>(&self, subject: Subject<'s>) -> Scope<'s> {
        let mut events: Vec<&Event> = match subject {
            Subject::User(p) => p.events.iter().collect(),
            Subject::Account(a) => a.users.iter().flat_map(|u| u.events.iter()).collect(),
        };
        events.retain(|e| e.timestamp <= self.now);
        // Stable: events with equal timestamps keep their history order.
        events.sort_by_key(|e| e.timestamp);
        match subject {
            Subject::User(p) => Scope {
                subject,
                traits: &p.traits,
                events,
                entities: Some(&p.entities),
            },
            Subject::Account(a) => Scope {
                subject,
                traits: &a.traits,
                events,
                entities: None,
            },
        }
    }

    /// Audience membership.
    pub fn audience(&self, query: &Query, subject: Subject<'_>) -> Result<bool, EvalError> {
        let scope = self.scope(subject);
        self.eval_bool(&query.expr, &scope, &[])
    }

    /// Computed trait value.
    pub fn computed_trait(
        &self,
        query: &Query,
        subject: Subject<'_>,
    ) -> Result<Option<Value>, EvalError> {
        let scope = self.scope(subject);
        let Expr::Chain(chain) = &query.expr else {
            return Err(EvalError::IllTyped(
                "a computed trait must be a single chain".into(),
            ));
        };
        let mut reduced_len = None;
        let v = self.eval_chain(chain, &scope, &[], &mut reduced_len)?;
        // A trait whose stream has no qualifying event has no value (Part E, empty streams).
        if reduced_len == Some(0) {
            return Ok(None);
        }
        Ok(match v {
            V::Missing => None,
            V::Val(Value::Null) => None,
            V::Val(v) => Some(v),
            V::List(l) => Some(Value::Array(l)),
            V::Bool(b) => Some(Value::Bool(b)),
            V::Stream(_) => {
                return Err(EvalError::IllTyped(
                    "a computed trait must reduce its stream".into(),
                ))
            }
        })
    }

    fn eval_bool(
        &self,
        e: &Expr,
        scope: &Scope<'_>,
        items: &[Item<'_>],
    ) -> Result<bool, EvalError> {
        match e {
            Expr::Or { items: xs, .. } => {
                for x in xs {
                    if self.eval_bool(x, scope, items)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Expr::And { items: xs, .. } => {
                for x in xs {
                    if !self.eval_bool(x, scope, items)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Expr::Not { expr, .. } => Ok(!self.eval_bool(expr, scope, items)?),
            Expr::Quantified {
                quantifier, expr, ..
            } => {
                let Subject::Account(account) = scope.subject else {
                    return Err(EvalError::IllTyped(
                        "ANY/ALL/NONE outside an ACCOUNTS definition".into(),
                    ));
                };
                // An account without users is in neither ANY, ALL nor NONE (Part E.1).
                if account.users.is_empty() {
                    return Ok(false);
                }
                let mut results = Vec::with_capacity(account.users.len());
                for user in &account.users {
                    let s = self.scope(Subject::User(user));
                    results.push(self.eval_bool(expr, &s, &[])?);
                }
                Ok(match quantifier {
                    Quantifier::Any => results.iter().any(|b| *b),
                    Quantifier::All => results.iter().all(|b| *b),
                    Quantifier::None => results.iter().all(|b| !*b),
                })
            }
            Expr::Chain(c) => match self.eval_chain(c, scope, items, &mut None)? {
                V::Bool(b) => Ok(b),
                _ => Err(EvalError::IllTyped(
                    "a condition must end in a comparison".into(),
                )),
            },
        }
    }

    fn eval_chain<'s>(
        &self,
        chain: &Chain,
        scope: &Scope<'s>,
        items: &[Item<'s>],
        reduced_len: &mut Option<usize>,
    ) -> Result<V<'s>, EvalError> {
        let mut v = self.eval_source(&chain.source, scope, items)?;
        for call in &chain.calls {
            v = match (v, &call.kind) {
                (V::Stream(s), CallKind::Where { condition }) => {
                    let mut kept = Vec::new();
                    for it in s {
                        let mut inner = items.to_vec();
                        inner.push(it);
                        if self.eval_bool(condition, scope, &inner)? {
                            kept.push(it);
                        }
                    }
                    V::Stream(kept)
                }
                (V::Stream(s), CallKind::Sources { exclude }) => V::Stream(
                    s.into_iter()
                        .filter(|it| match it {
                            Item::Event(e) => {
                                e.source_id.as_ref().is_none_or(|id| !exclude.contains(id))
                            }
                            Item::Entity(_) => true,
                        })
                        .collect(),
                ),
                (V::Stream(s), CallKind::Within { parent, duration }) => {
                    let (lo, hi) = self.window(items, *parent, None, duration)?;
                    V::Stream(filter_time(s, lo, hi))
                }
                (V::Stream(s), CallKind::Between { parent, from, to }) => {
                    let (lo, hi) = self.window(items, *parent, Some(from), to)?;
                    V::Stream(filter_time(s, lo, hi))
                }
                (V::Stream(s), CallKind::ExpiresAfter { duration }) => {
                    V::Stream(self.session(s, duration.to_chrono()))
                }
                (V::Stream(s), CallKind::Reduce(r)) => {
                    *reduced_len = Some(s.len());
                    reduce(r, &s)?
                }
                (V::List(l), CallKind::Reduce(Reducer::Count)) => {
                    V::Val(Value::from(l.len() as u64))
                }
                (lhs @ (V::Missing | V::Val(_)), CallKind::Compare(cmp)) => {
                    let lhs = match lhs {
                        V::Val(Value::Null) | V::Missing => None,
                        V::Val(v) => Some(v),
                        _ => None,
                    };
                    V::Bool(self.compare(lhs, cmp, scope, items)?)
                }
                (_, k) => {
                    return Err(EvalError::IllTyped(format!(
                        "`{}` in the wrong place in the chain",
                        k.name()
                    )))
                }
            };
        }
        Ok(v)
    }

    /// `[lo, hi]` for a window; `from` is `None` for `within`.
    fn window(
        &self,
        items: &[Item<'_>],
        parent: bool,
        from: Option<&Duration>,
        to: &Duration,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), EvalError> {
        let (near, far) = match from {
            None => (chrono::Duration::zero(), to.to_chrono()),
            Some(f) => {
                let (a, b) = (f.to_chrono(), to.to_chrono());
                (a.min(b), a.max(b))
            }
        };
        if parent {
            let Some(Item::Event(p)) = items.last() else {
                return Err(EvalError::IllTyped(
                    "parent window without a parent event".into(),
                ));
            };
            Ok((add(p.timestamp, near), add(p.timestamp, far)))
        } else {
            Ok((sub(self.now, far), sub(self.now, near)))
        }
    }

    fn session<'s>(&self, s: Vec<Item<'s>>, gap: chrono::Duration) -> Vec<Item<'s>> {
        let times: Vec<DateTime<Utc>> = s.iter().filter_map(item_ts).collect();
        let Some(last) = times.last() else {
            return Vec::new();
        };
        if self.now.signed_duration_since(*last) > gap {
            return Vec::new();
        }
        let mut start = times.len() - 1;
        while start > 0 && times[start].signed_duration_since(times[start - 1]) <= gap {
            start -= 1;
        }
        s.into_iter().skip(start).collect()
    }

    fn eval_source<'s>(
        &self,
        src: &Extractor,
        scope: &Scope<'s>,
        items: &[Item<'s>],
    ) -> Result<V<'s>, EvalError> {
        Ok(match &src.kind {
            ExtractorKind::Event { name } => V::Stream(
                scope
                    .events
                    .iter()
                    .filter(|e| &e.name == name)
                    .map(|e| Item::Event(e))
                    .collect(),
            ),
            ExtractorKind::Entity { name } => {
                let rows = match items.last() {
                    Some(Item::Entity(parent)) => parent.relations.get(name),
                    _ => scope.entities.and_then(|m| m.get(name)),
                };
                V::Stream(
                    rows.map(|r| r.iter().map(Item::Entity).collect())
                        .unwrap_or_default(),
                )
            }
            ExtractorKind::Trait { name } => match self.catalogue.get(name) {
                Some(entry) if entry.query.is_some() => self.reference(name, scope)?,
                _ => opt(lookup(scope.traits, name)),
            },
            ExtractorKind::Property { name, parent } => {
                let idx = if *parent { 2 } else { 1 };
                let item = items.len().checked_sub(idx).and_then(|i| items.get(i));
                match item {
                    Some(Item::Event(e)) => opt(lookup(&e.properties, name)),
                    Some(Item::Entity(r)) => opt(lookup(&r.properties, name)),
                    None => return Err(EvalError::IllTyped("`property` outside `where`".into())),
                }
            }
            ExtractorKind::Context { name } => match items.last() {
                Some(Item::Event(e)) => context_value(e, name).map(V::Val).unwrap_or(V::Missing),
                _ => V::Missing,
            },
            ExtractorKind::Literal { value } => match literal_value(value) {
                Some(v) => V::Val(v),
                None => V::Missing,
            },
        })
    }

    fn reference<'s>(&self, key: &str, scope: &Scope<'s>) -> Result<V<'s>, EvalError> {
        let Some(entry) = self.catalogue.get(key) else {
            return Ok(V::Missing);
        };
        let Some(query) = &entry.query else {
            return Ok(V::Missing);
        };
        let d = self.depth.get();
        if d >= MAX_REFERENCE_DEPTH {
            return Err(EvalError::ReferenceDepth(key.to_string()));
        }
        let level_ok = matches!(
            (entry.kind, scope.subject),
            (DefinitionKind::Users, Subject::User(_))
                | (DefinitionKind::Accounts, Subject::Account(_))
        );
        if !level_ok {
            return Err(EvalError::WrongSubject(entry.kind.name()));
        }
        self.depth.set(d + 1);
        let r = match entry.target {
            Target::Audience => self
                .audience(query, scope.subject)
                .map(|b| V::Val(Value::Bool(b))),
            Target::ComputedTrait => self
                .computed_trait(query, scope.subject)
                .map(|v| v.map(V::Val).unwrap_or(V::Missing)),
        };
        self.depth.set(d);
        r
    }

    fn operand(
        &self,
        o: &Operand,
        scope: &Scope<'_>,
        items: &[Item<'_>],
    ) -> Result<Option<Value>, EvalError> {
        Ok(match self.eval_chain(o, scope, items, &mut None)? {
            V::Val(Value::Null) | V::Missing => None,
            V::Val(v) => Some(v),
            V::Bool(b) => Some(Value::Bool(b)),
            _ => return Err(EvalError::IllTyped("operand is not a single value".into())),
        })
    }

    fn compare(
        &self,
        lhs: Option<Value>,
        cmp: &Comparator,
        scope: &Scope<'_>,
        items: &[Item<'_>],
    ) -> Result<bool, EvalError> {
        if let Comparator::Absent = cmp {
            return Ok(lhs.is_none());
        }
        // Everything but `absent` is false against a missing value (Part E.8).
        let Some(a) = lhs else { return Ok(false) };
        let one = |o: &Operand| self.operand(o, scope, items);
        let ord = |o: &Operand, f: fn(Ordering) -> bool| -> Result<bool, EvalError> {
            Ok(match one(o)? {
                Some(b) => loose_cmp(&a, &b).is_some_and(f),
                None => false,
            })
        };
        let many = |os: &[Operand]| -> Result<Vec<Value>, EvalError> {
            let mut out = Vec::new();
            for o in os {
                if let Some(v) = one(o)? {
                    out.push(v);
                }
            }
            Ok(out)
        };
        Ok(match cmp {
            Comparator::Absent => false,
            Comparator::Exists => true,
            Comparator::Equals(o) => one(o)?.is_some_and(|b| loose_eq(&a, &b)),
            Comparator::Differs(o) => one(o)?.is_some_and(|b| !loose_eq(&a, &b)),
            Comparator::GreaterThan(o) => ord(o, |x| x == Ordering::Greater)?,
            Comparator::AtLeast(o) => ord(o, |x| x != Ordering::Less)?,
            Comparator::LessThan(o) => ord(o, |x| x == Ordering::Less)?,
            Comparator::AtMost(o) => ord(o, |x| x != Ordering::Greater)?,
            Comparator::Contains(os) => {
                let needles = many(os)?;
                contains_any(&a, &needles)
            }
            Comparator::Omits(o) => match one(o)? {
                Some(n) => !contains_any(&a, &[n]),
                None => false,
            },
            Comparator::StartsWith(o) => {
                one(o)?.is_some_and(|n| string_form(&a).starts_with(&string_form(&n)))
            }
            Comparator::EndsWith(o) => {
                one(o)?.is_some_and(|n| string_form(&a).ends_with(&string_form(&n)))
            }
            Comparator::OneOf(os) => many(os)?.iter().any(|b| loose_eq(&a, b)),
            Comparator::NoneOf(os) => !many(os)?.iter().any(|b| loose_eq(&a, b)),
            Comparator::BeforeDate(o) => match (as_ts(&a), one(o)?.as_ref().and_then(as_ts)) {
                (Some(x), Some(t)) => x < t,
                _ => false,
            },
            Comparator::AfterDate(o) => match (as_ts(&a), one(o)?.as_ref().and_then(as_ts)) {
                (Some(x), Some(t)) => x > t,
                _ => false,
            },
            Comparator::WithinLast(d) => {
                as_ts(&a).is_some_and(|t| t <= self.now && t >= sub(self.now, d.to_chrono()))
            }
            Comparator::WithinNext(d) => {
                as_ts(&a).is_some_and(|t| t >= self.now && t <= add(self.now, d.to_chrono()))
            }
            Comparator::BeforeLast(d) => {
                as_ts(&a).is_some_and(|t| t <= sub(self.now, d.to_chrono()))
            }
            Comparator::AfterNext(d) => {
                as_ts(&a).is_some_and(|t| t >= add(self.now, d.to_chrono()))
            }
        })
    }
}

fn opt<'s>(v: Option<&Value>) -> V<'s> {
    match v {
        None | Some(Value::Null) => V::Missing,
        Some(v) => V::Val(v.clone()),
    }
}

fn add(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn sub(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_sub_signed(d).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn item_ts(it: &Item<'_>) -> Option<DateTime<Utc>> {
    match it {
        Item::Event(e) => Some(e.timestamp),
        Item::Entity(_) => None,
    }
}

fn filter_time<'s>(s: Vec<Item<'s>>, lo: DateTime<Utc>, hi: DateTime<Utc>) -> Vec<Item<'s>> {
    s.into_iter()
        .filter(|it| item_ts(it).is_some_and(|t| t >= lo && t <= hi))
        .collect()
}

/// Reads a dotted path (`\.` is a literal dot) from a JSON object.
pub fn lookup<'v>(map: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    let segs = path_segments(path);
    let mut cur = map.get(segs.first()?)?;
    for s in &segs[1..] {
        cur = cur.as_object()?.get(s)?;
    }
    Some(cur)
}

/// The JSON value of a literal; dates and timestamps become ISO strings.
pub fn literal_value(l: &Literal) -> Option<Value> {
    Some(match l {
        Literal::String(s) => Value::String(s.clone()),
        Literal::Int(i) => Value::from(*i),
        Literal::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number)?,
        Literal::Date(d) => Value::String(d.format("%Y-%m-%d").to_string()),
        Literal::Timestamp(t) => Value::String(t.to_rfc3339()),
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Null => return None,
    })
}

/// A context field; `context('timestamp')` falls back to the event's own timestamp when the
/// context has none (real-world queries use it that way, Part C.4).
fn context_value(e: &Event, name: &str) -> Option<Value> {
    match lookup(&e.context, name) {
        Some(Value::Null) | None if name == "timestamp" => {
            Some(Value::String(e.timestamp.to_rfc3339()))
        }
        Some(Value::Null) | None => None,
        Some(v) => Some(v.clone()),
    }
}

fn prop_value(p: &PropRef, it: &Item<'_>) -> Result<Option<Value>, EvalError> {
    let v = match (p.kind, it) {
        (PropKind::Property, Item::Event(e)) => lookup(&e.properties, &p.name).cloned(),
        (PropKind::Property, Item::Entity(r)) => lookup(&r.properties, &p.name).cloned(),
        (PropKind::Context, Item::Event(e)) => context_value(e, &p.name),
        (PropKind::Context, Item::Entity(_)) => None,
        (PropKind::ParentProperty, _) => {
            return Err(EvalError::IllTyped(
                "`property(parent: ...)` in a reducer".into(),
            ))
        }
    };
    Ok(v.filter(|v| !v.is_null()))
}

/// The reducer's property over the stream, in event order, missing values skipped.
fn values(p: &PropRef, s: &[Item<'_>]) -> Result<Vec<Value>, EvalError> {
    let mut out = Vec::new();
    for it in s {
        if let Some(v) = prop_value(p, it)? {
            out.push(v);
        }
    }
    Ok(out)
}

fn number(f: f64) -> V<'static> {
    serde_json::Number::from_f64(f)
        .map(|n| V::Val(Value::Number(n)))
        .unwrap_or(V::Missing)
}

fn reduce<'s>(r: &Reducer, s: &[Item<'_>]) -> Result<V<'s>, EvalError> {
    Ok(match r {
        Reducer::Count => V::Val(Value::from(s.len() as u64)),
        Reducer::Sum { of } => number(values(of, s)?.iter().filter_map(as_f64).sum()),
        Reducer::Avg { of } => {
            let xs: Vec<f64> = values(of, s)?.iter().filter_map(as_f64).collect();
            if xs.is_empty() {
                V::Missing
            } else {
                number(xs.iter().sum::<f64>() / xs.len() as f64)
            }
        }
        Reducer::Min { of, as_type } | Reducer::Max { of, as_type } => {
            let want = if matches!(r, Reducer::Min { .. }) {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let vals = values(of, s)?;
            if *as_type == Some(ValueType::String) {
                let best =
                    vals.iter()
                        .map(string_form)
                        .reduce(|a, b| if b.cmp(&a) == want { b } else { a });
                best.map(|b| V::Val(Value::String(b))).unwrap_or(V::Missing)
            } else {
                let best = vals
                    .iter()
                    .filter_map(|v| as_f64(v).map(|x| (x, v)))
                    .reduce(|a, b| {
                        if b.0.partial_cmp(&a.0) == Some(want) {
                            b
                        } else {
                            a
                        }
                    });
                match best {
                    Some((_, v @ Value::Number(_))) => V::Val(v.clone()),
                    Some((x, _)) => number(x),
                    None => V::Missing,
                }
            }
        }
        Reducer::First { of } => opt(values(of, s)?.first()),
        Reducer::Last { of } => opt(values(of, s)?.last()),
        Reducer::Unique { of } => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            for v in values(of, s)? {
                let k = string_form(&v);
                if seen.insert(k.clone()) {
                    out.push(Value::String(k));
                }
            }
            V::List(out)
        }
        Reducer::Mode {
            of,
            as_type,
            min_frequency,
        } => {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for v in values(of, s)? {
                match &v {
                    // Array elements count separately unless `as array` (Part A.6.3).
                    Value::Array(xs) if *as_type != Some(ValueType::Array) => {
                        for x in xs.iter().filter(|x| !x.is_null()) {
                            *counts.entry(string_form(x)).or_default() += 1;
                        }
                    }
                    _ => *counts.entry(string_form(&v)).or_default() += 1,
                }
            }
            // BTreeMap iterates alphabetically and `>` keeps the first, so ties go to the
            // alphabetically first value (Part E.15).
            let mut best: Option<(&String, u64)> = None;
            for (k, c) in &counts {
                if *c >= *min_frequency && best.is_none_or(|(_, bc)| *c > bc) {
                    best = Some((k, *c));
                }
            }
            match best {
                None => V::Missing,
                Some((k, _)) if *as_type == Some(ValueType::Number) => match k.parse::<f64>() {
                    Ok(x) => match k.parse::<i64>() {
                        Ok(i) => V::Val(Value::from(i)),
                        Err(_) => number(x),
                    },
                    Err(_) => V::Val(Value::String(k.clone())),
                },
                Some((k, _)) => V::Val(Value::String(k.clone())),
            }
        }
    })
}

/// The text of a value as used by `unique`, `mode`, `contains` and string ordering.
pub fn string_form(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The numeric reading of a value: numbers, and strings that parse as finite numbers (`" 42 "`
/// reads as 42). `None` for everything else, which comparisons treat as "not a number".
pub fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        // "`string` is generally interchangeable with all other formats" (Part A.4).
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        _ => None,
    }
}

/// The timestamp a value spells, as [`parse_ts`] reads it; `None` for non-strings and strings
/// that are no date (what `before_date`, `after_date` and `within` compare).
pub fn as_ts(v: &Value) -> Option<DateTime<Utc>> {
    let Value::String(s) = v else { return None };
    parse_ts(s)
}

/// Parses an ISO 8601 timestamp (offset, or none for UTC) or a `yyyy-mm-dd` date (midnight
/// UTC).
pub fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return Some(n.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
}

/// Equality as the language defines it (`=`, `!=`, `in`, array `contains`): numbers equal across
/// integer and float and against numeric strings, a boolean equals `'true'`/`'false'` (any case),
/// two date strings equal when they denote the same instant, anything else by JSON equality.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Number(_), Value::String(_)) | (Value::String(_), Value::Number(_)) => {
            matches!((as_f64(a), as_f64(b)), (Some(x), Some(y)) if x == y)
        }
        // A boolean equals the strings 'true' / 'false' (Part E.8).
        (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
            s.eq_ignore_ascii_case(if *x { "true" } else { "false" })
        }
        (Value::String(x), Value::String(y)) => {
            x == y
                || matches!((parse_ts(x), parse_ts(y)), (Some(p), Some(q)) if p == q && looks_like_date(x) && looks_like_date(y))
        }
        _ => a == b,
    }
}

fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[4] == b'-' && b[7] == b'-'
}

/// Ordering as the language defines it (`<`, `<=`, `>`, `>=`, `min`/`max` on mixed values):
/// numerically when both read as numbers ([`as_f64`]), by instant when both are date strings,
/// else by string; `None` when the two are not comparable (a comparison is then false).
pub fn loose_cmp(a: &Value, b: &Value) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (as_f64(a), as_f64(b)) {
        return x.partial_cmp(&y);
    }
    if let (Value::String(x), Value::String(y)) = (a, b) {
        if looks_like_date(x) && looks_like_date(y) {
            if let (Some(p), Some(q)) = (parse_ts(x), parse_ts(y)) {
                return Some(p.cmp(&q));
            }
        }
        return Some(x.cmp(y));
    }
    None
}

/// `contains`: for an array, whether any element [`loose_eq`]s any needle; otherwise whether
/// the value's [`string_form`] contains any needle's string form as a substring.
pub fn contains_any(a: &Value, needles: &[Value]) -> bool {
    match a {
        Value::Array(xs) => xs.iter().any(|x| needles.iter().any(|n| loose_eq(x, n))),
        _ => {
            let hay = string_form(a);
            needles.iter().any(|n| hay.contains(&string_form(n)))
        }
    }
}
