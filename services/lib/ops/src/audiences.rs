//! Audiences and computed traits in the `definitions` topic: the record format compute reads
//! (one place, used by the service, `corralctl audiences` and the tests) and the operations
//! behind `corralctl audiences apply|list|delete|status`.
//!
//! A definition is stored under the Kafka key `{space}/{kind}/{key}` (`kind` is `audience` or
//! `computed_trait`) as a `Definition` record whose body is [`DefinitionBody`]; every edit is a
//! new version (previous version + 1).

use std::collections::BTreeMap;

pub use corral_query::check::{DefinitionKind, Target};
pub use corral_runtime::definitions::Applied;
use corral_runtime::definitions::{
    apply_versioned, definition_key, publish, read_all, Desired, READ_TIMEOUT,
};
use corral_runtime::RuntimeError;
use serde::{Deserialize, Serialize};

/// `kind` of an audience record.
pub const KIND_AUDIENCE: &str = "audience";
/// `kind` of a computed-trait record.
pub const KIND_COMPUTED_TRAIT: &str = "computed_trait";

/// The body of an audience / computed-trait record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionBody {
    /// Query-language text.
    pub query: String,
    /// `users` or `accounts` (absent: users).
    #[serde(default, rename = "type", alias = "kind")]
    pub kind: Option<String>,
    /// Replay `events.resolved` when created.
    #[serde(default)]
    pub include_historical_data: bool,
}

impl DefinitionBody {
    /// Reads a record body.
    pub fn from_json(v: &serde_json::Value) -> Result<DefinitionBody, serde_json::Error> {
        serde_json::from_value(v.clone())
    }

    /// The record body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "query": self.query,
            "type": self.kind.clone().unwrap_or_else(|| "users".into()),
            "include_historical_data": self.include_historical_data,
        })
    }

    /// USERS unless the body says accounts.
    pub fn definition_kind(&self) -> DefinitionKind {
        match self.kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("accounts") => DefinitionKind::Accounts,
            _ => DefinitionKind::Users,
        }
    }
}

/// The record `kind` of a target.
pub fn kind_of(target: Target) -> &'static str {
    match target {
        Target::Audience => KIND_AUDIENCE,
        Target::ComputedTrait => KIND_COMPUTED_TRAIT,
    }
}

/// The target of a record `kind` (`None`: not compute's).
pub fn target_of(kind: &str) -> Option<Target> {
    match kind {
        KIND_AUDIENCE => Some(Target::Audience),
        KIND_COMPUTED_TRAIT => Some(Target::ComputedTrait),
        _ => None,
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file has errors (nothing was applied); the report lists every one.
    #[error("{0}")]
    Invalid(Box<corral_query::ValidationReport>),
    /// The file is valid but compute cannot evaluate some definitions (nothing was applied);
    /// one line per definition, saying why.
    #[error("compute cannot evaluate {} definition(s):\n{}", .0.len(), .0.join("\n"))]
    Unsupported(Vec<String>),
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] RuntimeError),
    /// `delete` of a key that is not defined.
    #[error("no audience or computed trait `{key}` in space `{space}`")]
    NotFound {
        /// Space.
        space: String,
        /// Key.
        key: String,
    },
}

/// Where the definitions live.
#[derive(Debug, Clone)]
pub struct DefinitionsTopic {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Extra librdkafka settings.
    pub kafka: BTreeMap<String, String>,
    /// The `definitions` topic.
    pub topic: String,
    /// Space the definitions belong to.
    pub space: String,
}

