//! Typed errors of the collector, and how each one is answered over HTTP.
//!
//! Every error body is `{"code": "...", "message": "..."}`: Segment's clients index both keys
//! (analytics-python 2.3.x turns a missing `code` into a retried `KeyError`).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why a request was not accepted. Each variant maps to one status and one stable `code`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the request body could not be decoded ({encoding}): {detail}")]
    InvalidEncoding { encoding: String, detail: String },
    #[error("Content-Encoding {0:?} is not supported; send identity, gzip or deflate")]
    UnsupportedEncoding(String),
    #[error("{what} is {size} bytes, over the limit of {limit} bytes per request")]
    RequestTooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("message {index} is {size} bytes, over the limit of {limit} bytes per message")]
    MessageTooLarge {
        index: usize,
        size: usize,
        limit: usize,
    },
    #[error("the batch has {count} messages, over the limit of {limit} messages per batch")]
    TooManyMessages { count: usize, limit: usize },
    #[error("no write key: send it as the HTTP Basic username (empty password) or as writeKey in the body")]
    MissingWriteKey,
    #[error("the write key is not valid")]
    InvalidWriteKey,
    /// `GET /v1/projects/{writeKey}/settings` for a key no source has: 404, as a CDN answers for
    /// a project it does not know, so analytics.js loads nothing and sends nothing.
    #[error("no source has this write key, so there are no settings for it; check the writeKey given to analytics.js")]
    UnknownWriteKey,
    #[error("the Authorization header is malformed: {0}")]
    InvalidAuthorization(String),
    #[error("the event store is unavailable, retry later: {0}")]
    Unavailable(String),
    #[error("the collector is overloaded (producer queue full), retry later")]
    Overloaded,
    #[error("no such endpoint: {0}")]
    NotFound(String),
    #[error("method {0} is not allowed here; the Tracking API takes POST, settings and analytics.js take GET")]
    MethodNotAllowed(String),
    #[error("the request body did not arrive within {0:?}; send it faster or in smaller batches")]
    BodyTimeout(std::time::Duration),
    #[error(
        "this write key sent more requests than its limit; retry after {retry_after_seconds}s"
    )]
    KeyRateLimited { retry_after_seconds: u64 },
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        use IngestError::*;
        match self {
            InvalidJson(_)
            | InvalidRequest(_)
            | InvalidEncoding { .. }
            | UnsupportedEncoding(_)
            | RequestTooLarge { .. }
            | MessageTooLarge { .. }
            | TooManyMessages { .. } => StatusCode::BAD_REQUEST,
            MissingWriteKey | InvalidWriteKey | InvalidAuthorization(_) => StatusCode::UNAUTHORIZED,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Overloaded | KeyRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            NotFound(_) | UnknownWriteKey => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Stable machine-readable code (the JSON `code`).
    pub fn code(&self) -> &'static str {
        use IngestError::*;
        match self {
            InvalidJson(_) => "invalid_json",
            InvalidRequest(_) => "invalid_request",
            InvalidEncoding { .. } => "invalid_encoding",
            UnsupportedEncoding(_) => "unsupported_encoding",
            RequestTooLarge { .. } => "request_too_large",
            MessageTooLarge { .. } => "message_too_large",
            TooManyMessages { .. } => "too_many_messages",
            MissingWriteKey => "missing_write_key",
            InvalidWriteKey | UnknownWriteKey => "invalid_write_key",
            InvalidAuthorization(_) => "invalid_authorization",
            Unavailable(_) => "unavailable",
            Overloaded | KeyRateLimited { .. } => "rate_limited",
            BodyTimeout(_) => "request_timeout",
            NotFound(_) => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
        }
    }

    /// Whether the client should retry (and gets `Retry-After`).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            IngestError::Unavailable(_)
                | IngestError::Overloaded
                | IngestError::KeyRateLimited { .. }
        )
    }

    /// The response, with `Retry-After: <seconds>` on retryable errors.
    pub fn to_response(&self, retry_after_seconds: u64) -> Response {
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if self.retryable() {
            let seconds = match self {
                IngestError::KeyRateLimited {
                    retry_after_seconds,
                } => *retry_after_seconds,
                _ => retry_after_seconds,
            };
            if let Ok(v) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
        }
        resp
    }
}

/// Errors from the Kafka edge.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SinkError {
    #[error("producer queue is full")]
    QueueFull,
    #[error("{0}")]
    Unavailable(String),
}

impl SinkError {
    /// Bounded label for `corral_collector_kafka_produce_errors_total{error}`.
    pub fn label(&self) -> &'static str {
        match self {
            SinkError::QueueFull => "queue_full",
            SinkError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<SinkError> for IngestError {
    fn from(e: SinkError) -> Self {
        match e {
            SinkError::QueueFull => IngestError::Overloaded,
            SinkError::Unavailable(m) => IngestError::Unavailable(m),
        }
    }
}

/// Startup and configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing config file {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("invalid write key entry {0:?}: expected KEY=SOURCE or KEY=SOURCE:SPACE")]
    WriteKey(String),
    #[error("invalid trusted proxy {0:?}: expected an IP address or CIDR such as 10.0.0.0/8")]
    TrustedProxy(String),
    /// A client property that is not NAME=VALUE, or a properties file that cannot be read.
    #[error("Kafka client properties: {0}")]
    KafkaProperty(String),
    #[error("invalid public URL {value:?}: {why} (expected e.g. https://collect.example.com)")]
    PublicUrl { value: String, why: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
