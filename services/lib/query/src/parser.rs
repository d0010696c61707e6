//! Recursive-descent parser for the grammar of Part A.5, with Part E's extensions.

use crate::ast::*;
use crate::error::{Diagnostic, ErrorCode};
use crate::lexer::{lex, sugar_text, SugarOp, Tok, Token};
use crate::span::Span;
use crate::suggest::did_you_mean;

/// Deepest nesting of parentheses, `NOT`s, `where`s and operands the parser accepts. Deeper
/// input is rejected with an error rather than risking the stack.
pub const MAX_DEPTH: usize = 64;

/// Extractor names (chain starts).
pub const EXTRACTORS: &[&str] = &["event", "entity", "trait", "property", "context", "literal"];
/// Filter names.
pub const FILTERS: &[&str] = &["where", "sources", "within", "between", "expires_after"];
/// Reducer names.
pub const REDUCERS: &[&str] = &[
    "count", "sum", "avg", "max", "min", "mode", "first", "last", "unique",
];
/// Comparator names.
pub const COMPARATORS: &[&str] = &[
    "equals",
    "differs",
    "absent",
    "exists",
    "greater_than",
    "at_least",
    "less_than",
    "at_most",
    "contains",
    "omits",
    "starts_with",
    "ends_with",
    "one_of",
    "none_of",
    "before_date",
    "after_date",
    "within_last",
    "within_next",
    "before_last",
    "after_next",
];

/// Names from the 2024 drafts of the reference (Part C.2) and their current spelling.
const SUPERSEDED: &[(&str, &str)] = &[
    ("eq", "equals"),
    ("neq", "differs"),
    ("is_null", "absent"),
    ("is_set", "exists"),
    ("gt", "greater_than"),
    ("gte", "at_least"),
    ("lt", "less_than"),
    ("lte", "at_most"),
    ("contains_one", "contains"),
];

fn all_call_names() -> Vec<&'static str> {
    FILTERS
        .iter()
        .chain(REDUCERS)
        .chain(COMPARATORS)
        .copied()
        .collect()
}

/// Parses a whole definition.
pub fn parse(src: &str) -> Result<Query, Diagnostic> {
    let tokens = lex(src)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        depth: 0,
    };
    let expr = p.or_expr()?;
    let t = p.peek().clone();
    if t.tok != Tok::Eof {
        let mut d = Diagnostic::new(
            ErrorCode::UnexpectedToken,
            format!(
                "unexpected {} after a complete expression",
                t.tok.describe()
            ),
            t.span,
        )
        .expected("AND, OR or the end of the query");
        if let Tok::Ident(w) = &t.tok {
            if let Some(k) = did_you_mean(w, &["AND", "OR"]) {
                d.message = format!(
                    "unexpected {} after a complete expression; did you mean `{k}`?",
                    t.tok.describe()
                );
                d.suggestion = Some(k.to_string());
            }
        }
        if t.tok == Tok::RParen {
            d.message = "unmatched `)`".into();
        }
        return Err(d);
    }
    Ok(Query { expr })
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
}

