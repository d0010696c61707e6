//! `corral_fanout_*` metrics. The `destination` label is a destination key: bounded by
//! configuration, never by data.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct FanoutMetrics {
    /// outcome: delivered, retried, dead_lettered, produced (Kafka), no_identifier.
    pub deliveries: IntCounterVec,
    pub retry_queue_depth: IntGaugeVec,
    pub retry_queue_oldest_age: IntGaugeVec,
    pub in_flight: IntGaugeVec,
    pub rate_limit_wait: prometheus::CounterVec,
    pub throttled: IntCounterVec,
    pub latency: HistogramVec,
    pub list_syncs: IntCounterVec,
    pub changes: IntCounterVec,
    pub destinations: IntGauge,
    pub undecodable_definitions: IntCounter,
    pub request_duration: Histogram,
    /// User-deletion requests (docs/privacy.md) by destination; outcome: queued, delivered,
    /// not_found (404: nothing to delete), dead_lettered, no_identifier.
    pub user_deletions: IntCounterVec,
}

impl FanoutMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            deliveries: IntCounterVec::new(
                Opts::new(
                    "fanout_deliveries_total",
                    "Delivery attempts' outcomes by destination.",
                ),
                &["destination", "outcome"],
            )?,
            retry_queue_depth: IntGaugeVec::new(
                Opts::new(
                    "fanout_retry_queue_depth",
                    "Deliveries waiting for a retry, by destination.",
                ),
                &["destination"],
            )?,
            retry_queue_oldest_age: IntGaugeVec::new(
                Opts::new(
                    "fanout_retry_queue_oldest_age_seconds",
                    "Age of the oldest delivery waiting for a retry, by destination.",
                ),
                &["destination"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "fanout_in_flight_requests",
                    "Requests sent and not yet answered.",
                ),
                &["destination"],
            )?,
            rate_limit_wait: prometheus::CounterVec::new(
                Opts::new(
                    "fanout_rate_limit_wait_seconds_total",
                    "Time deliveries waited for the rate limiter or a Retry-After pause.",
                ),
                &["destination"],
            )?,
            throttled: IntCounterVec::new(
                Opts::new("fanout_throttled_total", "429 responses, by destination."),
                &["destination"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "fanout_delivery_latency_seconds",
                    "From the change (record time) to the successful request, by destination.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0,
                    3600.0,
                ]),
                &["destination"],
            )?,
            list_syncs: IntCounterVec::new(
                Opts::new(
                    "fanout_list_syncs_total",
                    "List syncs started, by destination.",
                ),
                &["destination"],
            )?,
            user_deletions: IntCounterVec::new(
                Opts::new(
                    "fanout_user_deletions_total",
                    "User-deletion requests to destinations with a deletion API, by outcome.",
                ),
                &["destination", "outcome"],
            )?,
            changes: IntCounterVec::new(
                Opts::new("fanout_changes_total", "Input changes read, by kind."),
                &["kind"],
            )?,
            destinations: IntGauge::new("fanout_destinations", "Destinations loaded.")?,
            undecodable_definitions: IntCounter::new(
                "fanout_undecodable_definitions_total",
                "Destination definitions that could not be read.",
            )?,
            request_duration: Histogram::with_opts(HistogramOpts::new(
                "fanout_request_duration_seconds",
                "HTTP request duration.",
            ))?,
        };
        registry.register(Box::new(m.deliveries.clone()))?;
        registry.register(Box::new(m.retry_queue_depth.clone()))?;
        registry.register(Box::new(m.retry_queue_oldest_age.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.rate_limit_wait.clone()))?;
        registry.register(Box::new(m.throttled.clone()))?;
        registry.register(Box::new(m.latency.clone()))?;
        registry.register(Box::new(m.list_syncs.clone()))?;
        registry.register(Box::new(m.user_deletions.clone()))?;
        registry.register(Box::new(m.changes.clone()))?;
        registry.register(Box::new(m.destinations.clone()))?;
        registry.register(Box::new(m.undecodable_definitions.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        let r = Registry::new();
        // Registering into a fresh registry cannot collide.
        match Self::new(&r) {
            Ok(m) => m,
            Err(e) => panic!("metrics definitions are static and valid: {e}"),
        }
    }
}
