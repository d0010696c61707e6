//! `corralctl tail TOPIC`: prints a topic's records as JSON lines, decoded with the topic's Avro
//! schema (`{"partition":..,"offset":..,"key":..,"value":{..}}`). Committed records only.
//! Undecodable values are printed with the decoder's error and their bytes in hex, never skipped.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use corral_runtime::reader;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use serde_json::json;

#[derive(Args)]
pub struct TailArgs {
    /// Topic name; without a dot-separated prefix the deployment prefix is added
    /// (`events.valid` → `corral.events.valid`).
    topic: String,
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    prefix: String,
    /// Read from the beginning (default: only the last --last records of each partition).
    #[arg(long)]
    from_beginning: bool,
    /// Records per partition to show from the end when not reading from the beginning.
    #[arg(long, default_value_t = 10)]
    last: i64,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<usize>,
    /// Keep following new records until interrupted (default: stop at the end).
    #[arg(long, short)]
    follow: bool,
}

fn full_name(a: &TailArgs) -> String {
    if a.topic.starts_with(&a.prefix) {
        a.topic.clone()
    } else {
        format!("{}{}", a.prefix, a.topic)
    }
}

/// One record as a JSON line.
pub fn render(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> serde_json::Value {
    let key = key.map(|k| String::from_utf8_lossy(k).into_owned());
    let value = match value {
        None => serde_json::Value::Null,
        Some(bytes) => match corral_codec::decode_to_json(topic, bytes) {
            Some(Ok(v)) if topic.ends_with("dlq") => readable_dead_letter(v),
            Some(Ok(v)) => v,
            Some(Err(e)) => json!({"undecodable": e.to_string(), "hex": hex(bytes)}),
            None => match std::str::from_utf8(bytes) {
                Ok(s) => serde_json::Value::String(s.to_string()),
                Err(_) => json!({"hex": hex(bytes)}),
            },
        },
    };
    json!({"partition": partition, "offset": offset, "key": key, "value": value})
}

/// A dead letter keeps the original key and value as bytes; show them as text when they are
/// UTF-8 (JSON from the collector, most keys), else as hex.
fn readable_dead_letter(mut v: serde_json::Value) -> serde_json::Value {
    for field in ["key", "value"] {
        let Some(slot) = v.get_mut(field) else {
            continue;
        };
        let Some(items) = slot.as_array() else {
            continue;
        };
        let bytes: Option<Vec<u8>> = items
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect();
        if let Some(bytes) = bytes {
            *slot = match String::from_utf8(bytes) {
                Ok(text) => serde_json::Value::String(text),
                Err(e) => json!({"hex": hex(e.as_bytes())}),
            };
        }
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn tail(kafka: &crate::Kafka, args: TailArgs) -> anyhow::Result<()> {
    let topic = full_name(&args);
    let consumer = reader::committed_reader(&kafka.bootstrap, &kafka.properties, "corralctl-tail")?;
    let from = if args.from_beginning {
        reader::Start::Beginning
    } else {
        reader::Start::Last(args.last)
    };
    let partitions = reader::assign_all(&consumer, &topic, from)
        .with_context(|| format!("reading {topic}; is Kafka up (`make up`)?"))?;
    let mut at_end = HashSet::new();
    let mut shown = 0usize;
    let idle_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if args.max.is_some_and(|m| shown >= m) {
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                println!(
                    "{}",
                    render(&topic, m.partition(), m.offset(), m.key(), m.payload())
                );
                shown += 1;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                if !args.follow && at_end.len() as i32 == partitions {
                    return Ok(());
                }
            }
            Some(Err(e)) => return Err(e).context(format!("reading {topic}")),
            None => {
                if !args.follow && Instant::now() > idle_deadline {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_avro_text_and_garbage_without_dropping_any() {
        let r = render(
            "corral.validator.dedup-changelog",
            1,
            2,
            Some(b"k"),
            Some(b"plain"),
        );
        assert_eq!(r["value"], "plain");
        let r = render("corral.events.raw", 0, 5, None, Some(&[0xc3, 0x01, 0xff]));
        assert!(
            r["value"]["undecodable"]
                .as_str()
                .unwrap()
                .contains("truncated header"),
            "{r}"
        );
        assert_eq!(r["value"]["hex"], "c301ff");
        let letter = corral_codec::DeadLetter {
            space_id: "s".into(),
            service: "collector".into(),
            origin_topic: "corral.events.raw".into(),
            origin_partition: -1,
            origin_offset: -1,
            key: Some(b"m-1".to_vec()),
            value: Some(vec![0xff, 0x00]),
            error: "no identity".into(),
            reason: "no_user_anon_id".into(),
            failed_at_ms: 0,
        };
        let r = render(
            "corral.events.dlq",
            0,
            0,
            None,
            Some(&letter.encode().unwrap()),
        );
        assert_eq!(r["value"]["key"], "m-1");
        assert_eq!(r["value"]["value"]["hex"], "ff00");
        let r = render("x", 0, 0, None, None);
        assert!(r["value"].is_null());
    }
}
