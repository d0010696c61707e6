//! The Rust types of every topic's value, and their Avro encoding.
//!
//! Field order in each `write_*` function is the field order of the `.avsc`; the round-trip and
//! golden tests fail if the two drift apart.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::binary as w;
use crate::read::{mismatch, Reader};
use crate::registry;
use crate::CodecError;

/// A record that travels on one Corral topic, framed as Avro single-object encoding.
pub trait AvroRecord: Sized {
    /// The topic without its deployment prefix, e.g. `events.raw`; also names the schema file.
    const TOPIC: &'static str;
    /// `C3 01` + the current schema's fingerprint + the Avro binary datum.
    fn encode(&self) -> Result<Vec<u8>, CodecError>;
    /// Accepts data written with the current schema or any version in `schemas/history`.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
}

/// Segment call type (`corral.v1.MessageType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    /// In the order of the Avro enum's symbols.
    pub const ALL: [MessageType; 6] = [
        MessageType::Identify,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Group,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    /// The Segment `type` string; exact and lower-case, as the spec writes it.
    pub fn parse(s: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn index(self) -> i64 {
        self as i64
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Segment message with every field of the spec, plus Corral's source and receive metadata.
/// The value of `events.raw` (see [`RawEvent`]) and the core of every later event record.
///
/// Free-form parts are `serde_json::Value`; `None` means the key was absent from the payload,
/// `Some(Value::Null)` that it was sent as `null`. Spec fields whose JSON type is not the one the
/// spec gives (e.g. a numeric `userId`) are kept unchanged in `extra`, so nothing is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMessage {
    pub space_id: String,
    #[serde(rename = "type")]
    pub message_type: MessageType,
    #[serde(rename = "messageId")]
    pub message_id: String,
    #[serde(rename = "userId", default)]
    pub user_id: Option<String>,
    #[serde(rename = "anonymousId", default)]
    pub anonymous_id: Option<String>,
    #[serde(rename = "groupId", default)]
    pub group_id: Option<String>,
    #[serde(rename = "previousId", default)]
    pub previous_id: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub properties: Option<Json>,
    #[serde(default)]
    pub traits: Option<Json>,
    #[serde(default)]
    pub context: Option<Json>,
    #[serde(default)]
    pub integrations: Option<Json>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(rename = "originalTimestamp", default)]
    pub original_timestamp: Option<String>,
    #[serde(rename = "sentAt", default)]
    pub sent_at: Option<String>,
    #[serde(rename = "receivedAt", default)]
    pub received_at: Option<String>,
    #[serde(default)]
    pub version: Option<Json>,
    #[serde(default)]
    pub channel: Option<String>,
    /// Other top-level keys of the payload, and spec fields of an unexpected JSON type.
    #[serde(default)]
    pub extra: Map<String, Json>,
    /// Corral source the message came in through.
    #[serde(default)]
    pub source_id: Option<String>,
    /// Id of the write key used (never the key itself).
    #[serde(default)]
    pub write_key_id: Option<String>,
    /// Collector receive time, epoch milliseconds.
    #[serde(default)]
    pub received_at_ms: Option<i64>,
    /// Remote address the collector saw.
    #[serde(default)]
    pub client_ip: Option<String>,
}

/// The value of `events.raw`: a Segment message with source and receive metadata.
pub type RawEvent = SegmentMessage;

impl SegmentMessage {
    /// A message with only the required fields set.
    pub fn new(
        space_id: impl Into<String>,
        message_type: MessageType,
        message_id: impl Into<String>,
    ) -> SegmentMessage {
        SegmentMessage {
            space_id: space_id.into(),
            message_type,
            message_id: message_id.into(),
            user_id: None,
            anonymous_id: None,
            group_id: None,
            previous_id: None,
            event: None,
            name: None,
            category: None,
            properties: None,
            traits: None,
            context: None,
            integrations: None,
            timestamp: None,
            original_timestamp: None,
            sent_at: None,
            received_at: None,
            version: None,
            channel: None,
            extra: Map::new(),
            source_id: None,
            write_key_id: None,
            received_at_ms: None,
            client_ip: None,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        w::string(out, &self.space_id);
        w::int(out, self.message_type.index() as i32);
        w::string(out, &self.message_id);
        w::opt_string(out, self.user_id.as_deref());
        w::opt_string(out, self.anonymous_id.as_deref());
        w::opt_string(out, self.group_id.as_deref());
        w::opt_string(out, self.previous_id.as_deref());
        w::opt_string(out, self.event.as_deref());
        w::opt_string(out, self.name.as_deref());
        w::opt_string(out, self.category.as_deref());
        w::opt_json(out, self.properties.as_ref());
        w::opt_json(out, self.traits.as_ref());
        w::opt_json(out, self.context.as_ref());
        w::opt_json(out, self.integrations.as_ref());
        w::opt_string(out, self.timestamp.as_deref());
        w::opt_string(out, self.original_timestamp.as_deref());
        w::opt_string(out, self.sent_at.as_deref());
        w::opt_string(out, self.received_at.as_deref());
        w::opt_json(out, self.version.as_ref());
        w::opt_string(out, self.channel.as_deref());
        w::json_map(out, &self.extra);
        w::opt_string(out, self.source_id.as_deref());
        w::opt_string(out, self.write_key_id.as_deref());
        w::opt_long(out, self.received_at_ms);
        w::opt_string(out, self.client_ip.as_deref());
    }

    fn read(r: &mut Reader) -> Result<SegmentMessage, CodecError> {
        Ok(SegmentMessage {
            space_id: r.string()?,
            message_type: read_type(r)?,
            message_id: r.string()?,
            user_id: r.opt_string()?,
            anonymous_id: r.opt_string()?,
            group_id: r.opt_string()?,
            previous_id: r.opt_string()?,
            event: r.opt_string()?,
            name: r.opt_string()?,
            category: r.opt_string()?,
            properties: r.opt_json()?,
            traits: r.opt_json()?,
            context: r.opt_json()?,
            integrations: r.opt_json()?,
            timestamp: r.opt_string()?,
            original_timestamp: r.opt_string()?,
            sent_at: r.opt_string()?,
            received_at: r.opt_string()?,
            version: r.opt_json()?,
            channel: r.opt_string()?,
            extra: r.json_map()?,
            source_id: r.opt_string()?,
            write_key_id: r.opt_string()?,
            received_at_ms: r.opt_long()?,
            client_ip: r.opt_string()?,
        })
    }

    /// Rough datum size, to allocate the output buffer once.
    fn size_hint(&self) -> usize {
        fn j(v: &Option<Json>) -> usize {
            // Avro is more compact than JSON text; the text length is an upper-ish bound.
            v.as_ref().map(json_len).unwrap_or(0)
        }
        256 + j(&self.properties) + j(&self.traits) + j(&self.context) + j(&self.integrations)
    }
}

fn json_len(v: &Json) -> usize {
    match v {
        Json::Null | Json::Bool(_) | Json::Number(_) => 10,
        Json::String(s) => s.len() + 2,
        Json::Array(a) => a.iter().map(json_len).sum::<usize>() + 2,
        Json::Object(m) => m.iter().map(|(k, v)| k.len() + 2 + json_len(v)).sum(),
    }
}

/// One tracking-plan violation (`context.protocols.violations[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViolationDetail {
    /// e.g. `Required`, `Invalid Type`, `Unplanned Event`.
    #[serde(rename = "type")]
    pub violation_type: String,
    /// Path of the offending field, e.g. `properties.price`.
    pub field: String,
    pub description: String,
}

impl ViolationDetail {
    fn write(&self, out: &mut Vec<u8>) {
        w::string(out, &self.violation_type);
        w::string(out, &self.field);
        w::string(out, &self.description);
    }
    fn read(r: &mut Reader) -> Result<ViolationDetail, CodecError> {
        Ok(ViolationDetail {
            violation_type: r.string()?,
            field: r.string()?,
            description: r.string()?,
        })
    }
}

fn write_violations(out: &mut Vec<u8>, v: &[ViolationDetail]) {
    w::array(out, v, |o, d| d.write(o));
}

fn read_violations(r: &mut Reader) -> Result<Vec<ViolationDetail>, CodecError> {
    r.array(ViolationDetail::read)
}

/// Segment's `context.protocols` fields added by Protocols.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolsAnnotation {
    pub tracking_plan_id: Option<String>,
    pub tracking_plan_version: Option<i64>,
    /// `context.protocols.event_version` the message was validated with.
    pub event_version: Option<i64>,
    /// Segment's `context.protocols.sourceId`.
    pub source_id: Option<String>,
    #[serde(default)]
    pub omitted: Vec<String>,
    #[serde(default)]
    pub omitted_on_violation: Vec<String>,
    #[serde(default)]
    pub violations: Vec<ViolationDetail>,
}

