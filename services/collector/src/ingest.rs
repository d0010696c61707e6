//! The pure part of the collector: from a decoded request body to the records to write.
//!
//! No I/O here. [`split`] checks the envelope and Segment's limits and yields the items;
//! [`normalize`] turns one item into a [`SegmentMessage`] for `events.raw`, or a dead letter when
//! the message is valid JSON that Segment would accept with 200 but cannot use.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use corral_codec::{MessageType, SegmentMessage};
use serde_json::{Map, Value as Json};

use crate::error::IngestError;

/// Segment's request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per message (Segment: 32 KB).
    pub max_message_bytes: usize,
    /// Per request, before and after decompression (Segment: 500 KB).
    pub max_request_bytes: usize,
    /// Messages per batch (Segment: 2,500).
    pub max_batch_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 32 * 1024,
            max_request_bytes: 500 * 1024,
            max_batch_messages: 2_500,
        }
    }
}

/// What an endpoint accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/track` etc.: one message; the path sets its `type`.
    Single(MessageType),
    /// `/v1/batch`, `/v1/import`, `/v1/b`.
    Batch,
}

impl Endpoint {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Single(t) => t.as_str(),
            Endpoint::Batch => "batch",
        }
    }
}

/// A request body split into its items, with the batch-level fields Segment merges into each.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub write_key: Option<String>,
    pub items: Vec<Json>,
    pub context: Option<Json>,
    pub integrations: Option<Json>,
    pub sent_at: Option<Json>,
    /// The `type` the path sets (single-message endpoints).
    pub path_type: Option<MessageType>,
}

/// Parses the (decompressed) body as JSON, whatever `Content-Type` says.
pub fn parse_body(body: &[u8]) -> Result<Json, IngestError> {
    serde_json::from_slice(body).map_err(|e| IngestError::InvalidJson(e.to_string()))
}

/// Checks the envelope and the limits, and takes the items out of the body.
pub fn split(endpoint: Endpoint, body: Json, limits: &Limits) -> Result<Envelope, IngestError> {
    let Json::Object(mut map) = body else {
        return Err(IngestError::InvalidRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let write_key = match map.get("writeKey") {
        Some(Json::String(k)) => Some(k.clone()),
        _ => None,
    };
    match endpoint {
        Endpoint::Single(t) => {
            let size = json_size(&map);
            if size > limits.max_message_bytes {
                return Err(IngestError::MessageTooLarge {
                    index: 0,
                    size,
                    limit: limits.max_message_bytes,
                });
            }
            Ok(Envelope {
                write_key,
                items: vec![Json::Object(map)],
                context: None,
                integrations: None,
                sent_at: None,
                path_type: Some(t),
            })
        }
        Endpoint::Batch => {
            let items = match map.remove("batch") {
                Some(Json::Array(items)) => items,
                Some(_) => {
                    return Err(IngestError::InvalidRequest(
                        "batch must be an array of messages".into(),
                    ))
                }
                None => {
                    return Err(IngestError::InvalidRequest(
                        "the body has no batch array".into(),
                    ))
                }
            };
            if items.len() > limits.max_batch_messages {
                return Err(IngestError::TooManyMessages {
                    count: items.len(),
                    limit: limits.max_batch_messages,
                });
            }
            for (index, item) in items.iter().enumerate() {
                let size = json_size(item);
                if size > limits.max_message_bytes {
                    return Err(IngestError::MessageTooLarge {
                        index,
                        size,
                        limit: limits.max_message_bytes,
                    });
                }
            }
            Ok(Envelope {
                write_key,
                items,
                context: map.remove("context"),
                integrations: map.remove("integrations"),
                sent_at: map.remove("sentAt"),
                path_type: None,
            })
        }
    }
}

/// Size of the compact JSON text of `v`, without allocating it.
pub fn json_size(v: &(impl serde::Serialize + ?Sized)) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Deep merge: `base` supplies defaults, `over` wins. Objects merge key by key; anything else in
/// `over` replaces `base`.
pub fn merge_defaults(over: Json, base: &Json) -> Json {
    match (over, base) {
        (Json::Object(mut o), Json::Object(b)) => {
            for (k, bv) in b {
                match o.remove(k) {
                    Some(ov) => {
                        o.insert(k.clone(), merge_defaults(ov, bv));
                    }
                    None => {
                        o.insert(k.clone(), bv.clone());
                    }
                }
            }
            Json::Object(o)
        }
        (over, _) => over,
    }
}

/// Per-request facts every item gets.
#[derive(Debug, Clone)]
pub struct Receipt<'a> {
    pub received_at: DateTime<Utc>,
    pub space_id: &'a str,
    pub source_id: &'a str,
    pub key_id: &'a str,
    pub client_ip: Option<String>,
}

/// Why a valid-JSON message is not usable; the DLQ `reason` and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Segment's own code: neither userId nor anonymousId.
    NoUserAnonId,
    /// A track call without an event name.
    MissingEvent,
    /// A group call without groupId.
    MissingGroupId,
    /// An alias call without previousId.
    MissingPreviousId,
    /// Not an object, no or unknown `type`, or a `messageId` that is not a string.
    InvalidMessage,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::NoUserAnonId => "no_user_anon_id",
            DeadReason::MissingEvent => "missing_event",
            DeadReason::MissingGroupId => "missing_group_id",
            DeadReason::MissingPreviousId => "missing_previous_id",
            DeadReason::InvalidMessage => "invalid_message",
        }
    }
}

