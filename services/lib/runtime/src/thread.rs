//! The stream thread: one group consumer, one transactional producer, the assigned partitions
//! (tasks) and their stores, in a synchronous loop (rdkafka's transaction calls block).
//!
//! Commit protocol:
//! 1. records are processed; their state writes go to the stores' overlays and their outputs are
//!    produced inside the open transaction;
//! 2. every commit interval the dirty keys of each store are produced to its changelog (one record
//!    per key), the next input offsets are added with fresh group metadata, and the transaction
//!    commits;
//! 3. only then do the overlays reach RocksDB, in one batch per store together with the changelog
//!    offset they correspond to.
//!
//! On any abort the overlays are dropped and the consumer rewinds to the committed offsets. On
//! revoke the open transaction commits first (or aborts if the assignment was lost); on assign
//! each store restores the partition from its changelog before the partition is processed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corral_codec::DeadLetter;
use corral_telemetry::Health;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig,
};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use crate::config::{FaultPoint, RuntimeConfig, StoreLog};
use crate::error::{classify, RuntimeError, TxnAction};
use crate::metrics::RuntimeMetrics;
use crate::processor::{
    InputRecord, Output, PendingWrite, ProcessContext, ProcessError, Processor,
};
use crate::store::StateStore;

/// Bound on a single transactional call; librdkafka calls have hung without one.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A commit slower than this is logged with where its time went.
const SLOW_COMMIT: Duration = Duration::from_millis(200);
/// How often a commit checks for acknowledgements while it waits for them.
const DELIVERY_CHECK: Duration = Duration::from_micros(200);

/// Records, per changelog partition, the offset after the last delivered changelog record.
pub(crate) struct DeliveryTracker {
    changelog_topics: HashSet<String>,
    /// Topic → partition → next offset. By topic first, so a delivery finds its entry without
    /// allocating (an output topic that logs a store reports every record).
    next_offsets: Mutex<HashMap<String, HashMap<i32, i64>>>,
}

impl DeliveryTracker {
    fn take(&self) -> HashMap<String, HashMap<i32, i64>> {
        self.next_offsets
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default()
    }
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                if self.changelog_topics.contains(msg.topic()) {
                    if let Ok(mut m) = self.next_offsets.lock() {
                        if !m.contains_key(msg.topic()) {
                            m.insert(msg.topic().to_string(), HashMap::new());
                        }
                        if let Some(partitions) = m.get_mut(msg.topic()) {
                            let next = partitions.entry(msg.partition()).or_insert(0);
                            *next = (*next).max(msg.offset() + 1);
                        }
                    }
                }
            }
            // Purged on purpose before an abort: the abort already says why.
            Err((
                KafkaError::MessageProduction(
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
                ),
                _,
            )) => {}
            // The transaction becomes abortable; commit_transaction reports it.
            Err((e, msg)) => warn!(topic = msg.topic(), error = %e, "record not delivered"),
        }
    }
}

/// Everything the loop and the rebalance callbacks share. The loop locks it between polls; the
/// callbacks run inside `poll()`, so the lock is never contended.
pub(crate) struct Engine {
    cfg: Arc<RuntimeConfig>,
    producer: BaseProducer<DeliveryTracker>,
    restore_consumer: BaseConsumer,
    stores: Vec<StateStore>,
    processor: Box<dyn Processor>,
    metrics: RuntimeMetrics,
    health: Arc<Health>,
    /// This thread's name in readiness (`{app}/stream-{i}`): the service is ready when all are.
    part: String,
    /// This thread's share of the `kafka_assigned_partitions` gauge, which all threads add to.
    reported_assigned: i64,
    /// Assigned input partitions.
    assigned: BTreeSet<(String, i32)>,
    /// Next offset to commit per input partition, for records processed in the open transaction.
    pending_offsets: HashMap<(String, i32), i64>,
    txn_open: bool,
    needs_rewind: bool,
    /// A failure met inside a callback, surfaced to the loop.
    failure: Option<RuntimeError>,
    /// Commits that carried records, for fault injection.
    commits: u64,
    /// The last punctuation asked to run again once the input is idle.
    punctuate_when_idle: bool,
    writes: Vec<PendingWrite>,
    outputs: Vec<Output>,
    consumed_counters: HashMap<String, prometheus::IntCounter>,
}

pub(crate) struct EngineContext {
    engine: Mutex<Engine>,
}

