//! Corral's collector: Segment's HTTP Tracking API in front of Kafka.
//!
//! Layout (after vectordotdev/vector's sources): [`config`] (flags, env, file), [`error`] (typed
//! errors and their HTTP answers), [`metrics`], the pure domain logic in [`auth`], [`ip`] and
//! [`ingest`] (parsing, limits, batch merge, timestamps, dead letters), and the edges: [`http`]
//! (axum) and [`sink`] (rdkafka). [`settings`] is what analytics.js loads before it sends
//! (`/v1/projects/{writeKey}/settings`), pointed at the collector's public URL, and [`bundle`]
//! the analytics.js files it can serve itself. [`sources`] is
//! the `source` definition (file format, write-key hashing, the operations of `corralctl
//! sources`); [`definitions`] follows the definitions topic so sources' keys work and stop
//! working without a restart, and so do [`suppress`]ions (privacy regulations). See `docs/collector.md`.

pub mod auth;
pub mod bundle;
pub mod config;
pub mod definitions;
pub mod error;
pub mod guard;
pub mod http;
pub mod ingest;
pub mod ip;
pub mod metrics;
pub mod readiness;
pub mod serve;
pub mod settings;
pub mod sink;
pub mod suppress;
pub use corral_ops::sources;
