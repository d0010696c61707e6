//! Following a compacted changelog topic into an in-memory read replica (identity's graph view,
//! compute's profiles view).
//!
//! [`follow_topic`] starts a thread that reads every partition of a topic from the beginning,
//! `read_committed`, and keeps following it until shutdown. Each poll's queued records are handed
//! over as one batch, so a caller that applies a batch under one lock never shows a transaction
//! half applied: a transaction's records become readable together (at its commit marker) and
//! normally arrive in one fetch. `caught_up` turns true once every partition reached its end
//! once, after the records read before those ends were handed over.
//!
//! The reader is a plain consumer outside any group (partitions are assigned by hand, offsets
//! never committed): a replica is rebuilt from the beginning at every start. [`Replica`] is the
//! map such a replica keeps (key → latest value, behind a lock, with its caught-up flag).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::error::RuntimeError;

/// Records handed over in one batch at most: bounds the time readers of the replica wait on its
/// lock while it loads.
pub const MAX_BATCH: usize = 10_000;

/// One changelog record; `value` is `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The latest value of every key of a changelog, as [`follow_topic`] hands it over.
#[derive(Default)]
pub struct Replica {
    entries: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
    /// Shared with the follower, which sets it.
    caught_up: Arc<AtomicBool>,
}

impl Replica {
    /// Applies records in order under one lock (`None` is a tombstone): readers see all of them
    /// or none.
    pub fn apply_batch(&self, records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) {
        // A poisoned lock only means a reader panicked; the map itself is still consistent.
        let mut g = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for (k, v) in records {
            match v {
                Some(v) => {
                    g.insert(k, v);
                }
                None => {
                    g.remove(&k);
                }
            }
        }
    }

    /// Applies one [`follow_topic`] batch.
    pub fn apply_records(&self, batch: Vec<ChangelogRecord>) {
        self.apply_batch(batch.into_iter().map(|r| (r.key, r.value)));
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.entries.read().map(|g| g.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::SeqCst);
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    /// The flag [`Replica::is_caught_up`] reads, to hand to [`follow_topic`].
    pub fn caught_up_flag(&self) -> Arc<AtomicBool> {
        self.caught_up.clone()
    }
}

/// The readers ask for end-of-partition events to know when they caught up; librdkafka also
/// reports them as client errors ("global errors"), which the default context would log at
/// ERROR level, a line each time a reader catches up with a commit. Those are dropped; real
/// client errors are still logged. Public for other readers that stop at the end of a
/// partition (compute's backfill).
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::error!(%error, reason, "librdkafka error in a topic reader");
        }
    }
}

impl ConsumerContext for QuietEof {}

/// Starts a thread (named after `group_id`) that follows `topic` until `shutdown`, calling
/// `on_batch` with each poll's records in order (keyless records are skipped; at most
/// [`MAX_BATCH`]). Waits, retrying, for the topic to exist. `kafka_cfg` (librdkafka properties)
/// is applied after the defaults and `group.id = group_id`, so it overrides them.
pub fn follow_topic<F>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    topic: &str,
    group_id: &str,
    caught_up: Arc<AtomicBool>,
    shutdown: Arc<AtomicBool>,
    mut on_batch: F,
) -> Result<std::thread::JoinHandle<()>, RuntimeError>
where
    F: FnMut(Vec<ChangelogRecord>) + Send + 'static,
{
    let c = crate::reader::committed_reader(bootstrap, kafka_cfg, group_id)?;
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name(group_id.to_string())
        .spawn(move || {
            let mut partitions = None;
            let mut at_end = HashSet::new();
            let mut records = 0u64;
            while !shutdown.load(Ordering::SeqCst) {
                let Some(n) = partitions else {
                    match assign_all(&c, &topic) {
                        Ok(Some(n)) => partitions = Some(n),
                        Ok(None) => std::thread::sleep(Duration::from_millis(500)),
                        Err(e) => {
                            warn!(topic, error = %e, "changelog follower: waiting for the topic");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    continue;
                };
                let Some(first) = c.poll(Duration::from_millis(200)) else {
                    continue;
                };
                // What is queued now goes over as one batch (see the module doc).
                let mut batch = Vec::new();
                let mut ends = Vec::new();
                let mut next = Some(first);
                while let Some(polled) = next.take() {
                    match polled {
                        Ok(m) => {
                            if let Some(k) = m.key() {
                                batch.push(ChangelogRecord {
                                    partition: m.partition(),
                                    key: k.to_vec(),
                                    value: m.payload().map(<[u8]>::to_vec),
                                });
                            }
                        }
                        Err(KafkaError::PartitionEOF(p)) => ends.push(p),
                        Err(e) => warn!(topic, error = %e, "changelog follower: reading"),
                    }
                    if batch.len() < MAX_BATCH {
                        next = c.poll(Duration::ZERO);
                    }
                }
                if !batch.is_empty() {
                    records += batch.len() as u64;
                    on_batch(batch);
                }
                // Caught up only once what was read before the ends is handed over.
                for p in ends {
                    if at_end.insert(p)
                        && at_end.len() as i32 == n
                        && !caught_up.load(Ordering::SeqCst)
                    {
                        info!(topic, records, "changelog follower caught up");
                        caught_up.store(true, Ordering::SeqCst);
                    }
                }
            }
        })
        .map_err(|source| RuntimeError::Io {
            path: "changelog follower thread".into(),
            source,
        })
}

/// Partitions of `topic` from the cluster's metadata; 0 when it does not exist. A topic
/// created a moment ago can be missing from a broker's metadata for a while (longer on a
/// broker with many partitions), so with `grace` it asks again until then before saying 0.
pub fn partition_count<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
    grace: Duration,
) -> Result<i32, KafkaError> {
    let deadline = std::time::Instant::now() + grace;
    loop {
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0);
        if n > 0 || std::time::Instant::now() >= deadline {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Assigns every partition of `topic` from the beginning; `None` when it does not exist yet.
fn assign_all<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<i32>, KafkaError> {
    let n = partition_count(c, topic, Duration::ZERO)?;
    if n == 0 {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(Some(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_keeps_the_latest_value_and_drops_tombstoned_keys() {
        let r = Replica::default();
        assert!(r.is_empty() && !r.is_caught_up());
        r.apply_records(vec![
            ChangelogRecord {
                partition: 0,
                key: b"a".to_vec(),
                value: Some(b"1".to_vec()),
            },
            ChangelogRecord {
                partition: 1,
                key: b"b".to_vec(),
                value: Some(b"2".to_vec()),
            },
            ChangelogRecord {
                partition: 0,
                key: b"a".to_vec(),
                value: Some(b"3".to_vec()),
            },
        ]);
        assert_eq!(r.get(b"a"), Some(b"3".to_vec()));
        assert_eq!(r.len(), 2);
        r.apply_batch([(b"b".to_vec(), None)]);
        assert_eq!(r.get(b"b"), None);
        assert_eq!(r.len(), 1);
        r.caught_up_flag().store(true, Ordering::SeqCst);
        assert!(r.is_caught_up());
    }
}
