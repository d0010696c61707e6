//! A client of the identity query interface ([`crate::view::router`]): `corralctl identity` and
//! the tests use it, and so can the Profile API to come.
//!
//! Plain HTTP/1.1 over [`std::net::TcpStream`], one request per connection: the interface is
//! internal, answers small JSON documents, and callers are CLIs and tests for which a blocking
//! call with timeouts is simpler than an async stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::view::{ErrorBody, ExternalIdsView, ProfileView};

/// Where `deploy/local/services.sh` serves identity's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9113";

/// Bigger answers are refused: a profile holds at most `max_identifiers` (1,000 by default)
/// external ids, a few hundred kilobytes of JSON.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

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

    /// One GET; the status and the (de-chunked) body.
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

/// `/v1/spaces/{space}/collections/users/profiles/{id}[/external_ids]`, segments percent-encoded.
pub fn profile_path(space: &str, id: &str, external_ids: bool) -> String {
    format!(
        "/v1/spaces/{}/collections/users/profiles/{}{}",
        encode_segment(space),
        encode_segment(id),
        if external_ids { "/external_ids" } else { "" }
    )
}

/// Percent-encodes everything but unreserved characters and `:` `@` (both legal in a path
/// segment and common in ids: `email:jane@example.com`).
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

/// Status and body of a complete `Connection: close` response.
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
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if body.len() < n => Err(format!("body cut short ({} of {n} bytes)", body.len())),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line without end")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("chunk without end")?;
    }
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
        assert_eq!(encode_segment("é"), "%C3%A9");
    }

    #[test]
    fn responses_with_length_chunks_or_neither() {
        let r = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(
            parse_response(r).unwrap(),
            (404, b"{\"error\":\"x\"}".to_vec())
        );
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (200, b"abcde".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\n\r\nall";
        assert_eq!(parse_response(r).unwrap(), (200, b"all".to_vec()));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 2x OK\r\n\r\n").is_err());
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
