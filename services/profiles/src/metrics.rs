//! `corral_profiles_*` metrics (the registry adds the `corral_` prefix). The one label,
//! `replica`, is `graph`, `compute`, `accounts` or `events`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The service's metrics.
pub struct Metrics {
    /// Records applied to the store, by replica.
    pub applied: IntCounterVec,
    /// `events.resolved` records that did not decode (skipped).
    pub undecodable: IntCounter,
    /// RocksDB's estimate of its live data.
    pub store_bytes: IntGauge,
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
        registry.register(Box::new(applied.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        registry.register(Box::new(store_bytes.clone()))?;
        Ok(Metrics {
            applied,
            undecodable,
            store_bytes,
        })
    }
}
