//! Operator actions behind `corralctl`: apply a destinations file to the `definitions` topic,
//! and replay dead-lettered deliveries (re-injected through the `deliveries.replay` input, so
//! they go through the same lanes, limits, retries and per-profile order).

use std::collections::BTreeMap;
use std::path::Path;

use corral_codec::DeadLetter;
pub use corral_runtime::definitions::Applied;
use corral_runtime::definitions::{apply_versioned, Desired};
use corral_runtime::reader::{copy_selected, Start};
use corral_runtime::RuntimeError;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use crate::destination::DestinationsFile;
use crate::destination::KIND;

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

/// Writes every destination of `path` whose body changed to the definitions topic.
/// Fanout writes to a Kafka destination inside its transaction, and the broker does not create
/// topics: a destination whose topic is missing would fail every commit. Refuse it up front.
fn check_kafka_targets(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    file: &DestinationsFile,
) -> Result<(), OpsError> {
    let topics: Vec<(&str, &str)> = file
        .destinations
        .iter()
        .filter(|d| d.dest_type == crate::destination::DestinationType::Kafka)
        .filter_map(|d| Some((d.key.as_str(), d.topic.as_deref()?)))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let admin = corral_runtime::topics::TopicAdmin::connect(bootstrap, kafka)?;
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
    kafka: &BTreeMap<String, String>,
    definitions_topic: &str,
    path: &Path,
    updated_by: Option<String>,
) -> Result<Vec<Applied>, OpsError> {
    let file = load_file(path)?;
    check_kafka_targets(bootstrap, kafka, &file)?;
    let mut desired = Vec::with_capacity(file.destinations.len());
    for spec in &file.destinations {
        desired.push(Desired {
            space_id: file.space_id.clone(),
            kind: KIND.into(),
            key: spec.key.clone(),
            name: spec.name.clone(),
            body: serde_json::to_value(spec).map_err(|e| OpsError::Invalid(e.to_string()))?,
        });
    }
    apply_versioned(
        bootstrap,
        kafka,
        definitions_topic,
        &desired,
        updated_by.as_deref(),
        |_| Ok::<_, OpsError>(()),
    )
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
/// `progress` is called with the records read so far.
pub fn replay_deliveries(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    dlq_topic: &str,
    replay_topic: &str,
    filter: &ReplayFilter,
    progress: &mut dyn FnMut(u64),
) -> Result<usize, OpsError> {
    copy_selected(
        bootstrap,
        kafka,
        "corralctl-replay-deliveries",
        dlq_topic,
        Start::Beginning,
        replay_topic,
        filter.dry_run,
        progress,
        |m| {
            let Some(letter) = m.payload().and_then(|v| DeadLetter::decode(v).ok()) else {
                return Ok::<_, OpsError>(None);
            };
            let Some(value) = letter.value else {
                return Ok(None);
            };
            let dest = serde_json::from_slice::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| v["dest"].as_str().map(String::from));
            let wanted = letter.service == "fanout"
                && letter.failed_at_ms >= filter.since_ms
                && filter.reason.as_ref().is_none_or(|r| *r == letter.reason)
                && filter
                    .destination
                    .as_ref()
                    .is_none_or(|d| Some(d) == dest.as_ref());
            Ok(wanted.then(|| (letter.key.unwrap_or_default(), value)))
        },
    )
}
