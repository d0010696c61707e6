//! HTTP test support: free ports, a minimal GET client for admin endpoints, and a recording
//! receiver that stands in for a destination (webhook) on 127.0.0.1:<ephemeral>. It records every
//! request and answers as the test tells it (200, 429 + Retry-After, 500, 400 with a body, slowly,
//! or never). No HTTP library: the services under test are the HTTP implementations being tested.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nobody listens on right now (the OS picks it; we release it for the service).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 GET (admin endpoints); `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A service's `/metrics` text at `addr` (`host:port`); empty while it does not answer.
pub fn metrics_text(addr: &str) -> String {
    addr.parse()
        .ok()
        .and_then(|a| http_get(a, "/metrics"))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// An unlabelled metric (`name value` or `name{const labels} value`) of the service at `addr`.
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    metrics_text(addr).lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with([' ', '{']) {
            return None;
        }
        rest.split_whitespace().last()?.parse().ok()
    })
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// Status, body, Retry-After header.
    Status(u16, String, Option<String>),
    /// 200 after a delay.
    Slow(Duration),
    /// Read the request, never answer.
    Never,
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// Wall clock (ms since the epoch) when the request was read.
    pub wall_ms: i64,
    /// `GET`, `POST`, `DELETE`, ...
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: serde_json::Value,
    /// What the receiver answered (0: nothing).
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Policy = dyn Fn(usize, &serde_json::Value) -> Answer + Send + Sync;

/// The recording receiver; answers 200 `{}` until told otherwise with [`Receiver::answer`].
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Received>>>,
    policy: Arc<Mutex<Arc<Policy>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on(0)
    }

    /// [`Receiver::start`] on a given port of 127.0.0.1 (0: any free one).
    pub fn start_on(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("binding the receiver on 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            port,
            log: Arc::new(Mutex::new(Vec::new())),
            policy: Arc::new(Mutex::new(Arc::new(|_, _| Answer::Ok))),
        };
        let rr = r.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let rr = rr.clone();
                std::thread::spawn(move || rr.serve(stream));
            }
        });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `f(n, body)`: the answer to the n-th request (0-based).
    pub fn answer(&self, f: impl Fn(usize, &serde_json::Value) -> Answer + Send + Sync + 'static) {
        *self.policy.lock().unwrap() = Arc::new(f);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    pub fn ok_requests(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Waits until `pred(requests)` holds, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if pred(&reqs) || Instant::now() > deadline {
                return reqs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Keep-alive aware: reads requests off one connection until the client closes it.
    fn serve(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let method = line.split_whitespace().next().unwrap_or("").to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.to_string(), v.trim().to_string()));
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let at = Instant::now();
            let body: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            let policy = self.policy.lock().unwrap().clone();
            let answer = {
                let log = self.log.lock().unwrap();
                policy(log.len(), &body)
            };
            let (status, text, retry_after) = match &answer {
                Answer::Ok => (200, "{}".to_string(), None),
                Answer::Status(s, b, ra) => (*s, b.clone(), ra.clone()),
                Answer::Slow(d) => {
                    std::thread::sleep(*d);
                    (200, "{}".to_string(), None)
                }
                Answer::Never => (0, String::new(), None),
            };
            let wall_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            self.log.lock().unwrap().push(Received {
                at,
                wall_ms,
                method,
                path,
                headers,
                body,
                status,
            });
            if status == 0 {
                std::thread::sleep(Duration::from_secs(600));
                return;
            }
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
                text.len()
            );
            if let Some(ra) = retry_after {
                resp.push_str(&format!("retry-after: {ra}\r\n"));
            }
            resp.push_str("\r\n");
            resp.push_str(&text);
            if out.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }
}
