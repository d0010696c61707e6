//! Definitions files: the YAML model, the loader and `validate_definitions_file`.
//!
//! ```yaml
//! audiences:
//!   - key: stuck_before_activation
//!     name: Stuck Before Activation
//!     type: users            # or accounts
//!     include_historical_data: true
//!     query: >
//!       event('Account Created').count() >= 1
//! computed_traits:
//!   - key: feature_uses_30d
//!     query: event('Feature Used').within(30 days).count()
//! ```
//!
//! Errors are reported against the file: the query text inside the YAML scalar is mapped back
//! to the file's line and column, whatever the scalar style (plain, quoted, `>` or `|`).

use crate::ast::Query;
use crate::check::{check, Catalogue, CheckContext, Checked, DefinitionKind, Target};
use crate::error::{render_snippet, Diagnostic, ErrorCode, SnippetParts};
use crate::plan::{plan, PlanSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// One entry of `audiences:` or `computed_traits:` as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionEntry {
    /// Unique key; also the trait name other definitions reference.
    pub key: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// `users` (default) or `accounts`.
    #[serde(rename = "type", default)]
    pub kind: DefinitionKind,
    /// Backfill from history when created (default true, as in Segment).
    #[serde(default = "default_true")]
    pub include_historical_data: bool,
    /// The query-language text.
    pub query: String,
}

fn default_true() -> bool {
    true
}

/// The file as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionsFile {
    /// Audience definitions.
    #[serde(default)]
    pub audiences: Vec<DefinitionEntry>,
    /// Computed-trait definitions.
    #[serde(default)]
    pub computed_traits: Vec<DefinitionEntry>,
}

/// A parsed and checked definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Key.
    pub key: String,
    /// Display name (the key when the file gives none).
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Audience or computed trait.
    pub target: Target,
    /// Users or accounts.
    pub kind: DefinitionKind,
    /// Backfill from history.
    pub include_historical_data: bool,
    /// The query text as written.
    pub text: String,
    /// The canonical AST.
    pub query: Query,
    /// What the checker found.
    pub checked: Checked,
}

/// Every definition of a valid file, with the catalogue that resolves their references.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    /// In file order: audiences first, then computed traits.
    pub definitions: Vec<Definition>,
    /// Keys → definitions, for the checker, planner and evaluator.
    pub catalogue: Catalogue,
}

impl Definitions {
    /// The definition with this key.
    pub fn get(&self, key: &str) -> Option<&Definition> {
        self.definitions.iter().find(|d| d.key == key)
    }

    /// Plans every definition, sharing identical leaves.
    pub fn plan_set(&self) -> Result<PlanSet, Vec<Diagnostic>> {
        let mut set = PlanSet::new();
        for d in &self.definitions {
            let ctx = CheckContext {
                target: d.target,
                kind: d.kind,
                catalogue: &self.catalogue,
                key: Some(&d.key),
            };
            set.insert(d.key.clone(), plan(&d.query, &ctx)?);
        }
        Ok(set)
    }
}

/// A file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// I/O failure reading the file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file has errors; the report lists them.
    #[error("{0}")]
    Invalid(Box<ValidationReport>),
}

/// One error in a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileError {
    /// Kind.
    pub code: ErrorCode,
    /// Headline.
    pub message: String,
    /// 1-based line in the file.
    pub line: usize,
    /// 1-based column (characters) in the file.
    pub column: usize,
    /// The file line, for the snippet.
    pub line_text: String,
    /// Caret length in characters.
    pub caret_width: usize,
    /// Which definition, e.g. ``audience `big_spenders` ``.
    pub definition: Option<String>,
    /// What was expected.
    pub expected: Option<String>,
    /// Hint.
    pub help: Option<String>,
}

/// The result of validating a file: printable, and tells whether there were errors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    /// The file as named by the caller.
    pub file: String,
    /// Definitions found (audiences plus computed traits).
    pub definitions: usize,
    /// Every error, in file order.
    pub errors: Vec<FileError>,
}

impl ValidationReport {
    /// True when the file has at least one error.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// True when the file is valid.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            let text = render_snippet(&SnippetParts {
                message: &e.message,
                origin: &self.file,
                line: e.line,
                column: e.column,
                line_text: &e.line_text,
                caret_width: e.caret_width,
                context: e.definition.as_deref(),
                expected: e.expected.as_deref(),
                help: e.help.as_deref(),
            });
            writeln!(f, "{text}")?;
        }
        let n = self.errors.len();
        let defs = match self.definitions {
            1 => "1 definition".to_string(),
            d => format!("{d} definitions"),
        };
        match n {
            0 => write!(f, "{}: {defs}, no errors", self.file),
            1 => write!(f, "{}: 1 error in {defs}", self.file),
            _ => write!(f, "{}: {n} errors in {defs}", self.file),
        }
    }
}

