//! The canonical abstract syntax tree.
//!
//! This is the form the `definitions` topic stores (as JSON through serde). It is canonical:
//! sugar and spelling variants collapse to one value (`>= 1` and `.at_least(1)`, `=` and `==`,
//! `literal(5)` and `5`, `one_of(['a'])` and `one_of('a')`, `where({..})` and `where(..)`,
//! `1 day` and `1 days`, keyword case), and spans are ignored by equality and skipped by serde.
//! Parentheses are not stored: the printer puts them back where the structure needs them, and
//! a parenthesised `a AND (b AND c)` stays a nested node rather than being flattened, so that
//! `parse(print(ast)) == ast` holds for every AST.
//!
//! Enums are externally tagged on purpose: internally tagged or untagged serde enums buffer
//! their content, which breaks numbers when `serde_json/arbitrary_precision` is enabled
//! elsewhere in the workspace.

use crate::span::Span;
use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

/// The root of a parsed definition: one boolean or scalar expression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The whole expression.
    pub expr: Expr,
}

/// A boolean or value expression: junctions over extractor chains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// `a OR b OR ...` (two or more items).
    Or {
        /// The alternatives, in source order.
        items: Vec<Expr>,
        /// Source position.
        #[serde(skip)]
        span: Span,
    },
    /// `a AND b AND ...` (two or more items).
    And {
        /// The conjuncts, in source order.
        items: Vec<Expr>,
        /// Source position.
        #[serde(skip)]
        span: Span,
    },
    /// `NOT x`.
    Not {
        /// The negated expression.
        expr: Box<Expr>,
        /// Source position.
        #[serde(skip)]
        span: Span,
    },
    /// `ANY x`, `ALL x`, `NONE x` (ACCOUNTS definitions only).
    Quantified {
        /// Which quantifier.
        quantifier: Quantifier,
        /// The user-level expression.
        expr: Box<Expr>,
        /// Source position.
        #[serde(skip)]
        span: Span,
    },
    /// An extractor followed by calls: `event('X').within(7 days).count() >= 1`.
    Chain(Chain),
}

impl Expr {
    /// Source position of the expression.
    pub fn span(&self) -> Span {
        match self {
            Expr::Or { span, .. }
            | Expr::And { span, .. }
            | Expr::Not { span, .. }
            | Expr::Quantified { span, .. } => *span,
            Expr::Chain(c) => c.span,
        }
    }
}

/// Account-level quantifiers over the account's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantifier {
    /// At least one user satisfies the expression.
    Any,
    /// Every user does (false for an account without users).
    All,
    /// No user does: Corral's spelling of `ALL NOT` (false for an account without users).
    None,
}

impl Quantifier {
    /// The keyword as printed.
    pub fn keyword(self) -> &'static str {
        match self {
            Quantifier::Any => "ANY",
            Quantifier::All => "ALL",
            Quantifier::None => "NONE",
        }
    }
}

/// An extractor and the calls chained after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chain {
    /// The first element: `event(..)`, `trait(..)`, a literal, ...
    pub source: Extractor,
    /// The calls after it, in order. A trailing sugar comparison (`>= 1`) is stored as the
    /// last call.
    pub calls: Vec<Call>,
    /// Source position of the whole chain.
    #[serde(skip)]
    pub span: Span,
}

/// The element a chain starts with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extractor {
    /// What it extracts.
    pub kind: ExtractorKind,
    /// Source position.
    #[serde(skip)]
    pub span: Span,
}

/// The extractors of Part A.6.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractorKind {
    /// `event('Name')`: the stream of that event.
    Event {
        /// Event name.
        name: String,
    },
    /// `entity('slug')`: a Linked Audiences relationship.
    Entity {
        /// Relationship slug.
        name: String,
    },
    /// `trait('path')`: a profile trait, or another definition's key.
    Trait {
        /// Trait path (`.` traverses, `\.` is a literal dot).
        name: String,
    },
    /// `property('path')` or `property(parent: 'path')`.
    Property {
        /// Property path.
        name: String,
        /// `parent:` prefix: read the parent event of a funnel.
        parent: bool,
    },
    /// `context('path')`.
    Context {
        /// Context path.
        name: String,
    },
    /// `literal(v)` or a bare literal.
    Literal {
        /// The value.
        value: Literal,
    },
}

