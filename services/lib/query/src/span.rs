//! Source positions.

use std::hash::{Hash, Hasher};

/// A byte range `[start, end)` in the query text.
///
/// Spans are positional metadata, not content: two spans always compare equal and hash alike, and
/// they are not serialised. That is what makes the AST canonical (the same definition written
/// with different spacing is the same value, and `parse(print(ast)) == ast` holds) while every
/// node still knows where it came from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
}

impl Span {
    /// A span covering `start..end`.
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// The smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// Number of bytes covered.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when the span covers nothing (end of input, for example).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

impl Eq for Span {}

impl Hash for Span {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

/// A 1-based line and column (column counted in characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineCol {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

/// Line and column of a byte offset in `src`. Offsets past the end or inside a multi-byte
/// character are clamped rather than trusted, so this never panics.
pub fn line_col(src: &str, offset: usize) -> LineCol {
    let offset = clamp_to_char_boundary(src, offset);
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = src[line_start..offset].chars().count() + 1;
    LineCol { line, column }
}

/// The largest char boundary not after `offset`.
pub(crate) fn clamp_to_char_boundary(src: &str, offset: usize) -> usize {
    let mut o = offset.min(src.len());
    while o > 0 && !src.is_char_boundary(o) {
        o -= 1;
    }
    o
}

/// The full text of the line containing `offset` (without its newline) and the byte offset
/// where that line starts.
pub(crate) fn line_text(src: &str, offset: usize) -> (&str, usize) {
    let offset = clamp_to_char_boundary(src, offset);
    let start = src[..offset].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let end = src[offset..]
        .find('\n')
        .map(|i| offset + i)
        .unwrap_or(src.len());
    (src[start..end].trim_end_matches('\r'), start)
}
