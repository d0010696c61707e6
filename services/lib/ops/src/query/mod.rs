//! Clients of the services' query interfaces, and the wire types both sides share: identity's
//! (`corralctl identity`, the external ids of a profile) and compute's (`corralctl profile`,
//! traits, computed traits and audiences).
//!
//! The transport is `corral_telemetry::http_client` (plain blocking HTTP/1.1, one request per
//! connection): the interfaces are internal and answer small JSON documents, and callers are
//! CLIs and tests, for which a blocking call with timeouts is simpler than an async stack.

pub mod compute;
pub mod identity;

use std::time::Duration;

use corral_telemetry::http_client::{self, HttpClientError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The body of every error answer of a query interface.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Why a query failed; the messages name the service and what to check.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an address (host:port, e.g. 127.0.0.1:9113)")]
    Address(String),
    #[error(
        "cannot reach the {service} query interface at {addr}: {source} (is {service} running with --query {addr}?)"
    )]
    Connect {
        service: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to the {service} query interface at {addr}: {source}")]
    Io {
        service: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from {addr}: {what}")]
    Malformed { addr: String, what: String },
    /// 404: no such profile or id (or endpoint).
    #[error("{0}")]
    NotFound(String),
    /// 400: malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 401: no token, or an unknown one.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// 403: a token of another space.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 503: the instance is still loading.
    #[error("not ready: {0}")]
    Unavailable(String),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

/// Which service's query interface a [`QueryClient`] talks to (its name, for messages).
pub trait Interface {
    const SERVICE: &'static str;
}

/// A client of one instance's query interface `K`: GETs with a timeout, JSON answers, the
/// interface's error bodies mapped to [`ClientError`]. Each interface adds its reads
/// (`identity::QueryClient::profile`, ...).
#[derive(Debug, Clone)]
pub struct QueryClient<K> {
    addr: String,
    timeout: Duration,
    /// Sent as `Authorization: Bearer` (see `corral_runtime::auth`).
    token: Option<String>,
    interface: std::marker::PhantomData<K>,
}

impl<K: Interface> QueryClient<K> {
    /// `addr` is `host:port`; a leading `http://` and a trailing `/` are accepted.
    pub fn new(addr: &str) -> Self {
        let addr = addr.trim();
        let addr = addr.strip_prefix("http://").unwrap_or(addr);
        QueryClient {
            addr: addr.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(10),
            token: None,
            interface: std::marker::PhantomData,
        }
    }

    /// Sends `token` with every request (the query interfaces require one of the space read).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the instance has loaded what it serves (its `/readyz`).
    pub fn ready(&self) -> Result<bool, ClientError> {
        Ok(self.get("/readyz")?.0 == 200)
    }

    /// GETs `path` and decodes a 200 answer; other answers become the matching error.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.get(path)?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
                addr: self.addr.clone(),
                what: e.to_string(),
            });
        }
        // Every error answer of the interface is `{"error": ...}`; anything else is shown as is.
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(match status {
            404 => ClientError::NotFound(message),
            400 => ClientError::BadRequest(message),
            401 => ClientError::Unauthorized(message),
            403 => ClientError::Forbidden(message),
            503 => ClientError::Unavailable(message),
            status => ClientError::Status { status, message },
        })
    }

    /// One GET; the status and the (de-chunked) body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let service = K::SERVICE;
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        http_client::get_with(&self.addr, path, self.timeout, auth.as_deref()).map_err(
            |e| match e {
                HttpClientError::Address(a) => ClientError::Address(a),
                HttpClientError::Connect { addr, source } => ClientError::Connect {
                    service,
                    addr,
                    source,
                },
                HttpClientError::Io { addr, source } => ClientError::Io {
                    service,
                    addr,
                    source,
                },
                HttpClientError::Malformed { addr, what } => ClientError::Malformed { addr, what },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_accept_a_scheme_and_refuse_nonsense() {
        type Client = QueryClient<compute::Compute>;
        assert_eq!(
            Client::new("http://127.0.0.1:9114/").addr(),
            "127.0.0.1:9114"
        );
        assert!(matches!(
            Client::new("not an address").ready(),
            Err(ClientError::Address(_))
        ));
    }
}
