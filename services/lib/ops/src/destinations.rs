//! Operator actions behind `corralctl`: apply a destinations file to the `definitions` topic,
//! and replay dead-lettered deliveries (re-injected through the `deliveries.replay` input, so
//! they go through the same lanes, limits, retries and per-profile order).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use corral_codec::{DeadLetter, Definition};
use corral_runtime::definitions::{definition_key, publish, read_all};
use corral_runtime::produce::send_waiting;
use corral_runtime::RuntimeError;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::destination::DestinationsFile;
use crate::registry::KIND;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What `apply` did with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created { key: String },
    Updated { key: String, version: i64 },
    Unchanged { key: String, version: i64 },
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Applied::Created { key } => write!(f, "created   {key} (version 1)"),
            Applied::Updated { key, version } => write!(f, "updated   {key} (version {version})"),
            Applied::Unchanged { key, version } => write!(f, "unchanged {key} (version {version})"),
        }
    }
}

/// Parses and validates a destinations file (every error reported).
pub fn load_file(path: &Path) -> Result<DestinationsFile, OpsError> {
    let text = std::fs::read_to_string(path).map_err(|source| OpsError::Io {
        path: path.display().to_string(),
        source,
    })?;
    DestinationsFile::from_yaml(&text).map_err(|errs| {
        OpsError::Invalid(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}

fn now_ms() -> i64 {
    crate::lane::now_ms()
}

/// Writes every destination of `path` whose body changed to the definitions topic.
/// Fanout writes to a Kafka destination inside its transaction, and the broker does not create
/// topics: a destination whose topic is missing would fail every commit. Refuse it up front.
fn check_kafka_targets(bootstrap: &str, file: &DestinationsFile) -> Result<(), OpsError> {
    let topics: Vec<(&str, &str)> = file
        .destinations
        .iter()
        .filter(|d| d.dest_type == crate::destination::DestinationType::Kafka)
        .filter_map(|d| Some((d.key.as_str(), d.topic.as_deref()?)))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let admin = corral_runtime::topics::TopicAdmin::connect(bootstrap, &BTreeMap::new())?;
    for (key, topic) in topics {
        if admin.partitions(topic)?.is_none() {
            return Err(OpsError::Invalid(format!(
                "destination {key} writes to Kafka topic {topic}, which does not exist; create it first \
                 (fanout produces inside its transaction, so a missing topic would fail every commit)"
            )));
        }
    }
    Ok(())
}

pub fn apply_destinations(
    bootstrap: &str,
    definitions_topic: &str,
    path: &Path,
    updated_by: Option<String>,
) -> Result<Vec<Applied>, OpsError> {
    let file = load_file(path)?;
    let cfg = BTreeMap::new();
    check_kafka_targets(bootstrap, &file)?;
    let current = read_all(bootstrap, &cfg, definitions_topic, Duration::from_secs(30))?;
    let mut out = Vec::new();
    for spec in &file.destinations {
        let key = definition_key(&file.space_id, KIND, &spec.key);
        let body = serde_json::to_value(spec).map_err(|e| OpsError::Invalid(e.to_string()))?;
        let prev = current.get(&key);
        if let Some(p) = prev.filter(|p| p.body == body) {
            out.push(Applied::Unchanged {
                key: spec.key.clone(),
                version: p.version,
            });
            continue;
        }
        let version = prev.map_or(1, |p| p.version + 1);
        let def = Definition {
            space_id: file.space_id.clone(),
            kind: KIND.into(),
            key: spec.key.clone(),
            version,
            name: spec.name.clone(),
            body,
            updated_at_ms: now_ms(),
            updated_by: updated_by.clone(),
        };
        publish(bootstrap, &cfg, definitions_topic, &key, Some(&def))?;
        out.push(if version == 1 {
            Applied::Created {
                key: spec.key.clone(),
            }
        } else {
            Applied::Updated {
                key: spec.key.clone(),
                version,
            }
        });
    }
    Ok(out)
}

/// Which dead-lettered deliveries to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub since_ms: i64,
    pub destination: Option<String>,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// Re-injects matching deliveries from `dlq_topic` into `replay_topic`; returns how many.
pub fn replay_deliveries(
    bootstrap: &str,
    dlq_topic: &str,
    replay_topic: &str,
    filter: &ReplayFilter,
) -> Result<usize, OpsError> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "corralctl-replay-deliveries")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()?;
    let md = c.fetch_metadata(Some(dlq_topic), Duration::from_secs(10))?;
    let partitions = md
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        return Err(OpsError::Invalid(format!(
            "topic {dlq_topic} does not exist"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(dlq_topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()?;
    let mut at_end = HashSet::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (at_end.len() as i32) < partitions && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let Some(letter) = m.payload().and_then(|v| DeadLetter::decode(v).ok()) else {
                    continue;
                };
                let Some(value) = letter.value.as_deref() else {
                    continue;
                };
                let dest = serde_json::from_slice::<serde_json::Value>(value)
                    .ok()
                    .and_then(|v| v["dest"].as_str().map(String::from));
                if letter.service != "fanout"
                    || letter.failed_at_ms < filter.since_ms
                    || filter.reason.as_ref().is_some_and(|r| *r != letter.reason)
                    || filter
                        .destination
                        .as_ref()
                        .is_some_and(|d| Some(d) != dest.as_ref())
                {
                    continue;
                }
                n += 1;
                if filter.dry_run {
                    continue;
                }
                let key = letter.key.clone().unwrap_or_default();
                let rec = BaseRecord::to(replay_topic).key(&key).payload(value);
                send_waiting(&p, rec, Duration::from_millis(10))?;
            }
            Some(Err(KafkaError::PartitionEOF(part))) => {
                at_end.insert(part);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    p.flush(Duration::from_secs(60))?;
    Ok(n)
}