impl EngineContext {
    fn lock(&self) -> MutexGuard<'_, Engine> {
        // A poisoned lock means a panic on this thread already; keep the data path going is
        // pointless, but returning the guard lets shutdown proceed.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for EngineContext {
    /// Lag per assigned input partition, from librdkafka's statistics (no request of its own):
    /// the last stable offset (what `read_committed` may read) minus the next record to process.
    /// It runs on the stream thread inside `poll`, like the rebalance callbacks.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let engine = self.lock();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if !engine.assigned.contains(&(topic.clone(), *partition)) {
                    continue;
                }
                let position = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.committed_offset
                };
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                if position >= 0 && end >= 0 {
                    engine
                        .metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set((end - position).max(0));
                }
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut engine = self.lock();
        if let Rebalance::Revoke(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            if consumer.assignment_lost() {
                warn!("assignment lost; aborting the open transaction");
                engine.metrics.rebalances.with_label_values(&["lost"]).inc();
                engine.abort();
            } else {
                engine
                    .metrics
                    .rebalances
                    .with_label_values(&["revoke"])
                    .inc();
                if let Err(e) = engine.commit(consumer) {
                    warn!(error = %e, "commit before revoke failed; aborting");
                    engine.abort_after(e);
                }
            }
            for elem in tpl.elements() {
                engine
                    .assigned
                    .remove(&(elem.topic().to_string(), elem.partition()));
                let _ = engine
                    .metrics
                    .consumer_lag
                    .remove_label_values(&[elem.topic(), &elem.partition().to_string()]);
                engine
                    .pending_offsets
                    .remove(&(elem.topic().to_string(), elem.partition()));
            }
            let still_owned: BTreeSet<i32> = engine.assigned.iter().map(|(_, p)| *p).collect();
            let mut revoked_tasks = BTreeSet::new();
            for elem in tpl.elements() {
                if !still_owned.contains(&elem.partition()) {
                    revoked_tasks.insert(elem.partition());
                    for s in &mut engine.stores {
                        s.discard_partition(elem.partition());
                    }
                }
            }
            let revoked_tasks: Vec<i32> = revoked_tasks.into_iter().collect();
            engine.processor.on_revoked(&revoked_tasks);
            engine.report_assigned();
            info!(
                revoked = tpl.count(),
                remaining = engine.assigned.len(),
                "partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut engine = self.lock();
        match rebalance {
            Rebalance::Assign(tpl) => {
                engine
                    .metrics
                    .rebalances
                    .with_label_values(&["assign"])
                    .inc();
                let owned_before: BTreeSet<i32> = engine.assigned.iter().map(|(_, p)| *p).collect();
                let mut new_tasks = BTreeSet::new();
                for elem in tpl.elements() {
                    engine
                        .assigned
                        .insert((elem.topic().to_string(), elem.partition()));
                    if !owned_before.contains(&elem.partition()) {
                        new_tasks.insert(elem.partition());
                    }
                }
                engine.report_assigned();
                info!(
                    assigned = tpl.count(),
                    total = engine.assigned.len(),
                    "partitions assigned"
                );
                // Restoring here blocks poll(), so nothing of these partitions is processed before
                // its state is complete. Heartbeats run on librdkafka's own thread.
                if let Err(e) = engine.check_co_partitioning() {
                    engine.failure = Some(e);
                    return;
                }
                for &partition in &new_tasks {
                    if let Err(e) = engine.restore_partition(partition) {
                        engine.failure = Some(e);
                        return;
                    }
                }
                let new_tasks: Vec<i32> = new_tasks.into_iter().collect();
                engine.processor.on_assigned(&new_tasks);
                engine.health.set_part_ready(&engine.part);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }
}

impl Engine {
    fn txn_call<T>(
        &self,
        during: &'static str,
        mut call: impl FnMut() -> KafkaResult<T>,
    ) -> Result<T, (TxnAction, RuntimeError)> {
        let deadline = Instant::now() + self.cfg.transaction_timeout;
        loop {
            match call() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let action = classify(&e);
                    if action == TxnAction::Retry && Instant::now() < deadline {
                        debug!(during, error = %e, "retrying transactional call");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    let err = if action == TxnAction::Fatal {
                        RuntimeError::Fatal { during, source: e }
                    } else {
                        RuntimeError::Kafka { during, source: e }
                    };
                    let action = if action == TxnAction::Retry {
                        TxnAction::Abort
                    } else {
                        action
                    };
                    return Err((action, err));
                }
            }
        }
    }

    fn begin_if_needed(&mut self) -> Result<(), RuntimeError> {
        if !self.txn_open {
            let producer = &self.producer;
            self.txn_call("begin_transaction", || producer.begin_transaction())
                .map_err(|(_, e)| e)?;
            self.txn_open = true;
        }
        Ok(())
    }

    /// Produces a record inside the open transaction, waiting for queue space when full.
    fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> Result<(), RuntimeError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if !headers.is_empty() {
            let owned = headers.iter().fold(OwnedHeaders::new(), |h, (name, v)| {
                h.insert(Header {
                    key: name,
                    value: Some(v),
                })
            });
            record = record.headers(owned);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = value {
            record = record.payload(v);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        crate::produce::send_waiting(&self.producer, record, Duration::from_millis(5)).map_err(
            |source| RuntimeError::Kafka {
                during: "produce",
                source,
            },
        )
    }

    fn produced(&self, topic: &str) {
        self.metrics
            .records_produced
            .with_label_values(&[topic])
            .inc();
    }

    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), RuntimeError> {
        let topic = msg.topic();
        let tp = (topic.to_string(), msg.partition());
        if !self.assigned.contains(&tp) {
            // Fetched before a revoke; the new owner reads it from the committed offset.
            return Ok(());
        }
        self.begin_if_needed()?;
        let record = InputRecord {
            topic,
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key(),
            value: msg.payload(),
            timestamp_ms: msg.timestamp().to_millis(),
        };
        self.writes.clear();
        self.outputs.clear();
        let mut ctx = ProcessContext {
            partition: record.partition,
            stores: &self.stores,
            writes: &mut self.writes,
            outputs: &mut self.outputs,
            topics: &self.cfg.topics,
            again_when_idle: false,
        };
        match self.processor.process(&mut ctx, &record) {
            Ok(()) => self.apply_effects(record.partition)?,
            Err(ProcessError::BadInput { reason, message }) => {
                self.dead_letter(&record, reason, &message)?;
            }
            Err(ProcessError::Store(e)) => return Err(e.into()),
            Err(ProcessError::Fatal(m)) => return Err(RuntimeError::Processor(m)),
        }
        self.pending_offsets.insert(tp, record.offset + 1);
        let counter = match self.consumed_counters.get(topic) {
            Some(c) => c.clone(),
            None => {
                let c = self.metrics.records_consumed.with_label_values(&[topic]);
                self.consumed_counters.insert(topic.to_string(), c.clone());
                c
            }
        };
        counter.inc();
        Ok(())
    }

    /// Moves the writes of the record (or punctuation) just processed into the overlay and
    /// produces its outputs inside the open transaction.
    fn apply_effects(&mut self, partition: i32) -> Result<(), RuntimeError> {
        for (store, key, value) in self.writes.drain(..) {
            let s = self.stores.get_mut(store).ok_or_else(|| {
                RuntimeError::Processor(
                    "the processor wrote to a store the runtime config does not declare".into(),
                )
            })?;
            s.put(partition, key, value);
        }
        for out in &self.outputs {
            self.send(
                &out.topic,
                out.partition,
                out.key.as_deref(),
                out.value.as_deref(),
                &out.headers,
            )?;
            self.produced(&out.topic);
        }
        self.outputs.clear();
        Ok(())
    }

    /// Runs the processor's punctuation for every assigned task, inside the open transaction.
    fn punctuate(&mut self) -> Result<(), RuntimeError> {
        let tasks: BTreeSet<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
        if tasks.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let started = Instant::now();
        let mut again = false;
        for partition in tasks {
            self.begin_if_needed()?;
            self.writes.clear();
            self.outputs.clear();
            let mut ctx = ProcessContext {
                partition,
                stores: &self.stores,
                writes: &mut self.writes,
                outputs: &mut self.outputs,
                topics: &self.cfg.topics,
                again_when_idle: false,
            };
            let result = self.processor.punctuate(&mut ctx, now);
            again |= ctx.again_when_idle;
            match result {
                Ok(()) => self.apply_effects(partition)?,
                Err(ProcessError::BadInput { reason, message }) => {
                    warn!(partition, reason, error = %message, "punctuation failed; its writes are dropped");
                }
                Err(ProcessError::Store(e)) => return Err(e.into()),
                Err(ProcessError::Fatal(m)) => return Err(RuntimeError::Processor(m)),
            }
        }
        self.metrics
            .processing_duration
            .with_label_values(&["punctuate"])
            .observe(started.elapsed().as_secs_f64());
        self.punctuate_when_idle = again;
        Ok(())
    }

    fn dead_letter(
        &self,
        record: &InputRecord<'_>,
        reason: &'static str,
        message: &str,
    ) -> Result<(), RuntimeError> {
        let letter = DeadLetter {
            space_id: String::new(),
            service: self.cfg.application_id.clone(),
            origin_topic: record.topic.to_string(),
            origin_partition: record.partition,
            origin_offset: record.offset,
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            error: message.to_string(),
            reason: reason.to_string(),
            failed_at_ms: now_ms(),
        };
        let bytes = letter
            .encode()
            .map_err(|e| RuntimeError::Processor(format!("could not encode a dead letter: {e}")))?;
        warn!(
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            reason,
            "record sent to the dead-letter topic"
        );
        self.send(&self.cfg.dlq_topic, None, record.key, Some(&bytes), &[])?;
        self.produced(&self.cfg.dlq_topic);
        self.metrics.dlq_records.with_label_values(&[reason]).inc();
        Ok(())
    }

    fn uncommitted_bytes(&self) -> usize {
        self.stores.iter().map(StateStore::overlay_bytes).sum()
    }

    /// Steps 2 and 3 of the commit protocol. On error the caller aborts.
    fn commit<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), RuntimeError> {
        self.commit_inner(consumer).map_err(|(_, e)| e)
    }

    fn commit_inner<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), (TxnAction, RuntimeError)> {
        if !self.txn_open {
            return Ok(());
        }
        let started = Instant::now();
        let wrap = |e: RuntimeError| (TxnAction::Abort, e);
        // A store logged by an output topic needs nothing more: its records are already sent.
        let changelogged = || self.stores.iter().filter(|s| s.writes_changelog());
        for store in changelogged() {
            for (partition, key, value) in store.dirty() {
                self.send(
                    store.changelog_topic(),
                    Some(partition),
                    Some(key),
                    value,
                    &[],
                )
                .map_err(wrap)?;
            }
        }
        for store in changelogged() {
            let n = store.dirty().count() as u64;
            if n > 0 {
                self.metrics
                    .records_produced
                    .with_label_values(&[store.changelog_topic()])
                    .inc_by(n);
            }
        }
        if !self.pending_offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), next) in &self.pending_offsets {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .map_err(|e| {
                        wrap(RuntimeError::Kafka {
                            during: "build offsets",
                            source: e,
                        })
                    })?;
            }
            // Fresh group metadata every time: it carries the generation (KIP-447 fencing).
            let metadata = consumer.group_metadata().ok_or_else(|| {
                wrap(RuntimeError::Config(
                    "consumer has no group metadata".into(),
                ))
            })?;
            let producer = &self.producer;
            self.txn_call("send_offsets_to_transaction", || {
                producer.send_offsets_to_transaction(&tpl, &metadata, TXN_CALL_TIMEOUT)
            })?;
        }
        let has_records = !self.pending_offsets.is_empty();
        if has_records {
            self.commits += 1;
        }
        let offsets_sent = started.elapsed();
        self.maybe_crash(FaultPoint::BeforeCommit);
        let producer = &self.producer;
        self.drain_deliveries(TXN_CALL_TIMEOUT)
            .map_err(|e| (TxnAction::Abort, e))?;
        let delivered = started.elapsed();
        self.txn_call("commit_transaction", || {
            producer.commit_transaction(TXN_CALL_TIMEOUT)
        })?;
        self.txn_open = false;
        self.maybe_crash(FaultPoint::AfterCommit);
        self.metrics.commits.with_label_values(&["committed"]).inc();
        let took = started.elapsed();
        self.metrics.commit_duration.observe(took.as_secs_f64());
        if took > SLOW_COMMIT {
            // Where the time went: our sends and offsets, waiting for the broker to acknowledge
            // the records, or the coordinator's commit (EndTxn and its markers).
            warn!(
                total_ms = took.as_millis() as u64,
                changelog_and_offsets_ms = offsets_sent.as_millis() as u64,
                acks_ms = (delivered - offsets_sent).as_millis() as u64,
                end_txn_ms = (took - delivered).as_millis() as u64,
                "slow transaction commit"
            );
        }

        // Serve any delivery reports still queued, then move the overlays into RocksDB.
        self.producer.poll(Duration::ZERO);
        let delivered = self.producer.context().take();
        let none = HashMap::new();
        for store in &mut self.stores {
            let offsets = delivered.get(store.changelog_topic()).unwrap_or(&none);
            store
                .apply_committed(offsets)
                .map_err(|e| (TxnAction::Fatal, e.into()))?;
        }
        self.pending_offsets.clear();
        Ok(())
    }

    fn maybe_crash(&self, point: FaultPoint) {
        if let Some(f) = self.cfg.fault {
            if f.point == point && f.nth == self.commits {
                eprintln!(
                    "fault injection: crashing at {point:?} of commit {}",
                    self.commits
                );
                std::process::abort();
            }
        }
    }

    /// Waits until every produced record is acknowledged and its delivery report served.
    /// rust-rdkafka's own `flush` (which `commit_transaction` calls) polls in 100 ms slices and
    /// so adds up to 100 ms to every commit. Its `poll(t)` is no better for short waits: it always
    /// runs for the whole `t`, and hands librdkafka a remaining time under 1 ms as 0 (a
    /// non-blocking poll), so `poll(1 ms)` in a loop spins a core for as long as the broker takes
    /// to acknowledge. Serving what is queued, then sleeping briefly when nothing came, waits
    /// without burning the CPU the other services need.
    fn drain_deliveries(&self, timeout: Duration) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let before = self.producer.in_flight_count();
            if before == 0 {
                return Ok(());
            }
            self.producer.poll(Duration::ZERO);
            let after = self.producer.in_flight_count();
            if after == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Kafka {
                    during: "waiting for delivery reports",
                    source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            if after >= before {
                std::thread::sleep(DELIVERY_CHECK);
            }
        }
    }

    /// Aborts the open transaction and drops its state; the loop rewinds before the next record.
    fn abort(&mut self) {
        if self.txn_open {
            let producer = &self.producer;
            // abort_transaction waits until every outstanding message is gone, but with
            // rust-rdkafka's event API their delivery reports are only served by polling (its
            // commit_transaction flushes first; abort does not). Purge and serve them here, or an
            // abort with records in flight hangs for the whole timeout.
            producer.purge(PurgeConfig::default().queue().inflight());
            if let Err(e) = self.drain_deliveries(Duration::from_secs(5)) {
                debug!(error = %e, "serving delivery reports before the abort");
            }
            let producer = &self.producer;
            if let Err((action, e)) = self.txn_call("abort_transaction", || {
                producer.abort_transaction(TXN_CALL_TIMEOUT)
            }) {
                warn!(error = %e, "abort failed; rebuilding the clients");
                if self.failure.is_none() {
                    self.failure = Some(if action == TxnAction::Fatal {
                        e
                    } else {
                        RuntimeError::Fatal {
                            during: "abort_transaction",
                            source: KafkaError::Canceled,
                        }
                    });
                }
            }
            self.metrics.commits.with_label_values(&["aborted"]).inc();
        }
        self.txn_open = false;
        for s in &mut self.stores {
            s.discard_overlay();
        }
        self.pending_offsets.clear();
        self.producer.context().take();
        self.needs_rewind = true;
        self.processor.on_abort();
    }

    fn abort_after(&mut self, e: RuntimeError) {
        if matches!(e, RuntimeError::Fatal { .. } | RuntimeError::Store(_)) {
            self.failure = Some(e);
        }
        self.abort();
    }

    /// Seeks every assigned partition back to its committed offset.
    fn rewind<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
    ) -> Result<(), RuntimeError> {
        self.needs_rewind = false;
        if self.assigned.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &self.assigned {
            tpl.add_partition(t, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, TXN_CALL_TIMEOUT)
            .map_err(|source| RuntimeError::Kafka {
                during: "fetch committed offsets",
                source,
            })?;
        for elem in committed.elements() {
            let offset = match elem.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            consumer
                .seek(elem.topic(), elem.partition(), offset, TXN_CALL_TIMEOUT)
                .map_err(|source| RuntimeError::Kafka {
                    during: "seek",
                    source,
                })?;
        }
        info!(
            partitions = self.assigned.len(),
            "rewound to committed offsets"
        );
        Ok(())
    }

    /// A task is partition N of every input; owning only some of them would split its state
    /// between instances. The range assignor guarantees this; the check makes a violation loud.
    fn check_co_partitioning(&self) -> Result<(), RuntimeError> {
        if self.cfg.input_topics.len() < 2 {
            return Ok(());
        }
        let tasks: BTreeSet<i32> = self.assigned.iter().map(|(_, p)| *p).collect();
        for p in tasks {
            for t in &self.cfg.input_topics {
                if !self.assigned.contains(&(t.clone(), p)) {
                    return Err(RuntimeError::Config(format!(
                        "co-partitioning violated: partition {p} of some inputs is assigned here but not of {t}; \
                         all input topics need the same partition count and every instance the same inputs"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Updates this thread's share of the process's assigned-partitions gauge.
    fn report_assigned(&mut self) {
        let now = self.assigned.len() as i64;
        self.metrics
            .assigned_partitions
            .add(now - self.reported_assigned);
        self.reported_assigned = now;
    }

    /// Brings every store's copy of `partition` up to the end of its changelog.
    fn restore_partition(&mut self, partition: i32) -> Result<(), RuntimeError> {
        for i in 0..self.stores.len() {
            self.health.set_part_not_ready(
                &self.part,
                format!(
                    "restoring store {} partition {partition}",
                    self.stores[i].name()
                ),
            );
            self.metrics.restore_active.inc();
            let started = Instant::now();
            let restored = restore_store(
                &self.restore_consumer,
                &self.stores[i],
                partition,
                &self.metrics,
            );
            self.metrics.restore_active.dec();
            let restored = restored?;
            self.metrics
                .processing_duration
                .with_label_values(&["restore"])
                .observe(started.elapsed().as_secs_f64());
            if restored > 0 {
                info!(
                    store = self.stores[i].name(),
                    partition,
                    records = restored,
                    seconds = started.elapsed().as_secs_f64(),
                    "store partition restored"
                );
            }
        }
        Ok(())
    }

    fn close_stores(&self) {
        for s in &self.stores {
            if let Err(e) = s.flush() {
                warn!(store = s.name(), error = %e, "flush on close failed; the next start restores more");
            }
        }
    }
}

/// Replays `store`'s changelog for `partition` from its stored offset to the end; returns the
/// number of records applied.
pub(crate) fn restore_store(
    consumer: &BaseConsumer,
    store: &StateStore,
    partition: i32,
    metrics: &RuntimeMetrics,
) -> Result<u64, RuntimeError> {
    let topic = store.changelog_topic();
    let kafka = |during: &'static str| move |source| RuntimeError::Kafka { during, source };
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, TXN_CALL_TIMEOUT)
        .map_err(kafka("fetch changelog watermarks"))?;
    let start = match store.stored_offset(partition)? {
        Some(stored) => stored,
        None => match store.output_restore_window_ms() {
            Some(Some(window)) => {
                first_offset_since(consumer, topic, partition, now_ms() - window)?.unwrap_or(high)
            }
            _ => low,
        },
    }
    .max(low);
    if start >= high {
        return Ok(0);
    }
    let partition_label = partition.to_string();
    let remaining = metrics
        .restore_remaining
        .with_label_values(&[store.name(), &partition_label]);
    let restored_counter = metrics.restored_records.with_label_values(&[store.name()]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(kafka("build restore assignment"))?;
    consumer.assign(&tpl).map_err(kafka("assign changelog"))?;

    let log_header = (!store.writes_changelog()).then(|| crate::store::log_header(store.name()));
    let mut batch: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(1024);
    let mut next = start;
    let mut applied = 0u64;
    loop {
        // Asking for the position costs a lock and an allocation in librdkafka; ask only when
        // a batch is full or nothing more came, not per record.
        let check_position = match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(msg)) => {
                if let Some(header) = &log_header {
                    // An output record: its header holds the entry; records without one wrote none.
                    let entry = msg.headers().and_then(|hs| {
                        hs.iter()
                            .find(|h| h.key == header.as_str())
                            .and_then(|h| h.value)
                            .and_then(crate::store::decode_logged)
                    });
                    if let Some((k, v)) = entry {
                        batch.push((k.to_vec(), Some(v.to_vec())));
                    }
                } else if let Some(key) = msg.key() {
                    batch.push((key.to_vec(), msg.payload().map(<[u8]>::to_vec)));
                }
                next = msg.offset() + 1;
                if batch.len() >= 1024 {
                    store.apply_restored(partition, &batch, next)?;
                    applied += batch.len() as u64;
                    restored_counter.inc_by(batch.len() as u64);
                    batch.clear();
                    remaining.set(high.saturating_sub(next));
                    true
                } else {
                    next >= high
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => true,
            Some(Err(e)) => {
                warn!(topic, partition, error = %e, "restore consumer error");
                true
            }
        };
        if !check_position {
            continue;
        }
        // Judge completion by position, not the last record: transaction markers occupy offsets.
        let position = consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()));
        let pos = match position {
            Some(Offset::Offset(o)) => o,
            _ => next,
        };
        if pos >= high {
            next = next.max(pos);
            break;
        }
    }
    store.apply_restored(partition, &batch, next)?;
    applied += batch.len() as u64;
    restored_counter.inc_by(batch.len() as u64);
    remaining.set(0);
    let _ = metrics
        .restore_remaining
        .remove_label_values(&[store.name(), &partition_label]);
    consumer
        .assign(&TopicPartitionList::new())
        .map_err(kafka("unassign changelog"))?;
    Ok(applied)
}

/// The first offset of `topic`/`partition` with a timestamp at or after `since_ms`; `None` when
/// every record is older.
fn first_offset_since(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    since_ms: i64,
) -> Result<Option<i64>, RuntimeError> {
    let kafka = |during: &'static str| move |source| RuntimeError::Kafka { during, source };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(since_ms))
        .map_err(kafka("build offsets-for-times request"))?;
    let found = consumer
        .offsets_for_times(tpl, TXN_CALL_TIMEOUT)
        .map_err(kafka("look up the restore start by time"))?;
    let offset = found.find_partition(topic, partition).map(|e| e.offset());
    Ok(match offset {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The stream consumers' heartbeat interval unless configured (see `run_generation`).
const HEARTBEAT_INTERVAL_MS: &str = "500";

/// What a stream thread needs to (re)build its clients.
pub(crate) struct ThreadSetup {
    pub cfg: Arc<RuntimeConfig>,
    pub thread_index: usize,
    pub metrics: RuntimeMetrics,
    pub health: Arc<Health>,
    pub shutdown: Arc<AtomicBool>,
    pub processor_factory: Arc<dyn Fn() -> Box<dyn Processor> + Send + Sync>,
}

impl ThreadSetup {
    /// The thread's name in readiness and logs.
    pub fn part(&self) -> String {
        format!("{}/stream-{}", self.cfg.application_id, self.thread_index)
    }
}

fn base_config(cfg: &RuntimeConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

fn build_engine(setup: &ThreadSetup) -> Result<Engine, RuntimeError> {
    let cfg = &setup.cfg;
    let kafka = |during: &'static str| move |source| RuntimeError::Kafka { during, source };
    let changelog_topics: HashSet<String> =
        cfg.stores.iter().map(|s| cfg.store_log_topic(s)).collect();
    let mut pc = base_config(cfg);
    pc.set("transactional.id", cfg.transactional_id(setup.thread_index))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set(
            "transaction.timeout.ms",
            cfg.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .set("compression.type", "lz4");
    let producer: BaseProducer<DeliveryTracker> = pc
        .create_with_context(DeliveryTracker {
            changelog_topics,
            next_offsets: Mutex::new(HashMap::new()),
        })
        .map_err(kafka("create producer"))?;
    // Fences any earlier producer with this id and aborts its open transaction at once.
    producer
        .init_transactions(TXN_CALL_TIMEOUT)
        .map_err(|source| RuntimeError::Fatal {
            during: "init_transactions",
            source,
        })?;

    let mut rc = base_config(cfg);
    rc.set("group.id", format!("{}-restore", cfg.application_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        // Restores switch partitions often; a parked fetch (default up to 500 ms) would delay each switch.
        .set("fetch.wait.max.ms", "20");
    let restore_consumer: BaseConsumer = rc.create().map_err(kafka("create restore consumer"))?;

    let dir = cfg
        .state_dir
        .join(&cfg.application_id)
        .join(format!("{}-{}", cfg.instance_id, setup.thread_index));
    std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
        path: dir.clone(),
        source,
    })?;
    let stores = cfg
        .stores
        .iter()
        .map(|s| {
            let store = StateStore::open(&s.name, &cfg.store_log_topic(s), &dir)?;
            Ok::<_, crate::store::StoreError>(match &s.log {
                StoreLog::Changelog => store,
                StoreLog::Output {
                    restore_window_ms, ..
                } => store.logged_by_output(*restore_window_ms),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Engine {
        cfg: cfg.clone(),
        producer,
        restore_consumer,
        stores,
        processor: (setup.processor_factory)(),
        metrics: setup.metrics.clone(),
        health: setup.health.clone(),
        part: setup.part(),
        reported_assigned: 0,
        assigned: BTreeSet::new(),
        pending_offsets: HashMap::new(),
        txn_open: false,
        needs_rewind: false,
        failure: None,
        commits: 0,
        punctuate_when_idle: false,
        writes: Vec::new(),
        outputs: Vec::new(),
        consumed_counters: HashMap::new(),
    })
}

/// One input topic: cooperative-sticky, so a rebalance only stops the partitions that move.
/// Several co-partitioned inputs: the range assignor, the only built-in one that gives partition
/// N of every topic to the same member (a task is a partition number across all inputs, and its
/// stores must see all of them). Range is eager: every rebalance revokes and re-assigns all
/// partitions, whose stores then catch up from their local offsets (cheap when nothing moved).
pub(crate) fn assignment_strategy(cfg: &RuntimeConfig) -> &'static str {
    if cfg.input_topics.len() > 1 {
        "range"
    } else {
        "cooperative-sticky"
    }
}

/// Runs one generation of clients until shutdown (Ok) or a failure that needs new clients.
fn run_generation(setup: &ThreadSetup) -> Result<(), RuntimeError> {
    let cfg = &setup.cfg;
    let kafka = |during: &'static str| move |source| RuntimeError::Kafka { during, source };
    let engine = build_engine(setup)?;
    let mut cc = base_config(cfg);
    cc.set("group.id", &cfg.application_id)
        .set(
            "group.instance.id",
            format!("{}-{}", cfg.instance_id, setup.thread_index),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", assignment_strategy(cfg))
        .set(
            "session.timeout.ms",
            setup.cfg.session_timeout.as_millis().to_string(),
        )
        .set("enable.partition.eof", "false");
    cc.set(
        "statistics.interval.ms",
        cfg.lag_interval.as_millis().to_string(),
    );
    // A member hears of a rebalance at its next heartbeat, and with cooperative-sticky a moved
    // partition waits for two such rounds: librdkafka's 3 s default made a joining instance
    // stall the partitions it takes for ~3 s (make bench, part runtime: rebalance); at 500 ms
    // the stall is ~0.2-0.6 s, for two small requests a second per member.
    if !cfg.kafka.contains_key("heartbeat.interval.ms") {
        cc.set("heartbeat.interval.ms", HEARTBEAT_INTERVAL_MS);
    }
    let consumer: BaseConsumer<EngineContext> = cc
        .create_with_context(EngineContext {
            engine: Mutex::new(engine),
        })
        .map_err(kafka("create consumer"))?;
    let topics: Vec<&str> = cfg.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(kafka("subscribe"))?;
    info!(topics = ?cfg.input_topics, transactional_id = %cfg.transactional_id(setup.thread_index), "stream thread started");

    let mut next_commit = Instant::now() + cfg.commit_interval;
    let mut next_punctuate = cfg.punctuate_interval.map(|iv| Instant::now() + iv);
    let result = loop {
        if setup.shutdown.load(Ordering::SeqCst) {
            let mut engine = consumer.context().lock();
            if let Err(e) = engine.commit(&consumer) {
                warn!(error = %e, "final commit failed; aborting");
                engine.abort();
            }
            engine.close_stores();
            break Ok(());
        }
        let mut wait = next_commit
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(100));
        if let Some(due) = next_punctuate {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        let idle_work = consumer.context().lock().punctuate_when_idle;
        if idle_work {
            // Only look for input that is already here; without any, punctuate again.
            wait = Duration::ZERO;
        }
        let polled = consumer.poll(wait);
        let idle = polled.is_none();
        let mut engine = consumer.context().lock();
        if let Some(f) = engine.failure.take() {
            break Err(f);
        }
        if engine.needs_rewind {
            // Anything polled now predates the rewind; it will be read again.
            drop(polled);
            if let Err(e) = engine.rewind(&consumer) {
                break Err(e);
            }
            continue;
        }
        match polled {
            Some(Ok(msg)) => {
                if let Err(e) = engine.process(&msg) {
                    match e {
                        RuntimeError::Kafka { .. } => {
                            warn!(error = %e, "produce failed; aborting the transaction");
                            engine.abort();
                            continue;
                        }
                        other => {
                            engine.abort();
                            break Err(other);
                        }
                    }
                }
            }
            Some(Err(e)) => {
                if matches!(classify(&e), TxnAction::Fatal) {
                    break Err(RuntimeError::Fatal {
                        during: "poll",
                        source: e,
                    });
                }
                warn!(error = %e, "consumer error");
            }
            None => {}
        }
        if let (Some(due), Some(interval)) = (next_punctuate, cfg.punctuate_interval) {
            if Instant::now() >= due || (idle && engine.punctuate_when_idle) {
                next_punctuate = Some(Instant::now() + interval);
                if let Err(e) = engine.punctuate() {
                    match e {
                        RuntimeError::Kafka { .. } => {
                            warn!(error = %e, "produce failed during punctuation; aborting the transaction");
                            engine.abort();
                            continue;
                        }
                        other => {
                            engine.abort();
                            break Err(other);
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_commit || engine.uncommitted_bytes() > cfg.max_uncommitted_bytes {
            if let Err((action, e)) = engine.commit_inner(&consumer) {
                warn!(error = %e, ?action, "commit failed; aborting and rewinding");
                engine.abort();
                if action == TxnAction::Fatal {
                    break Err(e);
                }
            }
            next_commit = Instant::now() + cfg.commit_interval;
        }
    };
    // Dropping the consumer closes it, which runs the revoke callback: the lock must be free.
    drop(consumer);
    result
}

/// The stream thread's body: rebuilds clients after fatal errors, returns on shutdown.
pub(crate) fn run_thread(setup: ThreadSetup) -> Result<(), RuntimeError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match run_generation(&setup) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_rebuildable() && !setup.shutdown.load(Ordering::SeqCst) => {
                warn!(error = %e, ?backoff, "stream thread failed; rebuilding clients");
                setup
                    .health
                    .set_part_not_ready(&setup.part(), format!("rebuilding after: {e}"));
                setup.metrics.client_rebuilds.inc();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}
