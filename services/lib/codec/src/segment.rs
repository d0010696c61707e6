//! Segment JSON payload <-> [`SegmentMessage`], lossless in both directions.

use serde_json::{Map, Value as Json};

use crate::{CodecError, MessageType, SegmentMessage};

/// Top-level spec fields held as strings.
const STRING_FIELDS: &[&str] = &[
    "userId",
    "anonymousId",
    "groupId",
    "previousId",
    "event",
    "name",
    "category",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "channel",
];

impl SegmentMessage {
    /// Builds a message from one Segment spec payload (one item of a batch, with the batch's
    /// `context` and `integrations` already merged in by the caller).
    ///
    /// `type` must be one of the six spec types and `messageId` a string (the collector assigns
    /// one first when the client sent none). Every other key is kept: spec fields in their typed
    /// fields when their JSON type is the spec's, everything else (unknown keys, a numeric
    /// `userId`, an explicit `null`) in `extra`, so [`SegmentMessage::to_segment_json`] gives the
    /// payload back unchanged. Corral metadata (`source_id`, ...) is left unset for the caller.
    /// The caller should remove `writeKey` first: it is a credential.
    pub fn from_segment_json(
        space_id: impl Into<String>,
        payload: Json,
    ) -> Result<SegmentMessage, CodecError> {
        let mut map = match payload {
            Json::Object(m) => m,
            other => {
                return Err(CodecError::InvalidMessage(format!(
                    "expected a JSON object, found {}",
                    json_type(&other)
                )))
            }
        };
        let message_type = match map.get("type") {
            Some(Json::String(t)) => MessageType::parse(t).ok_or_else(|| {
                CodecError::InvalidMessage(format!(
                    "type {t:?} is not one of identify, track, page, screen, group, alias"
                ))
            })?,
            Some(other) => {
                return Err(CodecError::InvalidMessage(format!(
                    "type must be a string, found {}",
                    json_type(other)
                )))
            }
            None => return Err(CodecError::InvalidMessage("type is missing".into())),
        };
        map.remove("type");
        let message_id = match map.remove("messageId") {
            Some(Json::String(id)) => id,
            Some(other) => {
                return Err(CodecError::InvalidMessage(format!(
                    "messageId must be a string, found {}",
                    json_type(&other)
                )))
            }
            None => return Err(CodecError::InvalidMessage("messageId is missing".into())),
        };

        let mut msg = SegmentMessage::new(space_id, message_type, message_id);
        let mut extra = Map::new();
        for field in STRING_FIELDS {
            if let Some(v) = map.remove(*field) {
                match v {
                    Json::String(s) => *string_slot(&mut msg, field) = Some(s),
                    other => {
                        extra.insert((*field).to_string(), other);
                    }
                }
            }
        }
        msg.properties = map.remove("properties");
        msg.traits = map.remove("traits");
        msg.context = map.remove("context");
        msg.integrations = map.remove("integrations");
        msg.version = map.remove("version");
        extra.extend(map);
        msg.extra = extra;
        Ok(msg)
    }

    /// The Segment payload this message was built from (Corral metadata is not part of it).
    pub fn to_segment_json(&self) -> Json {
        let mut map = self.extra.clone();
        map.insert(
            "type".into(),
            Json::String(self.message_type.as_str().into()),
        );
        map.insert("messageId".into(), Json::String(self.message_id.clone()));
        for field in STRING_FIELDS {
            if let Some(s) = string_ref(self, field) {
                map.insert((*field).to_string(), Json::String(s.to_string()));
            }
        }
        for (k, v) in [
            ("properties", &self.properties),
            ("traits", &self.traits),
            ("context", &self.context),
            ("integrations", &self.integrations),
            ("version", &self.version),
        ] {
            if let Some(v) = v {
                map.insert(k.into(), v.clone());
            }
        }
        Json::Object(map)
    }
}

fn string_slot<'a>(m: &'a mut SegmentMessage, field: &str) -> &'a mut Option<String> {
    match field {
        "userId" => &mut m.user_id,
        "anonymousId" => &mut m.anonymous_id,
        "groupId" => &mut m.group_id,
        "previousId" => &mut m.previous_id,
        "event" => &mut m.event,
        "name" => &mut m.name,
        "category" => &mut m.category,
        "timestamp" => &mut m.timestamp,
        "originalTimestamp" => &mut m.original_timestamp,
        "sentAt" => &mut m.sent_at,
        "receivedAt" => &mut m.received_at,
        // STRING_FIELDS lists exactly the arms above.
        _ => &mut m.channel,
    }
}

fn string_ref<'a>(m: &'a SegmentMessage, field: &str) -> Option<&'a str> {
    match field {
        "userId" => m.user_id.as_deref(),
        "anonymousId" => m.anonymous_id.as_deref(),
        "groupId" => m.group_id.as_deref(),
        "previousId" => m.previous_id.as_deref(),
        "event" => m.event.as_deref(),
        "name" => m.name.as_deref(),
        "category" => m.category.as_deref(),
        "timestamp" => m.timestamp.as_deref(),
        "originalTimestamp" => m.original_timestamp.as_deref(),
        "sentAt" => m.sent_at.as_deref(),
        "receivedAt" => m.received_at.as_deref(),
        _ => m.channel.as_deref(),
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}
