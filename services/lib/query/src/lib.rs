//! # corral-query
//!
//! Segment's audience and computed-trait query language for Corral: parser, type checker,
//! canonical AST (serde) and printer, planner and reference evaluator, plus the definitions-file
//! loader behind `corralctl definitions validate`.
//!
//! ```
//! use corral_query::{parse, check, print, Catalogue, CheckContext, DefinitionKind, Target};
//!
//! let q = parse("event('Feature Used').within(30 days).count() >= 1 AND trait('plan') = 'trial'")
//!     .unwrap();
//! let catalogue = Catalogue::new();
//! let ctx = CheckContext { target: Target::Audience, kind: DefinitionKind::Users,
//!                          catalogue: &catalogue, key: None };
//! check(&q, &ctx).unwrap();
//! assert_eq!(parse(&print(&q)).unwrap(), q);
//! ```
//!
//! Pipeline: [`parse`] text into a [`Query`] (spans on every node, errors as [`Diagnostic`]s
//! that render with line, column and caret); [`check()`] it for a [`Target`] and
//! [`DefinitionKind`] against a [`Catalogue`] of other definitions; [`plan()`] it into leaves,
//! state and timers for the incremental engine; or evaluate it directly with
//! [`evaluate_audience`] / [`evaluate_trait`]. [`validate_definitions_file`] does all of the
//! checking for a YAML file of definitions. See the crate README for the decisions taken where
//! the reference is silent.
//!
//! The evaluator's value semantics are public in [`eval`] so an incremental engine compares
//! exactly as the reference does: [`eval::loose_eq`], [`eval::loose_cmp`],
//! [`eval::contains_any`], [`eval::as_f64`], [`eval::as_ts`], [`eval::parse_ts`],
//! [`eval::string_form`] and [`eval::lookup`].

pub mod ast;
pub mod check;
pub mod definitions;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzz;
mod lexer;
pub mod parser;
pub mod plan;
pub mod printer;
pub mod span;
pub mod suggest;

pub use ast::{Expr, Query};
pub use check::{
    check, Catalogue, CheckContext, Checked, DefinitionKind, ResultType, Target, MAX_EXPRESSIONS,
};
pub use definitions::{
    load_definitions_file, load_definitions_str, validate_definitions_file,
    validate_definitions_str, Definition, DefinitionEntry, Definitions, DefinitionsError,
    DefinitionsFile, FileError, ValidationReport,
};
pub use error::{Diagnostic, ErrorCode};
pub use eval::{
    evaluate_audience, evaluate_trait, Account, EntityRecord, EvalError, Evaluator, Event, Profile,
    Subject,
};
pub use parser::parse;
pub use plan::{plan, Plan, PlanSet};
pub use printer::print;
pub use span::Span;

/// Parses and checks in one step.
pub fn parse_and_check(src: &str, ctx: &CheckContext<'_>) -> Result<Query, Vec<Diagnostic>> {
    let q = parse(src).map_err(|d| vec![d])?;
    check(&q, ctx)?;
    Ok(q)
}
