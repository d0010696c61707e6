//! Any topic's record as plain JSON, for people and tools (`corralctl tail`), not the data path.

use serde::Serialize;

use crate::records::{
    AvroRecord, BlockedEvent, DeadLetter, Definition, MembershipChange, ProfileMerge,
    ResolvedEvent, SegmentMessage, TraitChange, ValidEvent, Violation,
};
use crate::CodecError;

fn to_json<T: AvroRecord + Serialize>(bytes: &[u8]) -> Result<serde_json::Value, CodecError> {
    let record = T::decode(bytes)?;
    serde_json::to_value(&record).map_err(|e| CodecError::SchemaMismatch {
        topic: T::TOPIC,
        detail: format!("decoded record does not serialise as JSON: {e}"),
    })
}

/// Decodes `bytes` written to `topic` (with or without the deployment prefix, e.g.
/// `corral.events.raw` or `events.raw`; changelog and other topics are not Avro records of
/// ours and give `None`).
pub fn decode_to_json(topic: &str, bytes: &[u8]) -> Option<Result<serde_json::Value, CodecError>> {
    let name = crate::TOPICS
        .iter()
        .find(|t| topic == **t || topic.ends_with(&format!(".{t}")))?;
    Some(match *name {
        "events.raw" => to_json::<SegmentMessage>(bytes),
        "events.valid" => to_json::<ValidEvent>(bytes),
        "events.blocked" => to_json::<BlockedEvent>(bytes),
        "events.violations" => to_json::<Violation>(bytes),
        "events.dlq" => to_json::<DeadLetter>(bytes),
        "events.resolved" => to_json::<ResolvedEvent>(bytes),
        "profiles.merges" => to_json::<ProfileMerge>(bytes),
        "audiences.membership" => to_json::<MembershipChange>(bytes),
        "traits.changes" => to_json::<TraitChange>(bytes),
        "definitions" => to_json::<Definition>(bytes),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_is_known_and_prefixes_are_ignored() {
        let dl = DeadLetter {
            space_id: "s".into(),
            service: "validator".into(),
            origin_topic: "corral.events.raw".into(),
            origin_partition: 0,
            origin_offset: 7,
            key: None,
            value: None,
            error: "bad".into(),
            reason: "decode".into(),
            failed_at_ms: 1,
        };
        let bytes = dl.encode().unwrap();
        let json = decode_to_json("corral.events.dlq", &bytes)
            .unwrap()
            .unwrap();
        assert_eq!(json["origin_offset"], 7);
        assert_eq!(json["reason"], "decode");
        assert!(decode_to_json("events.dlq", &bytes).is_some());
        assert!(decode_to_json("corral.validator.dedup-changelog", &bytes).is_none());
        assert!(
            decode_to_json("corral.events.raw", &bytes)
                .unwrap()
                .is_err(),
            "wrong topic's bytes"
        );
        for t in crate::TOPICS {
            assert!(decode_to_json(t, &[]).is_some(), "{t} has a decoder");
        }
    }
}
