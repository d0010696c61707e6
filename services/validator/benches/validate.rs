//! Validation cost per message: a 1 KB track against a compiled 10-property schema (with the
//! common schema second pass), and the whole per-record work of the processor without Kafka
//! (decode Avro, de-dup key, validate, encode the ValidEvent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use corral_codec::{AvroRecord, MessageType, RawEvent, SegmentMessage, ValidEvent};
use corral_validator::engine::{evaluate, Verdict};
use corral_validator::PlanFile;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;

const PLAN: &str = r#"
key: bench
sources: ["*"]
controls:
  track: {unplanned_events: block, unplanned_properties: omit, violations: omit}
  common: {violations: allow}
events:
  Order Completed:
    properties:
      type: object
      required: [order_id, total, currency]
      properties:
        order_id: {type: string, minLength: 1}
        total: {type: number, minimum: 0}
        revenue: {type: number}
        currency: {type: string, enum: [USD, EUR, GBP]}
        coupon: {type: [string, "null"]}
        discount: {type: number}
        shipping: {type: number}
        tax: {type: number}
        affiliation: {type: string}
        products: {type: array, items: {type: object, properties: {sku: {type: string}, price: {type: number}}}}
common:
  type: object
  properties:
    context: {type: object, properties: {app: {type: object, properties: {version: {type: string}}}}}
"#;

fn message() -> SegmentMessage {
    let mut m = SegmentMessage::new(
        "default",
        MessageType::Track,
        "0f6a2c1e-8e0b-4c7d-9a52-3f1f6d1d2b77",
    );
    m.event = Some("Order Completed".into());
    m.user_id = Some("user-1234567".into());
    m.anonymous_id = Some("a1b2c3d4-e5f6-4a5b-8c9d-0e1f2a3b4c5d".into());
    m.properties = Some(json!({
        "order_id": "50314b8e9bcf000000000000", "total": 27.5, "revenue": 25.0, "currency": "USD",
        "coupon": "hasbros", "discount": 2.5, "shipping": 3.0, "tax": 2.0, "affiliation": "Google Store",
        "products": [{"sku": "45790-32", "price": 19.0}, {"sku": "46493-32", "price": 3.0}]
    }));
    m.context = Some(json!({
        "app": {"name": "web", "version": "4.2.1", "build": "421"},
        "ip": "203.0.113.7", "locale": "en-US",
        "library": {"name": "analytics.js", "version": "5.2.0"},
        "page": {"path": "/checkout/complete", "url": "https://shop.example.com/checkout/complete", "title": "Thanks"},
        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
    }));
    m.timestamp = Some("2026-04-06T10:00:00.000Z".into());
    m.sent_at = Some("2026-04-06T10:00:00.120Z".into());
    m.source_id = Some("web".into());
    m.received_at_ms = Some(1_775_469_600_000);
    m
}

fn bench(c: &mut Criterion) {
    let plan = PlanFile::parse(PLAN).unwrap().compile(1).unwrap();
    let msg = message();
    let bytes = msg.encode().unwrap();
    assert!(evaluate(Some(&plan), &msg).violations.is_empty());
    let mut g = c.benchmark_group("validator");
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        format!("validate_track_{}B_10_properties", bytes.len()),
        |b| b.iter(|| black_box(evaluate(Some(&plan), black_box(&msg)))),
    );
    g.bench_function("decode_validate_encode", |b| {
        b.iter(|| {
            let m = RawEvent::decode(black_box(&bytes)).unwrap();
            let key = corral_validator::dedup::key(&m.space_id, &m.message_id);
            let d = evaluate(Some(&plan), &m);
            let Verdict::Valid { message, protocols } = d.verdict else {
                unreachable!()
            };
            black_box((
                key,
                ValidEvent {
                    message: *message,
                    protocols,
                }
                .encode()
                .unwrap(),
            ))
        })
    });
    g.bench_function("decode_encode_only", |b| {
        b.iter(|| {
            let m = RawEvent::decode(black_box(&bytes)).unwrap();
            black_box(m.encode().unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
