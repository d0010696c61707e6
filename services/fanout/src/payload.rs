//! Pure payload builders: a membership or trait change becomes the calls Segment would send
//! (field survey §1.9), then each adapter's request. No I/O, no clocks: everything here is
//! deterministic, so a retried or re-processed change carries the same message ids.
//!
//! - Audience, identify: `traits: {<audience_key>: true|false}`.
//! - Audience, track: `Audience Entered` / `Audience Exited` with
//!   `properties: {audience_key, <audience_key>: true|false}`.
//! - Computed trait, identify: `traits: {<trait_key>: value}`; track: `Trait Computed` with
//!   `properties: {trait_key, <trait_key>: value}`.
//! - `context.personas` = `{computation_class, computation_id, computation_key, namespace,
//!   space_id}`; `integrations` = `{"All": false, "<destination>": true}`.
//! - Account audiences and account computed traits (compute's changes that carry the account's
//!   `group_id` external id, collection `accounts`): the account's own change becomes one
//!   `group` call (`groupId`, `traits: {<key>: value}`) for destinations connected with
//!   identify; each user's change is an ordinary identify / track call with the account in
//!   `context.groupId`. List destinations receive the users only.
//! - A deleted person (exits with trigger `regulation:{id}`, docs/privacy.md): the user-deletion
//!   requests of the destinations that have such an API ([`deletion_calls`]).
//! - One call per identifier value: each `user_id` (as `userId`), each `email` (in `traits.email`
//!   for identify, `context.traits.email` for track), each `anonymous_id` (as `anonymousId`) when
//!   the destination includes anonymous users.

use corral_codec::ExternalId;
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::destination::{DestinationSpec, DestinationType, Mode};

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeKind {
    AudienceEntered,
    AudienceExited,
    /// A computed trait's new value (`Null` when it was removed).
    TraitComputed(Json),
}

/// A change of one profile, as read from `audiences.membership` or `traits.changes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub space_id: String,
    pub profile_id: String,
    /// Audience or trait key.
    pub key: String,
    pub version: Option<i64>,
    pub kind: ChangeKind,
    pub external_ids: Vec<ExternalId>,
    pub changed_at_ms: i64,
}

impl Change {
    pub fn from_membership(m: &corral_codec::MembershipChange) -> Self {
        Change {
            space_id: m.space_id.clone(),
            profile_id: m.profile_id.clone(),
            key: m.audience_key.clone(),
            version: Some(m.audience_version),
            kind: match m.change {
                corral_codec::MembershipChangeKind::Entered => ChangeKind::AudienceEntered,
                corral_codec::MembershipChangeKind::Exited => ChangeKind::AudienceExited,
            },
            external_ids: m.external_ids.clone(),
            changed_at_ms: m.changed_at_ms,
        }
    }

    pub fn from_trait(t: &corral_codec::TraitChange) -> Self {
        Change {
            space_id: t.space_id.clone(),
            profile_id: t.profile_id.clone(),
            key: t.trait_key.clone(),
            version: t.definition_version,
            kind: ChangeKind::TraitComputed(t.value.clone().unwrap_or(Json::Null)),
            external_ids: t.external_ids.clone(),
            changed_at_ms: t.changed_at_ms,
        }
    }

    pub fn is_audience(&self) -> bool {
        !matches!(self.kind, ChangeKind::TraitComputed(_))
    }
}

/// Segment's audience and trait keys are snake_case; keys written otherwise are converted.
pub fn snake_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower_or_digit = false;
    for c in key.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower_or_digit && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower_or_digit = c.is_ascii_lowercase() || c.is_ascii_digit();
        } else {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            prev_lower_or_digit = false;
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// Which identifier a call is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    UserId(String),
    Email(String),
    AnonymousId(String),
    /// An account (the `group` call of an account-level change).
    GroupId(String),
}

impl Identity {
    fn type_and_value(&self) -> (&'static str, &str) {
        match self {
            Identity::UserId(v) => ("user_id", v),
            Identity::Email(v) => ("email", v),
            Identity::AnonymousId(v) => ("anonymous_id", v),
            Identity::GroupId(v) => ("group_id", v),
        }
    }
}

/// The identifiers a change fans out to, in a stable order (user ids, emails, anonymous ids;
/// each in the order the profile lists them, duplicates removed).
pub fn identities(ids: &[ExternalId], include_anonymous: bool) -> Vec<Identity> {
    let mut out: Vec<Identity> = Vec::new();
    for (wanted, make) in [
        ("user_id", Identity::UserId as fn(String) -> Identity),
        ("email", Identity::Email),
        ("anonymous_id", Identity::AnonymousId),
    ] {
        if wanted == "anonymous_id" && !include_anonymous {
            continue;
        }
        for id in ids
            .iter()
            .filter(|i| i.id_type == wanted && !i.id.is_empty())
        {
            let ident = make(id.id.clone());
            if !out.contains(&ident) {
                out.push(ident);
            }
        }
    }
    out
}

