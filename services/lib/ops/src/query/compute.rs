//! A client of compute's query interface ([`crate::query::router`]), for `corralctl profile
//! show` and the tests.
//!
//! The transport is [`corral_telemetry::http_client`] (plain blocking HTTP/1.1, one request per
//! connection, shared with `corral_identity::client`); this module maps its answers and errors
//! to compute's.

use std::time::Duration;

use corral_telemetry::http_client::{self, encode_segment, HttpClientError};

use crate::query::{ErrorBody, ProfileAnswer};

/// Where `deploy/local/services.sh` serves compute's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9114";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an address (host:port, e.g. 127.0.0.1:9114)")]
    Address(String),
    #[error(
        "cannot reach the compute query interface at {addr}: {source} (is compute running with --query {addr}?)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to the compute query interface at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from {addr}: {what}")]
    Malformed { addr: String, what: String },
    /// 404: compute holds no such profile.
    #[error("{0}")]
    NotFound(String),
    /// 400: malformed request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 503: the instance is still loading its profiles.
    #[error("not ready: {0}")]
    Unavailable(String),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

/// A client of one compute instance's query interface.
#[derive(Debug, Clone)]
pub struct QueryClient {
    addr: String,
    timeout: Duration,
}

impl QueryClient {
    /// `addr` is `host:port`; a leading `http://` and a trailing `/` are accepted.
    pub fn new(addr: &str) -> QueryClient {
        let addr = addr.trim();
        let addr = addr.strip_prefix("http://").unwrap_or(addr);
        QueryClient {
            addr: addr.trim_end_matches('/').to_string(),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> QueryClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The profile as compute holds it.
    pub fn profile(&self, space: &str, profile_id: &str) -> Result<ProfileAnswer, ClientError> {
        let path = format!(
            "/v1/spaces/{}/profiles/{}",
            encode_segment(space),
            encode_segment(profile_id)
        );
        let (status, body) = self.get(&path)?;
        if status == 200 {
            return serde_json::from_slice(&body).map_err(|e| self.malformed(e.to_string()));
        }
        // Every error answer of the interface is `{"error": ...}`; anything else is shown as is.
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(match status {
            404 => ClientError::NotFound(message),
            400 => ClientError::BadRequest(message),
            503 => ClientError::Unavailable(message),
            status => ClientError::Status { status, message },
        })
    }

    /// Whether the instance has loaded its profiles (its `/readyz`).
    pub fn ready(&self) -> Result<bool, ClientError> {
        Ok(self.get("/readyz")?.0 == 200)
    }

    /// One GET; the status and the body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        http_client::get(&self.addr, path, self.timeout).map_err(ClientError::from)
    }

    fn malformed(&self, what: String) -> ClientError {
        ClientError::Malformed {
            addr: self.addr.clone(),
            what,
        }
    }
}

impl From<HttpClientError> for ClientError {
    fn from(e: HttpClientError) -> Self {
        match e {
            HttpClientError::Address(a) => ClientError::Address(a),
            HttpClientError::Connect { addr, source } => ClientError::Connect { addr, source },
            HttpClientError::Io { addr, source } => ClientError::Io { addr, source },
            HttpClientError::Malformed { addr, what } => ClientError::Malformed { addr, what },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_accept_a_scheme_and_refuse_nonsense() {
        assert_eq!(
            QueryClient::new("http://127.0.0.1:9114/").addr(),
            "127.0.0.1:9114"
        );
        assert!(matches!(
            QueryClient::new("not an address").ready(),
            Err(ClientError::Address(_))
        ));
    }
}
