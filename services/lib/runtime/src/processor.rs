//! What a service writes: a [`Processor`] that turns one input record into state writes and outputs
//! through a [`ProcessContext`]. Everything else (transactions, offsets, stores, restore,
//! rebalances, dead letters) is the runtime's.

use corral_codec::AvroRecord;

use crate::cli::TopicNames;
use crate::store::{Entry, StateStore, StoreError};

/// A state store, named once as a constant and used both to declare it
/// (`cfg.stores = vec![DEDUP.into()]`) and to read and write it while processing
/// (`ctx.get(DEDUP, key)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Store(&'static str);

impl Store {
    pub const fn named(name: &'static str) -> Self {
        Store(name)
    }

    pub const fn name(&self) -> &'static str {
        self.0
    }
}

/// How a [`ProcessContext`] method names a store: a [`Store`] handle, or the position in the
/// config's list (kept for processors that predate named handles).
pub trait StoreRef: Copy {
    fn position(self, stores: &[StateStore]) -> Option<usize>;
}

impl StoreRef for Store {
    fn position(self, stores: &[StateStore]) -> Option<usize> {
        stores.iter().position(|s| s.name() == self.0)
    }
}

impl StoreRef for usize {
    fn position(self, stores: &[StateStore]) -> Option<usize> {
        (self < stores.len()).then_some(self)
    }
}

/// One input record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's Kafka timestamp in milliseconds, when it has one.
    pub timestamp_ms: Option<i64>,
}

/// A record to produce inside the transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Explicit partition; `None` lets the murmur2 partitioner choose by key (as Java clients do).
    pub partition: Option<i32>,
    /// Kafka record headers (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a record could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record itself is unusable: it goes to the dead-letter topic with `reason` (a short,
    /// bounded, machine-readable code such as `decode`) and `message`, and processing continues.
    #[error("bad input ({reason}): {message}")]
    BadInput {
        reason: &'static str,
        message: String,
    },
    /// A state store failed: the transaction aborts and the thread stops.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug or broken invariant: the transaction aborts and the thread stops.
    #[error("{0}")]
    Fatal(String),
}

impl ProcessError {
    pub fn bad_input(reason: &'static str, message: impl Into<String>) -> Self {
        ProcessError::BadInput {
            reason,
            message: message.into(),
        }
    }
}

/// The service's transform.
pub trait Processor: Send {
    /// Processes one record. Writes and outputs take effect only if this returns `Ok`; on
    /// `BadInput` they are dropped and the record goes to the dead-letter topic.
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError>;

    /// Called for every assigned task (`ctx.partition()`) each `RuntimeConfig::punctuate_interval`
    /// of wall-clock time, inside the open transaction: its writes and outputs are exactly-once
    /// like `process`'s. `now_ms` is the wall clock. Timers (window expiry, retention) live here.
    /// A `BadInput` error here has no record to dead-letter: it is logged and its writes dropped.
    /// [`ProcessContext::punctuate_again_when_idle`] asks for the next call early.
    fn punctuate(
        &mut self,
        _ctx: &mut ProcessContext<'_>,
        _now_ms: i64,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Tasks (partition numbers) this thread now owns, after their stores were restored. A
    /// processor that caches anything derived from its stores rebuilds that cache here.
    fn on_assigned(&mut self, _tasks: &[i32]) {}

    /// Tasks this thread no longer owns (their open writes were committed or dropped).
    fn on_revoked(&mut self, _tasks: &[i32]) {}

    /// The open transaction was aborted: every write and output since the last commit is gone
    /// and the input will be read again from the committed offsets. In-memory caches of store
    /// contents must drop what they learnt since the last commit.
    fn on_abort(&mut self) {}
}

impl<F> Processor for F
where
    F: FnMut(&mut ProcessContext<'_>, &InputRecord<'_>) -> Result<(), ProcessError> + Send,
{
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        self(ctx, record)
    }
}

/// A pending write of the record being processed: (store index, key, value or delete).
pub(crate) type PendingWrite = (usize, Vec<u8>, Option<Vec<u8>>);

/// The index a write to an undeclared store gets; applying it fails the transaction.
pub(crate) const UNDECLARED: usize = usize::MAX;

/// Access to the task's stores and the transaction's outputs while one record is processed.
pub struct ProcessContext<'a> {
    pub(crate) partition: i32,
    pub(crate) stores: &'a [StateStore],
    pub(crate) writes: &'a mut Vec<PendingWrite>,
    pub(crate) outputs: &'a mut Vec<Output>,
    pub(crate) topics: &'a TopicNames,
    /// Set from `punctuate`: run it again as soon as the input is idle.
    pub(crate) again_when_idle: bool,
}

impl<'a> ProcessContext<'a> {
    /// The task (input partition number) this record belongs to.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// From `punctuate`: more work is waiting (a backfill read in slices, say), so punctuate
    /// again as soon as a poll finds no input, instead of after the interval. Input records
    /// keep priority: each idle moment gets one more punctuation.
    pub fn punctuate_again_when_idle(&mut self) {
        self.again_when_idle = true;
    }

    /// Index of a store by name, in the order the config declares them.
    pub fn store_index(&self, name: &str) -> Option<usize> {
        self.stores.iter().position(|s| s.name() == name)
    }