/// The value of `events.valid`: a message that passed validation, with its annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidEvent {
    pub message: SegmentMessage,
    pub protocols: ProtocolsAnnotation,
}

/// The value of `events.blocked`: a quarantined message with why it was blocked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockedEvent {
    pub message: SegmentMessage,
    /// Machine-readable, e.g. `unplanned_event`, `violation`.
    pub reason: String,
    pub tracking_plan_id: Option<String>,
    #[serde(default)]
    pub violations: Vec<ViolationDetail>,
    pub blocked_at_ms: i64,
}

/// The value of `events.violations`: one violation (Segment's `Violation Generated`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub space_id: String,
    pub message_id: String,
    pub event_type: MessageType,
    /// track: `event`; page and screen: `name`.
    pub event_name: Option<String>,
    pub source_id: Option<String>,
    pub source_name: Option<String>,
    pub source_slug: Option<String>,
    pub tracking_plan_id: Option<String>,
    pub tracking_plan_name: Option<String>,
    pub violation_type: String,
    pub violation_field: String,
    pub violation_description: String,
    pub event_timestamp: Option<String>,
    pub event_sent_at: Option<String>,
    pub app_version: Option<String>,
    pub detected_at_ms: i64,
}

/// The value of `events.dlq`: a record a service could not process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Empty when the space could not be determined (e.g. the value did not decode).
    pub space_id: String,
    pub service: String,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Human-readable error text.
    pub error: String,
    /// Machine-readable reason, e.g. [`CodecError::reason`].
    pub reason: String,
    pub failed_at_ms: i64,
}

