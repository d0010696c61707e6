//! Free-form parts of a Segment message (properties, traits, context, integrations, version,
//! extra): recursive Avro `JsonValue` (what the codec uses) against a JSON text string field.
//! Encode and decode of a typical ~1 KB track call, full single-object record either way.
//!
//! Run: `cargo bench -p corral-codec --bench free_form`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "sample.rs"]
mod sample;

use apache_avro::{types::Value, Schema};
use corral_codec::__bench as w;
use corral_codec::{AvroRecord, MessageType, SegmentMessage};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::Value as Json;
use std::hint::black_box;

/// events.raw.avsc with every JsonValue field turned into a string holding JSON text.
fn json_string_schema() -> Schema {
    let mut s: Json =
        serde_json::from_str(corral_codec::schema_json("events.raw").unwrap()).unwrap();
    for f in s["fields"].as_array_mut().unwrap() {
        let name = f["name"].as_str().unwrap().to_string();
        if ["properties", "traits", "context", "integrations", "version"].contains(&name.as_str()) {
            f["type"] = serde_json::json!(["null", "string"]);
        } else if name == "extra" {
            f["type"] = serde_json::json!("string");
            f["default"] = serde_json::json!("{}");
        }
    }
    Schema::parse_str(&s.to_string()).unwrap()
}

fn opt_json_text(out: &mut Vec<u8>, v: Option<&Json>, scratch: &mut Vec<u8>) {
    match v {
        None => w::branch(out, 0),
        Some(j) => {
            w::branch(out, 1);
            scratch.clear();
            serde_json::to_writer(&mut *scratch, j).unwrap();
            w::bytes(out, scratch);
        }
    }
}

/// The same datum layout as the codec's, with JSON text for the free-form fields.
fn encode_json_string(m: &SegmentMessage, header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(header);
    let mut scratch = Vec::with_capacity(512);
    let o = &mut out;
    w::string(o, &m.space_id);
    w::int(o, m.message_type as i32);
    w::string(o, &m.message_id);
    for s in [
        &m.user_id,
        &m.anonymous_id,
        &m.group_id,
        &m.previous_id,
        &m.event,
        &m.name,
        &m.category,
    ] {
        w::opt_string(o, s.as_deref());
    }
    for j in [&m.properties, &m.traits, &m.context, &m.integrations] {
        opt_json_text(o, j.as_ref(), &mut scratch);
    }
    for s in [
        &m.timestamp,
        &m.original_timestamp,
        &m.sent_at,
        &m.received_at,
    ] {
        w::opt_string(o, s.as_deref());
    }
    opt_json_text(o, m.version.as_ref(), &mut scratch);
    w::opt_string(o, m.channel.as_deref());
    scratch.clear();
    serde_json::to_writer(&mut scratch, &m.extra).unwrap();
    w::bytes(o, &scratch);
    w::opt_string(o, m.source_id.as_deref());
    w::opt_string(o, m.write_key_id.as_deref());
    w::opt_long(o, m.received_at_ms);
    w::opt_string(o, m.client_ip.as_deref());
    out
}

fn read_json_text(r: &mut w::Reader) -> Option<Json> {
    r.opt_string()
        .unwrap()
        .map(|t| serde_json::from_str(&t).unwrap())
}

/// JSON-string layout read directly (the same reader the codec uses), then serde_json.
fn decode_json_string_direct(bytes: &[u8]) -> SegmentMessage {
    let mut r = w::Reader::new("bench", [0; 8], &bytes[10..]);
    let r = &mut r;
    let m = SegmentMessage {
        space_id: r.string().unwrap(),
        message_type: MessageType::ALL[r.index(6, "type").unwrap() as usize],
        message_id: r.string().unwrap(),
        user_id: r.opt_string().unwrap(),
        anonymous_id: r.opt_string().unwrap(),
        group_id: r.opt_string().unwrap(),
        previous_id: r.opt_string().unwrap(),
        event: r.opt_string().unwrap(),
        name: r.opt_string().unwrap(),
        category: r.opt_string().unwrap(),
        properties: read_json_text(r),
        traits: read_json_text(r),
        context: read_json_text(r),
        integrations: read_json_text(r),
        timestamp: r.opt_string().unwrap(),
        original_timestamp: r.opt_string().unwrap(),
        sent_at: r.opt_string().unwrap(),
        received_at: r.opt_string().unwrap(),
        version: read_json_text(r),
        channel: r.opt_string().unwrap(),
        extra: serde_json::from_str(&r.string().unwrap()).unwrap(),
        source_id: r.opt_string().unwrap(),
        write_key_id: r.opt_string().unwrap(),
        received_at_ms: r.opt_long().unwrap(),
        client_ip: r.opt_string().unwrap(),
    };
    r.finish().unwrap();
    m
}

