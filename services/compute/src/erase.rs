//! Erasure of deleted profiles from the retained history (docs/privacy.md, "Erasure").
//!
//! `events.resolved` is compacted and keyed per event (`corral_codec::history`), so a tombstone
//! for a record's key makes the log cleaner remove that record (within the topic's
//! `max.compaction.lag.ms`). Each compute task erases its own partition:
//!
//! - a deletion (`service::privacy`) records `erase/todo/{profile}` -> the request's time in the
//!   task's `backfill` store;
//! - a punctuation with no scan running turns every pending todo into one [`Scan`] of the
//!   partition from its start up to the next live offset (`pos`: everything the task already
//!   read live; what it reads later is checked live and tombstoned there), and deletes the todos
//!   it took (one scan serves every deletion pending when it starts);
//! - each punctuation reads a bounded slice of the scan with a [`KeyReader`] (by key: the
//!   decision needs no value decode, [`erases`]) and emits a tombstone to this partition for every
//!   record of a deleted life, then writes the scan's new position, in the transaction;
//! - the slice that reaches the end writes `erased/{profile}` -> the request's time for each
//!   profile of the scan (what `corralctl privacy status` waits for) and deletes the scan.
//!
//! The scan's position is committed with the tombstones it covers, so a crash (even SIGKILL)
//! resumes from the last committed slice: a slice is emitted once or not at all. The reader's
//! position is only a cache of it (dropped on abort and rebalance).

use std::collections::BTreeMap;

use corral_codec::history::parse_key;
use corral_codec::{AvroRecord, ResolvedEvent};
use corral_runtime::reader::PartitionReplay;
use corral_runtime::RuntimeError;
use serde::{Deserialize, Serialize};

/// Store key of a deletion waiting for an erasure scan (value: the request's time, ms BE).
pub fn todo_key(profile: &str) -> Vec<u8> {
    format!("{TODO_PREFIX}{profile}").into_bytes()
}

/// Prefix of [`todo_key`].
pub const TODO_PREFIX: &str = "erase/todo/";

/// Store key of the task's running scan (value: [`Scan`] as JSON).
pub const SCAN_KEY: &[u8] = b"erase/scan";

/// Store key recording that the history of `profile` on this partition was erased up to its
/// deletion (value: the request's time, ms BE). `corralctl privacy status` reads it.
pub fn erased_key(profile: &str) -> Vec<u8> {
    format!("erased/{profile}").into_bytes()
}

/// One erasure scan of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scan {
    /// Next offset to read.
    pub at: i64,
    /// Stop here (exclusive): the task's next live offset when the scan started.
    pub end: i64,
    /// Profile -> its deletion request's time: their records resolved at or before it go.
    pub profiles: BTreeMap<String, i64>,
}

impl Scan {
    /// Every offset below `end` was read.
    pub fn done(&self) -> bool {
        self.at >= self.end
    }
}

/// Whether the `events.resolved` record keyed `key` (with a value) belongs to a deleted life of
/// one of `profiles`. A key names its profile and resolve time; a plain profile-id key (the older
/// format) has no time, so `resolved_at` is asked for the value's (`None`: erase, it is theirs).
pub fn erases(
    profiles: &BTreeMap<String, i64>,
    key: &[u8],
    resolved_at: impl FnOnce() -> Option<i64>,
) -> bool {
    let k = parse_key(key);
    let Some(until) = std::str::from_utf8(k.profile_id)
        .ok()
        .and_then(|p| profiles.get(p))
    else {
        return false;
    };
    match k.resolved_at_ms.or_else(resolved_at) {
        Some(at) => at <= *until,
        None => true,
    }
}

/// The resolve time in an `events.resolved` value (for keys of the older format).
pub fn value_time(value: &[u8]) -> Option<i64> {
    ResolvedEvent::decode(value).ok().map(|e| e.resolved_at_ms)
}

/// A task's reader of its `events.resolved` partition between two offsets (the runtime's
/// partition replay; the scan reads each record's key).
pub type KeyReader = PartitionReplay;

/// A reader of `partition` of `topic` from `from` up to `end` (exclusive).
pub fn open_reader(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
) -> Result<KeyReader, RuntimeError> {
    PartitionReplay::open(
        bootstrap,
        kafka,
        "corral-compute-erase",
        topic,
        partition,
        from,
        end,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_codec::history::key_of;

    #[test]
    fn erases_only_the_deleted_life_of_deleted_profiles() {
        let gone = BTreeMap::from([("use_ada".to_string(), 100)]);
        let never = || panic!("a key with a time needs no value");
        assert!(erases(&gone, &key_of("use_ada", "m1", 99), never));
        assert!(erases(&gone, &key_of("use_ada", "m2", 100), never));
        // Resolved after the request: a new life of the same id.
        assert!(!erases(&gone, &key_of("use_ada", "m3", 101), never));
        // Another profile, even one whose id starts the same way.
        assert!(!erases(&gone, &key_of("use_bob", "m1", 1), never));
        assert!(!erases(&gone, &key_of("use_adam", "m1", 1), never));
        // The older key format: the value's time decides; no time, it is theirs.
        assert!(erases(&gone, b"use_ada", || Some(50)));
        assert!(!erases(&gone, b"use_ada", || Some(150)));
        assert!(erases(&gone, b"use_ada", || None));
        assert!(!erases(&gone, b"use_bob", || None));
    }

    #[test]
    fn scans_are_done_at_their_end() {
        let s = Scan {
            at: 3,
            end: 3,
            profiles: BTreeMap::new(),
        };
        assert!(s.done());
        let s = Scan { at: 2, ..s };
        assert!(!s.done());
        assert_ne!(todo_key("a"), erased_key("a"));
        assert!(todo_key("a").starts_with(TODO_PREFIX.as_bytes()));
    }
}
