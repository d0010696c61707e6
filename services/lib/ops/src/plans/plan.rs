//! Tracking plans: the file model (YAML or JSON), compilation of its JSON Schemas (once per plan
//! version), and `plans validate` diagnostics with file and line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jsonschema::{Draft, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The `definitions` kind of a tracking plan.
pub const KIND: &str = "tracking_plan";
/// A plan connected to this source applies to every source of its space without a plan of its own.
pub const ANY_SOURCE: &str = "*";

/// Allow or block (unplanned events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowBlock {
    #[default]
    Allow,
    Block,
}

/// Allow or omit (unplanned properties and traits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowOmit {
    #[default]
    Allow,
    Omit,
}

/// Allow, block or omit (JSON Schema violations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationControl {
    #[default]
    Allow,
    Block,
    Omit,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackControls {
    pub unplanned_events: AllowBlock,
    pub unplanned_properties: AllowOmit,
    pub violations: ViolationControl,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraitControls {
    pub unplanned_traits: AllowOmit,
    pub violations: ViolationControl,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommonControls {
    pub violations: ViolationControl,
}

/// Segment's per-source Schema Configuration. Every control defaults to allow, as in Segment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Controls {
    /// Track calls; page and screen use the same controls.
    pub track: TrackControls,
    pub identify: TraitControls,
    pub group: TraitControls,
    /// Advanced Blocking Controls: the common schema, a second pass.
    pub common: CommonControls,
    /// Sends each violation as a `Violation Generated` track event into `events.raw` with this
    /// source id.
    pub forward_violations_to: Option<String>,
}

/// One planned track event: a JSON Schema of its `properties`, or several versions of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    #[serde(default)]
    pub description: Option<String>,
    /// The schema of `properties` (version 1) ...
    #[serde(default)]
    pub properties: Option<Json>,
    /// ... or versions, selected by `context.protocols.event_version` (missing or unknown: the
    /// oldest).
    #[serde(default)]
    pub versions: Option<BTreeMap<i64, Json>>,
}

/// A tracking plan file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The plan id (the `definitions` key).
    pub key: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_space")]
    pub space_id: String,
    /// Source ids this plan is connected to (`*`: every source of the space without a plan).
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub controls: Controls,
    #[serde(default)]
    pub events: BTreeMap<String, EventSpec>,
    /// Schema of identify `traits`.
    #[serde(default)]
    pub identify: Option<Json>,
    /// Schema of group `traits`.
    #[serde(default)]
    pub group: Option<Json>,
    /// Schema of page `properties`.
    #[serde(default)]
    pub page: Option<Json>,
    /// Schema of screen `properties`.
    #[serde(default)]
    pub screen: Option<Json>,
    /// Common JSON Schema, applied to the whole Segment payload of every message.
    #[serde(default)]
    pub common: Option<Json>,
}

fn default_space() -> String {
    "default".to_string()
}

/// A plan problem, located by the path of keys in the plan document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", display_path(.path))]
pub struct PlanError {
    pub path: Vec<String>,
    pub message: String,
}

fn display_path(p: &[String]) -> String {
    if p.is_empty() {
        "(plan)".into()
    } else {
        p.join(".")
    }
}

/// Parse or compile failure of a plan file or definition.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String, Option<usize>),
    #[error("{} error(s), first: {}", .0.len(), .0.first().map(|e| e.to_string()).unwrap_or_default())]
    Invalid(Vec<PlanError>),
}

/// A compiled JSON Schema with what the controls need to know about it.
pub struct Schema {
    pub validator: Validator,
    /// Top-level keys the schema plans (`properties` keyword); `None` when it lists none, which
    /// makes every key planned.
    pub planned_keys: Option<Vec<String>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("planned_keys", &self.planned_keys)
            .finish_non_exhaustive()
    }
}

impl Schema {
    pub fn is_planned(&self, key: &str) -> bool {
        match &self.planned_keys {
            None => true,
            Some(keys) => keys.iter().any(|k| k == key),
        }
    }
}

/// One planned event, compiled: versions in ascending order (the first is the oldest).
#[derive(Debug)]
pub struct CompiledEvent {
    pub versions: Vec<(i64, Schema)>,
}

impl CompiledEvent {
    /// The version the message asks for, or the oldest when it asks for none or an unknown one.
    pub fn select(&self, requested: Option<i64>) -> Option<&(i64, Schema)> {
        requested
            .and_then(|v| self.versions.iter().find(|(n, _)| *n == v))
            .or_else(|| self.versions.first())
    }
}

/// A plan ready to validate with: every schema compiled once, for one version of the plan.
#[derive(Debug)]
pub struct CompiledPlan {
    pub key: String,
    pub name: Option<String>,
    pub space_id: String,
    pub version: i64,
    pub sources: Vec<String>,
    pub controls: Controls,
    pub events: BTreeMap<String, CompiledEvent>,
    pub identify: Option<Schema>,
    pub group: Option<Schema>,
    pub page: Option<Schema>,
    pub screen: Option<Schema>,
    pub common: Option<Schema>,
}

fn compile_schema(schema: &Json, path: &[String], errors: &mut Vec<PlanError>) -> Option<Schema> {
    // Draft-07 unless the schema names another draft with `$schema`.
    let draft_given = schema.get("$schema").is_some();
    let mut opts = jsonschema::options().should_validate_formats(true);
    if !draft_given {
        opts = opts.with_draft(Draft::Draft7);
    }
    match opts.build(schema) {
        Ok(validator) => {
            let planned_keys = schema
                .get("properties")
                .and_then(Json::as_object)
                .map(|m| m.keys().cloned().collect());
            Some(Schema {
                validator,
                planned_keys,
            })
        }
        Err(e) => {
            let mut p = path.to_vec();
            p.extend(e.instance_path().segments().map(|s| s.to_string()));
            errors.push(PlanError {
                path: p,
                message: format!("invalid JSON Schema: {e}"),
            });
            None
        }
    }
}