/// Literal values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    /// `'text'` or `"text"` (escapes already resolved, except `\.` which stays as written).
    String(String),
    /// `100`, `-3`.
    Int(i64),
    /// `1.5`, `.20`, `1e3`. Always finite.
    Float(f64),
    /// `2023-12-07`.
    Date(NaiveDate),
    /// `2023-12-07T18:50:00Z`, `2022-10-17T00:00:00` (no offset means UTC).
    Timestamp(DateTime<FixedOffset>),
    /// `true` / `false` (Corral extension).
    Bool(bool),
    /// `null` (Corral extension).
    Null,
}

/// One `.call(...)` in a chain (or a trailing sugar comparison).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Which call and its arguments.
    pub kind: CallKind,
    /// Source position of the call, name to closing parenthesis.
    #[serde(skip)]
    pub span: Span,
}

/// Filters, reducers and comparisons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// `where(cond)`.
    Where {
        /// Condition evaluated per item.
        condition: Box<Expr>,
    },
    /// `sources({exclude: 'a', 'b'})`.
    Sources {
        /// Source ids to drop.
        exclude: Vec<String>,
    },
    /// `within(7 days)` or `within(parent: 5 days)`.
    Within {
        /// Relative to the parent event instead of now.
        parent: bool,
        /// Window length.
        duration: Duration,
    },
    /// `between(7 days, 10 days)` (also `between(parent: ..)`).
    Between {
        /// Relative to the parent event instead of now.
        parent: bool,
        /// First bound as written.
        from: Duration,
        /// Second bound as written.
        to: Duration,
    },
    /// `expires_after(1 hour)`: session window for computed traits.
    ExpiresAfter {
        /// Session gap.
        duration: Duration,
    },
    /// A reducer: stream to scalar.
    Reduce(Reducer),
    /// A comparison: scalar to boolean.
    Compare(Comparator),
}

impl CallKind {
    /// The function name of the call.
    pub fn name(&self) -> &'static str {
        match self {
            CallKind::Where { .. } => "where",
            CallKind::Sources { .. } => "sources",
            CallKind::Within { .. } => "within",
            CallKind::Between { .. } => "between",
            CallKind::ExpiresAfter { .. } => "expires_after",
            CallKind::Reduce(r) => r.name(),
            CallKind::Compare(c) => c.name(),
        }
    }
}

/// How a reducer reads its property (`max(property('x') as string)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// Numeric ordering / result.
    Number,
    /// Lexicographic ordering / string result.
    String,
    /// `mode(.. as array, n)`: an array value counts as one value.
    Array,
}

impl ValueType {
    /// The keyword after `as`.
    pub fn keyword(self) -> &'static str {
        match self {
            ValueType::Number => "number",
            ValueType::String => "string",
            ValueType::Array => "array",
        }
    }
}

/// The argument of a reducer: `property('x')`, `property(parent: 'x')` or `context('x')`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropRef {
    /// Where the value is read from.
    pub kind: PropKind,
    /// Path.
    pub name: String,
    /// Source position.
    #[serde(skip)]
    pub span: Span,
}

/// Where a [`PropRef`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropKind {
    /// `property('x')`.
    Property,
    /// `property(parent: 'x')`.
    ParentProperty,
    /// `context('x')`.
    Context,
}

/// Reducers (Part A.6.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reducer {
    /// `count()`.
    Count,
    /// `sum(p)`.
    Sum {
        /// Summed property.
        of: PropRef,
    },
    /// `avg(p)`.
    Avg {
        /// Averaged property.
        of: PropRef,
    },
    /// `min(p)` / `min(p as string)`.
    Min {
        /// Compared property.
        of: PropRef,
        /// Explicit `as` type, if written.
        as_type: Option<ValueType>,
    },
    /// `max(p)` / `max(p as string)`.
    Max {
        /// Compared property.
        of: PropRef,
        /// Explicit `as` type, if written.
        as_type: Option<ValueType>,
    },
    /// `mode(p, n)` / `mode(p as array, n)`.
    Mode {
        /// Counted property.
        of: PropRef,
        /// Explicit `as` type, if written.
        as_type: Option<ValueType>,
        /// Minimum frequency a value needs.
        min_frequency: u64,
    },
    /// `first(p)`.
    First {
        /// Property.
        of: PropRef,
    },
    /// `last(p)`.
    Last {
        /// Property.
        of: PropRef,
    },
    /// `unique(p)`: list of distinct values.
    Unique {
        /// Property.
        of: PropRef,
    },
}

