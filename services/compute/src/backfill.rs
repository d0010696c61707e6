//! Backfill (`include_historical_data: true`): history replayed for new leaves only, inside the
//! task that owns the partition.
//!
//! Per task (partition of `events.resolved`), the `backfill` store records for each leaf the
//! task has seen a [`LeafReg`]: the *cut* (the next live offset when the task first ran with
//! the leaf: live processing counts offsets `>= cut`), whether it needs history, whether the
//! backfill is done, and the next source offset it accepts (`applied`). All of it is written
//! inside the runtime's transaction together with the profile states the history changed, so
//! the registration *is* the exactly-once progress: a crash repeats nothing and loses nothing.
//!
//! The task reads its own partition of `events.resolved` with a [`HistoryReader`] (a plain
//! assigned consumer, read_committed, no group commits) from `applied` up to the cut during its
//! punctuation, a bounded slice at a time (see `service`). [`peek`] filters events by space,
//! type and name before the full decode. Until every pending leaf reaches its cut, definitions
//! using them are held (no output); then the task re-evaluates every profile once, so the first
//! computation emits `entered` for every member, as if the definition had existed from the
//! start.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_codec::{AvroRecord, MessageType, ResolvedEvent, SegmentMessage};
use corral_runtime::reader::PartitionReplay;
use corral_runtime::RuntimeError;
use serde::{Deserialize, Serialize};

/// One leaf's backfill state in one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafReg {
    /// Live processing counts offsets `>= cut`; the backfill counts those below.
    pub cut: i64,
    /// A definition using the leaf asked for historical data (and there was history).
    pub hist: bool,
    /// History applied up to the cut.
    pub done: bool,
    /// Next source offset the backfill applies (everything below it is in the state).
    pub applied: i64,
}

impl LeafReg {
    /// Still waiting for history.
    pub fn pending(&self) -> bool {
        self.hist && !self.done
    }

    /// Whether the history event at `offset` is still to be applied to this leaf.
    pub fn wants(&self, offset: i64) -> bool {
        self.pending() && offset >= self.applied && offset < self.cut
    }

    /// Records that the history was read up to `at` (exclusive); returns whether it is done.
    pub fn advance(&mut self, at: i64) -> bool {
        if self.pending() {
            self.applied = self.applied.max(at.min(self.cut));
            if self.applied >= self.cut {
                self.done = true;
            }
        }
        self.done
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

/// Store key recording that a profile of this partition was merged away (value: the profile it
/// went into). History read later for that id, and merge state arriving for it, follow it.
pub fn merged_key(profile: &str) -> Vec<u8> {
    format!("merged/{profile}").into_bytes()
}

/// What [`peek`] reads of an `events.resolved` record without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek<'a> {
    /// `message.space_id`.
    pub space: &'a str,
    /// The event name the engine matches (`Page Viewed` / `Screen Viewed` for page / screen);
    /// `None` for other call types, which leaves never read.
    pub name: Option<&'a str>,
}

/// The writer fingerprint of the current `events.resolved` schema (bytes 2..10 of a record).
pub fn current_fingerprint() -> Option<[u8; 8]> {
    let ev = ResolvedEvent {
        message: SegmentMessage::new("", MessageType::Track, ""),
        profile_id: String::new(),
        external_ids: Vec::new(),
        resolved_at_ms: 0,
    };
    let b = ev.encode().ok()?;
    b.get(2..10)?.try_into().ok()
}

/// Reads the space, the call type and the event name of an `events.resolved` record written
/// with the current schema (`fingerprint`), without the full decode (properties, context and
/// ids are what cost). `None` when the bytes are not in that layout: decode them fully then.
pub fn peek<'a>(bytes: &'a [u8], fingerprint: &[u8; 8]) -> Option<Peek<'a>> {
    if bytes.get(..2)? != [0xC3, 0x01] || bytes.get(2..10)? != fingerprint {
        return None;
    }
    let mut r = Cursor { b: bytes, pos: 10 };
    let _space = r.string()?;
    let space = r.string()?;
    let kind = r.long()?;
    let _message_id = r.string()?;
    for _ in 0..4 {
        // userId, anonymousId, groupId, previousId
        r.opt_string()?;
    }
    let event = r.opt_string()?;
    let kind = *MessageType::ALL.get(usize::try_from(kind).ok()?)?;
    let name = crate::service::event_name(kind, event);
    Some(Peek { space, name })
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Option<i64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.b.get(self.pos)?;
            self.pos += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        None
    }

    fn string(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.long()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let s = std::str::from_utf8(self.b.get(self.pos..end)?).ok()?;
        self.pos = end;
        Some(s)
    }

    fn opt_string(&mut self) -> Option<Option<&'a str>> {
        match self.long()? {
            0 => Some(None),
            1 => self.string().map(Some),
            _ => None,
        }
    }
}

