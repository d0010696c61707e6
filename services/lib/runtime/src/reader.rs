//! Reading topics outside a stream thread: one factory for every `read_committed` reader (the
//! definitions follower, changelog followers, replays, backfill, `corralctl tail`) and two ways to
//! read with it:
//!
//! - [`read_to_end`]: every partition of a topic from a start ([`Start`]) up to its end as the
//!   reader finds it (operator replays, tail);
//! - [`PartitionReplay`]: one partition between two offsets, in slices bounded by time and count,
//!   so a stream thread can replay its own partition (compute's backfill) between input batches.
//!
//! Readers are plain consumers outside any group: partitions are assigned by hand and offsets are
//! never committed. They see only committed transactional data, like every Corral consumer.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, Producer, ProducerContext,
};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::RuntimeError;
use crate::follow::{partition_count, QuietEof};
use crate::produce::send_waiting;

fn kafka(during: &'static str) -> impl FnOnce(KafkaError) -> RuntimeError {
    move |source| RuntimeError::Kafka { during, source }
}

/// A `read_committed` consumer that reports partition ends, named `group` (it never joins the
/// group nor commits, but the id shows in broker logs and can be matched by ACLs). `kafka`
/// (librdkafka properties: security, tuning) is applied last, so it overrides the defaults.
pub fn committed_reader(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    group: &str,
) -> Result<BaseConsumer<QuietEof>, RuntimeError> {
    let defaults = [
        ("group.id", group),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("isolation.level", "read_committed"),
        ("enable.partition.eof", "true"),
    ];
    client_config(bootstrap, &defaults, kafka_cfg)
        .create_with_context(QuietEof)
        .map_err(kafka("creating a topic reader"))
}

/// `bootstrap.servers`, then `defaults`, then the caller's `kafka_cfg` (which wins).
fn client_config(
    bootstrap: &str,
    defaults: &[(&str, &str)],
    kafka_cfg: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap);
    for (k, v) in defaults {
        cc.set(*k, *v);
    }
    for (k, v) in kafka_cfg {
        cc.set(k, v);
    }
    cc
}

/// An idempotent producer for writes outside a transaction (replays, definitions), with
/// `kafka` applied last. Partitions by key like the Java clients (murmur2).
pub fn idempotent_producer(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
) -> Result<BaseProducer, RuntimeError> {
    idempotent_producer_with(bootstrap, kafka_cfg, DefaultProducerContext)
}

/// [`idempotent_producer`] with a context of the caller's (to see delivery reports).
pub fn idempotent_producer_with<C: ProducerContext>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    context: C,
) -> Result<BaseProducer<C>, RuntimeError> {
    let defaults = [
        ("enable.idempotence", "true"),
        ("partitioner", "murmur2_random"),
    ];
    client_config(bootstrap, &defaults, kafka_cfg)
        .create_with_context(context)
        .map_err(kafka("creating a producer"))
}

/// Where [`read_to_end`] starts in every partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// The last `n` records of each partition.
    Last(i64),
    /// The first record whose timestamp is at or after this time (ms); the end when none is.
    Time(i64),
}

/// Assigns every partition of `topic` at `from`; returns the partition count. A missing topic is
/// an error that says how to create it.
pub fn assign_all<C: rdkafka::consumer::ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
    from: Start,
) -> Result<i32, RuntimeError> {
    let partitions = partition_count(c, topic, Duration::from_secs(5))
        .map_err(kafka("fetching topic metadata"))?;
    if partitions == 0 {
        return Err(RuntimeError::Admin(format!(
            "topic {topic} does not exist; create it with `corralctl topics apply`"
        )));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let offset = match from {
            Start::Beginning => Offset::Beginning,
            Start::Last(n) => Offset::OffsetTail(n),
            Start::Time(ms) => Offset::Offset(ms),
        };
        tpl.add_partition_offset(topic, p, offset)
            .map_err(kafka("assigning partitions"))?;
    }
    if let Start::Time(_) = from {
        let found = c
            .offsets_for_times(tpl, Duration::from_secs(10))
            .map_err(kafka("looking up offsets by time"))?;
        tpl = TopicPartitionList::new();
        for e in found.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::End,
            };
            tpl.add_partition_offset(topic, e.partition(), offset)
                .map_err(kafka("assigning partitions"))?;
        }
    }
    c.assign(&tpl).map_err(kafka("assigning partitions"))?;
    Ok(partitions)
}

