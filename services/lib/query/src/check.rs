//! The type checker: result types, call-chain rules (Part A.10), context rules, the 50-expression
//! limit and references to other definitions (Part E).

use crate::ast::*;
use crate::error::{Diagnostic, ErrorCode};
use crate::span::Span;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Maximum number of extractor chains in one definition (Part A.2.6, E.21).
pub const MAX_EXPRESSIONS: usize = 50;

/// Whether a definition is an audience (boolean) or a computed trait (scalar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Ends in a boolean: membership.
    Audience,
    /// Ends in a scalar: the trait value.
    ComputedTrait,
}

impl Target {
    /// "audience" / "computed trait".
    pub fn noun(self) -> &'static str {
        match self {
            Target::Audience => "audience",
            Target::ComputedTrait => "computed trait",
        }
    }
}

/// USERS or ACCOUNTS (Part A.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefinitionKind {
    /// Computed per user profile.
    #[default]
    #[serde(alias = "USERS")]
    Users,
    /// Computed per account (group); `ANY`/`ALL`/`NONE` range over its users.
    #[serde(alias = "ACCOUNTS")]
    Accounts,
}

impl DefinitionKind {
    /// "users" / "accounts".
    pub fn name(self) -> &'static str {
        match self {
            DefinitionKind::Users => "users",
            DefinitionKind::Accounts => "accounts",
        }
    }
}

/// The type a definition produces (Part E.20 for computed traits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultType {
    /// Audience membership, or a comparison.
    Boolean,
    /// `count()`.
    Integer,
    /// `sum`, `avg`.
    Float,
    /// `min`/`max` (number), `mode(.. as number)`.
    Number,
    /// `min/max(.. as string)`, `mode`.
    String,
    /// `unique(...)`: list of strings.
    List,
    /// `first`, `last`, traits, literals: whatever the data holds.
    Any,
}

/// One known definition, for resolving `trait('<key>')` references.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogueEntry {
    /// Audience or computed trait.
    pub target: Target,
    /// Users or accounts.
    pub kind: DefinitionKind,
    /// The parsed definition, when available (needed for cycle detection through it and for
    /// the reference evaluator).
    pub query: Option<Query>,
    /// Names this entry's query passes to `trait(...)`.
    references: Vec<String>,
}

/// The definitions a query may reference by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    entries: BTreeMap<String, CatalogueEntry>,
}

