//! Sample records shared by the tests (one per topic, every optional field set somewhere).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use corral_codec::*;
use serde_json::json;

/// A typical ~1 KB track call from analytics.js, with tricky numbers in it.
pub fn track_json() -> serde_json::Value {
    json!({
        "type": "track",
        "messageId": "ajs-next-1700000000000-4f3c1b2a-8d2e-4f7a-9b1c-2d3e4f5a6b7c",
        "anonymousId": "b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "userId": "user-8472",
        "event": "Order Completed",
        "properties": {
            "order_id": "50314b8e9bcf000000000000",
            "total": 27.5, "revenue": 25.0, "shipping": 3, "tax": 2.0, "discount": 2.5,
            "coupon": "hasbros", "currency": "USD",
            "big_int": 18446744073709551615u64, "neg": -9223372036854775808i64,
            "tiny": 5e-324, "huge": 1.7976931348623157e308, "third": 0.1,
            "negzero": -0.0,
            "products": [
                {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32", "name": "Monopoly: 3rd Edition",
                 "price": 19.0, "quantity": 1, "category": "Games", "url": "https://www.example.com/product/path",
                 "image_url": "https://www.example.com/product/path.jpg"},
                {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "name": "Uno Card Game",
                 "price": 3.0, "quantity": 2, "category": "Games", "tags": ["family", null, true]}
            ]
        },
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.64.0"},
            "page": {"path": "/checkout", "referrer": "https://www.example.com/cart", "search": "",
                     "title": "Checkout", "url": "https://www.example.com/checkout"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "locale": "en-US", "ip": "203.0.113.7", "timezone": "Europe/Berlin",
            "campaign": {"name": "winter", "source": "newsletter", "medium": "email"}
        },
        "integrations": {"All": true, "Mixpanel": false, "Amplitude": {"session_id": 1700000000}},
        "timestamp": "2023-11-14T22:13:20.000Z",
        "originalTimestamp": "2023-11-14T22:13:19.871Z",
        "sentAt": "2023-11-14T22:13:19.901Z",
        "receivedAt": "2023-11-14T22:13:20.030Z",
        "version": 2,
        "channel": "browser",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
        "groupId": 42
    })
}

