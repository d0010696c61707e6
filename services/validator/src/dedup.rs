//! messageId de-duplication per space. The store of the runtime maps (length-prefixed space, messageId) to the
//! first-seen time (8 bytes, big-endian epoch ms); an entry older than the window counts as absent
//! and is overwritten (the runtime has no timer or store scan yet to delete it).

/// Store key of a message id in a space.
pub fn key(space_id: &str, message_id: &str) -> Vec<u8> {
    // Length-prefixed space, so no (space, id) pair can collide with another.
    let mut k = Vec::with_capacity(4 + space_id.len() + message_id.len());
    k.extend_from_slice(&(space_id.len() as u32).to_be_bytes());
    k.extend_from_slice(space_id.as_bytes());
    k.extend_from_slice(message_id.as_bytes());
    k
}

pub fn encode(seen_at_ms: i64) -> Vec<u8> {
    seen_at_ms.to_be_bytes().to_vec()
}

pub fn decode(v: &[u8]) -> Option<i64> {
    let arr: [u8; 8] = v.try_into().ok()?;
    Some(i64::from_be_bytes(arr))
}

/// Whether a message first seen at `stored` is still a duplicate at `now_ms`. A corrupt entry
/// counts as absent (the message passes rather than being lost).
pub fn is_duplicate(stored: Option<&[u8]>, now_ms: i64, window_ms: i64) -> bool {
    match stored.and_then(decode) {
        Some(seen) => now_ms.saturating_sub(seen) < window_ms,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_keys() {
        let day = 86_400_000;
        assert!(!is_duplicate(None, 10, day));
        let v = encode(1_000);
        assert!(is_duplicate(Some(&v), 1_000, day));
        assert!(is_duplicate(Some(&v), 1_000 + day - 1, day));
        assert!(
            !is_duplicate(Some(&v), 1_000 + day, day),
            "expired entries count as absent"
        );
        assert!(
            is_duplicate(Some(&v), 500, day),
            "a late record within the window is a duplicate"
        );
        assert!(!is_duplicate(Some(b"bad"), 1_000, day));
        assert_ne!(key("a", "b\0c"), key("a\0b", "c"));
        assert_ne!(key("s1", "m"), key("s2", "m"));
    }
}
