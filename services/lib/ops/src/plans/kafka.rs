//! Kafka at the edges: the `definitions` reader that hot-reloads plans, and the operator actions
//! behind `corralctl plans apply` and `corralctl replay blocked`. Reading and writing
//! `definitions` is `corral_runtime::definitions`; this module only adds what plans need.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, BlockedEvent, Definition};
use corral_runtime::definitions;
use corral_runtime::produce::send_waiting;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use crate::metrics::Metrics;
use crate::now_ms;
use crate::plan::{self, PlanFile, KIND};
use crate::registry::{definition_key, Applied, PlanStore};

#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    #[error("Kafka error while {during}: {source}")]
    Kafka {
        during: &'static str,
        source: KafkaError,
    },
    #[error("topic {0} does not exist (create it with `corralctl topics apply`)")]
    NoTopic(String),
    #[error("{0}")]
    Plan(String),
    #[error("encoding: {0}")]
    Codec(#[from] corral_codec::CodecError),
    #[error(transparent)]
    Definitions(#[from] corral_runtime::RuntimeError),
}

fn kafka(during: &'static str) -> impl FnOnce(KafkaError) -> KafkaOpError {
    move |source| KafkaOpError::Kafka { during, source }
}

fn consumer(
    bootstrap: &str,
    extra: &BTreeMap<String, String>,
    group: &str,
) -> Result<BaseConsumer, KafkaOpError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    for (k, v) in extra {
        cc.set(k, v);
    }
    cc.create().map_err(kafka("creating a consumer"))
}

fn assign_all(c: &BaseConsumer, topic: &str, offset: Offset) -> Result<i32, KafkaOpError> {
    let n = corral_runtime::follow::partition_count(c, topic, Duration::ZERO)
        .map_err(kafka("fetching metadata"))?;
    if n == 0 {
        return Err(KafkaOpError::NoTopic(topic.to_string()));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, offset)
            .map_err(kafka("assigning partitions"))?;
    }
    c.assign(&tpl).map_err(kafka("assigning partitions"))?;
    Ok(n)
}

/// Reads `definitions` from the beginning into `plans`, then follows it until `shutdown`. Sets
/// `caught_up` once every partition reached its end once: the service starts processing only
/// then, so no message is validated against a partial set of plans.
pub fn spawn_definitions_reader(
    bootstrap: String,
    extra: BTreeMap<String, String>,
    topic: String,
    plans: Arc<PlanStore>,
    metrics: Arc<Metrics>,
    caught_up: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaOpError> {
    let mut cfg = BTreeMap::from([("group.id".into(), "corral-validator-definitions".into())]);
    cfg.extend(extra);
    let handle =
        definitions::follow(
            &bootstrap,
            &cfg,
            &topic,
            caught_up,
            shutdown,
            move |ev| match plans.apply_logged(ev) {
                Some(Applied::Loaded { .. } | Applied::Removed { .. }) => {
                    publish_plan_metrics(&plans, &metrics)
                }
                Some(Applied::Ignored) => {}
                None => metrics.definition_errors.inc(),
            },
        )?;
    Ok(handle)
}

fn publish_plan_metrics(plans: &PlanStore, metrics: &Metrics) {
    let snap = plans.snapshot();
    metrics.plan_version.reset();
    for p in snap.plans() {
        metrics
            .plan_version
            .with_label_values(&[p.space_id.as_str(), p.key.as_str()])
            .set(p.version);
    }
    metrics.plans_loaded.set(snap.len() as i64);
}

fn producer(bootstrap: &str) -> Result<BaseProducer, KafkaOpError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .map_err(kafka("creating a producer"))
}

fn send(p: &BaseProducer, topic: &str, key: &[u8], value: &[u8]) -> Result<(), KafkaOpError> {
    let rec = BaseRecord::to(topic).key(key).payload(value);
    send_waiting(p, rec, Duration::from_millis(10)).map_err(|source| KafkaOpError::Kafka {
        during: "producing",
        source,
    })
}

/// What `plans apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyResult {
    Applied { key: String, version: i64 },
    Unchanged { key: String, version: i64 },
}

impl std::fmt::Display for ApplyResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyResult::Applied { key, version } => write!(f, "applied {key} version {version}"),
            ApplyResult::Unchanged { key, version } => {
                write!(f, "unchanged {key} (version {version})")
            }
        }
    }
}

