//! Backfill (`include_historical_data: true`): history replayed for new leaves only.
//!
//! Per task (partition of `events.resolved`), the `backfill` store records for each leaf the
//! task has seen a [`LeafReg`]: the *cut* (the next live offset when the task first ran with
//! the leaf: live processing counts offsets `>= cut`), whether it needs history, whether the
//! backfill is done, and the next source offset it accepts (`applied`, so a reader restarted
//! after a crash cannot count an event twice). All of it is written inside the runtime's
//! transaction, so the cut and the progress are exactly-once like the profile state.
//!
//! A [`Backfiller`] reader thread per (space, partition, leaf set) reads that partition of
//! `events.resolved` from `applied` up to the cut and forwards the events those leaves read to
//! the internal topic `{prefix}compute.backfill` on the *same* partition (co-partitioned, so
//! the owning task applies them in its transaction), then a done marker. Until the marker,
//! definitions using the leaves are held (no output); then the task re-evaluates every profile
//! once, so the first computation emits `entered` for every member, as if the definition had
//! existed from the start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MessageType, ResolvedEvent};
use prometheus::{IntCounter, IntGauge};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// One leaf's backfill state in one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafReg {
    /// Live processing counts offsets `>= cut`; the backfill counts those below.
    pub cut: i64,
    /// A definition using the leaf asked for historical data (and there was history).
    pub hist: bool,
    /// History applied up to the cut.
    pub done: bool,
    /// Next source offset accepted from the backfill topic.
    pub applied: i64,
}

impl LeafReg {
    /// Still waiting for history.
    pub fn pending(&self) -> bool {
        self.hist && !self.done
    }
}

/// Store key of a leaf registration.
pub fn reg_key(space: &str, leaf: &str) -> Vec<u8> {
    format!("leaf/{space}\u{0}{leaf}").into_bytes()
}

/// Parses a registration key back into (space, leaf).
pub fn parse_reg_key(k: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(k).ok()?.strip_prefix("leaf/")?;
    let (a, b) = s.split_once('\u{0}')?;
    Some((a.to_string(), b.to_string()))
}

/// Store key of the task's next live offset.
pub const POS_KEY: &[u8] = b"pos";

/// Header of a record on the backfill topic (followed by `\n` and, for data, the
/// `ResolvedEvent` bytes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Space.
    pub s: String,
    /// Leaves the reader fills.
    pub l: Vec<String>,
    /// Source offset of the event (data records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<i64>,
    /// The reader reached this offset (done marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// Frames a backfill record.
pub fn frame(h: &Header, event: &[u8]) -> Vec<u8> {
    let mut v = serde_json::to_vec(h).unwrap_or_default();
    v.push(b'\n');
    v.extend_from_slice(event);
    v
}

/// Splits a backfill record.
pub fn unframe(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    let i = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let h: Header = serde_json::from_slice(&bytes[..i]).map_err(|e| e.to_string())?;
    Ok((h, &bytes[i + 1..]))
}

/// A reader to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// Space.
    pub space: String,
    /// Partition of `events.resolved` (and of the backfill topic).
    pub partition: i32,
    /// Leaves to fill.
    pub leaves: BTreeSet<String>,
    /// Event names they read.
    pub names: BTreeSet<String>,
    /// Read from here (lowest `applied`).
    pub from: i64,
    /// Up to here (highest cut, exclusive).
    pub end: i64,
}

/// Reader metrics.
#[derive(Clone)]
pub struct ReaderMetrics {
    /// Events read from `events.resolved` by readers.
    pub read: IntCounter,
    /// Offsets still to read, over all running readers.
    pub remaining: IntGauge,
}

/// Starts and tracks backfill reader threads (one per request key, shared by the process).
pub struct Backfiller {
    bootstrap: String,
    kafka: BTreeMap<String, String>,
    resolved: String,
    backfill: String,
    metrics: ReaderMetrics,
    stop: Arc<AtomicBool>,
    /// key -> finished at (None: running).
    runs: Mutex<HashMap<String, Option<Instant>>>,
}

/// How long a finished reader's key is not restarted (its done marker is on its way).
const RESTART_AFTER: Duration = Duration::from_secs(60);

impl Backfiller {
    /// A backfiller.
    pub fn new(
        bootstrap: &str,
        kafka: &BTreeMap<String, String>,
        resolved: &str,
        backfill: &str,
        metrics: ReaderMetrics,
        stop: Arc<AtomicBool>,
    ) -> Arc<Backfiller> {
        Arc::new(Backfiller {
            bootstrap: bootstrap.into(),
            kafka: kafka.clone(),
            resolved: resolved.into(),
            backfill: backfill.into(),
            metrics,
            stop,
            runs: Mutex::new(HashMap::new()),
        })
    }

