//! `corral_profiles_*` metrics (the registry adds the `corral_` prefix). The one label,
//! `replica`, is `graph`, `compute`, `accounts`, `events` or `merges`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The service's metrics.
pub struct Metrics {
    /// Records applied to the store, by replica.
    pub applied: IntCounterVec,
    /// `events.resolved` records that did not decode (skipped).
    pub undecodable: IntCounter,
    /// RocksDB's estimate of its live data.
    pub store_bytes: IntGauge,
    /// Deletion records of `profiles.merges` applied to the events index.
    pub deletions: IntCounter,
    /// Events of deleted lives erased from the index or skipped when read.
    pub erased_events: IntCounter,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let applied = IntCounterVec::new(
            Opts::new(
                "profiles_records_applied_total",
                "Changelog and event records applied to the profile store",
            ),
            &["replica"],
        )?;
        let undecodable = IntCounter::new(
            "profiles_undecodable_events_total",
            "events.resolved records that did not decode and were skipped",
        )?;
        let store_bytes = IntGauge::new(
            "profiles_store_bytes",
            "RocksDB's estimate of the profile store's live data",
        )?;
        let deletions = IntCounter::new(
            "profiles_deletions_total",
            "Deletion records (profiles.merges, empty into) applied to the events index",
        )?;
        let erased_events = IntCounter::new(
            "profiles_erased_events_total",
            "Events of deleted profiles erased from the events index or skipped when read",
        )?;
        registry.register(Box::new(deletions.clone()))?;
        registry.register(Box::new(erased_events.clone()))?;
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        Ok(Metrics {
            applied,
            undecodable,
            store_bytes,
            deletions,
            erased_events,
        })
    }
}