impl Reducer {
    /// The function name.
    pub fn name(&self) -> &'static str {
        match self {
            Reducer::Count => "count",
            Reducer::Sum { .. } => "sum",
            Reducer::Avg { .. } => "avg",
            Reducer::Min { .. } => "min",
            Reducer::Max { .. } => "max",
            Reducer::Mode { .. } => "mode",
            Reducer::First { .. } => "first",
            Reducer::Last { .. } => "last",
            Reducer::Unique { .. } => "unique",
        }
    }

    /// The property argument, if any.
    pub fn prop(&self) -> Option<&PropRef> {
        match self {
            Reducer::Count => None,
            Reducer::Sum { of }
            | Reducer::Avg { of }
            | Reducer::Min { of, .. }
            | Reducer::Max { of, .. }
            | Reducer::Mode { of, .. }
            | Reducer::First { of }
            | Reducer::Last { of }
            | Reducer::Unique { of } => Some(of),
        }
    }
}

/// A right-hand side: a literal or another scalar chain (`trait('avg_spend')`,
/// `property(parent: 'id')`).
pub type Operand = Chain;

/// Comparisons (Part A.6.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparator {
    /// `equals(v)` / `= v` / `== v`.
    Equals(Box<Operand>),
    /// `differs(v)` / `!= v`.
    Differs(Box<Operand>),
    /// `greater_than(v)` / `> v`.
    GreaterThan(Box<Operand>),
    /// `at_least(v)` / `>= v`.
    AtLeast(Box<Operand>),
    /// `less_than(v)` / `< v`.
    LessThan(Box<Operand>),
    /// `at_most(v)` / `<= v`.
    AtMost(Box<Operand>),
    /// `absent()`.
    Absent,
    /// `exists()`.
    Exists,
    /// `contains('a', 'b')`: any one as a substring.
    Contains(Vec<Operand>),
    /// `omits('a')`.
    Omits(Box<Operand>),
    /// `starts_with('a')`.
    StartsWith(Box<Operand>),
    /// `ends_with('a')`.
    EndsWith(Box<Operand>),
    /// `one_of('a', 'b')`.
    OneOf(Vec<Operand>),
    /// `none_of('a', 'b')`.
    NoneOf(Vec<Operand>),
    /// `before_date(t)`.
    BeforeDate(Box<Operand>),
    /// `after_date(t)`.
    AfterDate(Box<Operand>),
    /// `within_last(d)`.
    WithinLast(Duration),
    /// `within_next(d)`.
    WithinNext(Duration),
    /// `before_last(d)`.
    BeforeLast(Duration),
    /// `after_next(d)`.
    AfterNext(Duration),
}

