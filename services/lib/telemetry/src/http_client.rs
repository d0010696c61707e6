//! A minimal blocking HTTP/1.1 GET client over [`std::net::TcpStream`], for the services' small
//! internal query interfaces (identity's and compute's `QueryClient`s, used by `corralctl` and
//! the tests).
//!
//! One request per connection (`Connection: close`), timeouts on connect, read and write, a
//! bounded answer, and a body delimited by `content-length`, chunked encoding or the end of the
//! connection. Std only: callers are CLIs and tests for which a blocking call is simpler than an
//! async stack, and this crate stays free of an HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Bigger answers are refused (the interfaces answer JSON documents of at most a few hundred
/// kilobytes).
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Why a GET failed. Callers wrap it in their own error, which names the interface.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// `addr` does not resolve to a socket address.
    #[error("{0:?} is not an address (host:port)")]
    Address(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("unexpected answer from {addr}: {what}")]
    Malformed { addr: String, what: String },
}

/// One `GET path` to `addr` (`host:port`, also sent as `Host`); the status and the body (de-chunked
/// when chunked). `timeout` bounds the connect and every read and write.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<(u16, Vec<u8>), HttpClientError> {
    get_with(addr, path, timeout, None)
}

/// [`get`] with an `Authorization` header value (a query interface's token).
pub fn get_with(
    addr: &str,
    path: &str,
    timeout: Duration,
    authorization: Option<&str>,
) -> Result<(u16, Vec<u8>), HttpClientError> {
    let io = |source| HttpClientError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut s = connect(addr, timeout)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let malformed = |what| HttpClientError::Malformed {
        addr: addr.to_string(),
        what,
    };
    if raw.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(malformed(format!(
            "answer larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    parse_response(&raw).map_err(malformed)
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, HttpClientError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|_| HttpClientError::Address(addr.to_string()))?
        .collect();
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(HttpClientError::Connect {
        addr: addr.to_string(),
        source: last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()),
    })
}

/// Percent-encodes everything but unreserved characters and `:` `@` (both legal in a path
/// segment and common in ids: `email:jane@example.com`).
pub fn encode_segment(s: &str) -> String {
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

/// Status and body of a complete `Connection: close` response. Transfer encodings other than
/// `chunked` and `identity` are refused rather than misread.
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
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
            if value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if !value.eq_ignore_ascii_case("identity") {
                return Err(format!("unsupported transfer-encoding {value:?}"));
            }
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
    use std::net::TcpListener;

    #[test]
    fn segments_are_percent_encoded_but_for_unreserved_colon_and_at() {
        assert_eq!(encode_segment("use_a b/c"), "use_a%20b%2Fc");
        assert_eq!(
            encode_segment("email:jane+x@example.com"),
            "email:jane%2Bx@example.com"
        );
        assert_eq!(encode_segment("a/b?c#d%"), "a%2Fb%3Fc%23d%25");
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
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nall";
        assert_eq!(parse_response(r).unwrap(), (200, b"all".to_vec()));
    }

    #[test]
    fn broken_responses_are_refused_with_a_reason() {
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort")
                .unwrap_err()
                .contains("cut short")
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx")
                .unwrap_err()
                .contains("unsupported transfer-encoding")
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 2x OK\r\n\r\n").is_err());
    }

    #[test]
    fn a_get_sends_the_request_and_reads_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "request cut short");
                req.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            String::from_utf8(req).unwrap()
        });
        let answer = get(&addr, "/readyz", Duration::from_secs(10)).unwrap();
        assert_eq!(answer, (200, b"ok".to_vec()));
        let req = server.join().unwrap();
        assert!(req.starts_with("GET /readyz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");
    }

    #[test]
    fn unresolvable_addresses_are_refused() {
        assert!(matches!(
            get("not an address", "/", Duration::from_secs(1)),
            Err(HttpClientError::Address(_))
        ));
    }
}