/// The account an account-level change is about: the `group_id` external id of collection
/// `accounts` that compute adds to account audience and trait changes.
pub fn account_of(ids: &[ExternalId]) -> Option<&str> {
    ids.iter()
        .find(|i| i.id_type == "group_id" && i.collection.as_deref() == Some("accounts"))
        .map(|i| i.id.as_str())
}

/// Whether a change is the account's own (not one of its users'): it names the account only.
pub fn is_account_record(ids: &[ExternalId]) -> bool {
    account_of(ids).is_some()
        && ids
            .iter()
            .all(|i| i.collection.as_deref() == Some("accounts"))
}

/// identify, track or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Identify,
    Track,
    /// An account's own change (account audiences and computed traits).
    Group,
}

impl CallType {
    pub fn as_str(self) -> &'static str {
        match self {
            CallType::Identify => "identify",
            CallType::Track => "track",
            CallType::Group => "group",
        }
    }
}

/// One Segment call, before it is shaped for an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub call_type: CallType,
    pub message_id: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    /// Set on the call made for an email identifier.
    pub email: Option<String>,
    /// The account: `groupId` of a group call, `context.groupId` of a user's call.
    pub group_id: Option<String>,
    /// Track only.
    pub event: Option<String>,
    /// identify: traits; track: properties.
    pub fields: Map<String, Json>,
    pub personas: Json,
    pub integrations: Json,
    pub timestamp: String,
}

