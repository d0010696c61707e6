//! The compacted `definitions` topic, which every service reads: tracking plans, audiences,
//! computed traits, destinations, sources. One record per definition, keyed
//! `{space_id}/{kind}/{key}`; a tombstone deletes.
//!
//! - [`read_all`]: every current definition, once (CLIs, start-up).
//! - [`follow`]: a thread that reads the topic from the beginning and then keeps following it,
//!   calling back for every record; `caught_up` turns true once it reached the end once, so a
//!   service can wait for a complete set before it processes data.
//! - [`publish`]: writes (or deletes) one definition and waits for the broker's acknowledgement.
//! - [`apply_versioned`]: the operator's "apply a file" step for every kind: read the current
//!   set, write what changed as the next version, report [`Applied`] per definition.
//!
//! The reader is a plain consumer outside any group and outside the transaction: definitions are
//! configuration, applied to whatever comes next, not data processed exactly once.
//!
//! Every function takes `kafka_cfg`, librdkafka properties applied after the defaults, so they
//! override them: a service passes its `RuntimeConfig::kafka` (security settings) and may set
//! `group.id` to name its reader (it never joins the group nor commits, but the id shows in broker
//! logs and can be matched by ACLs).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use corral_codec::{AvroRecord, Definition};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use tracing::warn;

use crate::error::RuntimeError;
use crate::reader::{read_to_end, Flow, Start};

/// The group name one-off reads of the definitions topic give (they never join it); ACLs name it.
pub const READER_GROUP: &str = "corral-definitions-reader";
/// The group name the collector's definitions follower gives (it never joins it either).
pub const COLLECTOR_GROUP: &str = "corral-collector-definitions";

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

pub(crate) fn event_of<'a>(key: &'a str, payload: Option<&[u8]>) -> DefinitionEvent<'a> {
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
    let group = kafka_cfg
        .get("group.id")
        .map_or(READER_GROUP, String::as_str);
    let mut out = BTreeMap::new();
    read_to_end(
        bootstrap,
        kafka_cfg,
        group,
        topic,
        Start::Beginning,
        timeout,
        |m| {
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
            Ok::<_, RuntimeError>(Flow::Continue)
        },
    )?;
    Ok(out)
}

/// Starts a thread that reads `topic` from the beginning and follows it until `shutdown`,
/// calling `on_event` for each record in order (waiting for the topic to exist). Sets
/// `caught_up` once every partition reached its end once.
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
    let group = kafka_cfg
        .get("group.id")
        .map_or(READER_GROUP, String::as_str);
    crate::follow::follow_topic(
        bootstrap,
        kafka_cfg,
        topic,
        group,
        caught_up,
        shutdown,
        move |batch| {
            for r in batch {
                let key = String::from_utf8_lossy(&r.key);
                on_event(event_of(&key, r.value.as_deref()));
            }
        },
    )
}

/// Writes `definition` under `key` (or a tombstone when `None`) and waits for the acknowledgement.
pub fn publish(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    key: &str,
    definition: Option<&Definition>,
) -> Result<(), RuntimeError> {
    let p =
        crate::reader::idempotent_producer_with(bootstrap, kafka_cfg, DeliveryCheck::default())?;
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
    let flushed = p.flush(Duration::from_secs(30));
    let failure = p.context().failure.lock().ok().and_then(|mut f| f.take());
    // An idempotent producer refused by the broker (no Write ACL) fails fatally and purges the
    // record: the fatal error, not the purge, says what to fix.
    if let Some((code, reason)) = p.client().fatal_error() {
        return Err(RuntimeError::Admin(format!(
            "writing definition {key} to {topic}: {code:?}: {reason} (does this principal have Write on {topic}?)"
        )));
    }
    flushed.map_err(kafka("writing a definition"))?;
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

/// A definition as an operator's file gives it: everything but the version and the audit
/// fields, which [`apply_versioned`] fills in.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub space_id: String,
    pub kind: String,
    pub key: String,
    pub name: Option<String>,
    pub body: serde_json::Value,
}

/// What [`apply_versioned`] did with one definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Applied {
    /// The first version was written.
    Created { kind: String, key: String },
    /// A new version was written.
    Changed {
        kind: String,
        key: String,
        version: i64,
    },
    /// Name and body equal the current version; nothing was written.
    Unchanged {
        kind: String,
        key: String,
        version: i64,
    },
}

impl Applied {
    pub fn key(&self) -> &str {
        match self {
            Applied::Created { key, .. }
            | Applied::Changed { key, .. }
            | Applied::Unchanged { key, .. } => key,
        }
    }

    /// The version now current.
    pub fn version(&self) -> i64 {
        match self {
            Applied::Created { .. } => 1,
            Applied::Changed { version, .. } | Applied::Unchanged { version, .. } => *version,
        }
    }
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (what, kind, key) = match self {
            Applied::Created { kind, key } => ("created  ", kind, key),
            Applied::Changed { kind, key, .. } => ("changed  ", kind, key),
            Applied::Unchanged { kind, key, .. } => ("unchanged", kind, key),
        };
        write!(f, "{what} {kind} {key} (version {})", self.version())
    }
}

/// How long the operator actions wait for the current definitions.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes each of `desired` whose name or body differs from its current version as the next
/// version (previous + 1, or 1), stamped with `updated_by` and the time; the others are not
/// written. `check` sees every current definition first and may refuse the whole apply (a
/// source claimed by two plans, say). Returns one [`Applied`] per desired definition, in order.
pub fn apply_versioned<E>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    desired: &[Desired],
    updated_by: Option<&str>,
    check: impl FnOnce(&BTreeMap<String, Definition>) -> Result<(), E>,
) -> Result<Vec<Applied>, E>
where
    E: From<RuntimeError>,
{
    let current = read_all(bootstrap, kafka_cfg, topic, READ_TIMEOUT)?;
    check(&current)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::with_capacity(desired.len());
    for d in desired {
        let key = definition_key(&d.space_id, &d.kind, &d.key);
        let prev = current.get(&key);
        let (kind, short) = (d.kind.clone(), d.key.clone());
        if let Some(p) = prev.filter(|p| p.body == d.body && p.name == d.name) {
            out.push(Applied::Unchanged {
                kind,
                key: short,
                version: p.version,
            });
            continue;
        }
        let version = prev.map_or(1, |p| p.version + 1);
        let record = Definition {
            space_id: d.space_id.clone(),
            kind: d.kind.clone(),
            key: d.key.clone(),
            version,
            name: d.name.clone(),
            body: d.body.clone(),
            updated_at_ms: now,
            updated_by: updated_by.map(str::to_string),
        };
        publish(bootstrap, kafka_cfg, topic, &key, Some(&record))?;
        out.push(if version == 1 {
            Applied::Created { kind, key: short }
        } else {
            Applied::Changed {
                kind,
                key: short,
                version,
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_reads_the_same_for_every_kind() {
        let a = Applied::Changed {
            kind: "tracking_plan".into(),
            key: "web".into(),
            version: 3,
        };
        assert_eq!(a.to_string(), "changed   tracking_plan web (version 3)");
        assert_eq!(a.version(), 3);
        let c = Applied::Created {
            kind: "source".into(),
            key: "early".into(),
        };
        assert_eq!(c.to_string(), "created   source early (version 1)");
    }
}
