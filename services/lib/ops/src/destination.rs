//! Destinations as definitions: the file format of `corralctl destinations apply FILE`, the body
//! stored in the `definitions` topic (kind `destination`), validation, per-type defaults and
//! credentials.
//!
//! Credentials are never stored in a definition: a destination names an environment variable
//! (`credential_env`) or a file (`credential_file`) and fanout reads it at start and on reload.
//! [`Secret`] keeps the value out of `Debug` and logs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The definition kind of a destination in the `definitions` topic.
pub const KIND: &str = "destination";

/// Errors of a destinations file or definition.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("destinations file: {0}")]
    Parse(String),
    #[error("destination {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("destination {key}: credential: {message}")]
    Credential { key: String, message: String },
}

/// The type of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DestinationType {
    /// Segment-format JSON POSTed to a URL, optionally HMAC-signed.
    Webhook,
    /// A Segment-compatible HTTP Tracking API (`/v1/identify`, `/v1/track`): another Corral
    /// collector or Segment itself.
    Segment,
    /// Braze `/users/track` (attributes and events).
    Braze,
    /// Iterable `/api/users/update` and `/api/events/track`.
    Iterable,
    /// A Kafka topic, written inside fanout's transaction (exactly once).
    Kafka,
    /// A generic HTTP list endpoint: batched adds and removes per audience on a schedule.
    ListHttp,
}

impl DestinationType {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationType::Webhook => "webhook",
            DestinationType::Segment => "segment",
            DestinationType::Braze => "braze",
            DestinationType::Iterable => "iterable",
            DestinationType::Kafka => "kafka",
            DestinationType::ListHttp => "list_http",
        }
    }

    /// The request cap Segment documents for the destination type (field survey §1.9), used when
    /// a destination sets no `rate_limit_per_second`. `None`: unlimited.
    pub fn default_rate_limit(self) -> Option<u32> {
        match self {
            DestinationType::Braze => Some(100),
            DestinationType::Iterable => Some(500),
            // Generic HTTP targets: a conservative default an operator raises deliberately.
            DestinationType::Webhook | DestinationType::Segment => Some(100),
            DestinationType::ListHttp => Some(10),
            DestinationType::Kafka => None,
        }
    }

    pub fn is_list(self) -> bool {
        self == DestinationType::ListHttp
    }
}

/// Segment's documented per-destination caps for tools Corral has no adapter for yet, so an
/// operator can write `rate_limit_per_second: customerio` style values in docs; kept here as
/// the single table (field survey §1.9).
pub const SEGMENT_DOCUMENTED_CAPS: &[(&str, u32)] = &[
    ("braze", 100),
    ("customer.io", 30),
    ("hubspot", 5),
    ("intercom", 8),
    ("iterable", 500),
    ("mailchimp", 10),
    ("marketo", 5),
    ("pardot", 2),
    ("responsys", 3),
    ("sendgrid", 100),
    ("salesforce", 5),
    ("sfmc", 20),
    ("zendesk", 50),
];

/// How an audience or trait reaches an event destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Identify,
    Track,
    Both,
}

impl Mode {
    pub fn identify(self) -> bool {
        matches!(self, Mode::Identify | Mode::Both)
    }
    pub fn track(self) -> bool {
        matches!(self, Mode::Track | Mode::Both)
    }
}

/// One audience or trait connected to a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, rename = "trait", skip_serializing_if = "Option::is_none")]
    pub trait_key: Option<String>,
    /// Event destinations: identify, track or both (default identify). Ignored by lists.
    #[serde(default = "default_mode")]
    pub mode: Mode,
}

fn default_mode() -> Mode {
    Mode::Identify
}

/// Event names (Segment lets each be renamed per destination).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventNames {
    #[serde(default = "entered")]
    pub audience_entered: String,
    #[serde(default = "exited")]
    pub audience_exited: String,
    #[serde(default = "computed")]
    pub trait_computed: String,
}

fn entered() -> String {
    "Audience Entered".into()
}
fn exited() -> String {
    "Audience Exited".into()
}
fn computed() -> String {
    "Trait Computed".into()
}

