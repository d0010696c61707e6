//! Corral's identity service: Segment Unify identity resolution on the exactly-once runtime.
//!
//! `events.valid` -> `events.resolved` (key: profile id) and `profiles.merges` (key: the merged-away
//! profile id). The protocol across partitions (`docs/identity.md`): the validator keys `events.valid`
//! by each event's routing identifier (`corral_codec::routing`); a **stitcher** per partition of
//! it (and of the co-partitioned links topic `identity.events-by-id`) resolves events whose
//! identifiers are all already linked to one profile
//! (the common case, spread over every partition) and sends the rest, keyed by space, to
//! `identity.events-by-space`; a **coordinator** per partition of that topic is the single writer
//! of the identity graph of the spaces hashed to it, emits the resolved events and merges, and
//! sends the stitchers fresh links. Both are exactly-once runtimes in one process.
//!
//! Guarantees: an identifier belongs to one profile at a time; a profile id resolves forever
//! (retired ids alias their survivor); the same input gives the same grouping and the same ids
//! whatever the order, instances and partitions; every event is resolved exactly once, to the
//! profile its identifiers belonged to at the coordinator's last change of them that its stitcher
//! had read, which is the live profile or one merged into it (see [`stitch`]).
//!
//! The domain is pure and tested without Kafka: [`ids`] (external-id extraction), [`rules`]
//! (blocked values, limits, priorities, caps, merge protection), [`engine`] (flat matching,
//! deterministic profile ids), [`stitch`] (routing and link lookups). [`store`] maps the graph onto
//! a runtime store, [`processor`] is the runtime glue, [`view`] answers Profile API reads
//! ([`client`] asks them), [`kafka`] holds the Kafka edges. [`privacy`] carries out deletion
//! requests on the coordinator (docs/privacy.md).

/// The query interface's client and answer types, shared with `corralctl`.
pub use corral_ops::query::identity as client;
pub mod engine;
pub mod ids;
pub mod kafka;
pub mod metrics;
pub mod privacy;
pub mod processor;
pub mod rules;
pub mod stitch;
pub mod store;
pub mod view;

#[cfg(test)]
mod engine_tests;

pub use engine::{profile_id, resolve, Graph, MemGraph, MergeKind, Outcome, Profile, Resolution};
pub use ids::{extract, Extracted, Ident};
pub use rules::{Rules, RulesStore, Settings};

/// Durations in flags and settings share the runtime's one format.
pub use corral_runtime::config::parse_duration_ms;

/// Wall-clock epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