/// Validates `text` with corral-query (refusing the whole file on any error) and writes every
/// audience and computed trait whose name or body differs from the current version as a new
/// version. Returns one line per definition, in file order.
pub fn apply_text(
    at: &DefinitionsTopic,
    text: &str,
    origin: &str,
    updated_by: Option<String>,
) -> Result<Vec<Applied>, AdminError> {
    let defs = corral_query::load_definitions_str(text, origin)
        .map_err(|r| AdminError::Invalid(Box::new(r)))?;
    let refused = unsupported(&defs);
    if !refused.is_empty() {
        return Err(AdminError::Unsupported(refused));
    }
    let desired: Vec<Desired> = defs
        .definitions
        .iter()
        .map(|d| {
            desired(
                &at.space,
                d.target,
                &d.key,
                &d.name,
                d.kind,
                d.include_historical_data,
                &d.text,
            )
        })
        .collect();
    apply_versioned(
        &at.bootstrap,
        &at.kafka,
        &at.topic,
        &desired,
        updated_by.as_deref(),
        |_| Ok::<_, AdminError>(()),
    )
}

/// The record written for one checked definition: the one shape `apply_text` and the admin
/// API write, so compute cannot tell them apart.
pub fn desired(
    space: &str,
    target: Target,
    key: &str,
    name: &str,
    kind: DefinitionKind,
    include_historical_data: bool,
    query: &str,
) -> Desired {
    Desired {
        space_id: space.to_string(),
        kind: kind_of(target).to_string(),
        key: key.to_string(),
        name: Some(name.to_string()),
        body: DefinitionBody {
            query: query.trim().to_string(),
            kind: Some(kind.name().to_string()),
            include_historical_data,
        }
        .to_json(),
    }
}

/// One audience or computed trait as an API receives it (one at a time, not a file).
#[derive(Debug, Clone, PartialEq)]
pub struct OneDefinition {
    pub target: Target,
    pub key: String,
    pub name: String,
    pub kind: DefinitionKind,
    pub include_historical_data: bool,
    pub query: String,
}

/// A problem with one definition, positioned in its query text (line and column 1-based,
/// column in characters; `offset`/`length` in bytes). `field` names what is wrong: `query`
/// or `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryProblem {
    pub code: String,
    pub message: String,
    pub field: String,
    pub line: usize,
    pub column: usize,
    pub offset: usize,
    pub length: usize,
    pub line_text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl QueryProblem {
    fn of(query: &str, d: &corral_query::Diagnostic) -> QueryProblem {
        let lc = corral_query::span::line_col(query, d.span.start);
        let line_text = query
            .lines()
            .nth(lc.line.saturating_sub(1))
            .unwrap_or_default()
            .to_string();
        QueryProblem {
            code: serde_json::to_value(d.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "invalid_query".into()),
            message: d.message.clone(),
            field: "query".into(),
            line: lc.line,
            column: lc.column,
            offset: d.span.start,
            length: d.span.len().max(1),
            line_text,
            expected: d.expected.clone(),
            help: d.help.clone(),
        }
    }

    fn key(message: String) -> QueryProblem {
        QueryProblem {
            code: "invalid_definition".into(),
            message,
            field: "key".into(),
            line: 1,
            column: 1,
            offset: 0,
            length: 1,
            line_text: String::new(),
            expected: None,
            help: None,
        }
    }
}