impl Default for EventNames {
    fn default() -> Self {
        Self {
            audience_entered: entered(),
            audience_exited: exited(),
            trait_computed: computed(),
        }
    }
}

/// One destination, as written in a destinations file and stored as a definition body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    pub key: String,
    #[serde(rename = "type")]
    pub dest_type: DestinationType,
    /// Display name, used as the `integrations` key (`{"All": false, "<name>": true}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Endpoint: the webhook or list URL, or the base URL of a Segment/Braze/Iterable API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Kafka destinations: the full topic name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Requests per second; default: the type's documented cap. 0 means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// Name of the environment variable holding the credential (webhook HMAC secret, Segment
    /// write key, Braze/Iterable API key, list bearer token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_env: Option<String>,
    /// A file holding the credential (trailing whitespace removed), e.g. a mounted secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_file: Option<PathBuf>,
    /// Extra static request headers (no secrets: they are stored in the definition).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Retry horizon, e.g. `4h` (Segment's), `90s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_horizon: Option<String>,
    /// Per-request timeout, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Requests in flight at once (default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Also send one call per `anonymous_id` (Segment's "Include Anonymous Users").
    #[serde(default)]
    pub include_anonymous_ids: bool,
    #[serde(default)]
    pub event_names: EventNames,
    /// List destinations: how often adds and removes are sent, e.g. `1h` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_interval: Option<String>,
    /// List destinations: SHA-256 hex of the lower-cased, trimmed email instead of the email.
    #[serde(default)]
    pub hash_emails: bool,
    /// List destinations: members per request (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// A destinations file: `destinations: [...]`, optionally `space_id` (default `default`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsFile {
    #[serde(default = "default_space")]
    pub space_id: String,
    pub destinations: Vec<DestinationSpec>,
}

pub fn default_space() -> String {
    "default".into()
}

impl DestinationsFile {
    /// Parses and validates every destination, reporting all errors at once.
    pub fn from_yaml(text: &str) -> Result<Self, Vec<DestinationError>> {
        let file: DestinationsFile = serde_yaml_ng::from_str(text)
            .map_err(|e| vec![DestinationError::Parse(e.to_string())])?;
        let mut errors = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for d in &file.destinations {
            if !seen.insert(d.key.clone()) {
                errors.push(DestinationError::Invalid {
                    key: d.key.clone(),
                    message: "defined twice".into(),
                });
            }
            if let Err(e) = d.validate() {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(file)
        } else {
            Err(errors)
        }
    }
}

/// Parses durations like `250ms`, `90s`, `15m`, `4h`, `1d` (the runtime's one format).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let ms = corral_runtime::config::parse_duration_ms(s)?;
    u64::try_from(ms)
        .map(Duration::from_millis)
        .map_err(|_| format!("duration `{s}` is negative"))
}

impl DestinationSpec {
    fn invalid(&self, message: impl Into<String>) -> DestinationError {
        DestinationError::Invalid {
            key: self.key.clone(),
            message: message.into(),
        }
    }

