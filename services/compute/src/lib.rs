//! # corral-compute
//!
//! Real-time computed traits and audiences. The pure incremental engine ([`engine`]) keeps the
//! smallest per-profile state per planned leaf ([`state`], [`agg`]) and re-evaluates on every
//! event, identify, merge and timer, returning a change only where a result differs. The
//! service wiring on the stream runtime lives in the binary; [`query`] is the read-only profile
//! interface (`--query`) and [`client`] its client. See docs/compute.md.

/// The audiences file format and its operator actions, shared with `corralctl`.
pub use corral_ops::audiences as admin;
pub mod accounts;
pub mod agg;
pub mod backfill;
pub mod bench_defs;
/// The query interface's client and answer types, shared with `corralctl`.
pub use corral_ops::query::compute as client;
pub mod engine;
pub mod erase;
pub mod metrics;
pub mod query;
pub mod service;
pub mod state;
pub mod value;

pub use engine::{
    Absorbed, ActiveDefinition, Change, ChangeKind, DefinitionError, DefinitionSpec, Engine,
    EngineConfig, InEvent,
};
pub use state::{ExtId, ProfileState};
