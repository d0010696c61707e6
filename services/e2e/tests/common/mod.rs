//! The harness of the end-to-end test: the five service binaries (built by
//! `cargo build --workspace --bins`, found next to the test executable), unique topics from the
//! manifest, free ports, a local webhook receiver, incremental `read_committed` readers of the
//! output topics, and Segment's Python client.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test support: a failed setup stops the test loudly

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_runtime::topics::{Manifest, TopicAdmin};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/debug` (or whichever profile built this test): the test executable lives in its
/// `deps/` folder and the service binaries next to that folder.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's folder");
    deps.parent()
        .expect("the target profile folder")
        .to_path_buf()
}

/// A workspace binary; the test builds nothing itself.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: the end-to-end test runs the service binaries and builds none; \
         run `cargo build --workspace --bins` first (`make test` does)",
        path.display()
    );
    path
}

/// A port nobody listens on right now (the OS picks it; we release it for the service).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates every topic of deploy/topics.yaml under `prefix`.
pub fn create_topics(bootstrap: &str, prefix: &str) {
    let text = std::fs::read_to_string(repo_root().join("deploy/topics.yaml")).unwrap();
    let desired = Manifest::from_yaml(&text)
        .unwrap()
        .desired(Some(prefix))
        .unwrap();
    let admin = TopicAdmin::connect(bootstrap, &BTreeMap::new()).unwrap();
    let report = admin.apply(&desired).unwrap();
    assert!(
        report.drift.is_empty(),
        "fresh topics under {prefix} drifted: {report}"
    );
}

/// Runs a short command (corralctl, the Python driver) and returns its stdout; panics with its
/// output when it fails.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One service process, its log in a file; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub admin: SocketAddr,
}

/// The running stack. On drop every process is killed; if the test is failing, the end of each
/// log is printed first so the failure can be read without re-running.
pub struct Stack {
    pub procs: Vec<Proc>,
}

impl Stack {
    pub fn spawn(&mut self, name: &str, args: &[String], admin: SocketAddr, dir: &Path) {
        let bin = binary(&format!("corral-{name}"));
        let log = dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            admin,
        });
    }

    /// Waits until every service answers `/readyz` with 200; fails early when one exits.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for i in 0..self.procs.len() {
            loop {
                let p = &mut self.procs[i];
                if let Some(status) = p.child.try_wait().unwrap() {
                    panic!(
                        "{} exited during start-up ({status}); its log:\n{}",
                        p.name,
                        tail(&p.log, 40)
                    );
                }
                if matches!(http_get(p.admin, "/readyz"), Some((200, _))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} is not ready after {timeout:?}; its log:\n{}",
                    p.name,
                    tail(&p.log, 40)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Fails when a service died (a crash is a finding in itself).
    pub fn assert_running(&mut self) {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}); its log:\n{}",
                    p.name,
                    tail(&p.log, 60)
                );
            }
        }
    }

    pub fn admin(&self, name: &str) -> SocketAddr {
        self.procs.iter().find(|p| p.name == name).unwrap().admin
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
            if failing {
                eprintln!(
                    "---- end of {} log ({}) ----\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, 30)
                );
            }
        }
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

/// The value of a Prometheus sample whose line contains every one of `parts`.
pub fn metric(addr: SocketAddr, parts: &[&str]) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A request the webhook receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

/// A webhook destination on 127.0.0.1:<ephemeral> that answers 200 to everything and records it.
#[derive(Clone)]
pub struct Webhook {
    pub port: u16,
    log: Arc<Mutex<Vec<Received>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hook = Webhook {
            port: listener.local_addr().unwrap().port(),
            log: Arc::new(Mutex::new(Vec::new())),
        };
        let h = hook.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || h.serve(stream));
            }
        });
        hook
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
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
            let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            self.log.lock().unwrap().push(Received {
                path,
                headers,
                body,
            });
            let resp =
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}";
            if out.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// A consumed record, decoded later by the test with the topic's Avro type.
#[derive(Debug, Clone)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Every committed record of one topic, read incrementally from the beginning
/// (`isolation.level=read_committed`, so only what a service committed is seen).
pub struct TopicReader {
    pub topic: String,
    consumer: BaseConsumer,
    pub records: Vec<Rec>,
}

impl TopicReader {
    pub fn new(bootstrap: &str, topic: &str) -> TopicReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", corral_tests::unique("e2e-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = md.topics()[0].partitions().len() as i32;
        assert!(partitions > 0, "topic {topic} does not exist");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        TopicReader {
            topic: topic.to_string(),
            consumer,
            records: Vec::new(),
        }
    }

    /// Takes in whatever arrived, waiting at most `wait` for the first new record.
    pub fn poll(&mut self, wait: Duration) {
        let mut timeout = wait;
        while let Some(m) = self.consumer.poll(timeout) {
            let m = m.unwrap_or_else(|e| panic!("reading {}: {e}", self.topic));
            self.records.push(Rec {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec),
            });
            timeout = Duration::ZERO;
        }
    }
}

/// Sends Segment calls with segment-analytics-python (services/e2e/clients/send_calls.py).
pub fn send_with_python(collector: &str, write_key: &str, calls: &serde_json::Value) {
    let clients = repo_root().join("tests/clients");
    let install = Command::new("bash")
        .arg(clients.join("install.sh"))
        .status()
        .expect("running tests/clients/install.sh");
    assert!(install.success(), "tests/clients/install.sh failed");
    let script = repo_root().join("services/e2e/clients/send_calls.py");
    let mut child = Command::new(clients.join(".venv/bin/python"))
        .arg(&script)
        .arg(collector)
        .arg(write_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the Python driver");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(calls.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "send_calls.py failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
