//! Keys and partitions of the retained history, `events.resolved` (docs/privacy.md, "Erasure").
//!
//! `events.resolved` is a compacted topic so that a deletion can erase a person's records with
//! tombstones. Compaction keeps the latest record per key, so every event needs a key of its own:
//! [`key`] is the profile id, the messageId and the resolve time, separated by NUL bytes (a
//! messageId sent again later, after the validator's de-duplication window, gets another key and
//! survives compaction). The record still goes to the partition of the plain profile id
//! ([`partition`]: murmur2 like the Java clients and librdkafka's `murmur2_random`), so compute's
//! co-partitioning with `profiles.merges` and `compute.merge-state` is unchanged.
//!
//! [`parse_key`] reads the profile id (and the resolve time) back without decoding the value; a
//! key without a separator is the plain profile id of records written before this format (or by
//! a producer outside Corral), and carries no time.

use crate::ResolvedEvent;

/// Separates the parts of a history key; profile ids never contain it.
pub const SEPARATOR: u8 = 0;

/// The `events.resolved` key of `ev`: profile id, NUL, messageId, NUL, resolve time (decimal ms).
pub fn key(ev: &ResolvedEvent) -> Vec<u8> {
    key_of(&ev.profile_id, &ev.message.message_id, ev.resolved_at_ms)
}

/// [`key`] from its parts.
pub fn key_of(profile_id: &str, message_id: &str, resolved_at_ms: i64) -> Vec<u8> {
    let at = resolved_at_ms.to_string();
    let mut k = Vec::with_capacity(profile_id.len() + message_id.len() + at.len() + 2);
    k.extend_from_slice(profile_id.as_bytes());
    k.push(SEPARATOR);
    k.extend_from_slice(message_id.as_bytes());
    k.push(SEPARATOR);
    k.extend_from_slice(at.as_bytes());
    k
}

/// What a history key says without the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryKey<'a> {
    /// The profile the event was resolved to.
    pub profile_id: &'a [u8],
    /// Its resolve time; `None` for a plain profile-id key (the older format).
    pub resolved_at_ms: Option<i64>,
}

/// Reads a history key (see the module doc).
pub fn parse_key(k: &[u8]) -> HistoryKey<'_> {
    match k.iter().position(|b| *b == SEPARATOR) {
        None => HistoryKey {
            profile_id: k,
            resolved_at_ms: None,
        },
        Some(i) => {
            let at = k
                .iter()
                .rposition(|b| *b == SEPARATOR)
                .filter(|j| *j > i)
                .and_then(|j| std::str::from_utf8(&k[j + 1..]).ok())
                .and_then(|s| s.parse().ok());
            HistoryKey {
                profile_id: &k[..i],
                resolved_at_ms: at,
            }
        }
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, librdkafka's `rd_murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a record keyed `key` gets among `partitions` from the Java clients' default
/// partitioner and librdkafka's `murmur2_random` (what every Corral producer uses).
pub fn partition(key: &[u8], partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    ((murmur2(key) & 0x7fff_ffff) % n) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // The values of Kafka's own UtilsTest.testMurmur2 (as signed Java ints).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k) as i32, want, "{}", String::from_utf8_lossy(k));
        }
        assert!((0..6).contains(&partition(b"use_x", 6)));
        assert_eq!(partition(b"x", 1), 0);
    }

    #[test]
    fn keys_are_unique_per_event_and_name_their_profile() {
        let a = key_of("use_1", "m-1", 5);
        assert_ne!(a, key_of("use_1", "m-1", 6), "a resend gets its own key");
        assert_ne!(a, key_of("use_1", "m-2", 5));
        let p = parse_key(&a);
        assert_eq!(p.profile_id, b"use_1");
        assert_eq!(p.resolved_at_ms, Some(5));
        // A messageId holding the separator still parses.
        let odd = key_of("use_2", "a\u{0}b", -3);
        assert_eq!(
            parse_key(&odd),
            HistoryKey {
                profile_id: b"use_2",
                resolved_at_ms: Some(-3)
            }
        );
        // The older format: the plain profile id.
        assert_eq!(
            parse_key(b"use_3"),
            HistoryKey {
                profile_id: b"use_3",
                resolved_at_ms: None
            }
        );
        assert_eq!(parse_key(b"use_4\0m").resolved_at_ms, None);
    }
}
