//! Tokens.

use crate::error::{Diagnostic, ErrorCode};
use crate::span::Span;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, TimeZone};
use std::rc::Rc;

/// Comparison sugar operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SugarOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    // Rc: the parser clones tokens freely while looking ahead; this keeps that allocation-free.
    Ident(Rc<str>),
    Str(Rc<str>),
    Int(i64),
    Float(f64),
    Date(NaiveDate),
    Timestamp(DateTime<FixedOffset>),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Dot,
    Colon,
    Op(SugarOp),
    Eof,
}

impl Tok {
    /// How the token is named in "found ..." messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(_) => "a string".into(),
            Tok::Int(_) | Tok::Float(_) => "a number".into(),
            Tok::Date(_) => "a date".into(),
            Tok::Timestamp(_) => "a timestamp".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Dot => "`.`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Op(op) => format!("`{}`", sugar_text(*op)),
            Tok::Eof => "the end of the query".into(),
        }
    }
}

pub(crate) fn sugar_text(op: SugarOp) -> &'static str {
    match op {
        SugarOp::Eq => "=",
        SugarOp::Ne => "!=",
        SugarOp::Gt => ">",
        SugarOp::Ge => ">=",
        SugarOp::Lt => "<",
        SugarOp::Le => "<=",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub span: Span,
}

/// Splits `src` into tokens, ending with `Eof`. Stops at the first lexical error.
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, Diagnostic> {
    let mut lx = Lexer {
        src,
        chars: src.char_indices().collect(),
        pos: 0,
        out: Vec::new(),
    };
    lx.run()?;
    Ok(lx.out)
}