/// ISO-8601 UTC with milliseconds, as Segment writes timestamps.
pub fn iso_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A deterministic message id: the same change, destination, call type and identifier always
/// give the same id, so receivers can de-duplicate retries and re-deliveries.
pub fn message_id(
    dest_key: &str,
    change: &Change,
    call_type: CallType,
    identity: &Identity,
) -> String {
    let what = match &change.kind {
        ChangeKind::AudienceEntered => "entered".to_string(),
        ChangeKind::AudienceExited => "exited".to_string(),
        // serde_json writes maps in key order: the text is canonical.
        ChangeKind::TraitComputed(v) => format!("value={v}"),
    };
    let (t, v) = identity.type_and_value();
    let mut name = format!(
        "corral/fanout/v1\n{dest_key}\n{}\n{}\n{}\n{what}\n{}\n{}\n{}\n{t}:{v}",
        change.space_id,
        change.profile_id,
        change.key,
        change.version.unwrap_or(-1),
        change.changed_at_ms,
        call_type.as_str()
    );
    // A user's change for one of its accounts differs from the same change for another (the
    // ids of changes without an account are unchanged).
    if let Some(g) = account_of(&change.external_ids) {
        name.push_str(&format!("\naccount:{g}"));
    }
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// The calls Segment makes for `change` to an event destination connected with `mode`.
/// Empty when the profile has no identifier the destination can use.
pub fn calls(spec: &DestinationSpec, change: &Change, mode: Mode) -> Vec<Call> {
    let key = snake_case(&change.key);
    let (class, value) = match &change.kind {
        ChangeKind::AudienceEntered => ("audience", Json::Bool(true)),
        ChangeKind::AudienceExited => ("audience", Json::Bool(false)),
        ChangeKind::TraitComputed(v) => ("computed_trait", v.clone()),
    };
    let personas = json!({
        "computation_class": class,
        "computation_id": change.key,
        "computation_key": key,
        "namespace": change.space_id,
        "space_id": change.space_id,
    });
    let integrations = json!({"All": false, spec.display_name(): true});
    let group = account_of(&change.external_ids).map(String::from);
    if is_account_record(&change.external_ids) {
        // One group call per account; track calls are per user (the users' own changes).
        let Some(g) = group.filter(|_| mode.identify()) else {
            return Vec::new();
        };
        let mut fields = Map::new();
        fields.insert(key.clone(), value);
        return vec![Call {
            call_type: CallType::Group,
            message_id: message_id(
                &spec.key,
                change,
                CallType::Group,
                &Identity::GroupId(g.clone()),
            ),
            user_id: None,
            anonymous_id: None,
            email: None,
            group_id: Some(g),
            event: None,
            fields,
            personas,
            integrations,
            timestamp: iso_millis(change.changed_at_ms),
        }];
    }
    let idents = identities(&change.external_ids, spec.include_anonymous_ids);
    // Calls made for an email or anonymous id still carry the profile's user id, when it has
    // one, so the receiver attributes them to the same user.
    let first_user = idents.iter().find_map(|i| match i {
        Identity::UserId(u) => Some(u.clone()),
        _ => None,
    });
    let first_anon = change
        .external_ids
        .iter()
        .find(|i| i.id_type == "anonymous_id")
        .map(|i| i.id.clone());
    let mut types = Vec::new();
    if mode.identify() {
        types.push(CallType::Identify);
    }
    if mode.track() {
        types.push(CallType::Track);
    }
    let mut out = Vec::new();
    for call_type in types {
        for ident in &idents {
            let (user_id, anonymous_id, email) = match ident {
                Identity::UserId(u) => (Some(u.clone()), None, None),
                Identity::Email(e) => {
                    // Segment needs userId or anonymousId: without a user id, the profile's
                    // anonymous id, or else the Corral profile id, stands in.
                    let anon = if first_user.is_none() {
                        Some(
                            first_anon
                                .clone()
                                .unwrap_or_else(|| change.profile_id.clone()),
                        )
                    } else {
                        None
                    };
                    (first_user.clone(), anon, Some(e.clone()))
                }
                Identity::AnonymousId(a) => (first_user.clone(), Some(a.clone()), None),
                Identity::GroupId(_) => continue,
            };
            let mut fields = Map::new();
            let event = match call_type {
                CallType::Identify | CallType::Group => {
                    fields.insert(key.clone(), value.clone());
                    if let Some(e) = &email {
                        fields.insert("email".into(), Json::String(e.clone()));
                    }
                    None
                }
                CallType::Track => {
                    let (name_key, name) = match &change.kind {
                        ChangeKind::AudienceEntered => {
                            ("audience_key", &spec.event_names.audience_entered)
                        }
                        ChangeKind::AudienceExited => {
                            ("audience_key", &spec.event_names.audience_exited)
                        }
                        ChangeKind::TraitComputed(_) => {
                            ("trait_key", &spec.event_names.trait_computed)
                        }
                    };
                    fields.insert(name_key.into(), Json::String(key.clone()));
                    fields.insert(key.clone(), value.clone());
                    Some(name.clone())
                }
            };
            out.push(Call {
                call_type,
                message_id: message_id(&spec.key, change, call_type, ident),
                user_id,
                anonymous_id,
                email,
                group_id: group.clone(),
                event,
                fields,
                personas: personas.clone(),
                integrations: integrations.clone(),
                timestamp: iso_millis(change.changed_at_ms),
            });
        }
    }
    out
}

impl Call {
    /// The Segment message (what a webhook, a Segment HTTP API or a Kafka topic receives).
    pub fn to_segment_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.call_type.as_str()));
        m.insert("messageId".into(), json!(self.message_id));
        m.insert("timestamp".into(), json!(self.timestamp));
        if let Some(u) = &self.user_id {
            m.insert("userId".into(), json!(u));
        }
        if let Some(a) = &self.anonymous_id {
            m.insert("anonymousId".into(), json!(a));
        }
        let mut context = Map::new();
        context.insert("personas".into(), self.personas.clone());
        match self.call_type {
            CallType::Identify => {
                m.insert("traits".into(), Json::Object(self.fields.clone()));
            }
            CallType::Group => {
                m.insert("groupId".into(), json!(self.group_id));
                m.insert("traits".into(), Json::Object(self.fields.clone()));
            }
            CallType::Track => {
                m.insert("event".into(), json!(self.event));
                m.insert("properties".into(), Json::Object(self.fields.clone()));
                if let Some(e) = &self.email {
                    context.insert("traits".into(), json!({"email": e}));
                }
            }
        }
        if self.call_type != CallType::Group {
            if let Some(g) = &self.group_id {
                context.insert("groupId".into(), json!(g));
            }
        }
        m.insert("context".into(), Json::Object(context));
        m.insert("integrations".into(), self.integrations.clone());
        Json::Object(m)
    }

    /// Braze `/users/track`: identify → `attributes`, track → `events`. The user is named by
    /// `external_id` (the user id) or, without one, by `email`.
    pub fn to_braze_json(&self) -> Json {
        let mut who = Map::new();
        match (&self.user_id, &self.email) {
            (Some(u), _) => {
                who.insert("external_id".into(), json!(u));
            }
            (None, Some(e)) => {
                who.insert("email".into(), json!(e));
            }
            (None, None) => {
                if let Some(a) = &self.anonymous_id {
                    who.insert(
                        "user_alias".into(),
                        json!({"alias_name": a, "alias_label": "anonymous_id"}),
                    );
                }
            }
        }
        match self.call_type {
            // Group calls are not sent to Braze (`request_for`); shaped as attributes if asked.
            CallType::Identify | CallType::Group => {
                let mut attrs = who;
                for (k, v) in &self.fields {
                    attrs.insert(k.clone(), v.clone());
                }
                json!({"attributes": [attrs]})
            }
            CallType::Track => {
                let mut ev = who;
                ev.insert("name".into(), json!(self.event));
                ev.insert("time".into(), json!(self.timestamp));
                ev.insert("properties".into(), Json::Object(self.fields.clone()));
                json!({"events": [ev]})
            }
        }
    }

    /// Iterable: identify → `POST /api/users/update` with `dataFields`; track →
    /// `POST /api/events/track` with `eventName`, `dataFields`, `createdAt` (epoch seconds) and
    /// `id` (the message id: Iterable de-duplicates on it). Returns (path, body).
    pub fn to_iterable(&self, changed_at_ms: i64) -> (&'static str, Json) {
        let mut body = Map::new();
        if let Some(e) = &self.email {
            body.insert("email".into(), json!(e));
        }
        if let Some(u) = &self.user_id {
            body.insert("userId".into(), json!(u));
        }
        match self.call_type {
            // Group calls are not sent to Iterable (`request_for`); shaped as an update if asked.
            CallType::Identify | CallType::Group => {
                body.insert("dataFields".into(), Json::Object(self.fields.clone()));
                body.insert("preferUserId".into(), json!(true));
                ("/api/users/update", Json::Object(body))
            }
            CallType::Track => {
                body.insert("eventName".into(), json!(self.event));
                body.insert("id".into(), json!(self.message_id));
                body.insert("createdAt".into(), json!(changed_at_ms.div_euclid(1000)));
                body.insert("dataFields".into(), Json::Object(self.fields.clone()));
                ("/api/events/track", Json::Object(body))
            }
        }
    }

    /// Iterable and Braze need a user id or an email; a call with neither cannot be sent there.
    pub fn has_user_or_email(&self) -> bool {
        self.user_id.is_some() || self.email.is_some()
    }
}