/// JSON-string layout through apache-avro's generic decoder (`Value` tree), then serde_json.
fn decode_json_string(bytes: &[u8], schema: &Schema) -> SegmentMessage {
    let mut rest = &bytes[10..];
    let Value::Record(fields) = apache_avro::from_avro_datum(schema, &mut rest, None).unwrap()
    else {
        panic!("not a record")
    };
    let mut m = SegmentMessage::new("", MessageType::Track, "");
    for (name, v) in fields {
        let v = match v {
            Value::Union(_, b) => *b,
            v => v,
        };
        let s = || match &v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        let j = || match &v {
            Value::String(s) => Some(serde_json::from_str::<Json>(s).unwrap()),
            _ => None,
        };
        match name.as_str() {
            "space_id" => m.space_id = s().unwrap(),
            "type" => {
                if let Value::Enum(_, t) = &v {
                    m.message_type = MessageType::parse(t).unwrap()
                }
            }
            "messageId" => m.message_id = s().unwrap(),
            "userId" => m.user_id = s(),
            "anonymousId" => m.anonymous_id = s(),
            "groupId" => m.group_id = s(),
            "previousId" => m.previous_id = s(),
            "event" => m.event = s(),
            "name" => m.name = s(),
            "category" => m.category = s(),
            "properties" => m.properties = j(),
            "traits" => m.traits = j(),
            "context" => m.context = j(),
            "integrations" => m.integrations = j(),
            "timestamp" => m.timestamp = s(),
            "originalTimestamp" => m.original_timestamp = s(),
            "sentAt" => m.sent_at = s(),
            "receivedAt" => m.received_at = s(),
            "version" => m.version = j(),
            "channel" => m.channel = s(),
            "extra" => m.extra = serde_json::from_str(&s().unwrap()).unwrap(),
            "source_id" => m.source_id = s(),
            "write_key_id" => m.write_key_id = s(),
            "received_at_ms" => {
                if let Value::TimestampMillis(n) | Value::Long(n) = v {
                    m.received_at_ms = Some(n)
                }
            }
            "client_ip" => m.client_ip = s(),
            _ => {}
        }
    }
    m
}

fn bench(c: &mut Criterion) {
    let mut msg =
        SegmentMessage::from_segment_json("space-1", sample::typical_track_json()).unwrap();
    msg.source_id = Some("src-web".into());
    msg.write_key_id = Some("wk-1".into());
    msg.received_at_ms = Some(1_700_000_000_030);
    msg.client_ip = Some("203.0.113.7".into());
    let json_value = msg.to_segment_json();
    let json_text = serde_json::to_vec(&msg.to_segment_json()).unwrap();

    let schema = json_string_schema();
    let mut header = vec![0xC3, 0x01];
    header.extend_from_slice(&corral_codec::fingerprint_of(&schema));

    let avro = msg.encode().unwrap();
    let text = encode_json_string(&msg, &header);
    assert_eq!(SegmentMessage::decode(&avro).unwrap(), msg);
    assert_eq!(decode_json_string(&text, &schema), msg);
    assert_eq!(decode_json_string_direct(&text), msg);
    let raw_schema = corral_codec::schema("events.raw").unwrap();
    eprintln!(
        "sizes: Segment JSON payload {} B, JsonValue record {} B, JSON-string record {} B",
        json_text.len(),
        avro.len(),
        text.len()
    );

    let mut g = c.benchmark_group("track_1kb");
    g.bench_function("json_value/encode", |b| {
        b.iter(|| black_box(&msg).encode().unwrap())
    });
    g.bench_function("json_value/decode", |b| {
        b.iter(|| SegmentMessage::decode(black_box(&avro)).unwrap())
    });
    g.bench_function("json_value/decode_apache_avro_generic_to_value_only", |b| {
        b.iter(|| {
            let mut rest = &black_box(&avro)[10..];
            apache_avro::from_avro_datum(raw_schema, &mut rest, None).unwrap()
        })
    });
    g.bench_function("json_string/encode", |b| {
        b.iter(|| encode_json_string(black_box(&msg), &header))
    });
    g.bench_function("json_string/decode", |b| {
        b.iter(|| decode_json_string_direct(black_box(&text)))
    });
    g.bench_function("json_string/decode_apache_avro_generic", |b| {
        b.iter(|| decode_json_string(black_box(&text), &schema))
    });
    // Reference points: serde_json alone on the same payload.
    g.bench_function("serde_json/serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&json_value)).unwrap())
    });
    g.bench_function("serde_json/parse", |b| {
        b.iter(|| serde_json::from_slice::<Json>(black_box(&json_text)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
