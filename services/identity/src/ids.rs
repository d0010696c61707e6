//! External identifiers, promoted from a Segment message as Unify does
//! (docs/identity.md, "External ids"): `user_id`, `anonymous_id`, `email`, device and
//! advertising ids by platform, push tokens, `ga_client_id`, `context.externalIds[]`, and custom
//! keys from the space's settings. `group_id` is extracted for the `accounts` collection only: it
//! never links users (two colleagues share a group; matching on it would merge them).

use corral_codec::{ExternalId, SegmentMessage};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::rules::Rules;

/// One identifier of the `users` collection: an id type and a value (`user_id:abc123`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ident {
    #[serde(rename = "t")]
    pub id_type: String,
    #[serde(rename = "v")]
    pub value: String,
}

impl Ident {
    pub fn new(id_type: impl Into<String>, value: impl Into<String>) -> Ident {
        Ident {
            id_type: id_type.into(),
            value: value.into(),
        }
    }

    pub fn to_external(&self) -> ExternalId {
        ExternalId {
            id_type: self.id_type.clone(),
            id: self.value.clone(),
            collection: Some("users".into()),
        }
    }
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id_type, self.value)
    }
}

/// What extraction found on one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Identifiers that take part in matching, blocked values removed, de-duplicated.
    pub ids: Vec<Ident>,
    /// Identifiers whose value is blocked (kept in the payload, never promoted).
    pub blocked: Vec<Ident>,
    /// `accounts` identifiers (group ids): carried on the resolved event, never matched.
    pub accounts: Vec<ExternalId>,
}

/// A candidate value: strings as sent, numbers as their decimal text (Segment coerces numeric
/// ids); anything else (objects, arrays, booleans, null) is not an identifier.
fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn path<'a>(root: &'a Json, dotted: &str) -> Option<&'a Json> {
    dotted
        .split('.')
        .try_fold(root, |node, part| node.as_object()?.get(part))
}

/// Looks up `traits.email`-style paths on the message's free-form parts.
fn lookup<'a>(msg: &'a SegmentMessage, dotted: &str) -> Option<&'a Json> {
    let (head, rest) = dotted.split_once('.')?;
    let root = match head {
        "traits" => msg.traits.as_ref(),
        "context" => msg.context.as_ref(),
        "properties" => msg.properties.as_ref(),
        "integrations" => msg.integrations.as_ref(),
        _ => None,
    }?;
    path(root, rest)
}

/// Extracts the message's external ids under `rules` (blocked values, custom keys).
pub fn extract(msg: &SegmentMessage, rules: &Rules) -> Extracted {
    let mut out = Extracted::default();
    let push = |id_type: &str, value: Option<String>, out: &mut Extracted| {
        let Some(value) = value else { return };
        let ident = Ident::new(id_type, value);
        if rules.is_blocked(&ident.value) {
            if !out.blocked.contains(&ident) {
                out.blocked.push(ident);
            }
        } else if !out.ids.contains(&ident) {
            out.ids.push(ident);
        }
    };

    push("user_id", msg.user_id_text(), &mut out);
    push("anonymous_id", msg.anonymous_id_text(), &mut out);
    for p in ["traits.email", "context.traits.email"] {
        push("email", lookup(msg, p).and_then(scalar), &mut out);
    }

    if let Some(device) = msg.context.as_ref().and_then(|c| c.get("device")) {
        let platform = device
            .get("type")
            .and_then(Json::as_str)
            .map(str::to_ascii_lowercase)
            .filter(|t| t == "ios" || t == "android");
        if let Some(platform) = platform {
            push(
                &format!("{platform}.id"),
                device.get("id").and_then(scalar),
                &mut out,
            );
            if device.get("adTrackingEnabled") == Some(&Json::Bool(true)) {
                push(
                    &format!("{platform}.idfa"),
                    device.get("advertisingId").and_then(scalar),
                    &mut out,
                );
            }
            push(
                &format!("{platform}.push_token"),
                device.get("token").and_then(scalar),
                &mut out,
            );
        }
    }
    for p in [
        "integrations.Google Analytics.clientId",
        "context.integrations.Google Analytics.clientId",
    ] {
        // "Google Analytics" contains a space but no dot, so the dotted path still works.
        push("ga_client_id", lookup(msg, p).and_then(scalar), &mut out);
    }

    if let Some(Json::Array(list)) = msg.context.as_ref().and_then(|c| c.get("externalIds")) {
        for e in list {
            let (Some(t), Some(v)) = (e.get("type").and_then(Json::as_str), e.get("id")) else {
                continue;
            };
            // Types are lower-case in Segment; lookups are lower-case too.
            let t = t.trim().to_ascii_lowercase();
            if t.is_empty() {
                continue;
            }
            let collection = e
                .get("collection")
                .and_then(Json::as_str)
                .unwrap_or("users");
            if collection == "accounts" || t == "group_id" {
                if let Some(v) = scalar(v).filter(|v| !rules.is_blocked(v)) {
                    push_account(&mut out.accounts, &t, v);
                }
            } else {
                push(&t, scalar(v), &mut out);
            }
        }
    }

    for custom in &rules.custom_ids {
        for p in &custom.paths {
            push(&custom.id_type, lookup(msg, p).and_then(scalar), &mut out);
        }
    }

    let group = msg
        .group_id
        .clone()
        .or_else(|| msg.extra.get("groupId").and_then(scalar))
        .or_else(|| lookup(msg, "context.groupId").and_then(scalar));
    if let Some(g) = group.filter(|g| !rules.is_blocked(g)) {
        push_account(&mut out.accounts, "group_id", g);
    }
    out
}