/// Keywords compare case-insensitively (Part E.22).
fn is_keyword(tok: &Tok, kw: &str) -> bool {
    matches!(tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
}

impl Parser {
    fn peek(&self) -> &Token {
        // The token list always ends with Eof and `pos` never passes it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        &self.tokens[(self.pos + ahead).min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn prev_end(&self) -> usize {
        if self.pos == 0 {
            0
        } else {
            self.tokens[self.pos - 1].span.end
        }
    }

    fn unexpected(&self, expected: &str) -> Diagnostic {
        let t = self.peek();
        if t.tok == Tok::LBrace {
            return placeholder_error(t.span);
        }
        let code = if t.tok == Tok::Eof {
            ErrorCode::UnexpectedEnd
        } else {
            ErrorCode::UnexpectedToken
        };
        Diagnostic::new(
            code,
            format!("expected {expected}, found {}", t.tok.describe()),
            t.span,
        )
        .expected(expected.to_string())
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<Span, Diagnostic> {
        if self.peek().tok == tok {
            Ok(self.advance().span)
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn close(&mut self, func: &str) -> Result<Span, Diagnostic> {
        if self.peek().tok == Tok::RParen {
            Ok(self.advance().span)
        } else {
            let mut d = self.unexpected("`)`");
            d.message = format!(
                "expected `)` to close `{func}(`, found {}",
                self.peek().tok.describe()
            );
            Err(d)
        }
    }

    fn enter(&mut self) -> Result<(), Diagnostic> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Diagnostic::new(
                ErrorCode::TooDeep,
                format!("expression nested more than {MAX_DEPTH} levels deep"),
                self.peek().span,
            ));
        }
        Ok(())
    }

    fn or_expr(&mut self) -> Result<Expr, Diagnostic> {
        let first = self.and_expr()?;
        if !is_keyword(&self.peek().tok, "OR") {
            return Ok(first);
        }
        let mut items = vec![first];
        while is_keyword(&self.peek().tok, "OR") {
            self.advance();
            items.push(self.and_expr()?);
        }
        let span = items[0].span().to(items[items.len() - 1].span());
        Ok(Expr::Or { items, span })
    }

    fn and_expr(&mut self) -> Result<Expr, Diagnostic> {
        let first = self.unary()?;
        if !is_keyword(&self.peek().tok, "AND") {
            return Ok(first);
        }
        let mut items = vec![first];
        while is_keyword(&self.peek().tok, "AND") {
            self.advance();
            items.push(self.unary()?);
        }
        let span = items[0].span().to(items[items.len() - 1].span());
        Ok(Expr::And { items, span })
    }

    fn unary(&mut self) -> Result<Expr, Diagnostic> {
        self.enter()?;
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Expr, Diagnostic> {
        let t = self.peek().clone();
        if is_keyword(&t.tok, "NOT") {
            self.advance();
            let inner = self.unary()?;
            let span = t.span.to(inner.span());
            return Ok(Expr::Not {
                expr: Box::new(inner),
                span,
            });
        }
        for (kw, q) in [
            ("ANY", Quantifier::Any),
            ("ALL", Quantifier::All),
            ("NONE", Quantifier::None),
        ] {
            if is_keyword(&t.tok, kw) {
                self.advance();
                let inner = self.unary()?;
                let span = t.span.to(inner.span());
                return Ok(Expr::Quantified {
                    quantifier: q,
                    expr: Box::new(inner),
                    span,
                });
            }
        }
        if t.tok == Tok::LParen {
            self.advance();
            let inner = self.or_expr()?;
            if self.peek().tok != Tok::RParen {
                let mut d = self.unexpected("`)`");
                d.message = format!(
                    "expected `)` to close this parenthesis, found {}",
                    self.peek().tok.describe()
                );
                return Err(d);
            }
            self.advance();
            // `(trait('x')).exists()` and `(expr) = (value)`: parentheses around a chain that
            // has not been compared yet are transparent, and the chain continues.
            if matches!(self.peek().tok, Tok::Dot | Tok::Op(_)) {
                return match inner {
                    Expr::Chain(mut c) if !ends_in_comparison(&c) => {
                        self.continue_chain(&mut c, true)?;
                        Ok(Expr::Chain(c))
                    }
                    _ => Err(Diagnostic::new(
                        ErrorCode::UnexpectedToken,
                        format!(
                            "unexpected {} after a parenthesised condition",
                            self.peek().tok.describe()
                        ),
                        self.peek().span,
                    )
                    .expected("AND, OR, `)` or the end of the query")),
                };
            }
            return Ok(inner);
        }
        Ok(Expr::Chain(self.chain(true)?))
    }

    fn chain(&mut self, allow_sugar: bool) -> Result<Chain, Diagnostic> {
        let source = self.extractor()?;
        let mut chain = Chain {
            span: source.span,
            source,
            calls: Vec::new(),
        };
        self.continue_chain(&mut chain, allow_sugar)?;
        Ok(chain)
    }

    fn continue_chain(&mut self, chain: &mut Chain, allow_sugar: bool) -> Result<(), Diagnostic> {
        while self.peek().tok == Tok::Dot {
            self.advance();
            let call = self.call()?;
            chain.span = chain.span.to(call.span);
            chain.calls.push(call);
        }
        if allow_sugar {
            if let Tok::Op(op) = self.peek().tok {
                let op_tok = self.advance();
                let operand = Box::new(self.operand()?);
                let span = op_tok.span.to(operand.span);
                let cmp = match op {
                    SugarOp::Eq => Comparator::Equals(operand),
                    SugarOp::Ne => Comparator::Differs(operand),
                    SugarOp::Gt => Comparator::GreaterThan(operand),
                    SugarOp::Ge => Comparator::AtLeast(operand),
                    SugarOp::Lt => Comparator::LessThan(operand),
                    SugarOp::Le => Comparator::AtMost(operand),
                };
                chain.span = chain.span.to(span);
                chain.calls.push(Call {
                    kind: CallKind::Compare(cmp),
                    span,
                });
                if let Tok::Op(second) = self.peek().tok {
                    return Err(Diagnostic::new(
                        ErrorCode::UnexpectedToken,
                        format!(
                            "comparisons cannot be chained: unexpected `{}` after `{} ...`",
                            sugar_text(second),
                            sugar_text(op)
                        ),
                        self.peek().span,
                    )
                    .expected("AND, OR or the end of the query"));
                }
            }
        }
        Ok(())
    }

    fn string_arg(&mut self, func: &str) -> Result<(String, Span), Diagnostic> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Str(s) => {
                self.advance();
                Ok((s.to_string(), t.span))
            }
            Tok::Ident(_) => {
                // Unquoted names: cover every identifier up to the closing parenthesis.
                let mut span = t.span;
                let mut i = 0;
                while let Tok::Ident(_) = self.peek_at(i).tok {
                    span = span.to(self.peek_at(i).span);
                    i += 1;
                }
                Err(Diagnostic::new(
                    ErrorCode::UnexpectedToken,
                    format!("the argument of `{func}` must be a quoted string"),
                    span,
                )
                .expected(format!("a string such as {func}('Order Completed')")))
            }
            Tok::LBrace => Err(placeholder_error(t.span)),
            _ => Err(self.unexpected("a quoted string")),
        }
    }

    fn parent_prefix(&mut self) -> bool {
        if matches!(&self.peek().tok, Tok::Ident(s) if &**s == "parent")
            && self.peek_at(1).tok == Tok::Colon
        {
            self.advance();
            self.advance();
            true
        } else {
            false
        }
    }

    fn extractor(&mut self) -> Result<Extractor, Diagnostic> {
        let t = self.peek().clone();
        let literal = |value: Literal| Extractor {
            kind: ExtractorKind::Literal { value },
            span: t.span,
        };
        match &t.tok {
            Tok::Str(s) => {
                self.advance();
                Ok(literal(Literal::String(s.to_string())))
            }
            Tok::Int(i) => {
                self.advance();
                Ok(literal(Literal::Int(*i)))
            }
            Tok::Float(f) => {
                self.advance();
                Ok(literal(Literal::Float(*f)))
            }
            Tok::Date(d) => {
                self.advance();
                Ok(literal(Literal::Date(*d)))
            }
            Tok::Timestamp(ts) => {
                self.advance();
                Ok(literal(Literal::Timestamp(*ts)))
            }
            Tok::Ident(name) if self.peek_at(1).tok != Tok::LParen => {
                if let Some(v) = keyword_literal(name) {
                    self.advance();
                    return Ok(literal(v));
                }
                if self.peek_at(1).tok == Tok::Colon {
                    // `where({e: Comparator})`: the `{` was taken as where's optional brace.
                    return Err(placeholder_error(t.span));
                }
                if ["AND", "OR"].iter().any(|k| name.eq_ignore_ascii_case(k)) {
                    return Err(self.unexpected("an expression"));
                }
                let mut d = Diagnostic::new(
                    ErrorCode::UnexpectedToken,
                    format!("unexpected `{name}`; strings must be quoted"),
                    t.span,
                )
                .expected("an expression such as event('…'), trait('…') or a quoted string");
                let mut names: Vec<&str> = EXTRACTORS.to_vec();
                names.extend(["true", "false", "null"]);
                if let Some(s) = did_you_mean(name, &names) {
                    d.message = format!("unexpected `{name}`; did you mean `{s}`?");
                    d.suggestion = Some(s.to_string());
                }
                Err(d)
            }
            Tok::Ident(name) => {
                let name = name.to_string();
                self.advance();
                self.advance(); // `(`
                let kind = match name.as_str() {
                    "event" => ExtractorKind::Event {
                        name: self.string_arg("event")?.0,
                    },
                    "entity" => ExtractorKind::Entity {
                        name: self.string_arg("entity")?.0,
                    },
                    "trait" => ExtractorKind::Trait {
                        name: self.string_arg("trait")?.0,
                    },
                    "context" => ExtractorKind::Context {
                        name: self.string_arg("context")?.0,
                    },
                    "property" => {
                        let parent = self.parent_prefix();
                        ExtractorKind::Property {
                            name: self.string_arg("property")?.0,
                            parent,
                        }
                    }
                    "literal" => {
                        let inner = self.peek().clone();
                        let value = match &inner.tok {
                            Tok::Str(s) => Literal::String(s.to_string()),
                            Tok::Int(i) => Literal::Int(*i),
                            Tok::Float(f) => Literal::Float(*f),
                            Tok::Date(d) => Literal::Date(*d),
                            Tok::Timestamp(ts) => Literal::Timestamp(*ts),
                            Tok::Ident(w) if keyword_literal(w).is_some() => {
                                keyword_literal(w).unwrap_or(Literal::Null)
                            }
                            _ => {
                                return Err(self.unexpected(
                                    "a literal value (string, number, date, timestamp, true, false or null)",
                                ))
                            }
                        };
                        self.advance();
                        ExtractorKind::Literal { value }
                    }
                    other => return Err(self.misplaced_or_unknown(other, t.span, true)),
                };
                let end = self.close(&name)?;
                Ok(Extractor {
                    kind,
                    span: t.span.to(end),
                })
            }
            Tok::LBrace => Err(placeholder_error(t.span)),
            Tok::Eof => Err(Diagnostic::new(
                ErrorCode::UnexpectedEnd,
                "the query ended where an expression was expected",
                t.span,
            )
            .expected("an expression such as event('…').count() >= 1 or trait('…') = '…'")),
            _ => Err(self.unexpected("an expression such as event('…') or trait('…')")),
        }
    }

    /// Error for a name used where it cannot be (a call name at the start of a chain, an
    /// extractor after a dot) or not known at all.
    fn misplaced_or_unknown(&self, name: &str, span: Span, at_start: bool) -> Diagnostic {
        if let Some((_, new)) = SUPERSEDED.iter().find(|(old, _)| *old == name) {
            return Diagnostic::new(
                ErrorCode::UnknownFunction,
                format!("`{name}` is an old name from a 2024 draft of the language; use `{new}`"),
                span,
            )
            .suggestion(*new);
        }
        let calls = all_call_names();
        if at_start && calls.contains(&name) {
            return Diagnostic::new(
                ErrorCode::InvalidChain,
                format!("`{name}` cannot start an expression"),
                span,
            )
            .expected(
                "an extractor first: event(...), entity(...), trait(...), property(...), context(...) or literal(...)",
            )
            .help(format!("chain it after a stream or value, e.g. event('…').{name}(...)"));
        }
        if !at_start && EXTRACTORS.contains(&name) {
            return Diagnostic::new(
                ErrorCode::InvalidChain,
                format!("`{name}` starts an expression; it cannot follow `.`"),
                span,
            )
            .expected("a filter, reducer or comparison after `.`");
        }
        let mut candidates: Vec<&str> = Vec::new();
        if at_start {
            candidates.extend(EXTRACTORS);
        }
        candidates.extend(calls.iter().copied());
        if !at_start {
            candidates.extend(EXTRACTORS);
        }
        let expected = if at_start {
            "an extractor: event, entity, trait, property, context or literal"
        } else {
            "a filter (where, within, ...), a reducer (count, sum, ...) or a comparison (equals, exists, ...)"
        };
        let mut d = Diagnostic::new(
            ErrorCode::UnknownFunction,
            format!("unknown function `{name}`"),
            span,
        )
        .expected(expected);
        if let Some(s) = did_you_mean(name, &candidates) {
            d.message = format!("unknown function `{name}`; did you mean `{s}`?");
            d.suggestion = Some(s.to_string());
        }
        d
    }

    fn call(&mut self) -> Result<Call, Diagnostic> {
        let t = self.peek().clone();
        let name = match &t.tok {
            Tok::Ident(n) => n.to_string(),
            _ => {
                return Err(
                    self.unexpected("a function name after `.`, such as count() or within(7 days)")
                )
            }
        };
        self.advance();
        if self.peek().tok != Tok::LParen {
            let known = all_call_names().contains(&name.as_str());
            if known {
                let mut d = self.unexpected("`(`");
                d.message = format!(
                    "expected `(` after `{name}`, found {}",
                    self.peek().tok.describe()
                );
                return Err(d);
            }
            return Err(self.misplaced_or_unknown(&name, t.span, false));
        }
        let kind = match name.as_str() {
            "where" => {
                self.advance();
                // `where({...})` from the reference's syntax table: braces accepted, ignored.
                let braced = self.peek().tok == Tok::LBrace;
                if braced {
                    self.advance();
                }
                let condition = Box::new(self.or_expr()?);
                if braced {
                    self.expect(Tok::RBrace, "`}` to match the `{` after `where(`")?;
                }
                CallKind::Where { condition }
            }
            "sources" => {
                self.advance();
                self.expect(Tok::LBrace, "`{exclude: ...}`")?;
                match &self.peek().tok {
                    Tok::Ident(s) if &**s == "exclude" => {
                        self.advance();
                    }
                    _ => return Err(self.unexpected("`exclude`")),
                }
                self.expect(Tok::Colon, "`:` after `exclude`")?;
                let mut exclude = Vec::new();
                let bracketed = self.peek().tok == Tok::LBracket;
                if bracketed {
                    self.advance();
                }
                loop {
                    exclude.push(self.string_arg("sources")?.0);
                    if self.peek().tok == Tok::Comma {
                        self.advance();
                    } else {
                        break;
                    }
                }
                if bracketed {
                    self.expect(Tok::RBracket, "`]`")?;
                }
                self.expect(Tok::RBrace, "`}`")?;
                CallKind::Sources { exclude }
            }
            "within" | "between" | "expires_after" => {
                self.advance();
                let parent = name != "expires_after" && self.parent_prefix();
                let first = self.duration()?;
                match name.as_str() {
                    "within" => CallKind::Within {
                        parent,
                        duration: first,
                    },
                    "between" => {
                        if self.peek().tok != Tok::Comma {
                            let mut d = self.unexpected("`,` and a second duration");
                            d.message = format!(
                                "`between` takes two durations, e.g. between(7 days, 30 days); found {}",
                                self.peek().tok.describe()
                            );
                            return Err(d);
                        }
                        self.advance();
                        let to = self.duration()?;
                        CallKind::Between {
                            parent,
                            from: first,
                            to,
                        }
                    }
                    _ => CallKind::ExpiresAfter { duration: first },
                }
            }
            "count" => {
                self.advance();
                if self.peek().tok != Tok::RParen {
                    let mut d = self.unexpected("`)`");
                    d.message = "`count()` takes no arguments".into();
                    return Err(d);
                }
                CallKind::Reduce(Reducer::Count)
            }
            "sum" | "avg" | "first" | "last" | "unique" | "min" | "max" | "mode" => {
                self.advance();
                let of = self.prop_ref(&name)?;
                let as_type = self.as_type()?;
                if matches!(name.as_str(), "sum" | "avg" | "first" | "last" | "unique")
                    && as_type.is_some()
                {
                    return Err(Diagnostic::new(
                        ErrorCode::UnexpectedToken,
                        format!("`{name}` does not take `as <type>`; only min, max and mode do"),
                        Span::new(of.span.end, self.prev_end()),
                    ));
                }
                match name.as_str() {
                    "sum" => CallKind::Reduce(Reducer::Sum { of }),
                    "avg" => CallKind::Reduce(Reducer::Avg { of }),
                    "first" => CallKind::Reduce(Reducer::First { of }),
                    "last" => CallKind::Reduce(Reducer::Last { of }),
                    "unique" => CallKind::Reduce(Reducer::Unique { of }),
                    "min" => CallKind::Reduce(Reducer::Min { of, as_type }),
                    "max" => CallKind::Reduce(Reducer::Max { of, as_type }),
                    _ => {
                        if self.peek().tok != Tok::Comma {
                            let mut d = self.unexpected("`,` and a minimum frequency");
                            d.message =
                                "`mode` needs a minimum frequency, e.g. mode(property('x'), 2)"
                                    .into();
                            return Err(d);
                        }
                        self.advance();
                        let t = self.peek().clone();
                        let min_frequency = match t.tok {
                            Tok::Int(i) if i >= 0 => {
                                self.advance();
                                i as u64
                            }
                            _ => {
                                return Err(self.unexpected(
                                    "a whole number: the minimum frequency of the value",
                                ))
                            }
                        };
                        CallKind::Reduce(Reducer::Mode {
                            of,
                            as_type,
                            min_frequency,
                        })
                    }
                }
            }
            "absent" | "exists" => {
                self.advance();
                if self.peek().tok != Tok::RParen {
                    let mut d = self.unexpected("`)`");
                    d.message = format!("`{name}()` takes no arguments");
                    return Err(d);
                }
                CallKind::Compare(if name == "absent" {
                    Comparator::Absent
                } else {
                    Comparator::Exists
                })
            }
            "equals" | "differs" | "greater_than" | "at_least" | "less_than" | "at_most"
            | "omits" | "starts_with" | "ends_with" | "before_date" | "after_date" => {
                self.advance();
                let o = Box::new(self.operand()?);
                CallKind::Compare(match name.as_str() {
                    "equals" => Comparator::Equals(o),
                    "differs" => Comparator::Differs(o),
                    "greater_than" => Comparator::GreaterThan(o),
                    "at_least" => Comparator::AtLeast(o),
                    "less_than" => Comparator::LessThan(o),
                    "at_most" => Comparator::AtMost(o),
                    "omits" => Comparator::Omits(o),
                    "starts_with" => Comparator::StartsWith(o),
                    "ends_with" => Comparator::EndsWith(o),
                    "before_date" => Comparator::BeforeDate(o),
                    _ => Comparator::AfterDate(o),
                })
            }
            "contains" | "one_of" | "none_of" => {
                self.advance();
                let list = self.operand_list()?;
                CallKind::Compare(match name.as_str() {
                    "contains" => Comparator::Contains(list),
                    "one_of" => Comparator::OneOf(list),
                    _ => Comparator::NoneOf(list),
                })
            }
            "within_last" | "within_next" | "before_last" | "after_next" => {
                self.advance();
                let d = self.duration()?;
                CallKind::Compare(match name.as_str() {
                    "within_last" => Comparator::WithinLast(d),
                    "within_next" => Comparator::WithinNext(d),
                    "before_last" => Comparator::BeforeLast(d),
                    _ => Comparator::AfterNext(d),
                })
            }
            other => return Err(self.misplaced_or_unknown(other, t.span, false)),
        };
        let end = self.close(&name)?;
        Ok(Call {
            kind,
            span: t.span.to(end),
        })
    }

    fn as_type(&mut self) -> Result<Option<ValueType>, Diagnostic> {
        if !is_keyword(&self.peek().tok, "as") {
            return Ok(None);
        }
        self.advance();
        let t = self.peek().clone();
        let ty = match &t.tok {
            Tok::Ident(s) => match s.to_ascii_lowercase().as_str() {
                "number" => ValueType::Number,
                "string" => ValueType::String,
                "array" => ValueType::Array,
                other => {
                    let mut d = Diagnostic::new(
                        ErrorCode::UnexpectedToken,
                        format!("unknown type `{other}`"),
                        t.span,
                    )
                    .expected("number, string or array");
                    if let Some(s) = did_you_mean(other, &["number", "string", "array"]) {
                        d.message = format!("unknown type `{other}`; did you mean `{s}`?");
                        d.suggestion = Some(s.into());
                    }
                    return Err(d);
                }
            },
            _ => return Err(self.unexpected("a type after `as`: number, string or array")),
        };
        self.advance();
        Ok(Some(ty))
    }

    fn prop_ref(&mut self, func: &str) -> Result<PropRef, Diagnostic> {
        let t = self.peek().clone();
        let kind = match &t.tok {
            Tok::Ident(s) if &**s == "property" && self.peek_at(1).tok == Tok::LParen => {
                PropKind::Property
            }
            Tok::Ident(s) if &**s == "context" && self.peek_at(1).tok == Tok::LParen => {
                PropKind::Context
            }
            Tok::LBrace => return Err(placeholder_error(t.span)),
            _ => {
                let mut d = self.unexpected("property('…')");
                d.message = format!(
                    "`{func}` takes a property, e.g. {func}(property('amount')); found {}",
                    t.tok.describe()
                );
                return Err(d);
            }
        };
        self.advance();
        self.advance();
        let kind = if kind == PropKind::Property && self.parent_prefix() {
            PropKind::ParentProperty
        } else {
            kind
        };
        let fname = if kind == PropKind::Context {
            "context"
        } else {
            "property"
        };
        let (name, _) = self.string_arg(fname)?;
        let end = self.close(fname)?;
        Ok(PropRef {
            kind,
            name,
            span: t.span.to(end),
        })
    }

    fn operand(&mut self) -> Result<Operand, Diagnostic> {
        self.enter()?;
        let r = if self.peek().tok == Tok::LParen {
            self.advance();
            match self.operand() {
                Ok(o) => self.close("(").map(|_| o),
                Err(e) => Err(e),
            }
        } else if self.peek().tok == Tok::RParen {
            Err(self.unexpected("a value to compare with"))
        } else {
            self.chain(false)
        };
        self.depth -= 1;
        r
    }

    fn operand_list(&mut self) -> Result<Vec<Operand>, Diagnostic> {
        let bracketed = self.peek().tok == Tok::LBracket;
        if bracketed {
            self.advance();
        }
        let mut list = Vec::new();
        loop {
            list.push(self.operand()?);
            if self.peek().tok == Tok::Comma {
                self.advance();
            } else {
                break;
            }
        }
        if bracketed {
            self.expect(Tok::RBracket, "`]`")?;
        }
        Ok(list)
    }

    fn duration(&mut self) -> Result<Duration, Diagnostic> {
        let t = self.peek().clone();
        let amount = match t.tok {
            Tok::Int(i) if i >= 0 => i as u64,
            Tok::Int(_) => {
                return Err(Diagnostic::new(
                    ErrorCode::InvalidLiteral,
                    "durations cannot be negative",
                    t.span,
                )
                .expected("a duration such as `7 days`"))
            }
            Tok::Float(_) => {
                return Err(Diagnostic::new(
                    ErrorCode::InvalidLiteral,
                    "durations must be whole numbers",
                    t.span,
                )
                .expected("a duration such as `36 hours`"))
            }
            _ => return Err(self.unexpected("a duration such as `7 days`")),
        };
        self.advance();
        let u = self.peek().clone();
        let unit = match &u.tok {
            Tok::Ident(name) => match TimeUnit::from_name(name) {
                Some(unit) => unit,
                None => {
                    let mut d = Diagnostic::new(
                        ErrorCode::UnknownUnit,
                        format!("unknown time unit `{name}`"),
                        u.span,
                    )
                    .expected("seconds, minutes, hours, days or weeks");
                    if let Some(s) = did_you_mean(name, TimeUnit::NAMES) {
                        d.message = format!("unknown time unit `{name}`; did you mean `{s}`?");
                        d.suggestion = Some(s.into());
                    }
                    return Err(d);
                }
            },
            _ => {
                return Err(Diagnostic::new(
                    ErrorCode::UnknownUnit,
                    format!("missing time unit after `{amount}`"),
                    t.span,
                )
                .expected(format!(
                "a unit, e.g. `{amount} days`; units are seconds, minutes, hours, days or weeks"
            )))
            }
        };
        self.advance();
        Ok(Duration {
            amount,
            unit,
            span: t.span.to(u.span),
        })
    }
}

fn ends_in_comparison(c: &Chain) -> bool {
    matches!(
        c.calls.last(),
        Some(Call {
            kind: CallKind::Compare(_),
            ..
        })
    )
}

fn keyword_literal(w: &str) -> Option<Literal> {
    match w.to_ascii_lowercase().as_str() {
        "true" => Some(Literal::Bool(true)),
        "false" => Some(Literal::Bool(false)),
        "null" => Some(Literal::Null),
        _ => None,
    }
}

fn placeholder_error(span: Span) -> Diagnostic {
    Diagnostic::new(
        ErrorCode::UnexpectedToken,
        "unexpected `{`: `{name: Type}` is placeholder notation from the reference, not query text",
        span,
    )
    .expected("a value, e.g. event('Order Completed') instead of event({s: String})")
}