/// Validates the plan file and writes it to `definitions` as the next version (unchanged plans
/// are not written again). Refuses a plan that claims a source another plan of the space has.
pub fn apply_plan(
    bootstrap: &str,
    definitions_topic: &str,
    path: &Path,
    updated_by: Option<String>,
) -> Result<ApplyResult, KafkaOpError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KafkaOpError::Plan(format!("cannot read {}: {e}", path.display())))?;
    let diags = plan::diagnose(&path.display().to_string(), &text);
    if !diags.is_empty() {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(KafkaOpError::Plan(lines.join("\n")));
    }
    let file = PlanFile::parse(&text).map_err(|e| KafkaOpError::Plan(e.to_string()))?;
    let body = file.to_json();
    let dkey = definition_key(&file.space_id, &file.key);
    // The reader's name only; the producer below takes no group.
    let cli_cfg = BTreeMap::from([("group.id".into(), "corralctl-definitions".into())]);
    let current = definitions::read_all(
        bootstrap,
        &cli_cfg,
        definitions_topic,
        Duration::from_secs(60),
    )?;
    for (k, d) in &current {
        if k == &dkey || d.kind != KIND || d.space_id != file.space_id {
            continue;
        }
        if let Ok(other) = PlanFile::from_json(d.body.clone()) {
            if let Some(s) = other.sources.iter().find(|s| file.sources.contains(s)) {
                return Err(KafkaOpError::Plan(format!(
                    "source {s:?} is already connected to plan {:?}; a source has at most one plan",
                    other.key
                )));
            }
        }
    }
    let prev = current.get(&dkey);
    if let Some(p) = prev {
        if p.body == body {
            return Ok(ApplyResult::Unchanged {
                key: dkey,
                version: p.version,
            });
        }
    }
    let version = prev.map_or(1, |p| p.version + 1);
    let def = Definition {
        space_id: file.space_id.clone(),
        kind: KIND.to_string(),
        key: file.key.clone(),
        version,
        name: file.name.clone(),
        body,
        updated_at_ms: now_ms(),
        updated_by,
    };
    definitions::publish(
        bootstrap,
        &BTreeMap::new(),
        definitions_topic,
        &dkey,
        Some(&def),
    )?;
    Ok(ApplyResult::Applied { key: dkey, version })
}

/// Which blocked messages to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub source_id: Option<String>,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// Re-produces the original messages of `events.blocked` (blocked since `since_ms`) into
/// `events.raw`, keyed by messageId, for validation with the current plans. Returns the count.
pub fn replay_blocked(
    bootstrap: &str,
    blocked_topic: &str,
    raw_topic: &str,
    filter: &ReplayFilter,
) -> Result<usize, KafkaOpError> {
    let c = consumer(bootstrap, &BTreeMap::new(), "corralctl-replay")?;
    let partitions = assign_all(&c, blocked_topic, Offset::Beginning)?;
    // Start each partition at the first record at or after `since`.
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(blocked_topic, p, Offset::Offset(filter.since_ms))
            .map_err(kafka("seeking"))?;
    }
    let starts = c
        .offsets_for_times(tpl, Duration::from_secs(10))
        .map_err(kafka("looking up offsets by time"))?;
    let mut seek = TopicPartitionList::new();
    for e in starts.elements() {
        let off = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::End,
        };
        seek.add_partition_offset(blocked_topic, e.partition(), off)
            .map_err(kafka("seeking"))?;
    }
    c.assign(&seek).map_err(kafka("assigning partitions"))?;
    let p = if filter.dry_run {
        None
    } else {
        Some(producer(bootstrap)?)
    };
    let mut at_end = HashSet::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (at_end.len() as i32) < partitions && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(v) = m.payload() else { continue };
                let b = match BlockedEvent::decode(v) {
                    Ok(b) => b,
                    Err(e) => {
                        warn!(error = %e, offset = m.offset(), "skipping an undecodable blocked record");
                        continue;
                    }
                };
                if b.blocked_at_ms < filter.since_ms
                    || filter.until_ms.is_some_and(|u| b.blocked_at_ms >= u)
                    || filter
                        .source_id
                        .as_ref()
                        .is_some_and(|s| b.message.source_id.as_ref() != Some(s))
                    || filter.reason.as_ref().is_some_and(|r| &b.reason != r)
                {
                    continue;
                }
                if let Some(p) = &p {
                    send(
                        p,
                        raw_topic,
                        b.message.message_id.as_bytes(),
                        &b.message.encode()?,
                    )?;
                    p.poll(Duration::ZERO);
                }
                n += 1;
            }
            Some(Err(KafkaError::PartitionEOF(part))) => {
                at_end.insert(part);
            }
            Some(Err(e)) => {
                return Err(KafkaOpError::Kafka {
                    during: "reading blocked events",
                    source: e,
                })
            }
            None => {}
        }
    }
    if let Some(p) = &p {
        p.flush(Duration::from_secs(60))
            .map_err(kafka("flushing"))?;
    }
    Ok(n)
}
