//! Audiences and computed traits in the `definitions` topic: the record format compute reads
//! (one place, used by the service, `corralctl audiences` and the tests) and the operations
//! behind `corralctl audiences apply|list|delete|status`.
//!
//! A definition is stored under the Kafka key `{space}/{kind}/{key}` (`kind` is `audience` or
//! `computed_trait`) as a `Definition` record whose body is [`DefinitionBody`]; every edit is a
//! new version (previous version + 1).

use std::collections::BTreeMap;

use corral_query::check::{DefinitionKind, Target};
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
    let desired: Vec<Desired> = defs
        .definitions
        .iter()
        .map(|d| Desired {
            space_id: at.space.clone(),
            kind: kind_of(d.target).to_string(),
            key: d.key.clone(),
            name: Some(d.name.clone()),
            body: DefinitionBody {
                query: d.text.trim().to_string(),
                kind: Some(d.kind.name().to_string()),
                include_historical_data: d.include_historical_data,
            }
            .to_json(),
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
