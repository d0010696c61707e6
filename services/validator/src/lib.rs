//! Corral's validator: Segment Protocols on the exactly-once stream runtime.
//!
//! `events.raw` -> `events.valid` (annotated), `events.blocked` (intact, replayable),
//! `events.violations` (one record per violation, optionally also a `Violation Generated` event
//! back into `events.raw`), `events.dlq` (undecodable records), with messageId de-duplication in
//! a RocksDB store of the runtime. Tracking plans come from the compacted `definitions` topic and
//! are hot-reloaded. See `docs/validator.md`.
//!
//! The domain is pure: tracking plans and their evaluation ([`plan`], [`engine`]) live in
//! `corral_ops::plans`, shared with `corralctl plans validate|apply|check-event`, and
//! de-duplication in [`dedup`]; the runtime glue is [`processor`], plan hot-reload [`registry`].

pub mod dedup;
pub mod metrics;
pub mod processor;
pub mod registry;

pub use corral_ops::plans::{check, engine, kafka, plan};

#[cfg(test)]
#[path = "engine_tests.rs"]
mod engine_tests;

pub use engine::{evaluate, Decision, Verdict};
pub use plan::{CompiledPlan, PlanFile};
pub use processor::{dedup_store, ValidatorProcessor, DEDUP};
pub use registry::{PlanSet, PlanStore};

pub use corral_ops::{now_ms, parse_since};
/// Durations in flags and plans share the runtime's one format.
pub use corral_runtime::config::parse_duration_ms;
