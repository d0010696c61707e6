//! A client of the identity query interface ([`crate::view::router`]): `corralctl identity` and
//! the tests use it, and so can the Profile API to come.
//!
//! The transport is [`corral_telemetry::http_client`] (plain blocking HTTP/1.1, one request per
//! connection, shared with `corral_compute::client`): the interface is internal, answers small
//! JSON documents, and callers are CLIs and tests for which a blocking call with timeouts is
//! simpler than an async stack. This module maps its answers and errors to identity's.

use std::time::Duration;

use corral_telemetry::http_client::{self, encode_segment, HttpClientError};
use serde::de::DeserializeOwned;

use crate::view::{ErrorBody, ExternalIdsView, ProfileView};

/// Where `deploy/local/services.sh` serves identity's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9113";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not an address (host:port, e.g. 127.0.0.1:9113)")]
    Address(String),
    #[error(
        "cannot reach the identity query interface at {addr}: {source} (is identity running with --query {addr}?)"
    )]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to the identity query interface at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from {addr}: {what}")]
    Malformed { addr: String, what: String },
    /// 404: no such id (or endpoint).
    #[error("{0}")]
    NotFound(String),
    /// 400: the id is neither `type:value` nor a profile id.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 503: the instance is still loading the graph.
    #[error("not ready: {0}")]
    Unavailable(String),
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
}

/// A client of one identity instance's query interface.
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

    /// The live profile of `id` (`type:value`, or a profile id: a retired one forwards).
    pub fn profile(&self, space: &str, id: &str) -> Result<ProfileView, ClientError> {
        self.get_json(&profile_path(space, id, false))
    }

    /// The external ids of the profile `id` names, with its live profile id.
    pub fn external_ids(&self, space: &str, id: &str) -> Result<ExternalIdsView, ClientError> {
        self.get_json(&profile_path(space, id, true))
    }

    /// Whether the instance has loaded the graph (its `/readyz`).
    pub fn ready(&self) -> Result<bool, ClientError> {
        let (status, _) = self.get("/readyz")?;
        Ok(status == 200)
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.get(path)?;
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

    /// One GET; the status and the (de-chunked) body.
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

/// `/v1/spaces/{space}/collections/users/profiles/{id}[/external_ids]`, segments percent-encoded.
pub fn profile_path(space: &str, id: &str, external_ids: bool) -> String {
    format!(
        "/v1/spaces/{}/collections/users/profiles/{}{}",
        encode_segment(space),
        encode_segment(id),
        if external_ids { "/external_ids" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_encode_what_a_segment_cannot_hold() {
        assert_eq!(
            profile_path("space 1", "email:jane+x@example.com", false),
            "/v1/spaces/space%201/collections/users/profiles/email:jane%2Bx@example.com"
        );
        assert_eq!(
            profile_path("s", "custom:a/b?c#d%", true),
            "/v1/spaces/s/collections/users/profiles/custom:a%2Fb%3Fc%23d%25/external_ids"
        );
    }

    #[test]
    fn addresses_accept_a_scheme_and_refuse_nonsense() {
        assert_eq!(
            QueryClient::new("http://127.0.0.1:9113/").addr(),
            "127.0.0.1:9113"
        );
        assert!(matches!(
            QueryClient::new("not an address").ready(),
            Err(ClientError::Address(_))
        ));
    }
}