    pub fn validate(&self) -> Result<(), DestinationError> {
        if self.key.is_empty()
            || !self
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(self.invalid("key must be non-empty ASCII letters, digits, `_` or `-`"));
        }
        match self.dest_type {
            DestinationType::Kafka => {
                if self.topic.as_deref().is_none_or(str::is_empty) {
                    return Err(self.invalid("a kafka destination needs `topic`"));
                }
            }
            _ => match self.url.as_deref() {
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
                _ => return Err(self.invalid("`url` must be an http:// or https:// URL")),
            },
        }
        for c in &self.connections {
            match (&c.audience, &c.trait_key) {
                (Some(_), None) => {}
                (None, Some(_)) if !self.dest_type.is_list() => {}
                (None, Some(_)) => {
                    // Segment: computed traits go to event destinations only, never lists.
                    return Err(self.invalid("list destinations take audiences only, not traits"));
                }
                _ => {
                    return Err(self.invalid("a connection names exactly one `audience` or `trait`"))
                }
            }
        }
        for d in [&self.retry_horizon, &self.timeout, &self.sync_interval]
            .into_iter()
            .flatten()
        {
            parse_duration(d).map_err(|e| self.invalid(e))?;
        }
        if self.concurrency == Some(0) || self.batch_size == Some(0) {
            return Err(self.invalid("concurrency and batch_size must be positive"));
        }
        Ok(())
    }

    /// Effective requests per second; `None` is unlimited.
    pub fn rate_limit(&self) -> Option<u32> {
        match self.rate_limit_per_second {
            Some(0) => None,
            Some(n) => Some(n),
            None => self.dest_type.default_rate_limit(),
        }
    }

    pub fn retry_horizon(&self) -> Duration {
        self.retry_horizon
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(4 * 3600))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(10))
    }

    pub fn sync_interval(&self) -> Duration {
        self.sync_interval
            .as_deref()
            .and_then(|s| parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(16) as usize
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(1000) as usize
    }

    /// The `integrations` key of Segment payloads.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.key)
    }

    /// The mode the audience is connected with, if it is.
    pub fn audience_mode(&self, audience: &str) -> Option<Mode> {
        self.connections
            .iter()
            .find(|c| c.audience.as_deref() == Some(audience))
            .map(|c| c.mode)
    }

    pub fn trait_mode(&self, trait_key: &str) -> Option<Mode> {
        self.connections
            .iter()
            .find(|c| c.trait_key.as_deref() == Some(trait_key))
            .map(|c| c.mode)
    }

    /// Reads the credential the destination names, if any.
    pub fn resolve_credential(&self) -> Result<Option<Secret>, DestinationError> {
        let err = |message: String| DestinationError::Credential {
            key: self.key.clone(),
            message,
        };
        if let Some(var) = &self.credential_env {
            return std::env::var(var)
                .map(|v| Some(Secret(v)))
                .map_err(|_| err(format!("environment variable {var} is not set")));
        }
        if let Some(path) = &self.credential_file {
            return std::fs::read_to_string(path)
                .map(|v| Some(Secret(v.trim_end().to_string())))
                .map_err(|e| err(format!("reading {}: {e}", path.display())));
        }
        Ok(None)
    }
}

/// A credential. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
destinations:
  - key: growth_webhook
    type: webhook
    url: http://127.0.0.1:9999/hook
    rate_limit_per_second: 100
    connections:
      - audience: stuck_before_activation
        mode: track
      - trait: feature_uses_30d
        mode: identify
  - key: braze
    type: braze
    url: https://rest.iad-01.braze.com
    credential_env: BRAZE_KEY
    connections:
      - audience: vip
        mode: both
"#;

    #[test]
    fn the_issue_example_parses_with_defaults() {
        let f = DestinationsFile::from_yaml(FILE).unwrap();
        assert_eq!(f.space_id, "default");
        let w = &f.destinations[0];
        assert_eq!(w.dest_type, DestinationType::Webhook);
        assert_eq!(w.rate_limit(), Some(100));
        assert_eq!(
            w.audience_mode("stuck_before_activation"),
            Some(Mode::Track)
        );
        assert_eq!(w.trait_mode("feature_uses_30d"), Some(Mode::Identify));
        assert_eq!(w.retry_horizon(), Duration::from_secs(4 * 3600));
        let b = &f.destinations[1];
        assert_eq!(b.rate_limit(), Some(100), "Braze's documented cap");
        assert_eq!(b.audience_mode("vip"), Some(Mode::Both));
        assert_eq!(b.display_name(), "braze");
    }

    #[test]
    fn every_error_is_reported() {
        let bad = r#"
destinations:
  - key: a
    type: kafka
  - key: b
    type: list_http
    url: http://x
    connections: [{trait: t}]
  - key: a
    type: webhook
    url: ftp://x
"#;
        let errs = DestinationsFile::from_yaml(bad).unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(14400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("4").is_err());
        assert!(parse_duration("4y").is_err());
    }
}