/// A message that goes to the DLQ instead of `events.raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dead {
    pub reason: DeadReason,
    pub error: String,
    pub message_id: Option<String>,
    /// `None` when the type could not be determined.
    pub message_type: Option<MessageType>,
    /// The item as JSON text, after the batch merge (so it can be re-posted as is).
    pub payload: Vec<u8>,
}

/// The result of normalizing one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    Accepted(Box<SegmentMessage>),
    Dead(Box<Dead>),
}

/// Formats a time the way Segment does: RFC 3339, UTC, milliseconds.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Segment's clock-skew correction: `timestamp = receivedAt - (sentAt - originalTimestamp)`.
/// Returns `None` when either input is missing or not RFC 3339.
pub fn corrected_timestamp(
    received_at: DateTime<Utc>,
    sent_at: Option<&str>,
    original: Option<&str>,
) -> Option<DateTime<Utc>> {
    let sent = parse_time(sent_at?)?;
    let orig = parse_time(original?)?;
    let skew = sent.signed_duration_since(orig);
    received_at.checked_sub_signed(skew)
}

fn present_id(v: Option<&Json>) -> bool {
    match v {
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Number(_)) => true,
        _ => false,
    }
}

/// Turns one batch item (or single-message body) into the `events.raw` message.
///
/// In order: the path's `type` (single endpoints), `writeKey` removed, batch `context` and
/// `integrations` merged in (item wins), `messageId` filled when absent (a numeric one becomes
/// its decimal text), `sentAt` from the batch when the item has none, `originalTimestamp` = the
/// client's `timestamp` when not sent, `timestamp` skew-corrected (or the client's, or
/// `receivedAt`), `receivedAt` set, `context.ip` filled when absent, then the semantic checks.
pub fn normalize(
    item: Json,
    env: &Envelope,
    rcpt: &Receipt<'_>,
    new_id: impl FnOnce() -> String,
) -> Normalized {
    let Json::Object(mut map) = item else {
        let payload = serde_json::to_vec(&item).unwrap_or_default();
        return dead(
            DeadReason::InvalidMessage,
            "the message is not a JSON object".into(),
            None,
            None,
            payload,
        );
    };
    if let Some(t) = env.path_type {
        map.insert("type".into(), Json::String(t.as_str().into()));
    }
    map.remove("writeKey");
    if let Some(ctx) = &env.context {
        let merged = match map.remove("context") {
            Some(c) => merge_defaults(c, ctx),
            None => ctx.clone(),
        };
        map.insert("context".into(), merged);
    }
    if let Some(int) = &env.integrations {
        let merged = match map.remove("integrations") {
            Some(i) => merge_defaults(i, int),
            None => int.clone(),
        };
        map.insert("integrations".into(), merged);
    }
    match map.get("messageId") {
        None | Some(Json::Null) => {
            map.insert("messageId".into(), Json::String(new_id()));
        }
        Some(Json::String(s)) if s.is_empty() => {
            map.insert("messageId".into(), Json::String(new_id()));
        }
        Some(Json::Number(n)) => {
            let s = n.to_string();
            map.insert("messageId".into(), Json::String(s));
        }
        _ => {}
    }
    if !map.contains_key("sentAt") {
        if let Some(s) = &env.sent_at {
            map.insert("sentAt".into(), s.clone());
        }
    }
    // Timestamps.
    let received = format_time(rcpt.received_at);
    if !map.contains_key("originalTimestamp") {
        if let Some(ts) = map.get("timestamp").cloned() {
            map.insert("originalTimestamp".into(), ts);
        }
    }
    let corrected = corrected_timestamp(
        rcpt.received_at,
        map.get("sentAt").and_then(Json::as_str),
        map.get("originalTimestamp").and_then(Json::as_str),
    );
    match corrected {
        Some(t) => {
            map.insert("timestamp".into(), Json::String(format_time(t)));
        }
        None => {
            if !matches!(map.get("timestamp"), Some(Json::String(_))) {
                map.insert("timestamp".into(), Json::String(received.clone()));
            }
        }
    }
    map.insert("receivedAt".into(), Json::String(received));
    if let Some(ip) = &rcpt.client_ip {
        match map.get_mut("context") {
            Some(Json::Object(c)) => {
                if !c.contains_key("ip") {
                    c.insert("ip".into(), Json::String(ip.clone()));
                }
            }
            None | Some(Json::Null) => {
                let mut c = Map::new();
                c.insert("ip".into(), Json::String(ip.clone()));
                map.insert("context".into(), Json::Object(c));
            }
            Some(_) => {}
        }
    }

    let message_id = map
        .get("messageId")
        .and_then(Json::as_str)
        .map(str::to_string);
    let message_type = map
        .get("type")
        .and_then(Json::as_str)
        .and_then(MessageType::parse);
    let check = match message_type {
        None => Some((
            DeadReason::InvalidMessage,
            match map.get("type") {
                None => "type is missing".to_string(),
                Some(t) => {
                    format!("type {t} is not one of identify, track, page, screen, group, alias")
                }
            },
        )),
        Some(_) if !present_id(map.get("userId")) && !present_id(map.get("anonymousId")) => Some((
            DeadReason::NoUserAnonId,
            "the message has neither userId nor anonymousId".to_string(),
        )),
        Some(MessageType::Track) if !matches!(map.get("event"), Some(Json::String(e)) if !e.is_empty()) => {
            Some((
                DeadReason::MissingEvent,
                "a track call needs an event name".to_string(),
            ))
        }
        Some(MessageType::Group) if !present_id(map.get("groupId")) => Some((
            DeadReason::MissingGroupId,
            "a group call needs a groupId".to_string(),
        )),
        Some(MessageType::Alias) if !present_id(map.get("previousId")) => Some((
            DeadReason::MissingPreviousId,
            "an alias call needs a previousId".to_string(),
        )),
        // from_segment_json refuses a non-string messageId; checked here so that the message
        // can be moved into it (no copy kept for an error path).
        Some(_) if !matches!(map.get("messageId"), Some(Json::String(_))) => Some((
            DeadReason::InvalidMessage,
            "messageId must be a string".to_string(),
        )),
        Some(_) => None,
    };
    if let Some((reason, error)) = check {
        let payload = serde_json::to_vec(&Json::Object(map)).unwrap_or_default();
        return dead(reason, error, message_id, message_type, payload);
    }

    match SegmentMessage::from_segment_json(rcpt.space_id, Json::Object(map)) {
        Ok(mut msg) => {
            msg.source_id = Some(rcpt.source_id.to_string());
            msg.write_key_id = Some(rcpt.key_id.to_string());
            msg.received_at_ms = Some(rcpt.received_at.timestamp_millis());
            msg.client_ip = rcpt.client_ip.clone();
            Normalized::Accepted(Box::new(msg))
        }
        Err(e) => {
            // Unreachable after the checks above (type and messageId are what it refuses); the
            // message was moved, so the dead letter carries what identifies it.
            let payload = serde_json::to_vec(&serde_json::json!({
                "messageId": message_id,
                "type": message_type.map(|t| t.as_str()),
            }))
            .unwrap_or_default();
            dead(
                DeadReason::InvalidMessage,
                e.to_string(),
                message_id,
                message_type,
                payload,
            )
        }
    }
}

