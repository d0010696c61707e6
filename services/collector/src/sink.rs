//! The Kafka edge: writes a request's records and waits until Kafka acknowledged every one.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_telemetry::Health;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::error::SinkError;

/// Which topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Raw,
    Dlq,
}

/// One record to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: Topic,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Where accepted records go. `write` resolves only when every record is durably written.
pub trait Sink: Send + Sync + 'static {
    fn write(&self, records: Vec<OutRecord>) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// Keeps records in memory (unit tests); `fail` makes every write fail with that error.
#[derive(Default)]
pub struct MemorySink {
    pub records: Mutex<Vec<OutRecord>>,
    pub fail: Mutex<Option<SinkError>>,
}

impl Sink for MemorySink {
    async fn write(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        if let Some(e) = self
            .fail
            .lock()
            .map_err(|_| SinkError::Unavailable("poisoned".into()))?
            .clone()
        {
            return Err(e);
        }
        self.records
            .lock()
            .map_err(|_| SinkError::Unavailable("poisoned".into()))?
            .extend(records);
        Ok(())
    }
}

/// Marks the service not ready while librdkafka reports every broker down.
pub struct HealthContext {
    health: Arc<Health>,
}

impl ClientContext for HealthContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .set_not_ready(format!("all Kafka brokers are down: {reason}"));
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

/// Idempotent producer with `acks=all`; records keyed by messageId, partitioned like the Java client.
pub struct KafkaSink {
    producer: FutureProducer<HealthContext>,
    raw_topic: String,
    dlq_topic: String,
    health: Arc<Health>,
    /// False while something other than Kafka keeps the service unready (definitions loading):
    /// a successful write then must not mark it ready.
    ready_gate: Arc<AtomicBool>,
}

impl KafkaSink {
    pub fn new(cfg: &Config, health: Arc<Health>) -> Result<KafkaSink, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &cfg.kafka_bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", cfg.delivery_timeout_ms.to_string())
            // Reconnect promptly once the broker is back, so clients' retries land soon.
            .set("reconnect.backoff.max.ms", "1000")
            .set("client.id", "corral-collector");
        for (k, v) in &cfg.kafka_properties {
            cc.set(k, v);
        }
        let producer = cc.create_with_context(HealthContext {
            health: health.clone(),
        })?;
        Ok(KafkaSink {
            producer,
            raw_topic: cfg.raw_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            health,
            ready_gate: Arc::new(AtomicBool::new(true)),
        })
    }

    /// Checks that the broker answers and both topics exist; sets readiness accordingly.
    /// Blocking (librdkafka); call from a blocking thread.
    pub fn probe(&self, timeout: Duration) -> Result<(), String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(None, timeout)
            .map_err(|e| format!("Kafka metadata: {e}"))?;
        for t in [&self.raw_topic, &self.dlq_topic] {
            let found = md
                .topics()
                .iter()
                .any(|mt| mt.name() == t.as_str() && mt.error().is_none());
            if !found {
                return Err(format!("topic {t} does not exist"));
            }
        }
        Ok(())
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// See the field; the readiness loop in `main` holds it false while definitions load.
    pub fn ready_gate(&self) -> &Arc<AtomicBool> {
        &self.ready_gate
    }

    /// Whether `topic` exists (`Err`: the broker did not answer). Blocking.
    pub fn topic_exists(&self, topic: &str, timeout: Duration) -> Result<bool, String> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| format!("Kafka metadata: {e}"))?;
        Ok(md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Waits for outstanding deliveries (shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "flushing the producer at shutdown");
        }
    }
}

fn classify(e: &KafkaError) -> SinkError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::QueueFull) => SinkError::QueueFull,
        _ => SinkError::Unavailable(e.to_string()),
    }
}

impl Sink for KafkaSink {
    async fn write(&self, records: Vec<OutRecord>) -> Result<(), SinkError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let topic = match r.topic {
                Topic::Raw => self.raw_topic.as_str(),
                Topic::Dlq => self.dlq_topic.as_str(),
            };
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(&r.value);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            match self.producer.send_result(rec) {
                Ok(f) => pending.push(f),
                // Records already enqueued are still delivered; the client retries the whole
                // request, and the validator de-duplicates on messageId.
                Err((e, _)) => return Err(classify(&e)),
            }
        }
        let mut first_err = None;
        for f in pending {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    first_err.get_or_insert_with(|| classify(&e));
                }
                Err(_canceled) => {
                    first_err
                        .get_or_insert(SinkError::Unavailable("the producer was closed".into()));
                }
            }
        }
        match first_err {
            None => {
                if !self.health.is_ready() && self.ready_gate.load(Ordering::SeqCst) {
                    self.health.set_ready();
                }
                Ok(())
            }
            Some(e) => Err(e),
        }
    }
}
