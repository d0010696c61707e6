//! Follows the `definitions` topic and keeps the live layer of [`WriteKeys`] in step with its
//! `source` records: a new source's keys work as soon as its record is read, a deleted source's
//! keys stop working, without a restart. The reader is `corral_runtime::definitions::follow`
//! (from the beginning of the compacted topic, outside any consumer group).
//!
//! [`apply_event`] is the pure part (unit-tested); [`start`] is the Kafka edge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corral_runtime::definitions::{follow, DefinitionEvent};
use corral_runtime::RuntimeError;

use crate::auth::WriteKeys;
use crate::metrics::Metrics;
use crate::sources::{is_source_key, source_of_definition};
use crate::suppress::SharedSuppressions;

/// What happened to one record (the `outcome` label of
/// `corral_collector_definition_records_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A source's keys were (re)loaded.
    Applied,
    /// A source was deleted (tombstone).
    Deleted,
    /// A source record whose body is not a source: its keys were dropped (fail closed).
    Invalid,
    /// A source record that does not decode: its keys were dropped (fail closed).
    Undecodable,
    /// Another kind of definition (tracking plan, audience, ...).
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Deleted => "deleted",
            Outcome::Invalid => "invalid",
            Outcome::Undecodable => "undecodable",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Applies one record of the definitions topic to `keys`.
///
/// A source record that cannot be read removes the source's previous keys rather than keeping
/// them: when a version meant to revoke a leaked key is unreadable, refusing the source is the
/// safe failure (its clients get 401 and retry; nothing is accepted under a stale mapping).
pub fn apply_event(keys: &WriteKeys, event: DefinitionEvent<'_>) -> Outcome {
    let Ok(mut defined) = keys.defined().write() else {
        return Outcome::Invalid;
    };
    match event {
        DefinitionEvent::Upsert { key, definition } => match source_of_definition(&definition) {
            None => Outcome::Ignored,
            Some(Ok(source)) => {
                for (hash, _) in &source.keys {
                    if keys.is_fixed(hash) {
                        tracing::warn!(
                            definition = key,
                            "a write key of this source is also configured on the collector; the configured mapping wins"
                        );
                    }
                    let others: Vec<String> = defined
                        .owners(hash)
                        .into_iter()
                        .filter(|o| o != key)
                        .collect();
                    if !others.is_empty() {
                        tracing::warn!(definition = key, others = ?others, "a write key of this source is also a key of another source; the first definition key in order wins");
                    }
                }
                defined.upsert(key, &source);
                tracing::info!(
                    definition = key,
                    space_id = %source.space_id,
                    source_id = %source.source_id,
                    version = definition.version,
                    write_keys = source.keys.len(),
                    "source loaded"
                );
                Outcome::Applied
            }
            Some(Err(e)) => {
                defined.remove(key);
                tracing::warn!(definition = key, error = %e, "unreadable source definition: its write keys are refused");
                Outcome::Invalid
            }
        },
        DefinitionEvent::Delete { key } if is_source_key(key) => {
            defined.remove(key);
            tracing::info!(definition = key, "source deleted");
            Outcome::Deleted
        }
        DefinitionEvent::Undecodable { key, error } if is_source_key(key) => {
            defined.remove(key);
            tracing::warn!(
                definition = key,
                error,
                "undecodable source definition: its write keys are refused"
            );
            Outcome::Undecodable
        }
        DefinitionEvent::Delete { .. } | DefinitionEvent::Undecodable { .. } => Outcome::Ignored,
    }
}