fn dead(
    reason: DeadReason,
    error: String,
    message_id: Option<String>,
    message_type: Option<MessageType>,
    payload: Vec<u8>,
) -> Normalized {
    Normalized::Dead(Box::new(Dead {
        reason,
        error,
        message_id,
        message_type,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn rcpt() -> Receipt<'static> {
        Receipt {
            received_at: parse_time("2024-05-01T12:00:10.000Z").unwrap(),
            space_id: "default",
            source_id: "demo",
            key_id: "demo-key",
            client_ip: Some("203.0.113.5".into()),
        }
    }

    fn batch(body: Json) -> Envelope {
        split(Endpoint::Batch, body, &Limits::default()).unwrap()
    }

    fn accept(item: Json, env: &Envelope) -> SegmentMessage {
        match normalize(item, env, &rcpt(), || "generated".into()) {
            Normalized::Accepted(m) => *m,
            Normalized::Dead(d) => panic!("dead: {d:?}"),
        }
    }

    fn reject(item: Json, env: &Envelope) -> Dead {
        match normalize(item, env, &rcpt(), || "generated".into()) {
            Normalized::Dead(d) => *d,
            Normalized::Accepted(m) => panic!("accepted: {m:?}"),
        }
    }

    #[test]
    fn single_endpoint_type_comes_from_the_path() {
        let env = split(
            Endpoint::Single(MessageType::Track),
            json!({"userId": "u", "event": "E", "type": "identify", "writeKey": "wk"}),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(env.write_key.as_deref(), Some("wk"));
        let m = accept(env.items[0].clone(), &env);
        assert_eq!(m.message_type, MessageType::Track);
        assert!(
            !m.extra.contains_key("writeKey"),
            "the credential is dropped"
        );
        assert_eq!(m.message_id, "generated");
        assert_eq!(m.source_id.as_deref(), Some("demo"));
        assert_eq!(m.write_key_id.as_deref(), Some("demo-key"));
        assert_eq!(m.space_id, "default");
        assert_eq!(m.client_ip.as_deref(), Some("203.0.113.5"));
    }

    #[test]
    fn batch_context_and_integrations_merge_deeply_item_wins() {
        let env = batch(json!({
            "batch": [{"type": "track", "event": "E", "userId": "u", "messageId": "m1",
                       "context": {"app": {"name": "item"}, "locale": "de"},
                       "integrations": {"Mixpanel": false}}],
            "context": {"app": {"name": "batch", "version": "2"}, "library": {"name": "lib"}},
            "integrations": {"All": true, "Mixpanel": true},
        }));
        let m = accept(env.items[0].clone(), &env);
        assert_eq!(m.message_id, "m1");
        assert_eq!(
            m.context.unwrap(),
            json!({"app": {"name": "item", "version": "2"}, "locale": "de",
                   "library": {"name": "lib"}, "ip": "203.0.113.5"})
        );
        assert_eq!(
            m.integrations.unwrap(),
            json!({"All": true, "Mixpanel": false})
        );
    }

    #[test]
    fn skew_correction_as_segment_documents() {
        // The client clock is 1 hour behind: sentAt 11:00:10, event 11:00:00; received 12:00:10.
        let env = batch(json!({"batch": [{"type": "identify", "userId": "u",
            "timestamp": "2024-05-01T11:00:00.000+00:00"}], "sentAt": "2024-05-01T11:00:10Z"}));
        let m = accept(env.items[0].clone(), &env);
        assert_eq!(
            m.original_timestamp.as_deref(),
            Some("2024-05-01T11:00:00.000+00:00")
        );
        assert_eq!(m.timestamp.as_deref(), Some("2024-05-01T12:00:00.000Z"));
        assert_eq!(m.sent_at.as_deref(), Some("2024-05-01T11:00:10Z"));
        assert_eq!(m.received_at.as_deref(), Some("2024-05-01T12:00:10.000Z"));
        assert_eq!(m.received_at_ms, Some(1_714_564_810_000));
    }

    #[test]
    fn timestamps_without_sent_at_or_timestamp() {
        let env = batch(json!({"batch": [
            {"type": "page", "userId": "u", "timestamp": "2020-01-01T00:00:00Z"},
            {"type": "page", "userId": "u"},
            {"type": "page", "userId": "u", "timestamp": "not a time", "sentAt": "2024-05-01T12:00:00Z"},
        ]}));
        let a = accept(env.items[0].clone(), &env);
        assert_eq!(a.timestamp.as_deref(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(
            a.original_timestamp.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        let b = accept(env.items[1].clone(), &env);
        assert_eq!(b.timestamp.as_deref(), Some("2024-05-01T12:00:10.000Z"));
        assert_eq!(b.original_timestamp, None);
        let c = accept(env.items[2].clone(), &env);
        assert_eq!(c.timestamp.as_deref(), Some("not a time"));
    }

    #[test]
    fn explicit_original_timestamp_is_the_base() {
        let t = corrected_timestamp(
            parse_time("2024-01-01T00:00:05Z").unwrap(),
            Some("2024-01-01T00:00:03Z"),
            Some("2024-01-01T00:00:01Z"),
        );
        assert_eq!(format_time(t.unwrap()), "2024-01-01T00:00:03.000Z");
        assert_eq!(
            corrected_timestamp(Utc::now(), None, Some("2024-01-01T00:00:01Z")),
            None
        );
    }

    #[test]
    fn context_ip_is_kept_when_sent() {
        let env = batch(json!({"batch": [
            {"type": "track", "event": "E", "anonymousId": "a", "context": {"ip": "1.2.3.4"}},
            {"type": "track", "event": "E", "anonymousId": "a", "context": "weird"},
        ]}));
        assert_eq!(
            accept(env.items[0].clone(), &env).context.unwrap()["ip"],
            "1.2.3.4"
        );
        assert_eq!(
            accept(env.items[1].clone(), &env).context.unwrap(),
            json!("weird")
        );
    }

    #[test]
    fn message_id_forms() {
        let env = batch(json!({"batch": [
            {"type": "identify", "userId": "u", "messageId": ""},
            {"type": "identify", "userId": "u", "messageId": 12345},
            {"type": "identify", "userId": "u", "messageId": {"x": 1}},
        ]}));
        assert_eq!(accept(env.items[0].clone(), &env).message_id, "generated");
        assert_eq!(accept(env.items[1].clone(), &env).message_id, "12345");
        assert_eq!(
            reject(env.items[2].clone(), &env).reason,
            DeadReason::InvalidMessage
        );
    }

    #[test]
    fn unusable_messages_are_dead_letters_with_a_reason() {
        let env = batch(json!({"batch": [
            {"type": "track", "event": "E", "messageId": "m-1"},
            {"type": "track", "userId": "u"},
            {"type": "track", "userId": "u", "event": ""},
            {"type": "group", "userId": "u"},
            {"type": "alias", "userId": "u"},
            {"type": "launch", "userId": "u"},
            {"userId": "u"},
            "a string",
        ], "context": {"library": {"name": "x"}}}));
        let reasons: Vec<_> = env
            .items
            .iter()
            .map(|i| reject(i.clone(), &env).reason)
            .collect();
        use DeadReason::*;
        assert_eq!(
            reasons,
            [
                NoUserAnonId,
                MissingEvent,
                MissingEvent,
                MissingGroupId,
                MissingPreviousId,
                InvalidMessage,
                InvalidMessage,
                InvalidMessage
            ]
        );
        let d = reject(env.items[0].clone(), &env);
        assert_eq!(d.message_id.as_deref(), Some("m-1"));
        assert_eq!(d.message_type, Some(MessageType::Track));
        let payload: Json = serde_json::from_slice(&d.payload).unwrap();
        assert_eq!(
            payload["context"]["library"]["name"], "x",
            "the DLQ payload is the merged item"
        );
        // A numeric userId counts as an identity.
        accept(json!({"type": "identify", "userId": 42}), &env);
    }

    #[test]
    fn limits_name_the_limit() {
        let l = Limits {
            max_message_bytes: 100,
            max_request_bytes: 1000,
            max_batch_messages: 2,
        };
        let big = json!({"type": "track", "event": "x".repeat(200)});
        let e = split(Endpoint::Batch, json!({"batch": [{}, big.clone()]}), &l).unwrap_err();
        assert_eq!(e.code(), "message_too_large");
        assert!(
            e.to_string().contains("limit of 100 bytes per message"),
            "{e}"
        );
        assert!(e.to_string().contains("message 1"), "{e}");
        let e = split(Endpoint::Single(MessageType::Track), big, &l).unwrap_err();
        assert_eq!(e.code(), "message_too_large");
        let e = split(Endpoint::Batch, json!({"batch": [{}, {}, {}]}), &l).unwrap_err();
        assert_eq!(e, IngestError::TooManyMessages { count: 3, limit: 2 });
        assert!(e.to_string().contains("2 messages per batch"));
        assert_eq!(
            split(Endpoint::Batch, json!({"batch": {}}), &l)
                .unwrap_err()
                .code(),
            "invalid_request"
        );
        assert_eq!(
            split(Endpoint::Batch, json!([1]), &l).unwrap_err().code(),
            "invalid_request"
        );
        assert!(split(Endpoint::Batch, json!({"batch": []}), &l)
            .unwrap()
            .items
            .is_empty());
    }

    #[test]
    fn json_size_is_the_compact_length() {
        let v = json!({"a": [1, 2.5, "ü"], "b": null});
        assert_eq!(json_size(&v), serde_json::to_vec(&v).unwrap().len());
    }

    #[test]
    fn bad_json_is_invalid_json() {
        assert_eq!(
            parse_body(b"{\"batch\": [").unwrap_err().code(),
            "invalid_json"
        );
        assert!(parse_body(b" {\"a\":1} ").is_ok());
    }

    #[test]
    fn big_numbers_and_unicode_survive() {
        let env = batch(
            json!({"batch": [{"type": "track", "event": "Ünïcødé 🚀", "userId": "u",
            "properties": {"big": u64::MAX, "neg": i64::MIN, "f": 0.1, "nested": {"a": [1, {"b": "ç"}]}}}]}),
        );
        let m = accept(env.items[0].clone(), &env);
        assert_eq!(m.event.as_deref(), Some("Ünïcødé 🚀"));
        assert_eq!(m.properties.unwrap()["big"], json!(u64::MAX));
    }
}
