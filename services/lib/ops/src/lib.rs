//! Operator actions on a Corral deployment, and the definition formats they share with the
//! services. `corralctl` is a thin command line over this crate, so it links no service.
//!
//! - [`acls`]: least-privilege Kafka ACLs per service (`corralctl acls`);
//! - [`plans`]: tracking plans (file format, the evaluation engine the validator runs, a dry run
//!   of one event), `plans apply` and `replay blocked`;
//! - [`audiences`]: audiences and computed traits (`audiences apply|list|delete|status`);
//! - [`accounts`]: what compute evaluates (how ACCOUNTS definitions split into per-user
//!   conditions and an account query; what `apply` refuses);
//! - [`destination`], [`destinations`]: fanout's destination specs, `destinations apply` and
//!   `replay deliveries`;
//! - [`export`]: an audience's members as CSV in Segment's three layouts;
//! - [`privacy`]: regulations (`corralctl privacy`): suppress, delete, unsuppress, status;
//! - [`sources`]: sources and their hashed write keys (`sources apply|list|delete`);
//! - [`query`]: clients of identity's and compute's query interfaces, with their wire types;
//! - [`tokens`]: the tokens those interfaces require (`tokens create|list|delete`).
//!
//! Every write to the `definitions` topic goes through `corral_runtime::definitions`
//! (`apply_versioned`: unchanged definitions are not written again, a change is the next
//! version); every read of a topic through `corral_runtime::reader` (`read_committed`).

pub mod accounts;
pub mod acls;
pub mod audiences;
pub mod destination;
pub mod destinations;
pub mod export;
pub mod plans;
pub mod privacy;
pub mod query;
pub mod sources;
pub mod tokens;

/// Durations in flags and definition files share the runtime's one format.
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