/// How history readers connect.
#[derive(Debug, Clone)]
pub struct HistorySource {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Extra librdkafka settings (security etc.).
    pub kafka: BTreeMap<String, String>,
    /// `events.resolved`.
    pub topic: String,
    /// Wall-clock budget of history work per punctuation round, shared by the tasks of a
    /// stream thread that have history pending (live events of those partitions wait at most
    /// about this long, plus the re-evaluation when a backfill completes).
    pub budget: Duration,
    /// At most this many history records read per task and punctuation (bounds the memory of
    /// the per-call profile cache).
    pub max_records: usize,
}

/// A task's reader of its `events.resolved` partition up to a cut: the runtime's "replay my
/// partition" primitive.
pub type HistoryReader = PartitionReplay;

impl HistorySource {
    /// A reader of `partition` from `from` up to `end` (exclusive).
    pub fn open(&self, partition: i32, from: i64, end: i64) -> Result<HistoryReader, RuntimeError> {
        PartitionReplay::open(
            &self.bootstrap,
            &self.kafka,
            "corral-compute-backfill",
            &self.topic,
            partition,
            from,
            end,
        )
    }
}

/// Closes a reader without stalling the stream thread (see [`PartitionReplay::close_in_background`]).
pub fn close(reader: Option<HistoryReader>) {
    if let Some(r) = reader {
        r.close_in_background();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_codec::ExternalId;

    fn record(space: &str, kind: MessageType, event: Option<&str>) -> Vec<u8> {
        let mut m = SegmentMessage::new(space, kind, "mid-1");
        m.user_id = Some("u1".into());
        m.anonymous_id = Some("a1".into());
        m.event = event.map(String::from);
        m.properties = Some(serde_json::json!({"revenue": 10}));
        ResolvedEvent {
            message: m,
            profile_id: "use_1".into(),
            external_ids: vec![ExternalId {
                id_type: "user_id".into(),
                id: "u1".into(),
                collection: None,
            }],
            resolved_at_ms: 5,
        }
        .encode()
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn peeks_space_and_name() {
        let fp = current_fingerprint().unwrap_or_else(|| panic!("no fingerprint"));
        let t = record("sp", MessageType::Track, Some("Order Completed"));
        assert_eq!(
            peek(&t, &fp),
            Some(Peek {
                space: "sp",
                name: Some("Order Completed")
            })
        );
        let p = record("sp2", MessageType::Page, None);
        assert_eq!(peek(&p, &fp).and_then(|p| p.name), Some("Page Viewed"));
        let i = record("sp", MessageType::Identify, None);
        assert_eq!(peek(&i, &fp).map(|p| p.name), Some(None));
        // Another layout, truncated or garbage: no answer (the caller decodes fully).
        assert_eq!(peek(&t[..12], &fp), None);
        assert_eq!(peek(b"xx", &fp), None);
        let mut other = t.clone();
        other[3] ^= 1;
        assert_eq!(peek(&other, &fp), None);
    }

    #[test]
    fn registration_advances_to_its_cut() {
        let mut r = LeafReg {
            cut: 10,
            hist: true,
            done: false,
            applied: 0,
        };
        assert!(r.wants(0) && r.wants(9) && !r.wants(10));
        assert!(!r.advance(4));
        assert!(!r.wants(3) && r.wants(4));
        assert!(!r.advance(2), "never goes back");
        assert_eq!(r.applied, 4);
        assert!(r.advance(25));
        assert_eq!(r.applied, 10);
        assert!(!r.wants(5));
        assert_eq!(
            parse_reg_key(&reg_key("s", "l/1")),
            Some(("s".into(), "l/1".into()))
        );
    }
}