impl PlanFile {
    /// Parses a plan from YAML or JSON text (JSON is YAML).
    pub fn parse(text: &str) -> Result<PlanFile, LoadError> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            LoadError::Parse(e.to_string(), line)
        })
    }

    /// Parses a plan from its JSON form (the body stored in `definitions`).
    pub fn from_json(body: Json) -> Result<PlanFile, LoadError> {
        serde_json::from_value(body).map_err(|e| LoadError::Parse(e.to_string(), None))
    }

    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }

    /// Checks and compiles every schema; collects all problems rather than stopping at the first.
    pub fn compile(&self, version: i64) -> Result<CompiledPlan, Vec<PlanError>> {
        let mut errors = Vec::new();
        let err = |path: &[&str], message: String| PlanError {
            path: path.iter().map(|s| s.to_string()).collect(),
            message,
        };
        if self.key.trim().is_empty() {
            errors.push(err(&["key"], "the plan key must not be empty".into()));
        }
        if self.key.contains('/') {
            errors.push(err(&["key"], "the plan key must not contain `/`".into()));
        }
        if self.sources.is_empty() {
            errors.push(err(
                &["sources"],
                "connect the plan to at least one source id (or `*`)".into(),
            ));
        }
        let mut events = BTreeMap::new();
        for (name, spec) in &self.events {
            let base = vec!["events".to_string(), name.clone()];
            let mut versions = Vec::new();
            match (&spec.properties, &spec.versions) {
                (Some(_), Some(_)) => errors.push(PlanError {
                    path: base.clone(),
                    message: "give either `properties` or `versions`, not both".into(),
                }),
                (Some(schema), None) => {
                    let mut p = base.clone();
                    p.push("properties".into());
                    if let Some(s) = compile_schema(schema, &p, &mut errors) {
                        versions.push((1, s));
                    }
                }
                (None, Some(vs)) if !vs.is_empty() => {
                    for (v, schema) in vs {
                        let mut p = base.clone();
                        p.extend(["versions".to_string(), v.to_string()]);
                        if *v < 1 {
                            errors.push(PlanError {
                                path: p.clone(),
                                message: format!("event versions start at 1, found {v}"),
                            });
                        }
                        if let Some(s) = compile_schema(schema, &p, &mut errors) {
                            versions.push((*v, s));
                        }
                    }
                }
                _ => {
                    // No schema: the event is planned, with any properties.
                    let schema = serde_json::json!({});
                    if let Some(s) = compile_schema(&schema, &base, &mut errors) {
                        versions.push((1, s));
                    }
                }
            }
            events.insert(name.clone(), CompiledEvent { versions });
        }
        let mut one = |name: &str, schema: &Option<Json>| {
            schema
                .as_ref()
                .and_then(|s| compile_schema(s, &[name.to_string()], &mut errors))
        };
        let identify = one("identify", &self.identify);
        let group = one("group", &self.group);
        let page = one("page", &self.page);
        let screen = one("screen", &self.screen);
        let common = one("common", &self.common);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CompiledPlan {
            key: self.key.clone(),
            name: self.name.clone(),
            space_id: self.space_id.clone(),
            version,
            sources: self.sources.clone(),
            controls: self.controls.clone(),
            events,
            identify,
            group,
            page,
            screen,
            common,
        })
    }
}

/// Reads and compiles a plan file (version 0: not yet applied).
pub fn load_file(path: &Path) -> Result<(PlanFile, Arc<CompiledPlan>), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let file = PlanFile::parse(&text)?;
    let compiled = file.compile(0).map_err(LoadError::Invalid)?;
    Ok((file, Arc::new(compiled)))
}

/// A problem in a plan file, for people: `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// Every problem of a plan file's text, each with a line (1-based). Empty when the plan is valid.
pub fn diagnose(file: &str, text: &str) -> Vec<Diagnostic> {
    match PlanFile::parse(text) {
        Err(LoadError::Parse(message, line)) => vec![Diagnostic {
            file: file.to_string(),
            line: line.unwrap_or(1),
            message,
        }],
        Err(other) => vec![Diagnostic {
            file: file.to_string(),
            line: 1,
            message: other.to_string(),
        }],
        Ok(plan) => match plan.compile(0) {
            Ok(_) => Vec::new(),
            Err(errors) => errors
                .into_iter()
                .map(|e| Diagnostic {
                    file: file.to_string(),
                    line: locate(text, &e.path),
                    message: e.to_string(),
                })
                .collect(),
        },
    }
}

/// The line (1-based) of the key at `path` in a YAML (block or flow style) or JSON document: each
/// segment is looked for after the previous one. Falls back to the deepest segment found.
pub fn locate(text: &str, path: &[String]) -> usize {
    let mut pos: Option<usize> = None;
    for seg in path {
        let candidates = [
            format!("{seg}:"),
            format!("\"{seg}\":"),
            format!("'{seg}':"),
        ];
        let hit = candidates
            .iter()
            .flat_map(|c| text.match_indices(c.as_str()).map(|(i, _)| i))
            .filter(|&i| pos.is_none_or(|p| i > p))
            .filter(|&i| {
                i == 0
                    || text[..i]
                        .chars()
                        .next_back()
                        .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '{' | ',' | '-'))
            })
            .min();
        if let Some(i) = hit {
            pos = Some(i);
        }
    }
    pos.map_or(1, |p| text[..p].matches('\n').count() + 1)
}