/// A running follower.
pub struct Follower {
    caught_up: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Follower {
    /// Whether the topic was read to its end once (a complete set of sources is loaded).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    /// Stops the thread (returns within its poll interval).
    pub fn stop(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts following `topic`. Fails when the topic does not exist (the caller retries later).
pub fn start(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    keys: WriteKeys,
    suppressions: SharedSuppressions,
    metrics: Metrics,
) -> Result<Follower, RuntimeError> {
    let caught_up = Arc::new(AtomicBool::new(false));
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut cfg = consumer_properties(kafka_cfg);
    // Names the reader in broker logs and ACLs; it never joins the group nor commits.
    cfg.entry("group.id".into())
        .or_insert_with(|| corral_runtime::definitions::COLLECTOR_GROUP.into());
    let thread = follow(
        bootstrap,
        &cfg,
        topic,
        caught_up.clone(),
        shutdown.clone(),
        move |event| {
            if suppressions.apply(&event) {
                metrics
                    .definition_records
                    .with_label_values(&["regulation"])
                    .inc();
                metrics.suppressed_ids.set(suppressions.len() as i64);
                return;
            }
            let outcome = apply_event(&keys, event);
            metrics
                .definition_records
                .with_label_values(&[outcome.as_str()])
                .inc();
            if let Ok(d) = keys.defined().read() {
                metrics.definition_sources.set(d.sources() as i64);
                metrics.definition_keys.set(d.keys() as i64);
            }
        },
    )?;
    Ok(Follower {
        caught_up,
        shutdown,
        thread: Some(thread),
    })
}

/// The producer properties (`--kafka`) that also apply to a consumer: connection and security
/// settings. Producer tuning (`linger.ms`, `acks`, ...) would only make librdkafka warn.
fn consumer_properties(producer: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    producer
        .iter()
        .filter(|(k, _)| {
            k.starts_with("security.")
                || k.starts_with("ssl.")
                || k.starts_with("sasl.")
                || k.starts_with("socket.")
                || k.starts_with("broker.")
                || k.starts_with("reconnect.")
                || k.starts_with("metadata.")
                || k.starts_with("topic.metadata")
                || k.as_str() == "client.rack"
                || k.as_str() == "client.id"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::Source;
    use crate::sources::{KeyHash, SourceBody, StoredKey, KIND_SOURCE};
    use corral_codec::Definition;

    fn def(kind: &str, id: &str, key: &str) -> Definition {
        Definition {
            space_id: "acme".into(),
            kind: kind.into(),
            key: id.into(),
            version: 1,
            name: None,
            body: SourceBody {
                write_keys: vec![StoredKey {
                    id: format!("{id}-1"),
                    sha256: KeyHash::of(key).to_hex(),
                }],
            }
            .to_json(),
            updated_at_ms: 0,
            updated_by: None,
        }
    }

    #[test]
    fn source_records_drive_the_live_keys() {
        let keys = WriteKeys::new([(
            "cfg".to_string(),
            Source {
                source_id: "cfg".into(),
                space_id: "default".into(),
                key_id: "cfg".into(),
            },
        )]);
        let k = "acme/source/web";
        let up = |d: Definition| DefinitionEvent::Upsert {
            key: k,
            definition: d,
        };
        assert_eq!(
            apply_event(&keys, up(def(KIND_SOURCE, "web", "wk"))),
            Outcome::Applied
        );
        let s = keys.get("wk").unwrap();
        assert_eq!((s.space_id.as_str(), s.key_id.as_str()), ("acme", "web-1"));
        // Other kinds, and deletes of other kinds, leave sources alone.
        assert_eq!(
            apply_event(
                &keys,
                DefinitionEvent::Upsert {
                    key: "acme/audience/x",
                    definition: def("audience", "x", "zz"),
                }
            ),
            Outcome::Ignored
        );
        assert_eq!(
            apply_event(
                &keys,
                DefinitionEvent::Delete {
                    key: "acme/audience/web"
                }
            ),
            Outcome::Ignored
        );
        assert!(keys.get("wk").is_some() && keys.get("zz").is_none());
        // A configured key in a definition does not take it over.
        apply_event(&keys, up(def(KIND_SOURCE, "web", "cfg")));
        assert_eq!(keys.get("cfg").unwrap().source_id, "cfg");
        assert!(keys.get("wk").is_none());
        // Unreadable versions and tombstones both remove the keys.
        apply_event(&keys, up(def(KIND_SOURCE, "web", "wk")));
        let mut bad = def(KIND_SOURCE, "web", "wk");
        bad.body = serde_json::json!({"keys": []});
        assert_eq!(apply_event(&keys, up(bad)), Outcome::Invalid);
        assert!(keys.get("wk").is_none());
        apply_event(&keys, up(def(KIND_SOURCE, "web", "wk")));
        assert_eq!(
            apply_event(
                &keys,
                DefinitionEvent::Undecodable {
                    key: k,
                    error: "x".into()
                }
            ),
            Outcome::Undecodable
        );
        assert!(keys.get("wk").is_none());
        apply_event(&keys, up(def(KIND_SOURCE, "web", "wk")));
        assert_eq!(
            apply_event(&keys, DefinitionEvent::Delete { key: k }),
            Outcome::Deleted
        );
        assert!(keys.get("wk").is_none());
    }

    #[test]
    fn only_connection_properties_reach_the_reader() {
        let p: BTreeMap<String, String> = [
            ("linger.ms", "5"),
            ("acks", "all"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "u"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = consumer_properties(&p);
        assert_eq!(
            c.keys().map(String::as_str).collect::<Vec<_>>(),
            ["sasl.username", "security.protocol"]
        );
    }
}
