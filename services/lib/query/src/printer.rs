//! The canonical printer: one line, single quotes, sugar operators, upper-case keywords,
//! parentheses only where the structure needs them. `parse(&print(&q)) == q` for every AST.

use crate::ast::*;
use std::fmt::{self, Display, Formatter, Write};

/// Prints a query in canonical form.
pub fn print(q: &Query) -> String {
    q.to_string()
}

impl Display for Query {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_expr(f, &self.expr, Ctx::Top)
    }
}

impl Display for Expr {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_expr(f, self, Ctx::Top)
    }
}

impl Display for Chain {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_chain(f, self, true)
    }
}

impl Display for Literal {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self {
            Literal::String(s) => write_string(f, s),
            Literal::Int(i) => write!(f, "{i}"),
            // Debug always keeps a `.` or an exponent, so the value re-lexes as a float.
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
            Literal::Timestamp(ts) => {
                write!(f, "{}", ts.format("%Y-%m-%dT%H:%M:%S%.f"))?;
                if ts.offset().local_minus_utc() == 0 {
                    f.write_char('Z')
                } else {
                    write!(f, "{}", ts.format("%:z"))
                }
            }
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Null => f.write_str("null"),
        }
    }
}

impl Display for Duration {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let plural = if self.amount == 1 { "" } else { "s" };
        write!(f, "{} {}{}", self.amount, self.unit.singular(), plural)
    }
}

impl Display for PropRef {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.kind {
            PropKind::Property => f.write_str("property(")?,
            PropKind::ParentProperty => f.write_str("property(parent: ")?,
            PropKind::Context => f.write_str("context(")?,
        }
        write_string(f, &self.name)?;
        f.write_char(')')
    }
}

impl Display for Call {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write_call(f, self)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Top,
    InOr,
    InAnd,
    Unary,
}

fn write_expr(f: &mut Formatter<'_>, e: &Expr, ctx: Ctx) -> fmt::Result {
    match e {
        Expr::Or { items, .. } => {
            let paren = ctx != Ctx::Top;
            write_junction(f, items, " OR ", Ctx::InOr, paren)
        }
        Expr::And { items, .. } => {
            let paren = matches!(ctx, Ctx::InAnd | Ctx::Unary);
            write_junction(f, items, " AND ", Ctx::InAnd, paren)
        }
        Expr::Not { expr, .. } => {
            f.write_str("NOT ")?;
            write_expr(f, expr, Ctx::Unary)
        }
        Expr::Quantified {
            quantifier, expr, ..
        } => {
            write!(f, "{} ", quantifier.keyword())?;
            write_expr(f, expr, Ctx::Unary)
        }
        Expr::Chain(c) => write_chain(f, c, true),
    }
}

fn write_junction(
    f: &mut Formatter<'_>,
    items: &[Expr],
    sep: &str,
    inner: Ctx,
    paren: bool,
) -> fmt::Result {
    if paren {
        f.write_char('(')?;
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write_expr(f, item, inner)?;
    }
    if paren {
        f.write_char(')')?;
    }
    Ok(())
}

fn write_chain(f: &mut Formatter<'_>, c: &Chain, allow_sugar: bool) -> fmt::Result {
    write_extractor(f, &c.source.kind)?;
    let last = c.calls.len().saturating_sub(1);
    for (i, call) in c.calls.iter().enumerate() {
        if let CallKind::Compare(cmp) = &call.kind {
            if allow_sugar && i == last {
                if let (Some(op), [operand]) = (cmp.sugar(), cmp.operands().as_slice()) {
                    write!(f, " {op} ")?;
                    write_chain(f, operand, false)?;
                    continue;
                }
            }
        }
        f.write_char('.')?;
        write_call(f, call)?;
    }
    Ok(())
}