fn push_account(accounts: &mut Vec<ExternalId>, id_type: &str, id: String) {
    let e = ExternalId {
        id_type: id_type.to_string(),
        id,
        collection: Some("accounts".into()),
    };
    if !accounts.contains(&e) {
        accounts.push(e);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_codec::MessageType;
    use serde_json::json;

    fn msg() -> SegmentMessage {
        SegmentMessage::new("s1", MessageType::Identify, "m1")
    }

    fn ids(e: &Extracted) -> Vec<String> {
        e.ids.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn promotes_segment_default_fields() {
        let mut m = msg();
        m.user_id = Some("u1".into());
        m.anonymous_id = Some("a1".into());
        m.traits = Some(json!({"email": "jane@example.com"}));
        m.context = Some(json!({
            "traits": {"email": "jane@example.com"},
            "device": {"type": "iOS", "id": "dev-1", "advertisingId": "ad-1",
                       "adTrackingEnabled": true, "token": "push-1"},
            "externalIds": [
                {"id": "c-9", "type": "CRM_ID", "collection": "users", "encoding": "none"},
                {"id": "acme", "type": "account_id", "collection": "accounts"}
            ]
        }));
        m.integrations = Some(json!({"Google Analytics": {"clientId": "ga-1"}}));
        m.group_id = Some("g1".into());
        let e = extract(&m, &Rules::default());
        assert_eq!(
            ids(&e),
            vec![
                "user_id:u1",
                "anonymous_id:a1",
                "email:jane@example.com",
                "ios.id:dev-1",
                "ios.idfa:ad-1",
                "ios.push_token:push-1",
                "ga_client_id:ga-1",
                "crm_id:c-9"
            ]
        );
        let accounts: Vec<_> = e
            .accounts
            .iter()
            .map(|a| format!("{}:{}", a.id_type, a.id))
            .collect();
        assert_eq!(accounts, vec!["account_id:acme", "group_id:g1"]);
    }

    #[test]
    fn advertising_id_needs_tracking_enabled_and_a_known_platform() {
        let mut m = msg();
        m.anonymous_id = Some("a1".into());
        m.context = Some(
            json!({"device": {"type": "android", "advertisingId": "ad", "adTrackingEnabled": false}}),
        );
        assert_eq!(
            ids(&extract(&m, &Rules::default())),
            vec!["anonymous_id:a1"]
        );
        m.context = Some(json!({"device": {"type": "tv", "id": "d1"}}));
        assert_eq!(
            ids(&extract(&m, &Rules::default())),
            vec!["anonymous_id:a1"]
        );
    }

    #[test]
    fn numeric_ids_are_text_and_objects_are_not_ids() {
        let mut m = msg();
        m.extra.insert("userId".into(), json!(42));
        m.traits = Some(json!({"email": {"nested": true}}));
        assert_eq!(ids(&extract(&m, &Rules::default())), vec!["user_id:42"]);
    }

    #[test]
    fn blocked_values_are_reported_not_promoted() {
        // PostHog #12008: `undefined` and `[object Object]` ids merged many users.
        let mut m = msg();
        m.user_id = Some("undefined".into());
        m.anonymous_id = Some("[object Object]".into());
        m.traits = Some(json!({"email": "null"}));
        let e = extract(&m, &Rules::default());
        assert!(e.ids.is_empty());
        assert_eq!(e.blocked.len(), 3);
    }

    #[test]
    fn custom_keys_from_settings() {
        let rules = Rules::from_yaml(
            "custom_ids: [{type: phone, paths: [traits.phone, properties.phone]}]",
        )
        .unwrap();
        let mut m = msg();
        m.anonymous_id = Some("a1".into());
        m.traits = Some(json!({"phone": "+4912345"}));
        assert_eq!(
            ids(&extract(&m, &rules)),
            vec!["anonymous_id:a1", "phone:+4912345"]
        );
    }
}