/// Validates a definitions file, reporting every error with file, line, column and caret.
/// `Err` only when the file cannot be read.
pub fn validate_definitions_file(path: &Path) -> Result<ValidationReport, DefinitionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(validate_definitions_str(&text, &path.display().to_string()))
}

/// Validates definitions given as text; `origin` names the text in messages.
pub fn validate_definitions_str(text: &str, origin: &str) -> ValidationReport {
    match load(text, origin) {
        Ok(defs) => ValidationReport {
            file: origin.to_string(),
            definitions: defs.definitions.len(),
            errors: Vec::new(),
        },
        Err(r) => r,
    }
}

/// Loads, parses and checks a definitions file.
pub fn load_definitions_file(path: &Path) -> Result<Definitions, DefinitionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| DefinitionsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    load_definitions_str(&text, &path.display().to_string())
        .map_err(|r| DefinitionsError::Invalid(Box::new(r)))
}

/// Loads, parses and checks definitions given as text.
pub fn load_definitions_str(text: &str, origin: &str) -> Result<Definitions, ValidationReport> {
    load(text, origin)
}

fn load(text: &str, origin: &str) -> Result<Definitions, ValidationReport> {
    let mut report = ValidationReport {
        file: origin.to_string(),
        definitions: 0,
        errors: Vec::new(),
    };
    let file: DefinitionsFile = if text.trim().is_empty() {
        DefinitionsFile::default()
    } else {
        match serde_yaml_ng::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                let offset = e.location().map(|l| l.index()).unwrap_or(0);
                let mut msg = e.to_string();
                // the YAML parser appends its own position; ours is in the snippet.
                if let Some(i) = msg.rfind(" at line ") {
                    msg.truncate(i);
                }
                report.errors.push(file_error_at(
                    text,
                    offset,
                    1,
                    ErrorCode::InvalidDefinition,
                    format!("invalid definitions file: {msg}"),
                    None,
                ));
                return Err(report);
            }
        }
    };
    let layout = scan_layout(text);
    let entries: Vec<(Target, usize, &DefinitionEntry)> = file
        .audiences
        .iter()
        .enumerate()
        .map(|(i, e)| (Target::Audience, i, e))
        .chain(
            file.computed_traits
                .iter()
                .enumerate()
                .map(|(i, e)| (Target::ComputedTrait, i, e)),
        )
        .collect();
    report.definitions = entries.len();

    // Parse everything first, so references resolve regardless of order.
    let mut catalogue = Catalogue::new();
    let mut parsed: Vec<Option<Query>> = Vec::new();
    let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
    for (target, idx, entry) in &entries {
        let loc = layout.get(&(*target, *idx));
        let label = format!("{} `{}`", target.noun(), entry.key);
        let key_line = loc.and_then(|l| l.fields.get("key")).copied();
        if entry.key.trim().is_empty() || entry.key.chars().any(char::is_whitespace) {
            let (off, width) = key_line.unwrap_or((loc.map(|l| l.start).unwrap_or(0), 1));
            report.errors.push(file_error_at(
                text,
                off,
                width,
                ErrorCode::InvalidDefinition,
                format!(
                    "invalid key `{}`: keys must be non-empty and contain no spaces",
                    entry.key
                ),
                Some(label.clone()),
            ));
        } else if let Some(first) = first_line.get(entry.key.as_str()) {
            let (off, width) = key_line.unwrap_or((0, 1));
            report.errors.push(file_error_at(
                text,
                off,
                width,
                ErrorCode::InvalidDefinition,
                format!(
                    "duplicate key `{}` (first defined on line {first}); audience and computed-trait keys share one namespace",
                    entry.key
                ),
                Some(label.clone()),
            ));
        } else {
            let line = key_line
                .map(|(o, _)| crate::span::line_col(text, o).line)
                .unwrap_or(0);
            first_line.insert(entry.key.as_str(), line);
        }
        match crate::parser::parse(&entry.query) {
            Ok(q) => {
                if catalogue.get(&entry.key).is_none() {
                    catalogue.insert(entry.key.clone(), *target, entry.kind, Some(q.clone()));
                }
                parsed.push(Some(q));
            }
            Err(d) => {
                report
                    .errors
                    .push(map_diagnostic(text, loc, &entry.query, &d, &label));
                if catalogue.get(&entry.key).is_none() {
                    catalogue.insert(entry.key.clone(), *target, entry.kind, None);
                }
                parsed.push(None);
            }
        }
    }

    let mut definitions = Vec::new();
    for ((target, idx, entry), q) in entries.iter().zip(parsed) {
        let Some(q) = q else { continue };
        let loc = layout.get(&(*target, *idx));
        let label = format!("{} `{}`", target.noun(), entry.key);
        let ctx = CheckContext {
            target: *target,
            kind: entry.kind,
            catalogue: &catalogue,
            key: Some(&entry.key),
        };
        match check(&q, &ctx) {
            Ok(checked) => definitions.push(Definition {
                key: entry.key.clone(),
                name: entry.name.clone().unwrap_or_else(|| entry.key.clone()),
                description: entry.description.clone(),
                target: *target,
                kind: entry.kind,
                include_historical_data: entry.include_historical_data,
                text: entry.query.clone(),
                query: q,
                checked,
            }),
            Err(ds) => {
                for d in ds {
                    report
                        .errors
                        .push(map_diagnostic(text, loc, &entry.query, &d, &label));
                }
            }
        }
    }
    if report.has_errors() {
        report.errors.sort_by_key(|e| (e.line, e.column));
        return Err(report);
    }
    Ok(Definitions {
        definitions,
        catalogue,
    })
}

