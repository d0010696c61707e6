//! A client of compute's query interface ([`crate::query::router`]), for `corralctl profile
//! show` and the tests.
//!
//! Plain HTTP/1.1 over [`std::net::TcpStream`], one request per connection, the same pattern as
//! `corral_identity::client` (internal interface, small JSON answers, blocking callers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::query::{ErrorBody, ProfileAnswer};

/// Where `deploy/local/services.sh` serves compute's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9114";

/// Bigger answers are refused (a profile's traits and results are a few kilobytes).
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

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

    fn connect(&self) -> Result<TcpStream, ClientError> {
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|_| ClientError::Address(self.addr.clone()))?
            .collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::Connect {
            addr: self.addr.clone(),
            source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
        })
    }

    /// One GET; the status and the body.
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), ClientError> {
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        let mut s = self.connect()?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .map_err(io)?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut raw)
            .map_err(io)?;
        if raw.len() as u64 > MAX_RESPONSE_BYTES {
            return Err(self.malformed(format!("answer larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        parse_response(&raw).map_err(|what| self.malformed(what))
    }

    fn malformed(&self, what: String) -> ClientError {
        ClientError::Malformed {
            addr: self.addr.clone(),
            what,
        }
    }
}

/// Percent-encodes everything but unreserved characters and `:` `@`.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Status and body of a complete `Connection: close` response. The server (axum with JSON
/// bodies) sends a content-length; chunked answers are refused rather than misread.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported transfer-encoding {value:?}"));
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        }
    }
    match length {
        Some(n) if body.len() < n => Err(format!("body cut short ({} of {n} bytes)", body.len())),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segments_and_responses() {
        assert_eq!(encode_segment("use_a b/c"), "use_a%20b%2Fc");
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(
            parse_response(r).unwrap(),
            (404, b"{\"error\":\"x\"}".to_vec())
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
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
