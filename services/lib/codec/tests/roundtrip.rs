//! Every record type survives encode -> decode unchanged, bytes are deterministic, and bad input
//! fails with the error that names the problem.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use corral_codec::*;
use proptest::prelude::*;
use serde_json::{json, Value as Json};

fn roundtrip<T: AvroRecord + PartialEq + std::fmt::Debug>(r: &T) {
    let bytes = r.encode().unwrap();
    assert_eq!(&bytes[..2], &MAGIC, "{}", T::TOPIC);
    assert_eq!(
        &bytes[2..10],
        &fingerprint(T::TOPIC).unwrap(),
        "{}",
        T::TOPIC
    );
    let back = T::decode(&bytes).unwrap();
    assert_eq!(&back, r, "{}", T::TOPIC);
    // Deterministic: the same record always gives the same bytes.
    assert_eq!(back.encode().unwrap(), bytes, "{}", T::TOPIC);
}

#[test]
fn every_record_type_round_trips() {
    roundtrip(&common::message());
    roundtrip(&common::identify());
    roundtrip(&common::valid());
    roundtrip(&common::blocked());
    roundtrip(&common::violation());
    roundtrip(&common::dead_letter());
    roundtrip(&common::resolved());
    roundtrip(&common::merge());
    roundtrip(&common::membership());
    roundtrip(&common::trait_change());
    roundtrip(&common::definition());
}

#[test]
fn minimal_records_round_trip() {
    for t in MessageType::ALL {
        roundtrip(&SegmentMessage::new("", t, ""));
    }
    roundtrip(&DeadLetter {
        space_id: String::new(),
        service: "s".into(),
        origin_topic: "t".into(),
        origin_partition: -1,
        origin_offset: -1,
        key: None,
        value: Some(Vec::new()),
        error: String::new(),
        reason: String::new(),
        failed_at_ms: i64::MIN,
    });
    let mut t = common::trait_change();
    t.value = None;
    t.previous_value = None;
    t.external_ids.clear();
    roundtrip(&t);
}

#[test]
fn dead_letter_inherent_api() {
    let dl = common::dead_letter();
    let bytes = dl.encode().unwrap();
    assert_eq!(DeadLetter::decode(&bytes).unwrap(), dl);
    assert_eq!(<DeadLetter as AvroRecord>::TOPIC, "events.dlq");
}

#[test]
fn segment_json_is_lossless() {
    let payload = common::track_json();
    let m = SegmentMessage::from_segment_json("space-1", payload.clone()).unwrap();
    assert_eq!(m.message_type, MessageType::Track);
    assert_eq!(m.event.as_deref(), Some("Order Completed"));
    // A numeric groupId is not a spec string: kept as sent, in extra.
    assert_eq!(m.group_id, None);
    assert_eq!(m.extra["groupId"], json!(42));
    assert!(m.extra.contains_key("_metadata"));
    assert_eq!(m.to_segment_json(), payload);
    // And through Avro.
    let back = SegmentMessage::decode(&m.encode().unwrap()).unwrap();
    assert_eq!(back.to_segment_json(), payload);
    // Numbers keep their exact kind and value.
    let p = back.properties.as_ref().unwrap();
    assert_eq!(p["big_int"].as_u64(), Some(u64::MAX));
    assert_eq!(p["neg"].as_i64(), Some(i64::MIN));
    assert_eq!(p["tiny"].as_f64(), Some(5e-324));
    assert_eq!(p["third"].as_f64(), Some(0.1));
    assert!(p["negzero"].as_f64().unwrap().is_sign_negative());
    assert!(p["shipping"].is_i64() && p["tax"].is_f64());
}

#[test]
fn segment_json_nulls_and_absent_fields_differ() {
    let payload = json!({"type": "identify", "messageId": "m", "userId": null, "traits": null});
    let m = SegmentMessage::from_segment_json("s", payload.clone()).unwrap();
    assert_eq!(m.user_id, None);
    assert_eq!(m.traits, Some(Json::Null));
    assert_eq!(m.properties, None);
    let back = SegmentMessage::decode(&m.encode().unwrap()).unwrap();
    assert_eq!(back.to_segment_json(), payload);
}

#[test]
fn segment_json_rejects_what_cannot_be_a_message() {
    for (payload, needle) in [
        (json!([1]), "expected a JSON object"),
        (json!({"messageId": "m"}), "type is missing"),
        (json!({"type": "batch", "messageId": "m"}), "\"batch\""),
        (
            json!({"type": 1, "messageId": "m"}),
            "type must be a string",
        ),
        (json!({"type": "track"}), "messageId is missing"),
        (
            json!({"type": "track", "messageId": 5}),
            "messageId must be a string",
        ),
    ] {
        let err = SegmentMessage::from_segment_json("s", payload).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}

#[test]
fn errors_say_what_was_wrong() {
    let good = common::dead_letter().encode().unwrap();

    let e = DeadLetter::decode(&good[..5]).unwrap_err();
    assert!(
        matches!(e, CodecError::TruncatedHeader { len: 5, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("truncated header"), "{e}");

    let mut bad = good.clone();
    bad[0] = 0x00;
    let e = DeadLetter::decode(&bad).unwrap_err();
    assert!(
        e.to_string().contains("bad magic") && e.to_string().contains("00 01"),
        "{e}"
    );

    let mut bad = good.clone();
    bad[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]);
    let e = DeadLetter::decode(&bad).unwrap_err();
    assert_eq!(e.reason(), "unknown_fingerprint");
    assert!(e.to_string().contains("deadbeef00010203"), "{e}");

    let e = DeadLetter::decode(&good[..good.len() - 3]).unwrap_err();
    assert_eq!(e.reason(), "truncated_datum", "{e}");

    let mut bad = good.clone();
    bad.push(0);
    let e = DeadLetter::decode(&bad).unwrap_err();
    assert_eq!(e.reason(), "trailing_bytes", "{e}");

    // A record of another topic: its fingerprint is unknown here.
    let other = common::merge().encode().unwrap();
    let e = DeadLetter::decode(&other).unwrap_err();
    assert_eq!(e.reason(), "unknown_fingerprint", "{e}");
    assert!(e.to_string().starts_with("events.dlq:"), "{e}");
}

#[test]
fn nested_space_id_must_agree() {
    // Hand-craft a ValidEvent whose top-level space_id differs from message.space_id.
    let bytes = common::valid().encode().unwrap();
    let mut forged = bytes[..10].to_vec();
    forged.push(2 * 7); // string length 7, zig-zag
    forged.extend_from_slice(b"space-X");
    forged.extend_from_slice(&bytes[10 + 1 + 7..]);
    let e = ValidEvent::decode(&forged).unwrap_err();
    assert_eq!(e.reason(), "schema_mismatch", "{e}");
}

#[test]
fn garbage_never_panics() {
    let good = common::valid().encode().unwrap();
    for cut in 0..good.len() {
        let _ = ValidEvent::decode(&good[..cut]);
    }
    for i in 10..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0xFF;
        let _ = ValidEvent::decode(&bad);
    }
}

fn json_strategy() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_json_round_trips_exactly(props in json_strategy(), ctx in json_strategy()) {
        let mut m = SegmentMessage::new("s", MessageType::Track, "m");
        m.properties = Some(props);
        m.context = Some(ctx);
        let back = SegmentMessage::decode(&m.encode().unwrap()).unwrap();
        // Compare through serde_json text too: it shows i64/u64/f64 kinds and -0.0.
        prop_assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&m).unwrap());
        prop_assert_eq!(back, m);
    }
}