/// Checks one definition as `apply_text` checks a file: the key, then the query parsed and
/// type-checked against the space's other definitions (`current`, which it may reference).
/// Every problem is returned, positioned in the query text.
pub fn check_one(current: &[Listed], def: &OneDefinition) -> Result<(), Vec<QueryProblem>> {
    if def.key.trim().is_empty() || def.key.chars().any(char::is_whitespace) {
        return Err(vec![QueryProblem::key(format!(
            "invalid key `{}`: keys must be non-empty and contain no spaces",
            def.key
        ))]);
    }
    if let Some(other) = current
        .iter()
        .find(|l| l.key == def.key && target_of(&l.kind) != Some(def.target))
    {
        return Err(vec![QueryProblem::key(format!(
            "key `{}` is already a{} {}; audience and computed-trait keys share one namespace",
            def.key,
            if other.kind == KIND_AUDIENCE { "n" } else { "" },
            other.kind.replace('_', " ")
        ))]);
    }
    let mut catalogue = corral_query::Catalogue::new();
    for l in current.iter().filter(|l| l.key != def.key) {
        let (Some(target), Some(body)) = (target_of(&l.kind), &l.body) else {
            continue;
        };
        let q = corral_query::parse(&body.query).ok();
        catalogue.insert(l.key.clone(), target, body.definition_kind(), q);
    }
    let q = corral_query::parse(&def.query).map_err(|d| vec![QueryProblem::of(&def.query, &d)])?;
    catalogue.insert(def.key.clone(), def.target, def.kind, Some(q.clone()));
    let ctx = corral_query::CheckContext {
        target: def.target,
        kind: def.kind,
        catalogue: &catalogue,
        key: Some(&def.key),
    };
    corral_query::check(&q, &ctx).map_err(|ds| {
        ds.iter()
            .map(|d| QueryProblem::of(&def.query, d))
            .collect::<Vec<_>>()
    })?;
    // What apply_text refuses besides errors: what compute cannot evaluate.
    if let Some(why) = crate::accounts::unsupported_key(&def.key) {
        return Err(vec![QueryProblem::key(why)]);
    }
    let why = match corral_query::plan(&q, &ctx) {
        Ok(p) => crate::accounts::unsupported(def.kind, &p),
        Err(ds) => {
            return Err(ds.iter().map(|d| QueryProblem::of(&def.query, d)).collect());
        }
    };
    match why {
        Some(why) => Err(vec![QueryProblem {
            code: "unsupported".into(),
            field: "query".into(),
            length: def.query.len().max(1),
            line_text: def.query.lines().next().unwrap_or_default().to_string(),
            ..QueryProblem::key(why)
        }]),
        None => Ok(()),
    }
}

/// Why [`apply_one`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyOneError {
    #[error("the definition has {} error(s)", .0.len())]
    Invalid(Vec<QueryProblem>),
    #[error(transparent)]
    Kafka(#[from] RuntimeError),
}

/// Checks `def` against the space's current definitions ([`check_one`]) and writes it as
/// `apply_text` would (unchanged: not written again; changed: the next version).
pub fn apply_one(
    at: &DefinitionsTopic,
    def: &OneDefinition,
    updated_by: Option<&str>,
) -> Result<Applied, ApplyOneError> {
    let current = list(at).map_err(|e| match e {
        AdminError::Kafka(k) => ApplyOneError::Kafka(k),
        other => ApplyOneError::Kafka(RuntimeError::Processor(other.to_string())),
    })?;
    check_one(&current, def).map_err(ApplyOneError::Invalid)?;
    let d = desired(
        &at.space,
        def.target,
        &def.key,
        &def.name,
        def.kind,
        def.include_historical_data,
        &def.query,
    );
    let mut applied = apply_versioned(
        &at.bootstrap,
        &at.kafka,
        &at.topic,
        std::slice::from_ref(&d),
        updated_by,
        |_| Ok::<_, RuntimeError>(()),
    )?;
    applied
        .pop()
        .ok_or_else(|| ApplyOneError::Kafka(RuntimeError::Processor("nothing was applied".into())))
}

/// Definitions of a valid file that compute cannot evaluate, one line each:
/// ``audience `key`: why`` (see [`crate::accounts::unsupported`]).
pub fn unsupported(defs: &corral_query::Definitions) -> Vec<String> {
    let mut out = Vec::new();
    for d in &defs.definitions {
        let ctx = corral_query::check::CheckContext {
            target: d.target,
            kind: d.kind,
            catalogue: &defs.catalogue,
            key: Some(&d.key),
        };
        let why = crate::accounts::unsupported_key(&d.key).or_else(|| {
            match corral_query::plan(&d.query, &ctx) {
                Ok(p) => crate::accounts::unsupported(d.kind, &p),
                Err(ds) => Some(
                    ds.first()
                        .map(|x| x.message.clone())
                        .unwrap_or_else(|| "does not plan".into()),
                ),
            }
        });
        if let Some(why) = why {
            out.push(format!("{} `{}`: {why}", d.target.noun(), d.key));
        }
    }
    out
}