struct Lexer<'a> {
    src: &'a str,
    chars: Vec<(usize, char)>,
    pos: usize,
    out: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).map(|(_, c)| *c)
    }

    fn offset(&self, idx: usize) -> usize {
        self.chars
            .get(idx)
            .map(|(o, _)| *o)
            .unwrap_or(self.src.len())
    }

    fn push(&mut self, tok: Tok, start_idx: usize) {
        let span = Span::new(self.offset(start_idx), self.offset(self.pos));
        self.out.push(Token { tok, span });
    }

    fn run(&mut self) -> Result<(), Diagnostic> {
        while let Some(c) = self.peek(0) {
            let start = self.pos;
            match c {
                c if c.is_whitespace() => self.pos += 1,
                '(' | ')' | '[' | ']' | '{' | '}' | ',' | ':' => {
                    self.pos += 1;
                    let tok = match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        '{' => Tok::LBrace,
                        '}' => Tok::RBrace,
                        ',' => Tok::Comma,
                        _ => Tok::Colon,
                    };
                    self.push(tok, start);
                }
                '.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number()?,
                '.' => {
                    self.pos += 1;
                    self.push(Tok::Dot, start);
                }
                '-' if self.peek(1).is_some_and(|d| d.is_ascii_digit() || d == '.') => {
                    self.number()?
                }
                '0'..='9' => self.number()?,
                '\'' | '"' => self.string(c)?,
                '=' | '!' | '>' | '<' => self.operator(c)?,
                '&' | '|' => {
                    let doubled = self.peek(1) == Some(c);
                    self.pos += if doubled { 2 } else { 1 };
                    let (word, text) = if c == '&' {
                        ("AND", if doubled { "&&" } else { "&" })
                    } else {
                        ("OR", if doubled { "||" } else { "|" })
                    };
                    return Err(self
                        .error(
                            ErrorCode::InvalidCharacter,
                            format!("`{text}` is not an operator in this language; use `{word}`"),
                            start,
                        )
                        .suggestion(word));
                }
                '‘' | '’' | '“' | '”' => {
                    self.pos += 1;
                    return Err(self
                        .error(
                            ErrorCode::InvalidCharacter,
                            format!("typographic quote `{c}`; use a straight quote `'`"),
                            start,
                        )
                        .suggestion("'"));
                }
                c if c.is_alphabetic() || c == '_' || c == '$' => {
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$')
                    {
                        self.pos += 1;
                    }
                    let text = self.text(start, self.pos).to_string();
                    self.push(Tok::Ident(text.into()), start);
                }
                _ => {
                    self.pos += 1;
                    return Err(self
                        .error(
                            ErrorCode::InvalidCharacter,
                            format!("unexpected character `{c}`"),
                            start,
                        )
                        .expected(
                            "a function such as event(...), a string, a number, `(`, AND, OR or NOT",
                        ));
                }
            }
        }
        let end = self.src.len();
        self.out.push(Token {
            tok: Tok::Eof,
            span: Span::new(end, end),
        });
        Ok(())
    }

    fn text(&self, from: usize, to: usize) -> &str {
        let a = self.offset(from);
        let b = self.offset(to);
        self.src.get(a..b).unwrap_or("")
    }

    fn error(&self, code: ErrorCode, msg: String, start_idx: usize) -> Diagnostic {
        Diagnostic::new(
            code,
            msg,
            Span::new(self.offset(start_idx), self.offset(self.pos)),
        )
    }

    fn operator(&mut self, c: char) -> Result<(), Diagnostic> {
        let start = self.pos;
        let next = self.peek(1);
        let (op, len) = match (c, next) {
            ('=', Some('=')) => (SugarOp::Eq, 2),
            ('=', _) => (SugarOp::Eq, 1),
            ('!', Some('=')) => (SugarOp::Ne, 2),
            ('>', Some('=')) => (SugarOp::Ge, 2),
            ('>', _) => (SugarOp::Gt, 1),
            ('<', Some('=')) => (SugarOp::Le, 2),
            ('<', Some('>')) => {
                self.pos += 2;
                return Err(self
                    .error(
                        ErrorCode::InvalidCharacter,
                        "`<>` is not an operator in this language; use `!=`".into(),
                        start,
                    )
                    .suggestion("!="));
            }
            ('<', _) => (SugarOp::Lt, 1),
            _ => {
                self.pos += 1;
                return Err(self
                    .error(
                        ErrorCode::InvalidCharacter,
                        "`!` is not an operator in this language; use `NOT` or `!=`".into(),
                        start,
                    )
                    .suggestion("NOT"));
            }
        };
        self.pos += len;
        self.push(Tok::Op(op), start);
        Ok(())
    }

    fn string(&mut self, quote: char) -> Result<(), Diagnostic> {
        let start = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            match self.peek(0) {
                None => {
                    return Err(self
                        .error(
                            ErrorCode::UnterminatedString,
                            format!("unterminated string; add the closing `{quote}`"),
                            start,
                        )
                        .expected(format!("`{quote}`")));
                }
                Some(c) if c == quote => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => {
                    // `\'`, `\"` and `\\` are escapes (Part E.7); any other backslash, notably
                    // `\.` (a literal dot in a path, Part E.6), is kept as written.
                    match self.peek(1) {
                        Some(n @ ('\'' | '"' | '\\')) => {
                            value.push(n);
                            self.pos += 2;
                        }
                        _ => {
                            value.push('\\');
                            self.pos += 1;
                        }
                    }
                }
                Some(c) => {
                    value.push(c);
                    self.pos += 1;
                }
            }
        }
        self.push(Tok::Str(value.into()), start);
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let mut n = 0;
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            n += 1;
        }
        n
    }

    fn number(&mut self) -> Result<(), Diagnostic> {
        let start = self.pos;
        if self.peek(0) == Some('-') {
            self.pos += 1;
        }
        let int_digits = self.digits();
        // A date is four digits, `-`, two digits, `-`, two digits; a `T` makes it a timestamp.
        if int_digits == 4
            && self.peek(0) == Some('-')
            && self.peek(1).is_some_and(|c| c.is_ascii_digit())
            && self.text(start, start + 1) != "-"
        {
            return self.date_or_timestamp(start);
        }
        let mut is_float = false;
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
            is_float = true;
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let sign = usize::from(matches!(self.peek(1), Some('+' | '-')));
            if self.peek(1 + sign).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1 + sign;
                self.digits();
                is_float = true;
            }
        }
        let text = self.text(start, self.pos).to_string();
        if is_float {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => self.push(Tok::Float(v), start),
                _ => {
                    return Err(self.error(
                        ErrorCode::InvalidLiteral,
                        format!("number `{text}` is out of range"),
                        start,
                    ))
                }
            }
        } else {
            match text.parse::<i64>() {
                Ok(v) => self.push(Tok::Int(v), start),
                Err(_) => {
                    return Err(self.error(
                        ErrorCode::InvalidLiteral,
                        format!("number `{text}` is out of range"),
                        start,
                    ))
                }
            }
        }
        Ok(())
    }

    fn date_or_timestamp(&mut self, start: usize) -> Result<(), Diagnostic> {
        // Consume the rest of the date: `-MM-DD`.
        while self.peek(0).is_some_and(|c| c.is_ascii_digit() || c == '-') {
            self.pos += 1;
        }
        let date_text = self.text(start, self.pos).to_string();
        if self.peek(0) != Some('T') {
            return match NaiveDate::parse_from_str(&date_text, "%Y-%m-%d") {
                Ok(d) if date_text.len() == 10 => {
                    self.push(Tok::Date(d), start);
                    Ok(())
                }
                _ => Err(self
                    .error(
                        ErrorCode::InvalidLiteral,
                        format!("invalid date `{date_text}`"),
                        start,
                    )
                    .expected("a date as yyyy-mm-dd, e.g. 2023-12-07")),
            };
        }
        self.pos += 1;
        // Time: digits and colons, a `.` only when a digit follows (so `...00.count()` still
        // ends the timestamp at the dot).
        loop {
            match self.peek(0) {
                Some(c) if c.is_ascii_digit() || c == ':' => self.pos += 1,
                Some('.') if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => self.pos += 1,
                _ => break,
            }
        }
        let naive_end = self.pos;
        let mut offset_secs: Option<i32> = None;
        match self.peek(0) {
            Some('Z' | 'z') => {
                self.pos += 1;
                offset_secs = Some(0);
            }
            Some(sign @ ('+' | '-')) if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.pos += 1;
                let o_start = self.pos;
                while self.peek(0).is_some_and(|c| c.is_ascii_digit() || c == ':') {
                    self.pos += 1;
                }
                let digits: String = self
                    .text(o_start, self.pos)
                    .chars()
                    .filter(|c| *c != ':')
                    .collect();
                let parsed = if digits.len() == 4 {
                    match (digits[..2].parse::<i32>(), digits[2..].parse::<i32>()) {
                        (Ok(h), Ok(m)) if h < 24 && m < 60 => Some(h * 3600 + m * 60),
                        _ => None,
                    }
                } else {
                    None
                };
                match parsed {
                    Some(s) => offset_secs = Some(if sign == '-' { -s } else { s }),
                    None => {
                        return Err(self
                            .error(
                                ErrorCode::InvalidLiteral,
                                format!("invalid timestamp `{}`", self.text(start, self.pos)),
                                start,
                            )
                            .expected("an ISO 8601 timestamp such as 2023-12-07T18:50:00Z"))
                    }
                }
            }
            _ => {}
        }
        let naive_text = self.text(start, naive_end).to_string();
        let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(&naive_text, f).ok());
        // No offset means UTC (Segment converts UI times to UTC).
        let ts = naive.and_then(|n| {
            FixedOffset::east_opt(offset_secs.unwrap_or(0))
                .and_then(|o| o.from_local_datetime(&n).single())
        });
        match ts {
            Some(ts) => {
                self.push(Tok::Timestamp(ts), start);
                Ok(())
            }
            None => Err(self
                .error(
                    ErrorCode::InvalidLiteral,
                    format!("invalid timestamp `{}`", self.text(start, self.pos)),
                    start,
                )
                .expected("an ISO 8601 timestamp such as 2023-12-07T18:50:00Z")),
        }
    }
}