impl Catalogue {
    /// An empty catalogue: every `trait('x')` is a plain profile trait.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a definition.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        target: Target,
        kind: DefinitionKind,
        query: Option<Query>,
    ) {
        let references = query
            .as_ref()
            .map(|q| q.trait_names().into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        self.entries.insert(
            key.into(),
            CatalogueEntry {
                target,
                kind,
                query,
                references,
            },
        );
    }

    /// The entry for a key.
    pub fn get(&self, key: &str) -> Option<&CatalogueEntry> {
        self.entries.get(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Keys of catalogue definitions that `key`'s query references.
    pub fn references_of(&self, key: &str) -> Vec<&str> {
        self.entries
            .get(key)
            .map(|e| {
                e.references
                    .iter()
                    .filter(|r| self.entries.contains_key(r.as_str()))
                    .map(String::as_str)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Shortest reference path from `from` to `to` (both included), if any.
    fn path(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::new();
        queue.push_back(from.to_string());
        seen.insert(from.to_string());
        while let Some(cur) = queue.pop_front() {
            if cur == to {
                let mut path = vec![cur.clone()];
                let mut at = cur;
                while let Some(p) = prev.get(&at) {
                    path.push(p.clone());
                    at = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            for next in self.references_of(&cur) {
                if seen.insert(next.to_string()) {
                    prev.insert(next.to_string(), cur.clone());
                    queue.push_back(next.to_string());
                }
            }
        }
        None
    }
}

/// What the checker needs to know besides the query.
#[derive(Debug, Clone, Copy)]
pub struct CheckContext<'a> {
    /// Audience or computed trait.
    pub target: Target,
    /// USERS or ACCOUNTS.
    pub kind: DefinitionKind,
    /// Definitions `trait('<key>')` may reference.
    pub catalogue: &'a Catalogue,
    /// This definition's own key, for cycle detection.
    pub key: Option<&'a str>,
}

/// What a successful check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// The result type.
    pub result: ResultType,
    /// Number of extractor chains (the quantity the 50-expression limit bounds).
    pub expressions: usize,
    /// Catalogue keys the definition references, sorted, without duplicates.
    pub references: Vec<String>,
}

/// Type-checks a parsed definition, reporting every error found.
pub fn check(query: &Query, ctx: &CheckContext<'_>) -> Result<Checked, Vec<Diagnostic>> {
    let mut c = Checker {
        ctx,
        errors: Vec::new(),
        expressions: 0,
        references: BTreeSet::new(),
    };
    let scope = Scope::default();
    let result = match ctx.target {
        Target::Audience => {
            c.check_bool(
                &query.expr,
                &scope,
                "an audience must be a condition (end in a comparison such as `>= 1`)",
            );
            ResultType::Boolean
        }
        Target::ComputedTrait => c.check_trait_root(&query.expr, &scope),
    };
    c.check_cycles(query);
    if c.errors.is_empty() {
        Ok(Checked {
            result,
            expressions: c.expressions,
            references: c.references.into_iter().collect(),
        })
    } else {
        c.errors.sort_by_key(|d| d.span.start);
        Err(c.errors)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum StreamKind {
    Event,
    Entity,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Stream(StreamKind),
    Scalar(ResultType),
    List,
    Bool,
}

fn describe(t: Ty) -> &'static str {
    match t {
        Ty::Stream(StreamKind::Event) => "a stream of events",
        Ty::Stream(StreamKind::Entity) => "a stream of entities",
        Ty::Scalar(ResultType::Integer | ResultType::Float | ResultType::Number) => "a number",
        Ty::Scalar(ResultType::String) => "a string",
        Ty::Scalar(_) => "a value",
        Ty::List => "a list",
        Ty::Bool => "a condition",
    }
}

#[derive(Debug, Clone, Default)]
struct Scope {
    in_quantifier: bool,
    /// Kinds of the streams whose `where` we are inside, outermost first.
    wheres: Vec<StreamKind>,
}

struct Checker<'a, 'c> {
    ctx: &'a CheckContext<'c>,
    errors: Vec<Diagnostic>,
    expressions: usize,
    references: BTreeSet<String>,
}

fn literal_of(chain: &Chain) -> Option<&Literal> {
    match (&chain.source.kind, chain.calls.is_empty()) {
        (ExtractorKind::Literal { value }, true) => Some(value),
        _ => None,
    }
}

impl Checker<'_, '_> {
    fn err(&mut self, code: ErrorCode, msg: impl Into<String>, span: Span) -> &mut Diagnostic {
        self.errors.push(Diagnostic::new(code, msg, span));
        let last = self.errors.len() - 1;
        &mut self.errors[last]
    }

    fn check_trait_root(&mut self, e: &Expr, scope: &Scope) -> ResultType {
        match e {
            Expr::Chain(c) => match self.check_chain(c, scope) {
                Some(Ty::Scalar(t)) => t,
                Some(Ty::List) => ResultType::List,
                Some(Ty::Bool) => {
                    let span = c.calls.last().map(|c| c.span).unwrap_or(c.span);
                    self.err(
                        ErrorCode::TypeMismatch,
                        "a computed trait must be a value, but this ends in a comparison",
                        span,
                    )
                    .with_help("remove the comparison, or define an audience instead");
                    ResultType::Any
                }
                Some(Ty::Stream(_)) => {
                    self.err(
                        ErrorCode::TypeMismatch,
                        "a computed trait must be a value, but this is a stream",
                        c.span,
                    )
                    .with_expected(
                        "a reducer at the end, e.g. `.count()` or `.sum(property('amount'))`",
                    );
                    ResultType::Any
                }
                None => ResultType::Any,
            },
            other => {
                let what = match other {
                    Expr::Or { .. } => "OR",
                    Expr::And { .. } => "AND",
                    Expr::Not { .. } => "NOT",
                    _ => "ANY/ALL/NONE",
                };
                self.err(
                    ErrorCode::TypeMismatch,
                    format!("a computed trait must be a single value, but this is a condition ({what})"),
                    other.span(),
                )
                .with_help("conditions define audiences; a computed trait is one chain ending in a reducer, e.g. event('X').count()");
                ResultType::Any
            }
        }
    }

    fn check_bool(&mut self, e: &Expr, scope: &Scope, role: &str) {
        match e {
            Expr::Or { items, .. } => {
                for i in items {
                    self.check_bool(i, scope, "`OR` joins conditions");
                }
            }
            Expr::And { items, .. } => {
                for i in items {
                    self.check_bool(i, scope, "`AND` joins conditions");
                }
            }
            Expr::Not { expr, .. } => self.check_bool(expr, scope, "`NOT` negates a condition"),
            Expr::Quantified {
                quantifier,
                expr,
                span,
            } => {
                let kw = quantifier.keyword();
                let kw_span = Span::new(span.start, span.start + kw.len());
                if self.ctx.kind != DefinitionKind::Accounts {
                    self.err(
                        ErrorCode::InvalidContext,
                        format!("`{kw}` is only valid in ACCOUNTS definitions"),
                        kw_span,
                    )
                    .with_help("set `type: accounts` on this definition, or remove the quantifier");
                } else if scope.in_quantifier {
                    self.err(
                        ErrorCode::InvalidContext,
                        format!("`{kw}` cannot be nested inside another ANY, ALL or NONE"),
                        kw_span,
                    );
                } else if !scope.wheres.is_empty() {
                    self.err(
                        ErrorCode::InvalidContext,
                        format!("`{kw}` cannot be used inside `where`"),
                        kw_span,
                    );
                }
                let inner = Scope {
                    in_quantifier: true,
                    wheres: scope.wheres.clone(),
                };
                self.check_bool(expr, &inner, "`ANY`, `ALL` and `NONE` take a condition");
            }
            Expr::Chain(c) => match self.check_chain(c, scope) {
                Some(Ty::Bool) | None => {}
                Some(t) => {
                    let d = self.err(
                        ErrorCode::TypeMismatch,
                        format!("{role}, but this is {}", describe(t)),
                        c.span,
                    );
                    match t {
                        Ty::Stream(_) => {
                            d.with_expected("a reducer and a comparison, e.g. `.count() >= 1`");
                        }
                        Ty::List => {
                            d.with_expected("`.count()` and a comparison, e.g. `.count() >= 3`");
                        }
                        _ => {
                            d.with_expected(
                                "a comparison, e.g. `>= 1`, `= 'value'` or `.exists()`",
                            );
                        }
                    }
                }
            },
        }
    }

    /// Types a chain; `None` when an error was reported inside it.
    fn check_chain(&mut self, c: &Chain, scope: &Scope) -> Option<Ty> {
        if !matches!(c.source.kind, ExtractorKind::Literal { .. }) {
            self.expressions += 1;
            if self.expressions == MAX_EXPRESSIONS + 1 {
                self.err(
                    ErrorCode::TooManyExpressions,
                    format!("too many expressions: a definition may have at most {MAX_EXPRESSIONS}"),
                    c.source.span,
                )
                .with_help("each event(...), trait(...), property(...) chain counts once; split the definition and reference one audience from another with trait('<key>')");
            }
        }
        let mut ty = self.check_source(&c.source, scope)?;
        let mut window: Option<Span> = None;
        let mut session = false;
        for call in &c.calls {
            let name = call.kind.name();
            ty = match (ty, &call.kind) {
                (Ty::Scalar(_), _) if matches!(c.source.kind, ExtractorKind::Literal { .. }) => {
                    self.err(
                        ErrorCode::InvalidChain,
                        format!("`{name}` cannot follow a literal; nothing may follow a literal"),
                        call.span,
                    );
                    return None;
                }
                (Ty::Stream(k), CallKind::Where { condition }) => {
                    let mut inner = scope.clone();
                    inner.wheres.push(k);
                    self.check_bool(condition, &inner, "`where` needs a condition");
                    ty
                }
                (Ty::Stream(k), CallKind::Sources { .. }) => {
                    if k == StreamKind::Entity {
                        self.err(
                            ErrorCode::InvalidChain,
                            "`sources` applies to events, not entities",
                            call.span,
                        );
                    }
                    ty
                }
                (
                    Ty::Stream(k),
                    CallKind::Within { parent, .. } | CallKind::Between { parent, .. },
                ) => {
                    if k == StreamKind::Entity {
                        self.err(
                            ErrorCode::InvalidChain,
                            format!("`{name}` applies to events; entities have no timestamps"),
                            call.span,
                        );
                    } else if window.is_some() {
                        self.err(
                            ErrorCode::InvalidChain,
                            format!("a stream takes one time window; remove this `{name}` or the earlier one"),
                            call.span,
                        );
                    } else if session {
                        self.err(
                            ErrorCode::InvalidChain,
                            format!("`{name}` cannot be combined with `expires_after`"),
                            call.span,
                        );
                    } else if *parent && scope.wheres.last() != Some(&StreamKind::Event) {
                        self.err(
                            ErrorCode::InvalidContext,
                            format!("`{name}(parent: ...)` is only valid on an event nested inside another event's `where`"),
                            call.span,
                        )
                        .with_help("a funnel nests the second event in the first one's where: event('A').where(event('B').within(parent: 7 days).count() >= 1)");
                    }
                    window = Some(call.span);
                    ty
                }
                (Ty::Stream(_), CallKind::ExpiresAfter { .. }) => {
                    if self.ctx.target != Target::ComputedTrait || !scope.wheres.is_empty() {
                        self.err(
                            ErrorCode::InvalidContext,
                            "`expires_after` is only valid on the stream of a computed trait (session windows)",
                            call.span,
                        );
                    } else if window.is_some() || session {
                        self.err(
                            ErrorCode::InvalidChain,
                            "`expires_after` cannot be combined with another window",
                            call.span,
                        );
                    }
                    session = true;
                    ty
                }
                (Ty::Stream(k), CallKind::Reduce(r)) => self.check_reducer(r, k, call.span),
                (Ty::Stream(_), CallKind::Compare(_)) => {
                    self.err(
                        ErrorCode::InvalidChain,
                        format!("`{name}` cannot compare a stream; reduce it first"),
                        call.span,
                    )
                    .with_expected("a reducer before the comparison, e.g. `.count() >= 1`");
                    return None;
                }
                (Ty::Scalar(_), CallKind::Compare(cmp)) => {
                    self.check_comparator(cmp, scope);
                    Ty::Bool
                }
                (Ty::Scalar(_), _) => {
                    self.err(
                        ErrorCode::InvalidChain,
                        format!("`{name}` cannot follow a value; only comparisons can"),
                        call.span,
                    )
                    .with_expected(
                        "a comparison such as `= 'x'`, `>= 1`, `.exists()` or `.contains('x')`",
                    );
                    return None;
                }
                (Ty::List, CallKind::Reduce(Reducer::Count)) => Ty::Scalar(ResultType::Integer),
                (Ty::List, _) => {
                    self.err(
                        ErrorCode::InvalidChain,
                        format!("`{name}` cannot follow `unique(...)`; only `count()` can"),
                        call.span,
                    )
                    .with_expected("`.count()`");
                    return None;
                }
                (Ty::Bool, _) => {
                    self.err(
                        ErrorCode::InvalidChain,
                        format!("`{name}` cannot follow a comparison; the expression is already complete"),
                        call.span,
                    )
                    .with_expected("AND, OR or the end of the expression");
                    return None;
                }
            };
        }
        Some(ty)
    }

    fn check_source(&mut self, src: &Extractor, scope: &Scope) -> Option<Ty> {
        match &src.kind {
            ExtractorKind::Event { .. } => Some(Ty::Stream(StreamKind::Event)),
            ExtractorKind::Entity { .. } => Some(Ty::Stream(StreamKind::Entity)),
            ExtractorKind::Trait { name } => {
                let Some(entry) = self.ctx.catalogue.get(name) else {
                    return Some(Ty::Scalar(ResultType::Any));
                };
                self.references.insert(name.clone());
                let level = if self.ctx.kind == DefinitionKind::Accounts && !scope.in_quantifier {
                    DefinitionKind::Accounts
                } else {
                    DefinitionKind::Users
                };
                if entry.kind != level {
                    let noun = entry.target.noun();
                    let msg = match entry.kind {
                        DefinitionKind::Users => format!(
                            "`{name}` is a users {noun}; in an ACCOUNTS definition reference it inside ANY, ALL or NONE"
                        ),
                        DefinitionKind::Accounts => format!(
                            "`{name}` is an accounts {noun} and cannot be referenced at user level"
                        ),
                    };
                    self.err(ErrorCode::InvalidReference, msg, src.span);
                    return None;
                }
                Some(Ty::Scalar(match entry.target {
                    Target::Audience => ResultType::Boolean,
                    Target::ComputedTrait => ResultType::Any,
                }))
            }
            ExtractorKind::Property { parent, .. } => {
                if scope.wheres.is_empty() {
                    self.err(
                        ErrorCode::InvalidContext,
                        "`property` is only valid inside `where(...)` or as a reducer argument",
                        src.span,
                    )
                    .with_help("filter a stream by a property: event('X').where(property('p') = 'v').count() >= 1");
                    return None;
                }
                let n = scope.wheres.len();
                if *parent
                    && !(n >= 2
                        && scope.wheres[n - 1] == StreamKind::Event
                        && scope.wheres[n - 2] == StreamKind::Event)
                {
                    self.err(
                        ErrorCode::InvalidContext,
                        "`property(parent: ...)` is only valid inside the `where` of an event nested in another event's `where`",
                        src.span,
                    )
                    .with_help("event('A').where(event('B').where(property('id') = property(parent: 'id')).count() >= 1)");
                    return None;
                }
                Some(Ty::Scalar(ResultType::Any))
            }
            ExtractorKind::Context { .. } => {
                match scope.wheres.last() {
                    None => {
                        self.err(
                            ErrorCode::InvalidContext,
                            "`context` is only valid inside `where(...)` or as a reducer argument",
                            src.span,
                        );
                        return None;
                    }
                    Some(StreamKind::Entity) => {
                        self.err(
                            ErrorCode::InvalidContext,
                            "`context` applies to events; entities have no context",
                            src.span,
                        );
                        return None;
                    }
                    Some(StreamKind::Event) => {}
                }
                Some(Ty::Scalar(ResultType::Any))
            }
            ExtractorKind::Literal { value } => Some(Ty::Scalar(match value {
                Literal::Int(_) => ResultType::Integer,
                Literal::Float(_) => ResultType::Float,
                Literal::String(_) => ResultType::String,
                Literal::Bool(_) => ResultType::Boolean,
                _ => ResultType::Any,
            })),
        }
    }

    fn check_reducer(&mut self, r: &Reducer, k: StreamKind, span: Span) -> Ty {
        if let Some(p) = r.prop() {
            match p.kind {
                PropKind::ParentProperty => {
                    self.err(
                        ErrorCode::InvalidContext,
                        "`property(parent: ...)` is only valid inside a child event's `where`, not in a reducer",
                        p.span,
                    );
                }
                PropKind::Context if k == StreamKind::Entity => {
                    self.err(
                        ErrorCode::InvalidContext,
                        "`context` applies to events; entities have no context",
                        p.span,
                    );
                }
                _ => {}
            }
        }
        match r {
            Reducer::Count => Ty::Scalar(ResultType::Integer),
            Reducer::Sum { .. } | Reducer::Avg { .. } => Ty::Scalar(ResultType::Float),
            Reducer::Min { as_type, .. } | Reducer::Max { as_type, .. } => {
                match as_type {
                    Some(ValueType::Array) => {
                        self.err(
                        ErrorCode::TypeMismatch,
                        format!("`{}` takes `as number` or `as string`; `as array` is only for mode", r.name()),
                        span,
                    );
                        Ty::Scalar(ResultType::Any)
                    }
                    Some(ValueType::String) => Ty::Scalar(ResultType::String),
                    _ => Ty::Scalar(ResultType::Number),
                }
            }
            Reducer::Mode {
                as_type,
                min_frequency,
                ..
            } => {
                if *min_frequency == 0 {
                    self.err(
                        ErrorCode::InvalidLiteral,
                        "the minimum frequency of `mode` must be at least 1",
                        span,
                    );
                }
                match as_type {
                    Some(ValueType::Number) => Ty::Scalar(ResultType::Number),
                    _ => Ty::Scalar(ResultType::String),
                }
            }
            Reducer::First { .. } | Reducer::Last { .. } => Ty::Scalar(ResultType::Any),
            Reducer::Unique { .. } => Ty::List,
        }
    }

    fn check_comparator(&mut self, cmp: &Comparator, scope: &Scope) {
        for o in cmp.operands() {
            match self.check_chain(o, scope) {
                Some(Ty::Scalar(_)) | None => {}
                Some(t) => {
                    self.err(
                        ErrorCode::TypeMismatch,
                        format!(
                            "`{}` compares with a single value, but this is {}",
                            cmp.name(),
                            describe(t)
                        ),
                        o.span,
                    );
                    continue;
                }
            }
            let Some(lit) = literal_of(o) else { continue };
            let date_like = matches!(
                lit,
                Literal::Timestamp(_) | Literal::Date(_) | Literal::String(_)
            );
            match cmp {
                Comparator::BeforeDate(_) | Comparator::AfterDate(_) if !date_like => {
                    self.err(
                        ErrorCode::TypeMismatch,
                        format!("`{}` needs a date or timestamp", cmp.name()),
                        o.span,
                    )
                    .with_expected("e.g. 2023-12-07T18:50:00Z or '2023-12-07T18:50:00Z'");
                }
                Comparator::Omits(_)
                | Comparator::StartsWith(_)
                | Comparator::EndsWith(_)
                | Comparator::Contains(_)
                    if !matches!(lit, Literal::String(_)) =>
                {
                    self.err(
                        ErrorCode::TypeMismatch,
                        format!("`{}` needs a string", cmp.name()),
                        o.span,
                    );
                }
                _ => {}
            }
        }
    }

    fn check_cycles(&mut self, query: &Query) {
        let Some(me) = self.ctx.key else { return };
        for (name, span) in query.trait_names() {
            if self.ctx.catalogue.get(&name).is_none() {
                continue;
            }
            let cycle = if name == me {
                Some(vec![me.to_string(), me.to_string()])
            } else {
                self.ctx.catalogue.path(&name, me).map(|p| {
                    let mut c = vec![me.to_string()];
                    c.extend(p);
                    c
                })
            };
            if let Some(cycle) = cycle {
                let text = cycle
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(" → ");
                self.err(
                    ErrorCode::ReferenceCycle,
                    format!("reference cycle: {text}"),
                    span,
                )
                .with_help(
                    "a definition cannot depend on itself, directly or through other definitions",
                );
                return;
            }
        }
    }
}
