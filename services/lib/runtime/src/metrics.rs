//! The runtime's metrics (Prometheus names: `corral_` prefix, base units, `_total` counters; the registry adds the
//! `corral_` prefix and the `service` label).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct RuntimeMetrics {
    pub records_consumed: IntCounterVec,
    pub records_produced: IntCounterVec,
    pub commits: IntCounterVec,
    pub commit_duration: Histogram,
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub restore_remaining: IntGaugeVec,
    pub restored_records: IntCounterVec,
    pub restore_active: IntGauge,
    pub dlq_records: IntCounterVec,
    pub processing_duration: HistogramVec,
    pub client_rebuilds: IntCounter,
}

impl RuntimeMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            records_consumed: IntCounterVec::new(
                Opts::new("kafka_records_consumed_total", "Input records processed, by topic."),
                &["topic"],
            )?,
            records_produced: IntCounterVec::new(
                Opts::new(
                    "kafka_records_produced_total",
                    "Records produced inside transactions (outputs, changelogs, dead letters), by topic.",
                ),
                &["topic"],
            )?,
            commits: IntCounterVec::new(
                Opts::new(
                    "kafka_commits_total",
                    "Transactions ended, by result (committed, aborted).",
                ),
                &["result"],
            )?,
            commit_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kafka_commit_duration_seconds",
                    "Time to send offsets and commit one transaction.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )?,
            rebalances: IntCounterVec::new(
                Opts::new(
                    "kafka_rebalances_total",
                    "Rebalance callbacks, by kind (assign, revoke, lost).",
                ),
                &["kind"],
            )?,
            assigned_partitions: IntGauge::new(
                "kafka_assigned_partitions",
                "Input partitions currently assigned to this instance.",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "kafka_consumer_lag_records",
                    "Records of an assigned input partition not yet processed (last stable offset - position), per topic and partition, from the consumer's statistics every few seconds.",
                ),
                &["topic", "partition"],
            )?,
            restore_remaining: IntGaugeVec::new(
                Opts::new(
                    "state_restore_remaining_records",
                    "Changelog records left to restore, per store and partition (removed when done).",
                ),
                &["store", "partition"],
            )?,
            restored_records: IntCounterVec::new(
                Opts::new(
                    "state_restored_records_total",
                    "Changelog records applied during restore, by store.",
                ),
                &["store"],
            )?,
            restore_active: IntGauge::new(
                "state_restore_active",
                "1 while a store partition is being restored.",
            )?,
            dlq_records: IntCounterVec::new(
                Opts::new(
                    "dlq_records_total",
                    "Records sent to the dead-letter topic, by reason.",
                ),
                &["reason"],
            )?,
            processing_duration: HistogramVec::new(
                HistogramOpts::new(
                    "processing_duration_seconds",
                    "Time spent per loop stage (process: one poll batch between commits; restore: one partition).",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
                &["stage"],
            )?,
            client_rebuilds: IntCounter::new(
                "kafka_client_rebuilds_total",
                "Times the producer and consumer were torn down and rebuilt after a fatal error.",
            )?,
        };
        registry.register(Box::new(m.records_consumed.clone()))?;
        registry.register(Box::new(m.records_produced.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.commit_duration.clone()))?;
        registry.register(Box::new(m.rebalances.clone()))?;
        registry.register(Box::new(m.assigned_partitions.clone()))?;
        registry.register(Box::new(m.consumer_lag.clone()))?;
        registry.register(Box::new(m.restore_remaining.clone()))?;
        registry.register(Box::new(m.restored_records.clone()))?;
        registry.register(Box::new(m.restore_active.clone()))?;
        registry.register(Box::new(m.dlq_records.clone()))?;
        registry.register(Box::new(m.processing_duration.clone()))?;
        registry.register(Box::new(m.client_rebuilds.clone()))?;
        Ok(m)
    }
}
