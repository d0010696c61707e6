//! Keys that place a message with the identity stitcher of one of its identifiers.
//!
//! The collector keys `events.raw` by [`message_key`] (the routing key, else the messageId), the
//! validator writes each valid event to the same partition number of `events.valid`, and
//! identity's coordinator keys the links it writes to `identity.events-by-id` by
//! [`identifier_key`] of each identifier. The three topics have the same partition count and the
//! same (murmur2) partitioner, so an event lands on the stitcher partition that holds its
//! identifier's link, without a re-keying hop, and a client's retry of a message lands on the
//! validator partition that remembers its messageId. The choice needs
//! no identity settings: `userId`, else `anonymousId` (Segment requires one of the two). A
//! producer that keys `events.valid` differently costs speed, never correctness: the stitcher
//! then finds no link and sends the event to the coordinator.

use serde_json::Value as Json;

use crate::SegmentMessage;

/// Tag of an identifier key; identity's graph store uses the same keys (its `i` rows).
pub const IDENTIFIER_TAG: u8 = b'i';

/// A tag, then each part length-prefixed (u32, big-endian), so no value can collide with another
/// key.
pub fn tagged_key(tag: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len() + 4).sum::<usize>());
    k.push(tag);
    for p in parts {
        k.extend_from_slice(&(p.len() as u32).to_be_bytes());
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The key of identifier `id_type:value` in a space.
pub fn identifier_key(space: &str, id_type: &str, value: &str) -> Vec<u8> {
    tagged_key(IDENTIFIER_TAG, &[space, id_type, value])
}

/// A numeric id's decimal text; the codec keeps an id of a non-string JSON type in `extra`.
fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl SegmentMessage {
    /// `userId` as text: the string, or a number's decimal text (Segment coerces numeric ids).
    pub fn user_id_text(&self) -> Option<String> {
        self.user_id
            .clone()
            .or_else(|| self.extra.get("userId").and_then(scalar))
    }

    /// `anonymousId` as text, like [`SegmentMessage::user_id_text`].
    pub fn anonymous_id_text(&self) -> Option<String> {
        self.anonymous_id
            .clone()
            .or_else(|| self.extra.get("anonymousId").and_then(scalar))
    }
}

/// The identifier type and value a message is routed by: `user_id`, else `anonymous_id`.
pub fn routing_identifier(msg: &SegmentMessage) -> Option<(&'static str, String)> {
    msg.user_id_text()
        .map(|v| ("user_id", v))
        .or_else(|| msg.anonymous_id_text().map(|v| ("anonymous_id", v)))
}

/// The key of a message on `events.valid`: its routing identifier's key.
pub fn routing_key(msg: &SegmentMessage) -> Option<Vec<u8>> {
    routing_identifier(msg).map(|(t, v)| identifier_key(&msg.space_id, t, &v))
}

/// The key of a message on `events.raw`: its routing key, else its messageId (a message without
/// identifiers still spreads over the partitions).
pub fn message_key(msg: &SegmentMessage) -> Vec<u8> {
    routing_key(msg).unwrap_or_else(|| msg.message_id.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageType;

    #[test]
    fn user_id_first_then_anonymous_id() {
        let mut m = SegmentMessage::new("s", MessageType::Track, "m1");
        assert_eq!(routing_key(&m), None);
        assert_eq!(
            message_key(&m),
            b"m1".to_vec(),
            "no identifier: the messageId"
        );
        m.anonymous_id = Some("a1".into());
        assert_eq!(
            routing_key(&m),
            Some(identifier_key("s", "anonymous_id", "a1"))
        );
        m.extra.insert("userId".into(), Json::from(42));
        assert_eq!(routing_identifier(&m), Some(("user_id", "42".to_string())));
        m.user_id = Some("u1".into());
        assert_eq!(routing_key(&m), Some(identifier_key("s", "user_id", "u1")));
        assert_eq!(message_key(&m), identifier_key("s", "user_id", "u1"));
        assert_ne!(
            identifier_key("s", "a", "bc"),
            identifier_key("s", "ab", "c")
        );
    }
}
