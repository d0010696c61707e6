//! The outbox: deliveries waiting for their destination, in the `outbox` state store
//! (RocksDB, changelogged, written inside the transaction). It is what makes retries survive
//! restarts: a delivery leaves the store only when the receiver answered `2xx` or it was
//! dead-lettered.
//!
//! Keys (per task, i.e. input partition):
//! - `q/{dest}\0{queue}\0{seq:016x}` → [`Delivery`] JSON. `queue` is the profile id (event
//!   destinations) or `list:{audience}` (list batches). Only the head of a queue is ever in
//!   flight, which is how per-profile order per destination is kept.
//! - `n` → next sequence number (u64, big-endian).
//! - `a/{audience}\0{profile}` → member JSON (current audience membership, for list syncs).
//! - `s/{dest}\0{audience}\0{profile}` → member JSON (what the list has, as of its last sync).
//! - `t/{dest}\0{audience}` → last sync time (i64 ms, big-endian).
//! - `x/{digest}` → empty: the user-deletion requests of one deleted profile for one
//!   destination and regulation were queued (a UUIDv5 of the three, so the key names no one).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One HTTP delivery and its retry state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub dest: String,
    pub space_id: String,
    pub profile_id: String,
    pub message_id: String,
    pub url: String,
    pub body: Json,
    /// When the change happened (the record's `changed_at_ms`): the start of delivery latency.
    pub source_ms: i64,
    pub attempts: u32,
    pub first_attempt_ms: Option<i64>,
    pub next_attempt_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    /// The HTTP method when it is not `POST` (Iterable's user deletion is a `DELETE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A user-deletion request (docs/privacy.md): a `404` means the user is not there, which
    /// is what was asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deletion: bool,
}

/// Where a delivery sits: destination, queue, sequence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub dest: String,
    pub queue: String,
    pub seq: u64,
}

impl Slot {
    pub fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.dest.len() + self.queue.len() + 20);
        k.extend_from_slice(b"q/");
        k.extend_from_slice(self.dest.as_bytes());
        k.push(0);
        k.extend_from_slice(self.queue.as_bytes());
        k.push(0);
        k.extend_from_slice(format!("{:016x}", self.seq).as_bytes());
        k
    }

    pub fn parse(key: &[u8]) -> Option<Slot> {
        let rest = key.strip_prefix(b"q/")?;
        let mut parts = rest.split(|b| *b == 0);
        let dest = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let queue = std::str::from_utf8(parts.next()?).ok()?.to_string();
        let seq = u64::from_str_radix(std::str::from_utf8(parts.next()?).ok()?, 16).ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Slot { dest, queue, seq })
    }
}

pub const QUEUE_PREFIX: &[u8] = b"q/";

/// The mark that `dest` was asked to delete `profile` for `regulation` (see the module doc).
pub fn deletion_mark(dest: &str, profile: &str, regulation: &str) -> Vec<u8> {
    let digest = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("corral/fanout/deleted\n{dest}\n{profile}\n{regulation}").as_bytes(),
    );
    [b"x/".as_slice(), digest.simple().to_string().as_bytes()].concat()
}
pub const SEQ_KEY: &[u8] = b"n";

pub fn member_key(audience: &str, profile: &str) -> Vec<u8> {
    [b"a/", audience.as_bytes(), b"\0", profile.as_bytes()].concat()
}

pub fn members_prefix(audience: &str) -> Vec<u8> {
    [b"a/", audience.as_bytes(), b"\0"].concat()
}

pub fn synced_key(dest: &str, audience: &str, profile: &str) -> Vec<u8> {
    [
        b"s/",
        dest.as_bytes(),
        b"\0",
        audience.as_bytes(),
        b"\0",
        profile.as_bytes(),
    ]
    .concat()
}

pub fn synced_prefix(dest: &str, audience: &str) -> Vec<u8> {
    [b"s/", dest.as_bytes(), b"\0", audience.as_bytes(), b"\0"].concat()
}

pub fn sync_time_key(dest: &str, audience: &str) -> Vec<u8> {
    [b"t/", dest.as_bytes(), b"\0", audience.as_bytes()].concat()
}

/// The last segment of a `\0`-separated key (the profile id of `a/` and `s/` keys).
pub fn last_part(key: &[u8]) -> String {
    let tail = key.rsplit(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(tail).into_owned()
}

/// Members by profile id, borrowed from a scan.
pub type MemberRefs<'a> = Vec<(&'a String, &'a Json)>;

/// The difference a list sync sends: members to add and to remove, by profile id, in order.
pub fn list_diff<'a>(
    members: &'a std::collections::BTreeMap<String, Json>,
    synced: &'a std::collections::BTreeMap<String, Json>,
) -> (MemberRefs<'a>, MemberRefs<'a>) {
    let adds = members
        .iter()
        .filter(|(p, _)| !synced.contains_key(*p))
        .collect();
    let removes = synced
        .iter()
        .filter(|(p, _)| !members.contains_key(*p))
        .collect();
    (adds, removes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn slot_keys_round_trip_and_sort_by_sequence() {
        let a = Slot {
            dest: "d".into(),
            queue: "p1".into(),
            seq: 9,
        };
        let b = Slot {
            dest: "d".into(),
            queue: "p1".into(),
            seq: 10,
        };
        assert_eq!(Slot::parse(&a.key()), Some(a.clone()));
        assert!(a.key() < b.key(), "hex sequence keeps numeric order");
        assert_eq!(Slot::parse(b"q/x"), None);
        assert_eq!(last_part(&member_key("aud", "prof")), "prof");
    }

    #[test]
    fn list_diff_is_adds_and_removes_since_last_sync() {
        let m: BTreeMap<String, Json> =
            [("a".to_string(), Json::Null), ("b".to_string(), Json::Null)].into();
        let s: BTreeMap<String, Json> =
            [("b".to_string(), Json::Null), ("c".to_string(), Json::Null)].into();
        let (adds, removes) = list_diff(&m, &s);
        assert_eq!(adds.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(
            removes.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        let empty = BTreeMap::new();
        assert_eq!(
            list_diff(&m, &empty).0.len(),
            2,
            "first sync uploads the whole audience"
        );
    }
}