/// A typical track call as analytics.js sends it: about 1 KB of JSON.
pub fn typical_track_json() -> serde_json::Value {
    json!({
        "type": "track",
        "messageId": "ajs-next-1700000000000-4f3c1b2a-8d2e-4f7a-9b1c-2d3e4f5a6b7c",
        "anonymousId": "b3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "userId": "user-8472",
        "event": "Order Completed",
        "properties": {
            "order_id": "50314b8e9bcf000000000000", "total": 27.5, "revenue": 25.0,
            "shipping": 3, "tax": 2.0, "coupon": "hasbros", "currency": "USD",
            "products": [
                {"product_id": "507f1f77bcf86cd799439011", "sku": "45790-32",
                 "name": "Monopoly: 3rd Edition", "price": 19.0, "quantity": 1, "category": "Games"},
                {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32",
                 "name": "Uno Card Game", "price": 3.0, "quantity": 2, "category": "Games"}
            ]
        },
        "context": {
            "library": {"name": "analytics.js", "version": "next-1.64.0"},
            "page": {"path": "/checkout", "referrer": "https://www.example.com/cart", "search": "",
                     "title": "Checkout", "url": "https://www.example.com/checkout"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "locale": "en-US", "ip": "203.0.113.7"
        },
        "integrations": {"All": true, "Mixpanel": false},
        "timestamp": "2023-11-14T22:13:20.000Z",
        "originalTimestamp": "2023-11-14T22:13:19.871Z",
        "sentAt": "2023-11-14T22:13:19.901Z",
        "receivedAt": "2023-11-14T22:13:20.030Z",
        "version": 2,
        "channel": "browser"
    })
}

pub fn message() -> SegmentMessage {
    let mut m = SegmentMessage::from_segment_json("space-1", track_json()).unwrap();
    m.source_id = Some("src-web".into());
    m.write_key_id = Some("wk-1".into());
    m.received_at_ms = Some(1_700_000_000_030);
    m.client_ip = Some("203.0.113.7".into());
    m
}

pub fn identify() -> SegmentMessage {
    let mut m = SegmentMessage::new("space-1", MessageType::Identify, "m-identify-1");
    m.user_id = Some("user-8472".into());
    m.traits = Some(
        json!({"email": "a@example.com", "plan": "pro", "logins": 7, "address": {"city": "Berlin"}}),
    );
    m
}

pub fn violation_detail() -> ViolationDetail {
    ViolationDetail {
        violation_type: "Invalid Type".into(),
        field: "properties.total".into(),
        description: "must be number".into(),
    }
}

pub fn ids() -> Vec<ExternalId> {
    vec![
        ExternalId {
            id_type: "user_id".into(),
            id: "user-8472".into(),
            collection: Some("users".into()),
        },
        ExternalId {
            id_type: "anonymous_id".into(),
            id: "b3f1c2d4".into(),
            collection: None,
        },
    ]
}

pub fn valid() -> ValidEvent {
    ValidEvent {
        message: message(),
        protocols: ProtocolsAnnotation {
            tracking_plan_id: Some("tp-1".into()),
            tracking_plan_version: Some(3),
            event_version: Some(2),
            source_id: Some("src-web".into()),
            omitted: vec!["properties.debug".into()],
            omitted_on_violation: vec!["properties.total".into()],
            violations: vec![violation_detail()],
        },
    }
}

pub fn blocked() -> BlockedEvent {
    BlockedEvent {
        message: identify(),
        reason: "unplanned_event".into(),
        tracking_plan_id: None,
        violations: vec![violation_detail(), violation_detail()],
        blocked_at_ms: 1_700_000_000_100,
    }
}

pub fn violation() -> Violation {
    Violation {
        space_id: "space-1".into(),
        message_id: "m-1".into(),
        event_type: MessageType::Track,
        event_name: Some("Order Completed".into()),
        source_id: Some("src-web".into()),
        source_name: Some("Web".into()),
        source_slug: None,
        tracking_plan_id: Some("tp-1".into()),
        tracking_plan_name: Some("Main plan".into()),
        violation_type: "Required".into(),
        violation_field: "properties.order_id".into(),
        violation_description: "is required".into(),
        event_timestamp: Some("2023-11-14T22:13:20.000Z".into()),
        event_sent_at: None,
        app_version: Some("1.2.3".into()),
        detected_at_ms: 1_700_000_000_200,
    }
}

pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        space_id: "space-1".into(),
        service: "validator".into(),
        origin_topic: "corral.events.raw".into(),
        origin_partition: 7,
        origin_offset: 123_456_789_012,
        key: Some(b"m-1".to_vec()),
        value: Some(vec![0, 1, 2, 0xC3, 0xFF]),
        error: "events.raw: bad magic: expected single-object marker C3 01, found 00 01".into(),
        reason: "bad_magic".into(),
        failed_at_ms: 1_700_000_000_300,
    }
}

pub fn resolved() -> ResolvedEvent {
    ResolvedEvent {
        message: message(),
        profile_id: "prof-0001".into(),
        external_ids: ids(),
        resolved_at_ms: 1_700_000_000_400,
    }
}

pub fn merge() -> ProfileMerge {
    ProfileMerge {
        space_id: "space-1".into(),
        from_profile_id: "prof-0002".into(),
        into_profile_id: "prof-0001".into(),
        trigger_message_id: Some("m-1".into()),
        trigger_ids: ids(),
        merged_at_ms: 1_700_000_000_500,
    }
}

pub fn membership() -> MembershipChange {
    MembershipChange {
        space_id: "space-1".into(),
        profile_id: "prof-0001".into(),
        audience_key: "high_value".into(),
        audience_version: 4,
        change: MembershipChangeKind::Exited,
        external_ids: ids(),
        trigger_message_id: None,
        changed_at_ms: 1_700_000_000_600,
    }
}

pub fn trait_change() -> TraitChange {
    TraitChange {
        space_id: "space-1".into(),
        profile_id: "prof-0001".into(),
        trait_key: "lifetime_value".into(),
        value: Some(json!(1234.5)),
        previous_value: Some(json!(null)),
        definition_version: Some(2),
        external_ids: ids(),
        changed_at_ms: 1_700_000_000_700,
    }
}

pub fn definition() -> Definition {
    Definition {
        space_id: "space-1".into(),
        kind: "audience".into(),
        key: "high_value".into(),
        version: 4,
        name: Some("High value".into()),
        body: json!({"query": "event('Order Completed').within(30 days).count() >= 3", "enabled": true}),
        updated_at_ms: 1_700_000_000_800,
        updated_by: None,
    }
}