impl DeadLetter {
    /// Same as [`AvroRecord::encode`], callable without importing the trait.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        <Self as AvroRecord>::encode(self)
    }
    /// Same as [`AvroRecord::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        <Self as AvroRecord>::decode(bytes)
    }
}

/// An external identifier (Segment's `context.externalIds[]` shape).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExternalId {
    /// e.g. `user_id`, `anonymous_id`, `email`.
    #[serde(rename = "type")]
    pub id_type: String,
    pub id: String,
    /// `users` or `accounts`.
    pub collection: Option<String>,
}

impl ExternalId {
    fn write(&self, out: &mut Vec<u8>) {
        w::string(out, &self.id_type);
        w::string(out, &self.id);
        w::opt_string(out, self.collection.as_deref());
    }
    fn read(r: &mut Reader) -> Result<ExternalId, CodecError> {
        Ok(ExternalId {
            id_type: r.string()?,
            id: r.string()?,
            collection: r.opt_string()?,
        })
    }
}

fn write_ids(out: &mut Vec<u8>, ids: &[ExternalId]) {
    w::array(out, ids, |o, i| i.write(o));
}

fn read_ids(r: &mut Reader) -> Result<Vec<ExternalId>, CodecError> {
    r.array(ExternalId::read)
}

/// The value of `events.resolved`: a message with the profile it resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedEvent {
    pub message: SegmentMessage,
    pub profile_id: String,
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    pub resolved_at_ms: i64,
}

/// The value of `profiles.merges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileMerge {
    pub space_id: String,
    pub from_profile_id: String,
    pub into_profile_id: String,
    pub trigger_message_id: Option<String>,
    /// The identifiers that linked the two profiles.
    #[serde(default)]
    pub trigger_ids: Vec<ExternalId>,
    pub merged_at_ms: i64,
}

/// `corral.v1.MembershipChangeKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipChangeKind {
    Entered,
    Exited,
}

impl MembershipChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MembershipChangeKind::Entered => "entered",
            MembershipChangeKind::Exited => "exited",
        }
    }
}

/// The value of `audiences.membership`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub space_id: String,
    pub profile_id: String,
    pub audience_key: String,
    pub audience_version: i64,
    pub change: MembershipChangeKind,
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    pub trigger_message_id: Option<String>,
    pub changed_at_ms: i64,
}

/// The value of `traits.changes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitChange {
    pub space_id: String,
    pub profile_id: String,
    pub trait_key: String,
    /// `None` when the trait was removed.
    pub value: Option<Json>,
    /// `None` when there was no previous value.
    pub previous_value: Option<Json>,
    pub definition_version: Option<i64>,
    #[serde(default)]
    pub external_ids: Vec<ExternalId>,
    pub changed_at_ms: i64,
}

/// The value of `definitions` (key: kind + key; a tombstone deletes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub space_id: String,
    /// `tracking_plan`, `audience`, `computed_trait`, `destination`, `source`.
    pub kind: String,
    pub key: String,
    pub version: i64,
    pub name: Option<String>,
    pub body: Json,
    pub updated_at_ms: i64,
    pub updated_by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding of each top-level record.