fn write_extractor(f: &mut Formatter<'_>, k: &ExtractorKind) -> fmt::Result {
    match k {
        ExtractorKind::Event { name } => write_fn_str(f, "event", name),
        ExtractorKind::Entity { name } => write_fn_str(f, "entity", name),
        ExtractorKind::Trait { name } => write_fn_str(f, "trait", name),
        ExtractorKind::Context { name } => write_fn_str(f, "context", name),
        ExtractorKind::Property { name, parent } => {
            f.write_str(if *parent {
                "property(parent: "
            } else {
                "property("
            })?;
            write_string(f, name)?;
            f.write_char(')')
        }
        ExtractorKind::Literal { value } => write!(f, "{value}"),
    }
}

fn write_fn_str(f: &mut Formatter<'_>, name: &str, arg: &str) -> fmt::Result {
    write!(f, "{name}(")?;
    write_string(f, arg)?;
    f.write_char(')')
}

/// Single-quoted string. `'` becomes `\'`; a backslash is doubled only where the lexer would
/// otherwise read it as an escape (before `'`, `"`, `\` or the closing quote), so `\.` in a
/// path prints as written.
fn write_string(f: &mut Formatter<'_>, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => match chars.peek() {
                None | Some('\'' | '"' | '\\') => f.write_str("\\\\")?,
                Some(_) => f.write_char('\\')?,
            },
            _ => f.write_char(c)?,
        }
    }
    f.write_char('\'')
}

fn write_operands(f: &mut Formatter<'_>, ops: &[Operand]) -> fmt::Result {
    for (i, o) in ops.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write_chain(f, o, false)?;
    }
    Ok(())
}

fn write_as(f: &mut Formatter<'_>, t: &Option<ValueType>) -> fmt::Result {
    match t {
        Some(t) => write!(f, " as {}", t.keyword()),
        None => Ok(()),
    }
}

fn write_call(f: &mut Formatter<'_>, call: &Call) -> fmt::Result {
    match &call.kind {
        CallKind::Where { condition } => {
            f.write_str("where(")?;
            write_expr(f, condition, Ctx::Top)?;
            f.write_char(')')
        }
        CallKind::Sources { exclude } => {
            f.write_str("sources({exclude: ")?;
            for (i, s) in exclude.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write_string(f, s)?;
            }
            f.write_str("})")
        }
        CallKind::Within { parent, duration } => {
            let p = if *parent { "parent: " } else { "" };
            write!(f, "within({p}{duration})")
        }
        CallKind::Between { parent, from, to } => {
            let p = if *parent { "parent: " } else { "" };
            write!(f, "between({p}{from}, {to})")
        }
        CallKind::ExpiresAfter { duration } => write!(f, "expires_after({duration})"),
        CallKind::Reduce(r) => {
            write!(f, "{}(", r.name())?;
            match r {
                Reducer::Count => {}
                Reducer::Sum { of }
                | Reducer::Avg { of }
                | Reducer::First { of }
                | Reducer::Last { of }
                | Reducer::Unique { of } => write!(f, "{of}")?,
                Reducer::Min { of, as_type } | Reducer::Max { of, as_type } => {
                    write!(f, "{of}")?;
                    write_as(f, as_type)?;
                }
                Reducer::Mode {
                    of,
                    as_type,
                    min_frequency,
                } => {
                    write!(f, "{of}")?;
                    write_as(f, as_type)?;
                    write!(f, ", {min_frequency}")?;
                }
            }
            f.write_char(')')
        }
        CallKind::Compare(c) => {
            write!(f, "{}(", c.name())?;
            match c {
                Comparator::Absent | Comparator::Exists => {}
                Comparator::WithinLast(d)
                | Comparator::WithinNext(d)
                | Comparator::BeforeLast(d)
                | Comparator::AfterNext(d) => write!(f, "{d}")?,
                Comparator::Contains(v) | Comparator::OneOf(v) | Comparator::NoneOf(v) => {
                    write_operands(f, v)?
                }
                other => {
                    for o in other.operands() {
                        write_chain(f, o, false)?;
                    }
                }
            }
            f.write_char(')')
        }
    }
}