impl Comparator {
    /// The function name.
    pub fn name(&self) -> &'static str {
        match self {
            Comparator::Equals(_) => "equals",
            Comparator::Differs(_) => "differs",
            Comparator::GreaterThan(_) => "greater_than",
            Comparator::AtLeast(_) => "at_least",
            Comparator::LessThan(_) => "less_than",
            Comparator::AtMost(_) => "at_most",
            Comparator::Absent => "absent",
            Comparator::Exists => "exists",
            Comparator::Contains(_) => "contains",
            Comparator::Omits(_) => "omits",
            Comparator::StartsWith(_) => "starts_with",
            Comparator::EndsWith(_) => "ends_with",
            Comparator::OneOf(_) => "one_of",
            Comparator::NoneOf(_) => "none_of",
            Comparator::BeforeDate(_) => "before_date",
            Comparator::AfterDate(_) => "after_date",
            Comparator::WithinLast(_) => "within_last",
            Comparator::WithinNext(_) => "within_next",
            Comparator::BeforeLast(_) => "before_last",
            Comparator::AfterNext(_) => "after_next",
        }
    }

    /// The sugar operator the printer uses, if the comparator has one.
    pub fn sugar(&self) -> Option<&'static str> {
        match self {
            Comparator::Equals(_) => Some("="),
            Comparator::Differs(_) => Some("!="),
            Comparator::GreaterThan(_) => Some(">"),
            Comparator::AtLeast(_) => Some(">="),
            Comparator::LessThan(_) => Some("<"),
            Comparator::AtMost(_) => Some("<="),
            _ => None,
        }
    }

    /// The operands (right-hand sides), in order.
    pub fn operands(&self) -> Vec<&Operand> {
        match self {
            Comparator::Equals(o)
            | Comparator::Differs(o)
            | Comparator::GreaterThan(o)
            | Comparator::AtLeast(o)
            | Comparator::LessThan(o)
            | Comparator::AtMost(o)
            | Comparator::Omits(o)
            | Comparator::StartsWith(o)
            | Comparator::EndsWith(o)
            | Comparator::BeforeDate(o)
            | Comparator::AfterDate(o) => vec![o.as_ref()],
            Comparator::Contains(v) | Comparator::OneOf(v) | Comparator::NoneOf(v) => {
                v.iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// `7 days`: a whole number of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Duration {
    /// How many units.
    pub amount: u64,
    /// Which unit.
    pub unit: TimeUnit,
    /// Source position.
    #[serde(skip)]
    pub span: Span,
}

impl Duration {
    /// Length in seconds (saturating; durations are far below the limit in practice).
    pub fn seconds(&self) -> u64 {
        self.amount.saturating_mul(self.unit.seconds())
    }

    /// As a chrono duration, saturating at chrono's maximum instead of panicking.
    pub fn to_chrono(&self) -> chrono::Duration {
        let secs = i64::try_from(self.seconds()).unwrap_or(i64::MAX);
        chrono::Duration::try_seconds(secs).unwrap_or(chrono::Duration::MAX)
    }
}

/// Time units (Part E.9: second, minute, hour, day, week).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds.
    Second,
    /// Minutes.
    Minute,
    /// Hours.
    Hour,
    /// Days (24 hours).
    Day,
    /// Weeks (7 days).
    Week,
}

impl TimeUnit {
    /// Seconds in one unit.
    pub fn seconds(self) -> u64 {
        match self {
            TimeUnit::Second => 1,
            TimeUnit::Minute => 60,
            TimeUnit::Hour => 3_600,
            TimeUnit::Day => 86_400,
            TimeUnit::Week => 604_800,
        }
    }

    /// Singular name.
    pub fn singular(self) -> &'static str {
        match self {
            TimeUnit::Second => "second",
            TimeUnit::Minute => "minute",
            TimeUnit::Hour => "hour",
            TimeUnit::Day => "day",
            TimeUnit::Week => "week",
        }
    }

    /// Parses a unit name, singular or plural.
    pub fn from_name(s: &str) -> Option<TimeUnit> {
        Some(match s.to_ascii_lowercase().as_str() {
            "second" | "seconds" => TimeUnit::Second,
            "minute" | "minutes" => TimeUnit::Minute,
            "hour" | "hours" => TimeUnit::Hour,
            "day" | "days" => TimeUnit::Day,
            "week" | "weeks" => TimeUnit::Week,
            _ => return None,
        })
    }

    /// Every accepted spelling, for suggestions.
    pub const NAMES: &'static [&'static str] = &[
        "seconds", "second", "minutes", "minute", "hours", "hour", "days", "day", "weeks", "week",
    ];
}

/// Splits a trait, property or context path on unescaped dots; `\.` is a literal dot.
pub fn path_segments(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                cur.push('.');
                chars.next();
            }
            '.' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Calls `f` on every chain in the expression, outer chains before the chains nested in their
/// `where` conditions and operands.
pub fn visit_chains<'a>(expr: &'a Expr, f: &mut dyn FnMut(&'a Chain)) {
    match expr {
        Expr::Or { items, .. } | Expr::And { items, .. } => {
            for e in items {
                visit_chains(e, f);
            }
        }
        Expr::Not { expr, .. } | Expr::Quantified { expr, .. } => visit_chains(expr, f),
        Expr::Chain(c) => visit_chain(c, f),
    }
}

fn visit_chain<'a>(chain: &'a Chain, f: &mut dyn FnMut(&'a Chain)) {
    f(chain);
    for call in &chain.calls {
        match &call.kind {
            CallKind::Where { condition } => visit_chains(condition, f),
            CallKind::Compare(c) => {
                for o in c.operands() {
                    visit_chain(o, f);
                }
            }
            _ => {}
        }
    }
}

impl Query {
    /// Every `trait('name')` name the query mentions, with its span, in source order.
    /// Definition references are the ones that name a catalogue key.
    pub fn trait_names(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        visit_chains(&self.expr, &mut |c| {
            if let ExtractorKind::Trait { name } = &c.source.kind {
                out.push((name.clone(), c.source.span));
            }
        });
        out
    }

    /// Serialises to the canonical JSON stored in the `definitions` topic.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Reads the canonical JSON form back.
    pub fn from_json(s: &str) -> Result<Query, serde_json::Error> {
        serde_json::from_str(s)
    }
}