/// [`apply_text`] on a file.
pub fn apply_file(
    at: &DefinitionsTopic,
    path: &std::path::Path,
    updated_by: Option<String>,
) -> Result<Vec<Applied>, AdminError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdminError::Io {
        path: path.display().to_string(),
        source,
    })?;
    apply_text(at, &text, &path.display().to_string(), updated_by)
}

/// One current audience or computed trait.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// `audience` / `computed_trait`.
    pub kind: String,
    /// Key.
    pub key: String,
    /// Current version.
    pub version: i64,
    /// Display name.
    pub name: Option<String>,
    /// Body (`None` when it does not parse).
    pub body: Option<DefinitionBody>,
    /// When the version was written (ms).
    pub updated_at_ms: i64,
}

/// Every current audience and computed trait of the space, by key.
pub fn list(at: &DefinitionsTopic) -> Result<Vec<Listed>, AdminError> {
    let current = read_all(&at.bootstrap, &at.kafka, &at.topic, READ_TIMEOUT)?;
    Ok(current
        .into_values()
        .filter(|d| d.space_id == at.space && target_of(&d.kind).is_some())
        .map(|d| Listed {
            body: DefinitionBody::from_json(&d.body).ok(),
            kind: d.kind,
            key: d.key,
            version: d.version,
            name: d.name,
            updated_at_ms: d.updated_at_ms,
        })
        .collect())
}

/// Tombstones the audience or computed trait `key`; returns the kind deleted.
pub fn delete(at: &DefinitionsTopic, key: &str) -> Result<&'static str, AdminError> {
    let current = read_all(&at.bootstrap, &at.kafka, &at.topic, READ_TIMEOUT)?;
    for kind in [KIND_AUDIENCE, KIND_COMPUTED_TRAIT] {
        let k = definition_key(&at.space, kind, key);
        if current.contains_key(&k) {
            publish(&at.bootstrap, &at.kafka, &at.topic, &k, None)?;
            return Ok(kind);
        }
    }
    Err(AdminError::NotFound {
        space: at.space.clone(),
        key: key.to_string(),
    })
}

/// A definition's backfill progress as compute's metrics report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillStatus {
    /// Partitions (over the instances scraped) where its backfill is not done.
    pub pending_partitions: i64,
    /// Offsets the instances' backfill readers still have to read (all definitions).
    pub remaining_events: i64,
}

impl std::fmt::Display for BackfillStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pending_partitions == 0 {
            write!(f, "live")
        } else {
            write!(
                f,
                "backfilling on {} partition(s), {} event(s) left to read",
                self.pending_partitions, self.remaining_events
            )
        }
    }
}