fn read_type(r: &mut Reader) -> Result<MessageType, CodecError> {
    let i = r.index(MessageType::ALL.len() as i64, "MessageType enum")?;
    Ok(MessageType::ALL[i as usize])
}

/// Decodes the datum (converted to the current layout if an older schema wrote it) with `read`.
fn decode_with<T>(
    topic: &'static str,
    bytes: &[u8],
    read: impl FnOnce(&mut Reader) -> Result<T, CodecError>,
) -> Result<T, CodecError> {
    let (fingerprint, datum) = registry::decode_datum(topic, bytes)?;
    let mut r = Reader::new(topic, fingerprint, &datum);
    let value = read(&mut r)?;
    r.finish()?;
    Ok(value)
}

/// Reads the top-level `space_id` and the nested message, and checks they agree.
fn read_message(r: &mut Reader) -> Result<SegmentMessage, CodecError> {
    let space_id = r.string()?;
    let message = SegmentMessage::read(r)?;
    if message.space_id != space_id {
        return Err(mismatch(
            r.topic(),
            format!(
                "space_id {space_id:?} differs from message.space_id {:?}",
                message.space_id
            ),
        ));
    }
    Ok(message)
}

/// Writes the top-level `space_id` (taken from the message, so they cannot disagree) and the message.
fn write_message(out: &mut Vec<u8>, m: &SegmentMessage) {
    w::string(out, &m.space_id);
    m.write(out);
}

impl AvroRecord for SegmentMessage {
    const TOPIC: &'static str = "events.raw";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, self.size_hint())?;
        self.write(&mut out);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, SegmentMessage::read)
    }
}

impl AvroRecord for ValidEvent {
    const TOPIC: &'static str = "events.valid";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, self.message.size_hint() + 128)?;
        write_message(&mut out, &self.message);
        let p = &self.protocols;
        w::opt_string(&mut out, p.tracking_plan_id.as_deref());
        w::opt_long(&mut out, p.tracking_plan_version);
        w::opt_long(&mut out, p.event_version);
        w::opt_string(&mut out, p.source_id.as_deref());
        w::string_array(&mut out, &p.omitted);
        w::string_array(&mut out, &p.omitted_on_violation);
        write_violations(&mut out, &p.violations);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(ValidEvent {
                message: read_message(r)?,
                protocols: ProtocolsAnnotation {
                    tracking_plan_id: r.opt_string()?,
                    tracking_plan_version: r.opt_long()?,
                    event_version: r.opt_long()?,
                    source_id: r.opt_string()?,
                    omitted: r.string_array()?,
                    omitted_on_violation: r.string_array()?,
                    violations: read_violations(r)?,
                },
            })
        })
    }
}