    /// Starts a reader for `req` unless one runs (or finished recently) for the same key.
    pub fn request(self: &Arc<Self>, req: Request) {
        let key = format!(
            "{}|{}|{}",
            req.space,
            req.partition,
            req.leaves.iter().cloned().collect::<Vec<_>>().join(",")
        );
        {
            let Ok(mut runs) = self.runs.lock() else {
                return;
            };
            match runs.get(&key) {
                Some(None) => return,
                Some(Some(t)) if t.elapsed() < RESTART_AFTER => return,
                _ => {}
            }
            runs.insert(key.clone(), None);
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("backfill-{}", req.partition))
            .spawn(move || {
                info!(space = %req.space, partition = req.partition, from = req.from, end = req.end, leaves = req.leaves.len(), "backfill reader started");
                match me.read(&req) {
                    Ok(n) => info!(partition = req.partition, forwarded = n, "backfill reader done"),
                    Err(e) => warn!(partition = req.partition, error = %e, "backfill reader failed; it restarts on a later punctuation"),
                }
                if let Ok(mut runs) = me.runs.lock() {
                    runs.insert(key, Some(Instant::now()));
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a backfill reader");
        }
    }

    fn read(&self, req: &Request) -> Result<u64, KafkaError> {
        let mut cc = ClientConfig::new();
        cc.set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "corral-compute-backfill")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true");
        let mut pc = ClientConfig::new();
        pc.set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20");
        for (k, v) in &self.kafka {
            cc.set(k, v);
            pc.set(k, v);
        }
        let c: BaseConsumer = cc.create()?;
        let p: BaseProducer = pc.create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.resolved, req.partition, Offset::Offset(req.from))?;
        c.assign(&tpl)?;
        let leaves: Vec<String> = req.leaves.iter().cloned().collect();
        let mut forwarded = 0u64;
        let mut at = req.from;
        let total = (req.end - req.from).max(0);
        self.metrics.remaining.add(total);
        let mut reported = total;
        let report = |at: i64, reported: &mut i64| {
            let left = (req.end - at).max(0);
            self.metrics.remaining.sub(*reported - left);
            *reported = left;
        };
        let result = loop {
            if self.stop.load(Ordering::SeqCst) {
                break Err(KafkaError::Canceled);
            }
            if at >= req.end {
                break Ok(());
            }
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    at = m.offset() + 1;
                    if m.offset() >= req.end {
                        break Ok(());
                    }
                    self.metrics.read.inc();
                    let Some(v) = m.payload() else { continue };
                    // Undecodable or foreign events were dead-lettered by the live path.
                    let Ok(ev) = ResolvedEvent::decode(v) else {
                        continue;
                    };
                    let name = match ev.message.message_type {
                        MessageType::Track => ev.message.event.as_deref().unwrap_or_default(),
                        MessageType::Page => "Page Viewed",
                        MessageType::Screen => "Screen Viewed",
                        _ => continue,
                    };
                    if ev.message.space_id != req.space || !req.names.contains(name) {
                        continue;
                    }
                    let h = Header {
                        s: req.space.clone(),
                        l: leaves.clone(),
                        o: Some(m.offset()),
                        end: None,
                    };
                    send(&p, &self.backfill, req.partition, m.key(), frame(&h, v))?;
                    forwarded += 1;
                    if forwarded.is_multiple_of(1000) {
                        report(at, &mut reported);
                    }
                }
                // End of the readable log: every committed offset below the cut was read.
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(()),
                Some(Err(e)) => break Err(e),
                None => {}
            }
        };
        report(req.end, &mut reported);
        result?;
        let h = Header {
            s: req.space.clone(),
            l: leaves,
            o: None,
            end: Some(req.end),
        };
        send(&p, &self.backfill, req.partition, None, frame(&h, &[]))?;
        p.flush(Duration::from_secs(60))?;
        Ok(forwarded)
    }
}

fn send(
    p: &BaseProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Vec<u8>,
) -> Result<(), KafkaError> {
    loop {
        let mut r: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).partition(partition).payload(&value);
        if let Some(k) = key {
            r = r.key(k);
        }
        match p.send(r) {
            Ok(()) => {
                p.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                p.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let h = Header {
            s: "sp".into(),
            l: vec!["a".into()],
            o: Some(7),
            end: None,
        };
        let b = frame(&h, b"x\ny");
        let (h2, rest) = unframe(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h2, h);
        assert_eq!(rest, b"x\ny");
        assert_eq!(
            parse_reg_key(&reg_key("s", "l/1")),
            Some(("s".into(), "l/1".into()))
        );
    }
}