/// Adds one instance's `/metrics` text to per-definition backfill progress.
pub fn merge_backfill_status(into: &mut BTreeMap<String, BackfillStatus>, metrics_text: &str) {
    let value = |line: &str| {
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as i64
    };
    let mut remaining = 0;
    let mut pending: Vec<(String, i64)> = Vec::new();
    for line in metrics_text.lines() {
        if line.starts_with("corral_compute_backfill_remaining_events") {
            remaining += value(line);
        } else if line.starts_with("corral_compute_backfill_pending_partitions{") {
            let def = line
                .split("definition=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            pending.push((def.to_string(), value(line)));
        }
    }
    for (def, n) in pending {
        if n > 0 {
            let s = into.entry(def).or_default();
            s.pending_partitions += n;
            s.remaining_events += remaining;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn body_round_trips_and_defaults_to_users() {
        let b = DefinitionBody {
            query: "event('A').count() >= 1".into(),
            kind: Some("users".into()),
            include_historical_data: true,
        };
        assert_eq!(DefinitionBody::from_json(&b.to_json()).ok(), Some(b));
        let bare = DefinitionBody::from_json(&serde_json::json!({"query": "x"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bare.definition_kind(), DefinitionKind::Users);
        assert!(!bare.include_historical_data);
    }

    fn one(key: &str, target: Target, query: &str) -> OneDefinition {
        OneDefinition {
            target,
            key: key.into(),
            name: key.into(),
            kind: DefinitionKind::Users,
            include_historical_data: true,
            query: query.into(),
        }
    }

    fn listed(key: &str, kind: &str, query: &str) -> Listed {
        Listed {
            kind: kind.into(),
            key: key.into(),
            version: 1,
            name: None,
            body: Some(DefinitionBody {
                query: query.into(),
                kind: None,
                include_historical_data: false,
            }),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn one_definition_errors_point_into_the_query_text() {
        let ok = one(
            "buyers",
            Target::Audience,
            "event('Order Completed').count() >= 1",
        );
        assert_eq!(check_one(&[], &ok), Ok(()));
        let bad = one(
            "buyers",
            Target::Audience,
            "event('Order Completed')\n  .cont() >= 1",
        );
        let errs = check_one(&[], &bad).unwrap_err();
        assert_eq!(errs.len(), 1);
        let e = &errs[0];
        assert_eq!(
            (e.line, e.column, e.field.as_str()),
            (2, 4, "query"),
            "{e:?}"
        );
        assert!(e.message.contains("cont"), "{e:?}");
        assert_eq!(e.line_text, "  .cont() >= 1");
        // A computed trait must end in a value, not a boolean: a type error, positioned.
        let typed = one("n", Target::ComputedTrait, "event('A').count() >= 1");
        assert_eq!(check_one(&[], &typed).unwrap_err()[0].code, "type_mismatch");
    }

    #[test]
    fn one_definition_sees_the_space_and_its_shared_key_namespace() {
        let current = [listed(
            "orders",
            KIND_COMPUTED_TRAIT,
            "event('Order Completed').count()",
        )];
        let refers = one("big", Target::Audience, "trait('orders') >= 3");
        assert_eq!(check_one(&current, &refers), Ok(()));
        let clash = one("orders", Target::Audience, "event('A').count() >= 1");
        let e = &check_one(&current, &clash).unwrap_err()[0];
        assert_eq!(e.field, "key");
        assert!(e.message.contains("share one namespace"), "{e:?}");
        assert_eq!(
            check_one(&[], &one("a b", Target::Audience, "x")).unwrap_err()[0].field,
            "key"
        );
        // What compute cannot evaluate is refused as apply_text refuses it.
        let reserved = one("~acct/x/0", Target::Audience, "event('A').count() >= 1");
        assert!(check_one(&[], &reserved).unwrap_err()[0]
            .message
            .contains("reserved"));
    }

    #[test]
    fn backfill_status_from_metrics() {
        let text = "# HELP x\ncorral_compute_backfill_pending_partitions{definition=\"a\",service=\"compute\"} 2\ncorral_compute_backfill_pending_partitions{definition=\"b\"} 0\ncorral_compute_backfill_remaining_events 150\n";
        let mut m = BTreeMap::new();
        merge_backfill_status(&mut m, text);
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"].pending_partitions, 2);
        assert_eq!(m["a"].remaining_events, 150);
    }
}

#[cfg(test)]
mod unsupported_tests {
    use super::*;

    #[test]
    fn refuses_what_compute_cannot_evaluate_and_names_why() {
        let text = r#"
audiences:
  - key: fine_accounts
    type: accounts
    query: ANY event('Logged In').count() >= 1
  - key: linked
    query: entity('accounts').where(property('plan') = 'pro').count() >= 1
  - key: account_wide
    type: accounts
    query: event('Logged In').count() >= 10
  - key: "~acct/x"
    query: event('A').count() >= 1
"#;
        let defs = corral_query::load_definitions_str(text, "t.yaml").unwrap();
        let refused = unsupported(&defs);
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].starts_with("audience `linked`: uses entity(...)"));
        assert!(
            refused[1].starts_with("audience `account_wide`: reads events outside ANY/ALL/NONE")
        );
        assert!(refused[2].contains("reserved"));
        let examples = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../examples/definitions.yaml"
        ))
        .unwrap();
        let defs = corral_query::load_definitions_str(&examples, "examples").unwrap();
        assert_eq!(unsupported(&defs), Vec::<String>::new());
    }
}