/// What the callback of [`read_to_end`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Reads every partition of `topic` from `from` until each reached its end (or the callback
/// stops, or `timeout` passes: then an error), calling `on_record` in each partition's order.
/// `E` is the caller's error; Kafka errors convert into it.
pub fn read_to_end<E>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    group: &str,
    topic: &str,
    from: Start,
    timeout: Duration,
    mut on_record: impl FnMut(&BorrowedMessage<'_>) -> Result<Flow, E>,
) -> Result<(), E>
where
    E: From<RuntimeError>,
{
    let c = committed_reader(bootstrap, kafka_cfg, group)?;
    let partitions = assign_all(&c, topic, from)?;
    let deadline = Instant::now() + timeout;
    let mut at_end = HashSet::new();
    while (at_end.len() as i32) < partitions {
        if Instant::now() > deadline {
            return Err(RuntimeError::Admin(format!(
                "timed out after {timeout:?} reading {topic}; is the broker reachable?"
            ))
            .into());
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                if on_record(&m)? == Flow::Stop {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => return Err(kafka("reading")(e).into()),
            None => {}
        }
    }
    Ok(())
}

/// Copies the records of every partition of `from` (from `start` up to each partition's end)
/// that `select` picks to `to`, keyed and valued as it says, with an idempotent producer; with
/// `dry_run` it only counts them. `progress` hears the records read so far. Returns how many
/// were (or would be) copied: the replay of dead-lettered or blocked records.
#[allow(clippy::too_many_arguments)] // one call per replay; a struct would only rename them
pub fn copy_selected<E>(
    bootstrap: &str,
    kafka_cfg: &BTreeMap<String, String>,
    group: &str,
    from: &str,
    start: Start,
    to: &str,
    dry_run: bool,
    progress: &mut dyn FnMut(u64),
    mut select: impl FnMut(&BorrowedMessage<'_>) -> Result<Option<(Vec<u8>, Vec<u8>)>, E>,
) -> Result<usize, E>
where
    E: From<RuntimeError>,
{
    let producer = if dry_run {
        None
    } else {
        Some(idempotent_producer(bootstrap, kafka_cfg)?)
    };
    let (mut copied, mut read) = (0, 0u64);
    read_to_end(
        bootstrap,
        kafka_cfg,
        group,
        from,
        start,
        Duration::from_secs(600),
        |m| {
            read += 1;
            progress(read);
            let Some((key, value)) = select(m)? else {
                return Ok(Flow::Continue);
            };
            copied += 1;
            if let Some(p) = &producer {
                let record = BaseRecord::to(to).key(&key).payload(&value);
                send_waiting(p, record, Duration::from_millis(10))
                    .map_err(kafka("producing a replayed record"))?;
            }
            Ok::<_, E>(Flow::Continue)
        },
    )?;
    if let Some(p) = &producer {
        p.flush(Duration::from_secs(60))
            .map_err(kafka("flushing replayed records"))?;
    }
    Ok(copied)
}

/// One partition of a topic read from `at` up to `end` (exclusive), a slice at a time: how a
/// stream thread replays history of its own partition without stalling its input.
pub struct PartitionReplay {
    consumer: BaseConsumer<QuietEof>,
    /// Next offset to read (everything below was delivered, or is not readable committed data).
    pub at: i64,
    /// Stop here (exclusive).
    pub end: i64,
}

impl PartitionReplay {
    pub fn open(
        bootstrap: &str,
        kafka_cfg: &BTreeMap<String, String>,
        group: &str,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
    ) -> Result<Self, RuntimeError> {
        // Short fetch waits: a slice is bounded in time and must not sit in a fetch.
        let mut cfg = BTreeMap::from([("fetch.wait.max.ms".to_string(), "50".to_string())]);
        cfg.extend(kafka_cfg.iter().map(|(k, v)| (k.clone(), v.clone())));
        let consumer = committed_reader(bootstrap, &cfg, group)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(kafka("assigning a partition"))?;
        consumer
            .assign(&tpl)
            .map_err(kafka("assigning a partition"))?;
        Ok(Self {
            consumer,
            at: from,
            end,
        })
    }

    /// Whether every offset below `end` was read.
    pub fn finished(&self) -> bool {
        self.at >= self.end
    }

    /// Delivers `(offset, payload)` of the records below `end`, in offset order, until `end`,
    /// `deadline` or `max` records; returns how many records were read.
    pub fn read(
        &mut self,
        deadline: Instant,
        max: usize,
        mut f: impl FnMut(i64, &[u8]),
    ) -> Result<usize, RuntimeError> {
        self.read_keyed(deadline, max, |offset, _, value| f(offset, value))
    }

    /// [`PartitionReplay::read`] with each record's key too.
    pub fn read_keyed(
        &mut self,
        deadline: Instant,
        max: usize,
        mut f: impl FnMut(i64, Option<&[u8]>, &[u8]),
    ) -> Result<usize, RuntimeError> {
        let mut n = 0;
        while !self.finished() && n < max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.consumer.poll(left.min(Duration::from_millis(100))) {
                Some(Ok(m)) => {
                    if m.offset() >= self.end {
                        self.at = self.end;
                        break;
                    }
                    self.at = m.offset() + 1;
                    n += 1;
                    if let Some(v) = m.payload() {
                        f(m.offset(), m.key(), v);
                    }
                }
                // End of the readable log: every committed offset below `end` was read (callers
                // choose `end` after a record they already read committed).
                Some(Err(KafkaError::PartitionEOF(_))) => self.at = self.end,
                Some(Err(e)) => return Err(kafka("replaying a partition")(e)),
                None => {}
            }
        }
        Ok(n)
    }

    /// Drops the reader on a short-lived thread: closing a librdkafka consumer waits for its
    /// broker threads (~100 ms), which would otherwise stall the calling stream thread.
    pub fn close_in_background(self) {
        let spawned = std::thread::Builder::new()
            .name("replay-close".into())
            .spawn(move || drop(self));
        // Could not spawn: the reader was dropped here instead (slower, same effect).
        drop(spawned);
    }
}
