//! The collector's own metrics. The registry adds the `corral_` prefix and the `service` label,
//! so `collector_requests_total` is exported as `corral_collector_requests_total`. Every label is
//! bounded: endpoint (the 6 message types, batch, settings, analytics_js), status (HTTP status
//! code), type (6 + unknown), outcome, reason, error. No label carries an identifier.

use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    /// `corral_collector_requests_total{endpoint,status}`
    pub requests: IntCounterVec,
    /// `corral_collector_request_duration_seconds{endpoint}`
    pub request_duration: HistogramVec,
    /// `corral_collector_request_size_bytes` (as received, before decompression)
    pub request_size: Histogram,
    /// `corral_collector_messages_total{type,outcome}`; outcome = accepted | dead_lettered | rejected
    pub messages: IntCounterVec,
    /// `corral_collector_dead_letters_total{reason}`
    pub dead_letters: IntCounterVec,
    /// `corral_collector_client_retries_total`: requests with `X-Retry-Count` > 0
    pub client_retries: IntCounter,
    /// `corral_collector_kafka_produce_errors_total{error}`
    pub produce_errors: IntCounterVec,
    /// `corral_collector_kafka_write_duration_seconds`: from enqueue to the last acknowledgement
    pub kafka_write_duration: Histogram,
    /// `corral_collector_definition_records_total{outcome}`: records of the definitions topic;
    /// outcome = applied | deleted | invalid | undecodable | ignored
    pub definition_records: IntCounterVec,
    /// `corral_collector_definition_sources`: sources loaded from the definitions topic
    pub definition_sources: IntGauge,
    /// `corral_collector_definition_write_keys`: distinct write keys loaded from it
    pub definition_keys: IntGauge,
    /// `corral_collector_definitions_loaded`: 1 once the topic was read to its end
    pub definitions_loaded: IntGauge,
    /// `corral_collector_suppressed_total`: messages answered 200 but dropped because they carry
    /// an identifier a privacy regulation suppresses
    pub suppressed: IntCounter,
    /// `corral_collector_suppressed_identifiers`: identifiers suppressed in force (every space)
    pub suppressed_ids: IntGauge,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "collector_requests_total",
                "Tracking API requests by endpoint and HTTP status.",
            ),
            &["endpoint", "status"],
        )?;
        let latency_buckets = exponential_buckets(0.0005, 2.0, 16)?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "collector_request_duration_seconds",
                "Tracking API request latency, including the wait for Kafka acknowledgements.",
            )
            .buckets(latency_buckets.clone()),
            &["endpoint"],
        )?;
        let request_size = Histogram::with_opts(
            HistogramOpts::new(
                "collector_request_size_bytes",
                "Request body size as received.",
            )
            .buckets(exponential_buckets(256.0, 4.0, 8)?),
        )?;
        let messages = IntCounterVec::new(
            Opts::new(
                "collector_messages_total",
                "Messages by type and outcome (accepted: written to events.raw; dead_lettered: written to events.dlq; suppressed: dropped by a privacy regulation; rejected: the request failed).",
            ),
            &["type", "outcome"],
        )?;
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "collector_dead_letters_total",
                "Messages answered 200 but written to events.dlq, by reason.",
            ),
            &["reason"],
        )?;
        let client_retries = IntCounter::with_opts(Opts::new(
            "collector_client_retries_total",
            "Requests that clients marked as retries (X-Retry-Count > 0).",
        ))?;
        let produce_errors = IntCounterVec::new(
            Opts::new(
                "collector_kafka_produce_errors_total",
                "Requests whose Kafka write failed, by error.",
            ),
            &["error"],
        )?;
        let kafka_write_duration = Histogram::with_opts(
            HistogramOpts::new(
                "collector_kafka_write_duration_seconds",
                "Time from enqueueing a request's records to the last acknowledgement.",
            )
            .buckets(latency_buckets),
        )?;
        let definition_records = IntCounterVec::new(
            Opts::new(
                "collector_definition_records_total",
                "Records read from the definitions topic, by outcome (applied, deleted, invalid, undecodable: source records; regulation: privacy regulations; ignored: other kinds).",
            ),
            &["outcome"],
        )?;
        let definition_sources = IntGauge::with_opts(Opts::new(
            "collector_definition_sources",
            "Sources loaded from the definitions topic.",
        ))?;
        let definition_keys = IntGauge::with_opts(Opts::new(
            "collector_definition_write_keys",
            "Distinct write keys loaded from the definitions topic.",
        ))?;
        let definitions_loaded = IntGauge::with_opts(Opts::new(
            "collector_definitions_loaded",
            "1 once the definitions topic was read to its end (0 while loading or absent).",
        ))?;
        let suppressed = IntCounter::with_opts(Opts::new(
            "collector_suppressed_total",
            "Messages answered 200 but dropped, never written, because they carry an identifier a privacy regulation suppresses.",
        ))?;
        let suppressed_ids = IntGauge::with_opts(Opts::new(
            "collector_suppressed_identifiers",
            "Identifiers suppressed in force by privacy regulations, over every space.",
        ))?;
        registry.register(Box::new(suppressed.clone()))?;
        registry.register(Box::new(suppressed_ids.clone()))?;
        registry.register(Box::new(definition_records.clone()))?;
        registry.register(Box::new(definition_sources.clone()))?;
        registry.register(Box::new(definition_keys.clone()))?;
        registry.register(Box::new(definitions_loaded.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(request_size.clone()))?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(client_retries.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(kafka_write_duration.clone()))?;
        Ok(Metrics {
            requests,
            request_duration,
            request_size,
            messages,
            dead_letters,
            client_retries,
            produce_errors,
            kafka_write_duration,
            definition_records,
            definition_sources,
            definition_keys,
            definitions_loaded,
            suppressed,
            suppressed_ids,
        })
    }
}
