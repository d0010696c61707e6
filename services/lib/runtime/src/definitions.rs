//! The compacted `definitions` topic, which every service reads: tracking plans, audiences,
//! computed traits, destinations, sources. One record per definition, keyed
//! `{space_id}/{kind}/{key}`; a tombstone deletes.
//!
//! - [`read_all`]: every current definition, once (CLIs, start-up).
//! - [`follow`]: a thread that reads the topic from the beginning and then keeps following it,
//!   calling back for every record; `caught_up` turns true once it reached the end once, so a
//!   service can wait for a complete set before it processes data.
//! - [`publish`]: writes (or deletes) one definition and waits for the broker's acknowledgement.
//!
//! The reader is a plain consumer outside any group and outside the transaction: definitions are
//! configuration, applied to whatever comes next, not data processed exactly once.
//!
//! Every function takes `kafka_cfg`, librdkafka properties applied after the defaults, so they
//! override them: a service passes its `RuntimeConfig::kafka` (security settings) and may set
//! `group.id` to name its reader (it never joins the group nor commits, but the id shows in broker
//! logs and can be matched by ACLs).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, Definition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::error::RuntimeError;
use crate::follow::QuietEof;

/// The Kafka key of a definition.
pub fn definition_key(space_id: &str, kind: &str, key: &str) -> String {
    format!("{space_id}/{kind}/{key}")
}

/// What `follow` hands to its callback for each record.
#[derive(Debug)]
pub enum DefinitionEvent<'a> {
    /// A new version of the definition under `key`.
    Upsert {
        key: &'a str,
        definition: Definition,
    },
    /// A tombstone: the definition under `key` was deleted.
    Delete { key: &'a str },
    /// A record that does not decode; it is skipped (and should be counted).
    Undecodable { key: &'a str, error: String },
}

fn kafka(during: &'static str) -> impl FnOnce(KafkaError) -> RuntimeError {
    move |source| RuntimeError::Kafka { during, source }
}

fn reader(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
) -> Result<(BaseConsumer<QuietEof>, i32), RuntimeError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        // Never joins the group (partitions are assigned by hand); librdkafka still wants an id.
        .set("group.id", "corral-definitions-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    for (k, v) in kafka_cfg {
        cc.set(k, v);
    }
    let c: BaseConsumer<QuietEof> = cc
        .create_with_context(QuietEof)
        .map_err(kafka("creating the definitions reader"))?;
    let partitions = crate::follow::partition_count(&c, topic, Duration::from_secs(5))
        .map_err(kafka("fetching definitions metadata"))?;
    if partitions == 0 {
        return Err(RuntimeError::Admin(format!(
            "topic {topic} does not exist; create it with `corralctl topics apply`"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka("assigning definitions"))?;
    }
    c.assign(&tpl).map_err(kafka("assigning definitions"))?;
    Ok((c, partitions))
}

fn event_of<'a>(key: &'a str, payload: Option<&[u8]>) -> DefinitionEvent<'a> {
    match payload {
        None => DefinitionEvent::Delete { key },
        Some(v) => match Definition::decode(v) {
            Ok(definition) => DefinitionEvent::Upsert { key, definition },
            Err(e) => DefinitionEvent::Undecodable {
                key,
                error: e.to_string(),
            },
        },
    }
}

/// Every current (latest, not deleted) definition, by Kafka key. Undecodable records are skipped
/// with a warning.
pub fn read_all(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, Definition>, RuntimeError> {
    let (c, partitions) = reader(bootstrap, kafka_cfg, topic)?;
    let deadline = Instant::now() + timeout;
    let mut out = BTreeMap::new();
    let mut at_end = HashSet::new();
    while (at_end.len() as i32) < partitions {
        if Instant::now() > deadline {
            return Err(RuntimeError::Admin(format!(
                "timed out after {timeout:?} reading {topic}; is the broker reachable?"
            )));
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                match event_of(&key, m.payload()) {
                    DefinitionEvent::Upsert { definition, .. } => {
                        out.insert(key, definition);
                    }
                    DefinitionEvent::Delete { .. } => {
                        out.remove(&key);
                    }
                    DefinitionEvent::Undecodable { error, .. } => {
                        warn!(key, error, "skipping an undecodable definition")
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(kafka("reading definitions")(e)),
            None => {}
        }
    }
    Ok(out)
}

/// Starts a thread that reads `topic` from the beginning and follows it until `shutdown`,
/// calling `on_event` for each record in order. Sets `caught_up` once every partition reached
/// its end once.
pub fn follow<F>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    caught_up: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    mut on_event: F,
) -> Result<std::thread::JoinHandle<()>, RuntimeError>
where
    F: FnMut(DefinitionEvent<'_>) + Send + 'static,
{
    let (c, partitions) = reader(bootstrap, kafka_cfg, topic)?;
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name("definitions".into())
        .spawn(move || {
            let mut at_end = HashSet::new();
            while !shutdown.load(Ordering::SeqCst) {
                match c.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                        on_event(event_of(&key, m.payload()));
                    }
                    Some(Err(KafkaError::PartitionEOF(p)))
                        if at_end.insert(p) && at_end.len() as i32 == partitions =>
                    {
                        info!(topic, "definitions loaded");
                        caught_up.store(true, Ordering::SeqCst);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => warn!(topic, error = %e, "reading definitions"),
                    None => {}
                }
            }
        })
        .map_err(|source| RuntimeError::Io {
            path: "definitions thread".into(),
            source,
        })
}

/// Writes `definition` under `key` (or a tombstone when `None`) and waits for the acknowledgement.
pub fn publish(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    key: &str,
    definition: Option<&Definition>,
) -> Result<(), RuntimeError> {
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    for (k, v) in kafka_cfg {
        pc.set(k, v);
    }
    let p: BaseProducer<DeliveryCheck> = pc
        .create_with_context(DeliveryCheck::default())
        .map_err(kafka("creating a producer"))?;
    let value = definition
        .map(AvroRecord::encode)
        .transpose()
        .map_err(|e| RuntimeError::Processor(format!("encoding definition {key}: {e}")))?;
    let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key);
    if let Some(v) = value.as_deref() {
        record = record.payload(v);
    }
    p.send(record)
        .map_err(|(e, _)| kafka("writing a definition")(e))?;
    p.flush(Duration::from_secs(30))
        .map_err(kafka("writing a definition"))?;
    let failure = p.context().failure.lock().ok().and_then(|mut f| f.take());
    match failure {
        Some(e) => Err(kafka("writing a definition")(e)),
        None => Ok(()),
    }
}

/// Remembers a failed delivery, which `flush` alone does not report.
#[derive(Default)]
struct DeliveryCheck {
    failure: std::sync::Mutex<Option<KafkaError>>,
}

impl rdkafka::ClientContext for DeliveryCheck {}

impl rdkafka::producer::ProducerContext for DeliveryCheck {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if let Ok(mut f) = self.failure.lock() {
                f.get_or_insert_with(|| e.clone());
            }
        }
    }
}