fn file_error_at(
    text: &str,
    offset: usize,
    width: usize,
    code: ErrorCode,
    message: String,
    definition: Option<String>,
) -> FileError {
    let lc = crate::span::line_col(text, offset);
    let (line_text, _) = crate::span::line_text(text, offset);
    FileError {
        code,
        message,
        line: lc.line,
        column: lc.column,
        line_text: line_text.to_string(),
        caret_width: width.max(1),
        definition,
        expected: None,
        help: None,
    }
}

/// Where an entry's fields sit in the file: byte offset of each field's value and its width
/// on that line, plus the raw region of the `query` value.
#[derive(Debug, Default)]
struct EntryLayout {
    start: usize,
    fields: BTreeMap<String, (usize, usize)>,
    /// Byte range of the raw `query` value (possibly several lines).
    query_region: Option<(usize, usize)>,
}

/// A small line scanner for the file's layout. the YAML parser gives values but not positions, so
/// this finds, for each list item under `audiences:` / `computed_traits:`, where its fields
/// are. It understands the block style the examples use; anything it cannot place falls back
/// to the item or file start, never to a wrong definition.
fn scan_layout(text: &str) -> BTreeMap<(Target, usize), EntryLayout> {
    let mut out: BTreeMap<(Target, usize), EntryLayout> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut off = 0;
    for l in text.split_inclusive('\n') {
        lines.push((off, l.trim_end_matches(['\n', '\r'])));
        off += l.len();
    }
    let mut section: Option<Target> = None;
    let mut item_indent: Option<usize> = None;
    let mut field_indent = 0usize;
    let mut index: Option<usize> = None;
    let mut i = 0;
    while i < lines.len() {
        let (loff, line) = lines[i];
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = &line[indent..];
        if content.is_empty() || content.starts_with('#') {
            i += 1;
            continue;
        }
        if indent == 0 && !content.starts_with('-') {
            section = if content.starts_with("audiences:") {
                Some(Target::Audience)
            } else if content.starts_with("computed_traits:") {
                Some(Target::ComputedTrait)
            } else {
                None
            };
            item_indent = None;
            index = None;
            i += 1;
            continue;
        }
        let Some(target) = section else {
            i += 1;
            continue;
        };
        let mut field_start = None;
        if (content.starts_with("- ") || content == "-")
            && item_indent.is_none_or(|ii| ii == indent)
        {
            item_indent = Some(indent);
            let n = index.map_or(0, |n| n + 1);
            index = Some(n);
            let after = &content[1..];
            let pad = after.len() - after.trim_start_matches(' ').len();
            field_indent = indent + 1 + pad;
            out.insert(
                (target, n),
                EntryLayout {
                    start: loff + indent,
                    ..Default::default()
                },
            );
            if !after.trim().is_empty() {
                field_start = Some(field_indent);
            }
        } else if index.is_some() && indent == field_indent {
            field_start = Some(indent);
        }
        if let (Some(fs), Some(n)) = (field_start, index) {
            let rest = &line[fs..];
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if name_len > 0 && rest[name_len..].starts_with(':') {
                let name = rest[..name_len].to_string();
                let after_colon = &rest[name_len + 1..];
                let vpad = after_colon.len() - after_colon.trim_start().len();
                let vstart = fs + name_len + 1 + vpad;
                let value = line[vstart..].trim_end();
                let width = value.chars().count().max(1);
                let entry = out.entry((target, n)).or_default();
                entry.fields.insert(name.clone(), (loff + vstart, width));
                if name == "query" {
                    // The value continues on following lines indented deeper than the field.
                    let mut end = i + 1;
                    while end < lines.len() {
                        let (_, l) = lines[end];
                        let ind = l.len() - l.trim_start_matches(' ').len();
                        if !l.trim().is_empty() && ind <= field_indent {
                            break;
                        }
                        end += 1;
                    }
                    let block = value.starts_with('>') || value.starts_with('|');
                    let region_start = if block {
                        lines.get(i + 1).map(|(o, _)| *o).unwrap_or(text.len())
                    } else {
                        loff + vstart
                    };
                    let region_end = lines
                        .get(end)
                        .map(|(o, _)| *o)
                        .unwrap_or(text.len())
                        .max(region_start);
                    entry.query_region = Some((region_start, region_end));
                }
            }
        }
        i += 1;
    }
    out
}

