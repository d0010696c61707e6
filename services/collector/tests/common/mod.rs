//! Shared helpers for the collector's end-to-end tests: a collector process on a free port with
//! its own topics, and a tiny blocking HTTP/1.1 client (no extra dependencies).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use corral_tests::http::free_port;
pub use corral_tests::{bootstrap, create_topic, read_committed, unique, Record, Service};

pub const WRITE_KEY: &str = "e2e-key";

pub struct Collector {
    pub service: Service,
    pub port: u16,
    pub raw_topic: String,
    pub dlq_topic: String,
}

impl Collector {
    /// Creates `<prefix>events.raw` (3 partitions) and `<prefix>events.dlq`, and starts a collector
    /// on a free port writing to them, with the write key [`WRITE_KEY`] (source `e2e`, space `s1`).
    pub fn start(name: &str, extra: &[&str]) -> Collector {
        let bootstrap = bootstrap();
        let prefix = format!("{}.", unique(name));
        let raw_topic = format!("{prefix}events.raw");
        let dlq_topic = format!("{prefix}events.dlq");
        create_topic(&raw_topic, 3, corral_runtime::topics::CleanupPolicy::Delete);
        create_topic(&dlq_topic, 1, corral_runtime::topics::CleanupPolicy::Delete);
        Self::spawn(name, &bootstrap, &prefix, extra, raw_topic, dlq_topic)
    }

    pub fn spawn(
        name: &str,
        bootstrap: &str,
        prefix: &str,
        extra: &[&str],
        raw_topic: String,
        dlq_topic: String,
    ) -> Collector {
        let port = free_port();
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--kafka-bootstrap".to_string(),
            bootstrap.to_string(),
            "--topic-prefix".to_string(),
            prefix.to_string(),
            "--write-key".to_string(),
            format!("{WRITE_KEY}=e2e:s1"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let service = Service::spawn(name, env!("CARGO_BIN_EXE_corral-collector"), &args, &[]);
        let c = Collector {
            service,
            port,
            raw_topic,
            dlq_topic,
        };
        c.wait_for("/healthz", Duration::from_secs(30));
        c
    }

    pub fn host(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until GET `path` answers 200.
    pub fn wait_for(&self, path: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = try_request(self.port, "GET", path, &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "collector {path} not 200 within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        request(self.port, "POST", path, headers, body)
    }

    /// The value of one sample line of /metrics, e.g.
    /// `corral_collector_dead_letters_total{reason="missing_event",service="collector"}`.
    pub fn metric(&self, prefix: &str, contains: &[&str]) -> f64 {
        let r = request(self.port, "GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&r.body).to_string();
        text.lines()
            .filter(|l| l.starts_with(prefix) && contains.iter().all(|c| l.contains(c)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(port, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // The server may answer (e.g. 400 for a declared oversize body) before reading it all.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 4 + n..];
    }
    out
}

pub fn basic(key: &str) -> String {
    use std::fmt::Write as _;
    // Minimal base64 (test helper; the collector itself uses the base64 crate).
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{key}:").into_bytes();
    let mut s = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    let mut out = String::new();
    let _ = write!(out, "Basic {s}");
    out
}

/// Decodes every record of `topic` as a raw event (waits for at least `min`).
pub fn read_raw(
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Vec<(Record, corral_codec::RawEvent)> {
    use corral_codec::AvroRecord;
    read_committed(topic, min, timeout)
        .into_iter()
        .map(|r| {
            let ev = corral_codec::RawEvent::decode(r.value.as_deref().unwrap()).unwrap();
            (r, ev)
        })
        .collect()
}