impl AvroRecord for BlockedEvent {
    const TOPIC: &'static str = "events.blocked";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, self.message.size_hint() + 128)?;
        write_message(&mut out, &self.message);
        w::string(&mut out, &self.reason);
        w::opt_string(&mut out, self.tracking_plan_id.as_deref());
        write_violations(&mut out, &self.violations);
        w::long(&mut out, self.blocked_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(BlockedEvent {
                message: read_message(r)?,
                reason: r.string()?,
                tracking_plan_id: r.opt_string()?,
                violations: read_violations(r)?,
                blocked_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for Violation {
    const TOPIC: &'static str = "events.violations";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, 512)?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.message_id);
        w::int(o, self.event_type.index() as i32);
        w::opt_string(o, self.event_name.as_deref());
        w::opt_string(o, self.source_id.as_deref());
        w::opt_string(o, self.source_name.as_deref());
        w::opt_string(o, self.source_slug.as_deref());
        w::opt_string(o, self.tracking_plan_id.as_deref());
        w::opt_string(o, self.tracking_plan_name.as_deref());
        w::string(o, &self.violation_type);
        w::string(o, &self.violation_field);
        w::string(o, &self.violation_description);
        w::opt_string(o, self.event_timestamp.as_deref());
        w::opt_string(o, self.event_sent_at.as_deref());
        w::opt_string(o, self.app_version.as_deref());
        w::long(o, self.detected_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(Violation {
                space_id: r.string()?,
                message_id: r.string()?,
                event_type: read_type(r)?,
                event_name: r.opt_string()?,
                source_id: r.opt_string()?,
                source_name: r.opt_string()?,
                source_slug: r.opt_string()?,
                tracking_plan_id: r.opt_string()?,
                tracking_plan_name: r.opt_string()?,
                violation_type: r.string()?,
                violation_field: r.string()?,
                violation_description: r.string()?,
                event_timestamp: r.opt_string()?,
                event_sent_at: r.opt_string()?,
                app_version: r.opt_string()?,
                detected_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for DeadLetter {
    const TOPIC: &'static str = "events.dlq";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let payload =
            self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len);
        let mut out = registry::begin(Self::TOPIC, 128 + payload + self.error.len())?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.service);
        w::string(o, &self.origin_topic);
        w::int(o, self.origin_partition);
        w::long(o, self.origin_offset);
        w::opt_bytes(o, self.key.as_deref());
        w::opt_bytes(o, self.value.as_deref());
        w::string(o, &self.error);
        w::string(o, &self.reason);
        w::long(o, self.failed_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(DeadLetter {
                space_id: r.string()?,
                service: r.string()?,
                origin_topic: r.string()?,
                origin_partition: r.int()?,
                origin_offset: r.long()?,
                key: r.opt_bytes()?,
                value: r.opt_bytes()?,
                error: r.string()?,
                reason: r.string()?,
                failed_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for ResolvedEvent {
    const TOPIC: &'static str = "events.resolved";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, self.message.size_hint() + 256)?;
        write_message(&mut out, &self.message);
        w::string(&mut out, &self.profile_id);
        write_ids(&mut out, &self.external_ids);
        w::long(&mut out, self.resolved_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(ResolvedEvent {
                message: read_message(r)?,
                profile_id: r.string()?,
                external_ids: read_ids(r)?,
                resolved_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for ProfileMerge {
    const TOPIC: &'static str = "profiles.merges";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, 256)?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.from_profile_id);
        w::string(o, &self.into_profile_id);
        w::opt_string(o, self.trigger_message_id.as_deref());
        write_ids(o, &self.trigger_ids);
        w::long(o, self.merged_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(ProfileMerge {
                space_id: r.string()?,
                from_profile_id: r.string()?,
                into_profile_id: r.string()?,
                trigger_message_id: r.opt_string()?,
                trigger_ids: read_ids(r)?,
                merged_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for MembershipChange {
    const TOPIC: &'static str = "audiences.membership";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, 256)?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.profile_id);
        w::string(o, &self.audience_key);
        w::long(o, self.audience_version);
        w::int(o, self.change as i32);
        write_ids(o, &self.external_ids);
        w::opt_string(o, self.trigger_message_id.as_deref());
        w::long(o, self.changed_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(MembershipChange {
                space_id: r.string()?,
                profile_id: r.string()?,
                audience_key: r.string()?,
                audience_version: r.long()?,
                change: match r.index(2, "MembershipChangeKind enum")? {
                    0 => MembershipChangeKind::Entered,
                    _ => MembershipChangeKind::Exited,
                },
                external_ids: read_ids(r)?,
                trigger_message_id: r.opt_string()?,
                changed_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for TraitChange {
    const TOPIC: &'static str = "traits.changes";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, 256)?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.profile_id);
        w::string(o, &self.trait_key);
        w::opt_json(o, self.value.as_ref());
        w::opt_json(o, self.previous_value.as_ref());
        w::opt_long(o, self.definition_version);
        write_ids(o, &self.external_ids);
        w::long(o, self.changed_at_ms);
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(TraitChange {
                space_id: r.string()?,
                profile_id: r.string()?,
                trait_key: r.string()?,
                value: r.opt_json()?,
                previous_value: r.opt_json()?,
                definition_version: r.opt_long()?,
                external_ids: read_ids(r)?,
                changed_at_ms: r.long()?,
            })
        })
    }
}

impl AvroRecord for Definition {
    const TOPIC: &'static str = "definitions";
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = registry::begin(Self::TOPIC, 256 + json_len(&self.body))?;
        let o = &mut out;
        w::string(o, &self.space_id);
        w::string(o, &self.kind);
        w::string(o, &self.key);
        w::long(o, self.version);
        w::opt_string(o, self.name.as_deref());
        w::json(o, &self.body);
        w::long(o, self.updated_at_ms);
        w::opt_string(o, self.updated_by.as_deref());
        Ok(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        decode_with(Self::TOPIC, bytes, |r| {
            Ok(Definition {
                space_id: r.string()?,
                kind: r.string()?,
                key: r.string()?,
                version: r.long()?,
                name: r.opt_string()?,
                body: r.json()?,
                updated_at_ms: r.long()?,
                updated_by: r.opt_string()?,
            })
        })
    }
}