    /// Reads a key of this task's partition, seeing this record's own earlier writes.
    pub fn get(&self, store: impl StoreRef, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError> {
        let store = self.position(store)?;
        // Latest write of this record wins; the list is tiny, so a reverse scan beats a map.
        if let Some((_, _, v)) = self
            .writes
            .iter()
            .rev()
            .find(|(s, k, _)| *s == store && k.as_slice() == key)
        {
            return Ok(v.clone());
        }
        Ok(self.stores[store].get(self.partition, key)?)
    }

    /// This task's entries whose key starts with `prefix`, in key order, seeing the open
    /// transaction's writes and this record's own earlier writes. Reads the whole range into
    /// memory: keep prefixes narrow (one profile, one bucket).
    pub fn scan_prefix(
        &self,
        store: impl StoreRef,
        prefix: &[u8],
    ) -> Result<Vec<Entry>, ProcessError> {
        let store = self.position(store)?;
        let mut entries = self.stores[store].scan_prefix(self.partition, prefix)?;
        let own: Vec<&PendingWrite> = self
            .writes
            .iter()
            .filter(|(s, k, _)| *s == store && k.starts_with(prefix))
            .collect();
        if own.is_empty() {
            return Ok(entries);
        }
        let mut merged: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = entries.drain(..).collect();
        for (_, k, v) in own {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Writes `key`; a store the config does not declare fails the transaction when it is applied.
    pub fn put(&mut self, store: impl StoreRef, key: Vec<u8>, value: Vec<u8>) {
        let store = store.position(self.stores).unwrap_or(UNDECLARED);
        self.writes.push((store, key, Some(value)));
    }

    pub fn delete(&mut self, store: impl StoreRef, key: Vec<u8>) {
        let store = store.position(self.stores).unwrap_or(UNDECLARED);
        self.writes.push((store, key, None));
    }

    fn position(&self, store: impl StoreRef) -> Result<usize, ProcessError> {
        store.position(self.stores).ok_or_else(|| {
            ProcessError::Fatal("a store the runtime config does not declare was read".into())
        })
    }

    /// The full name of a standard topic (see [`TopicNames`]).
    pub fn topic(&self, standard: &str) -> String {
        self.topics.name(standard)
    }

    /// Encodes `record` and produces it inside the transaction to the topic its type travels
    /// on, partitioned by `key`.
    pub fn emit_record<R: AvroRecord>(
        &mut self,
        key: impl Into<Vec<u8>>,
        record: &R,
    ) -> Result<(), ProcessError> {
        let topic = self.topics.of::<R>();
        self.push_record(topic, key.into(), record)
    }

    /// Encodes `record` and produces it to `topic` (a re-keyed copy of a standard topic, such as
    /// identity's `identity.events-by-space`), partitioned by `key`.
    pub fn emit_record_to<R: AvroRecord>(
        &mut self,
        topic: &str,
        key: impl Into<Vec<u8>>,
        record: &R,
    ) -> Result<(), ProcessError> {
        self.push_record(topic.to_string(), key.into(), record)
    }

    /// Encodes `record` and produces it to the topic its type travels on, keyed `key` but on the
    /// partition the murmur2 partitioner gives `partition_key` (the plain profile id of an
    /// `events.resolved` record whose key is unique per event; see `partitions`).
    pub fn emit_record_partitioned<R: AvroRecord>(
        &mut self,
        key: impl Into<Vec<u8>>,
        partition_key: &[u8],
        record: &R,
    ) -> Result<(), ProcessError> {
        let topic = self.topics.of::<R>();
        let n = crate::partitions::count(&topic)
            .map_err(|e| ProcessError::Fatal(format!("cannot place a {} record: {e}", R::TOPIC)))?;
        self.push_record(topic, key.into(), record)?;
        if let Some(out) = self.outputs.last_mut() {
            out.partition = Some(corral_codec::history::partition(partition_key, n));
        }
        Ok(())
    }

    /// Encodes `record` and produces it to the topic its type travels on, keyed `key`, on this
    /// task's partition, and writes `entry` (key, value) to `store`, which that topic logs
    /// ([`crate::StoreSpec::logged_by_output`]): the entry travels in the record's header, so the
    /// output and the log of the write are one record.
    pub fn emit_logging<R: AvroRecord>(
        &mut self,
        key: impl Into<Vec<u8>>,
        record: &R,
        store: Store,
        entry: (Vec<u8>, Vec<u8>),
    ) -> Result<(), ProcessError> {
        let topic = self.topics.of::<R>();
        let position = self.position(store)?;
        let logged_here = {
            let s = &self.stores[position];
            !s.writes_changelog() && s.changelog_topic() == topic
        };
        if !logged_here {
            return Err(ProcessError::Fatal(format!(
                "store {} is not declared as logged by {topic} (StoreSpec::logged_by_output)",
                store.name()
            )));
        }
        self.push_record(topic, key.into(), record)?;
        let (store_key, store_value) = entry;
        let header = (
            crate::store::log_header(store.name()),
            crate::store::encode_logged(&store_key, &store_value),
        );
        if let Some(out) = self.outputs.last_mut() {
            out.partition = Some(self.partition);
            out.headers.push(header);
        }
        self.writes.push((position, store_key, Some(store_value)));
        Ok(())
    }

    /// One owned topic name per output, as `emit` has.
    fn push_record<R: AvroRecord>(
        &mut self,
        topic: String,
        key: Vec<u8>,
        record: &R,
    ) -> Result<(), ProcessError> {
        let value = record
            .encode()
            .map_err(|e| ProcessError::Fatal(format!("encoding a {} record: {e}", R::TOPIC)))?;
        self.outputs.push(Output {
            topic,
            key: Some(key),
            value: Some(value),
            ..Output::default()
        });
        Ok(())
    }

    /// Produces raw bytes inside the transaction, partitioned by key.
    pub fn emit(&mut self, topic: &str, key: Option<Vec<u8>>, value: Option<Vec<u8>>) {
        self.outputs.push(Output {
            topic: topic.to_string(),
            key,
            value,
            ..Output::default()
        });
    }

    /// Produces a record to an explicit partition inside the transaction.
    pub fn emit_to(&mut self, output: Output) {
        self.outputs.push(output);
    }
}