/// Maps a diagnostic in the query string to the file: aligns the query's non-blank characters
/// with the raw text of the YAML value (folding and indentation only change whitespace;
/// quoting adds characters that the alignment skips).
fn map_diagnostic(
    text: &str,
    loc: Option<&EntryLayout>,
    query: &str,
    d: &Diagnostic,
    label: &str,
) -> FileError {
    let fallback = loc
        .and_then(|l| l.fields.get("query").map(|(o, _)| *o).or(Some(l.start)))
        .unwrap_or(0);
    let map = loc
        .and_then(|l| l.query_region)
        .map(|(a, b)| align(text.get(a..b).unwrap_or(""), a, query))
        .unwrap_or_default();
    let to_file = |q_off: usize| -> Option<usize> {
        let idx = query
            .get(..crate::span::clamp_to_char_boundary(query, q_off))
            .map(|s| s.chars().count())?;
        map.get(idx).copied().flatten()
    };
    let start = to_file(d.span.start).unwrap_or(fallback);
    let q_chars = query
        .get(
            crate::span::clamp_to_char_boundary(query, d.span.start)
                ..crate::span::clamp_to_char_boundary(query, d.span.end.max(d.span.start)),
        )
        .map(|s| s.chars().count())
        .unwrap_or(1)
        .max(1);
    let lc = crate::span::line_col(text, start);
    let (line_text, line_start) = crate::span::line_text(text, start);
    // Prefer the mapped end if it lands on the same line; otherwise the query's own width.
    let end_off = d
        .span
        .end
        .checked_sub(1)
        .filter(|e| *e >= d.span.start)
        .and_then(to_file);
    let width = match end_off {
        Some(e) if e >= start && e < line_start + line_text.len() => text
            .get(start..=e)
            .map(|s| s.chars().count())
            .unwrap_or(q_chars),
        _ => q_chars,
    };
    let max = line_text
        .chars()
        .count()
        .saturating_sub(lc.column - 1)
        .max(1);
    FileError {
        code: d.code,
        message: d.message.clone(),
        line: lc.line,
        column: lc.column,
        line_text: line_text.to_string(),
        caret_width: width.min(max).max(1),
        definition: Some(label.to_string()),
        expected: d.expected.clone(),
        help: d.help.clone(),
    }
}

/// For each character of `query`, the file offset of the matching raw character (`None` once
/// alignment is lost).
fn align(raw: &str, raw_start: usize, query: &str) -> Vec<Option<usize>> {
    let raw: Vec<(usize, char)> = raw.char_indices().collect();
    let mut out = Vec::with_capacity(query.len());
    let mut r = 0;
    let mut lost = false;
    for qc in query.chars() {
        if lost {
            out.push(None);
            continue;
        }
        if qc.is_whitespace() {
            out.push(raw.get(r).map(|(o, _)| raw_start + o));
            continue;
        }
        match raw[r.min(raw.len())..].iter().position(|(_, c)| *c == qc) {
            Some(p) => {
                r += p;
                out.push(Some(raw_start + raw[r].0));
                r += 1;
            }
            None => {
                lost = true;
                out.push(None);
            }
        }
    }
    out.push(raw.get(r).map(|(o, _)| raw_start + o));
    out
}
