//! Diagnostics: what went wrong, where, and what would have been right.

use crate::span::{clamp_to_char_boundary, line_col, line_text, Span};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// What kind of mistake a [`Diagnostic`] reports, for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A character that cannot start any token.
    InvalidCharacter,
    /// A string literal without its closing quote.
    UnterminatedString,
    /// A malformed number, date, timestamp or duration.
    InvalidLiteral,
    /// A token where another was required.
    UnexpectedToken,
    /// The input ended early.
    UnexpectedEnd,
    /// A function name the language does not have.
    UnknownFunction,
    /// A time unit the language does not have.
    UnknownUnit,
    /// Nesting deeper than the parser accepts.
    TooDeep,
    /// A call that may not follow what precedes it in the chain (Part A.10).
    InvalidChain,
    /// The definition or a sub-expression ends in the wrong type.
    TypeMismatch,
    /// A construct used outside the context where it is allowed (`property` outside `where`,
    /// `parent:` outside a child event, `ANY` in a USERS definition, ...).
    InvalidContext,
    /// More than 50 expressions in one definition.
    TooManyExpressions,
    /// A reference to another definition that closes a cycle.
    ReferenceCycle,
    /// A reference to an audience of the wrong level, or to an unknown definition.
    InvalidReference,
    /// A definitions-file problem (YAML syntax, missing or duplicate key, unknown field).
    InvalidDefinition,
}

/// One error, positioned in the query text.
///
/// `message` is the headline (it already carries any "did you mean" hint); `expected` says what
/// the parser or checker wanted instead; `help` is an extra hint line.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct Diagnostic {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// The headline, e.g. ``unknown function `cont`; did you mean `count`?``.
    pub message: String,
    /// Where in the query text. Byte offsets; not part of equality (see [`Span`]).
    #[serde(skip)]
    pub span: Span,
    /// What would have been accepted here.
    pub expected: Option<String>,
    /// A further hint.
    pub help: Option<String>,
    /// The replacement name suggested for a near miss, for tools that offer a fix.
    pub suggestion: Option<String>,
}

impl Diagnostic {
    /// A diagnostic with just a code, a message and a span.
    pub fn new(code: ErrorCode, message: impl Into<String>, span: Span) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            span,
            expected: None,
            help: None,
            suggestion: None,
        }
    }

    /// Adds the "expected" line.
    pub fn expected(mut self, what: impl Into<String>) -> Self {
        self.expected = Some(what.into());
        self
    }

    /// Adds a help line.
    pub fn help(mut self, what: impl Into<String>) -> Self {
        self.help = Some(what.into());
        self
    }

    /// Sets the "expected" line in place.
    pub fn with_expected(&mut self, what: impl Into<String>) -> &mut Self {
        self.expected = Some(what.into());
        self
    }

    /// Sets the help line in place.
    pub fn with_help(&mut self, what: impl Into<String>) -> &mut Self {
        self.help = Some(what.into());
        self
    }

    /// Records the suggested replacement.
    pub fn suggestion(mut self, name: impl Into<String>) -> Self {
        self.suggestion = Some(name.into());
        self
    }

    /// Line and column of the start of the span in `src`.
    pub fn line_col(&self, src: &str) -> crate::span::LineCol {
        line_col(src, self.span.start)
    }

    /// Renders the diagnostic against the query text it came from, `origin` naming the text
    /// (a file name, or `query`).
    ///
    /// ```text
    /// error: unknown function `cont`; did you mean `count`?
    ///  --> query:1:23
    ///   |
    /// 1 | event('Feature Used').cont() >= 1
    ///   |                       ^^^^
    ///   = expected: a filter, reducer or comparison after a stream
    /// ```
    pub fn render(&self, src: &str, origin: &str) -> String {
        let lc = line_col(src, self.span.start);
        let (line, line_start) = line_text(src, self.span.start);
        let start = clamp_to_char_boundary(src, self.span.start);
        let end = clamp_to_char_boundary(src, self.span.end.max(start));
        let line_end = line_start + line.len();
        let caret_chars = src[start..end.min(line_end).max(start)].chars().count();
        render_snippet(&SnippetParts {
            message: &self.message,
            origin,
            line: lc.line,
            column: lc.column,
            line_text: line,
            caret_width: caret_chars.max(1),
            context: None,
            expected: self.expected.as_deref(),
            help: self.help.as_deref(),
        })
    }
}

/// The pieces of a rendered error; shared by query-only and definitions-file rendering.
pub(crate) struct SnippetParts<'a> {
    pub message: &'a str,
    pub origin: &'a str,
    pub line: usize,
    pub column: usize,
    pub line_text: &'a str,
    pub caret_width: usize,
    pub context: Option<&'a str>,
    pub expected: Option<&'a str>,
    pub help: Option<&'a str>,
}

pub(crate) fn render_snippet(p: &SnippetParts<'_>) -> String {
    let num = p.line.to_string();
    let pad = " ".repeat(num.len());
    let mut out = String::new();
    // `write!` into a String cannot fail; ignoring the Result keeps this panic-free.
    let _ = writeln!(out, "error: {}", p.message);
    match p.context {
        Some(ctx) => {
            let _ = writeln!(out, "{pad}--> {}:{}:{} ({ctx})", p.origin, p.line, p.column);
        }
        None => {
            let _ = writeln!(out, "{pad}--> {}:{}:{}", p.origin, p.line, p.column);
        }
    }
    let _ = writeln!(out, "{pad} |");
    let shown: String = p
        .line_text
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let _ = writeln!(out, "{num} | {shown}");
    let _ = writeln!(
        out,
        "{pad} | {}{}",
        " ".repeat(p.column.saturating_sub(1)),
        "^".repeat(p.caret_width.max(1))
    );
    if let Some(e) = p.expected {
        let _ = writeln!(out, "{pad} = expected: {e}");
    }
    if let Some(h) = p.help {
        let _ = writeln!(out, "{pad} = help: {h}");
    }
    out
}

/// Renders several diagnostics against the same text, separated by blank lines.
pub fn render_all(diags: &[Diagnostic], src: &str, origin: &str) -> String {
    diags
        .iter()
        .map(|d| d.render(src, origin))
        .collect::<Vec<_>>()
        .join("\n")
}