/// An HTTP request to make (credentials and signatures are added at send time, never stored).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedRequest {
    pub url: String,
    pub body: Json,
}

fn join(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// The HTTP request of one call for an HTTP event destination; `None` for Kafka and list
/// destinations and for calls the destination cannot address.
pub fn request_for(
    spec: &DestinationSpec,
    call: &Call,
    changed_at_ms: i64,
) -> Option<PlannedRequest> {
    let url = spec.url.as_deref()?;
    match spec.dest_type {
        DestinationType::Webhook => Some(PlannedRequest {
            url: url.to_string(),
            body: call.to_segment_json(),
        }),
        DestinationType::Segment => Some(PlannedRequest {
            url: join(url, &format!("/v1/{}", call.call_type.as_str())),
            body: call.to_segment_json(),
        }),
        // Braze and Iterable have no accounts: they get the users' calls only.
        DestinationType::Braze | DestinationType::Iterable if call.call_type == CallType::Group => {
            None
        }
        DestinationType::Braze if call.has_user_or_email() || call.anonymous_id.is_some() => {
            Some(PlannedRequest {
                url: join(url, "/users/track"),
                body: call.to_braze_json(),
            })
        }
        DestinationType::Iterable if call.has_user_or_email() => {
            let (path, body) = call.to_iterable(changed_at_ms);
            Some(PlannedRequest {
                url: join(url, path),
                body,
            })
        }
        _ => None,
    }
}

/// Whether Corral calls the user-deletion API of a destination type when a person is deleted
/// (docs/privacy.md): Braze (`POST /users/delete`) and Iterable (`DELETE /api/users/...`).
/// Webhooks, Segment-compatible APIs, Kafka topics and HTTP lists have no such API: they get
/// the exits (lists drop the member).
pub fn supports_deletion(t: DestinationType) -> bool {
    matches!(t, DestinationType::Braze | DestinationType::Iterable)
}

/// One user-deletion request of a destination.
#[derive(Debug, Clone, PartialEq)]
pub struct DeletionCall {
    /// Deterministic: destination, space, profile, regulation and the identifier it names.
    pub message_id: String,
    /// `POST` or `DELETE`.
    pub method: &'static str,
    pub url: String,
    /// `Null` for a request without a body.
    pub body: Json,
}

/// A path segment with everything but unreserved characters percent-encoded (RFC 3986).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The requests that delete the person `ids` names from a destination, after regulation
/// `regulation` deleted profile `profile_id` (empty when the type has no deletion API or the
/// destination cannot address the person). The person is named as the adapter names them in
/// its other calls: by user id when the profile has one, else by email; Braze also by the
/// anonymous-id alias when the destination sends anonymous ids.
///
/// - Braze: `POST {url}/users/delete` with `external_ids`; without a user id, one with
///   `email_addresses` and one with `user_aliases` (Braze takes one kind of identifier per
///   request, at most 50).
/// - Iterable: `DELETE {url}/api/users/byUserId/{userId}` per user id, else
///   `DELETE {url}/api/users/{email}` per email.
pub fn deletion_calls(
    spec: &DestinationSpec,
    space: &str,
    profile_id: &str,
    regulation: &str,
    ids: &[ExternalId],
) -> Vec<DeletionCall> {
    let Some(url) = spec.url.as_deref() else {
        return Vec::new();
    };
    let of = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for i in ids.iter().filter(|i| i.id_type == t && !i.id.is_empty()) {
            if i.collection.as_deref().unwrap_or("users") == "users" && !v.contains(&i.id) {
                v.push(i.id.clone());
            }
        }
        v
    };
    let (users, emails) = (of("user_id"), of("email"));
    let anons = if spec.include_anonymous_ids {
        of("anonymous_id")
    } else {
        Vec::new()
    };
    let id = |what: &str| {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!(
                "corral/fanout/v1/delete\n{}\n{space}\n{profile_id}\n{regulation}\n{what}",
                spec.key
            )
            .as_bytes(),
        )
        .to_string()
    };
    match spec.dest_type {
        DestinationType::Braze => {
            // As `to_braze_json` names users: by external id when the profile has a user id
            // (every call then carries it); without one, the email calls named them by email and
            // the anonymous-id calls by alias, so both kinds are deleted.
            let kinds: Vec<(&str, Vec<Json>)> = if !users.is_empty() {
                vec![("external_ids", users.iter().map(|u| json!(u)).collect())]
            } else {
                vec![
                    ("email_addresses", emails.iter().map(|e| json!(e)).collect()),
                    (
                        "user_aliases",
                        anons
                            .iter()
                            .map(|a| json!({"alias_name": a, "alias_label": "anonymous_id"}))
                            .collect(),
                    ),
                ]
            };
            let mut out = Vec::new();
            for (field, values) in kinds {
                for (n, chunk) in values.chunks(50).enumerate() {
                    out.push(DeletionCall {
                        message_id: id(&format!("braze/{field}/{n}")),
                        method: "POST",
                        url: join(url, "/users/delete"),
                        body: json!({ field: chunk }),
                    });
                }
            }
            out
        }
        DestinationType::Iterable => {
            let (path, values) = if users.is_empty() {
                ("/api/users/", emails)
            } else {
                ("/api/users/byUserId/", users)
            };
            values
                .iter()
                .map(|v| DeletionCall {
                    message_id: id(&format!("iterable{path}{v}")),
                    method: "DELETE",
                    url: join(url, &format!("{path}{}", path_segment(v))),
                    body: Json::Null,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// SHA-256 hex of the trimmed, lower-cased email (as Segment's hashed audience exports).
pub fn hash_email(email: &str) -> String {
    hex(&Sha256::digest(email.trim().to_lowercase().as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

/// One member of a list destination's batch.
pub fn list_member(profile_id: &str, ids: &[ExternalId], hash_emails: bool) -> Json {
    let mut m = Map::new();
    m.insert("profile_id".into(), json!(profile_id));
    let users: Vec<&str> = ids
        .iter()
        .filter(|i| i.id_type == "user_id")
        .map(|i| i.id.as_str())
        .collect();
    if let Some(u) = users.first() {
        m.insert("user_id".into(), json!(u));
    }
    let emails: Vec<&str> = ids
        .iter()
        .filter(|i| i.id_type == "email")
        .map(|i| i.id.as_str())
        .collect();
    if hash_emails {
        let hashed: Vec<String> = emails.iter().map(|e| hash_email(e)).collect();
        m.insert("email_sha256".into(), json!(hashed));
    } else {
        m.insert("emails".into(), json!(emails));
    }
    Json::Object(m)
}

/// The body of one list batch: `{audience_key, destination, sync_id, adds: [...], removes: [...]}`.
pub fn list_batch(
    dest_key: &str,
    audience_key: &str,
    sync_id: &str,
    adds: Vec<Json>,
    removes: Vec<Json>,
) -> Json {
    json!({
        "destination": dest_key,
        "audience_key": snake_case(audience_key),
        "sync_id": sync_id,
        "adds": adds,
        "removes": removes,
    })
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
