//! A deterministic `events.valid` stream for the end-to-end test and the benchmark: several
//! spaces, people with up to five anonymous ids each, a fraction of `identify` calls that link an
//! anonymous id to the person's user id and email (the merge-triggering events). No identifier is
//! ever shared between people, so no rule conflicts and the result does not depend on order.
#![allow(dead_code)]

use corral_codec::{MessageType, ProtocolsAnnotation, SegmentMessage, ValidEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

pub fn generate(n: usize, spaces: usize, link_fraction: f64, seed: u64) -> Vec<ValidEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let people_per_space = (n / spaces.max(1) / 10).max(1);
    let base_ms = 1_700_000_000_000i64;
    (0..n)
        .map(|i| {
            let space = format!("space-{}", rng.random_range(0..spaces.max(1)));
            let p = rng.random_range(0..people_per_space);
            let k = rng.random_range(0..5);
            let link = rng.random_bool(link_fraction.clamp(0.0, 1.0));
            let kind = if link {
                MessageType::Identify
            } else {
                MessageType::Track
            };
            let mut m = SegmentMessage::new(space, kind, format!("m-{seed}-{i}"));
            m.anonymous_id = Some(format!("anon-{p}-{k}"));
            if link {
                m.user_id = Some(format!("user-{p}"));
                m.traits = Some(json!({"email": format!("person{p}@example.com"), "plan": "pro"}));
            } else {
                m.event = Some("Page Viewed".into());
                m.properties = Some(json!({"path": format!("/docs/{}", i % 50), "n": i}));
            }
            m.received_at_ms = Some(base_ms + i as i64);
            ValidEvent {
                message: m,
                protocols: ProtocolsAnnotation::default(),
            }
        })
        .collect()
}

/// An `events.valid` record as the validator writes it: keyed by the routing identifier
/// (`corral_codec::routing`), so it reaches the stitcher partition of that identifier's link.
pub fn keyed(e: &ValidEvent) -> (Vec<u8>, Vec<u8>) {
    let key = corral_codec::routing::routing_key(&e.message)
        .unwrap_or_else(|| e.message.message_id.clone().into_bytes());
    (key, corral_codec::AvroRecord::encode(e).unwrap())
}
