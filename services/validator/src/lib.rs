//! Corral's validator: Segment Protocols on the exactly-once stream runtime.
//!
//! `events.raw` -> `events.valid` (annotated), `events.blocked` (intact, replayable),
//! `events.violations` (one record per violation, optionally also a `Violation Generated` event
//! back into `events.raw`), `events.dlq` (undecodable records), with messageId de-duplication in
//! a RocksDB store of the runtime. Tracking plans come from the compacted `definitions` topic and
//! are hot-reloaded. See `docs/validator.md`.
//!
//! The domain ([`plan`], [`engine`], [`dedup`]) is pure; Kafka is in [`kafka`] and the runtime
//! glue in [`processor`].

pub mod check;
pub mod dedup;
pub mod engine;
pub mod kafka;
pub mod metrics;
pub mod plan;
pub mod processor;
pub mod registry;

pub use engine::{evaluate, Decision, Verdict};
pub use plan::{CompiledPlan, PlanFile};
pub use processor::{Outputs, ValidatorProcessor};
pub use registry::{PlanSet, PlanStore};

/// Durations in flags and plans share the runtime's one format.
pub use corral_runtime::config::parse_duration_ms;

/// Wall-clock epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `--since`: an RFC 3339 time, or a duration before `now_ms` (`24h`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    parse_duration_ms(s)
        .map(|d| now_ms - d)
        .map_err(|e| format!("{e}, or an RFC 3339 time"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_duration_ms("24h"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("5y").is_err());
        assert_eq!(parse_since("1h", 10_000_000), Ok(10_000_000 - 3_600_000));
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0), Ok(1_000));
    }
}
