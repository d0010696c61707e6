//! What the Profile API's end-to-end tests share: identity, compute and corral-profiles as
//! processes on unique topics of the local broker, events written to `events.valid` (what the
//! validator would pass on), tokens and definitions written as `corralctl` writes them, and a
//! plain HTTP/1.1 client (no HTTP library: the service is the implementation under test).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MessageType, ProtocolsAnnotation, SegmentMessage, ValidEvent};
use corral_runtime::topics::{Manifest, TopicAdmin};
use corral_tests::http::free_port;
use serde_json::Value;

pub const SPACE: &str = "default";

/// A service binary next to this test's folder (`target/debug`); the test builds nothing.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build -p corral-identity -p corral-compute -p corral-profiles --bins)",
        path.display()
    );
    path
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One service process; killed on drop, its log's end printed when the test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("---- end of {} log ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// identity + compute + corral-profiles on `prefix`.
pub struct Stack {
    pub procs: Vec<Proc>,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub bootstrap: String,
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

fn spawn(name: &str, args: Vec<String>, dir: &Path) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(binary(&format!("corral-{name}")))
        .args(&args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    Proc {
        name: name.to_string(),
        child,
        log,
    }
}

impl Stack {
    /// Creates the manifest's topics under a unique prefix and starts the three services.
    pub fn start(run: &str) -> Stack {
        let bootstrap = corral_tests::bootstrap();
        let prefix = format!("{}.", corral_tests::unique(run));
        let text =
            std::fs::read_to_string(corral_tests::repo_root().join("deploy/topics.yaml")).unwrap();
        let desired = Manifest::from_yaml(&text)
            .unwrap()
            .desired(Some(&prefix))
            .unwrap();
        TopicAdmin::connect(&bootstrap, &BTreeMap::new())
            .unwrap()
            .apply(&desired)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let common = |svc: &str, admin: SocketAddr| {
            vec![
                "--bootstrap".to_string(),
                bootstrap.clone(),
                "--app".into(),
                format!("{prefix}{svc}"),
                "--topic-prefix".into(),
                prefix.clone(),
                "--state-dir".into(),
                dir.path()
                    .join(format!("{svc}-state"))
                    .display()
                    .to_string(),
                "--admin".into(),
                admin.to_string(),
            ]
        };
        let mut procs = Vec::new();
        let mut identity = common("identity", addr(free_port()));
        identity.extend([
            "--rules".into(),
            corral_tests::repo_root()
                .join("examples/identity.yaml")
                .display()
                .to_string(),
        ]);
        procs.push(spawn("identity", identity, dir.path()));
        procs.push(spawn(
            "compute",
            common("compute", addr(free_port())),
            dir.path(),
        ));
        let api = addr(free_port());
        let admin = addr(free_port());
        let mut profiles = common("profiles", admin);
        profiles.extend([
            "--listen".into(),
            api.to_string(),
            "--identity-app".into(),
            format!("{prefix}identity"),
            "--compute-app".into(),
            format!("{prefix}compute"),
            "--events-per-profile".into(),
            "50".into(),
        ]);
        procs.push(spawn("profiles", profiles, dir.path()));
        let stack = Stack {
            procs,
            api,
            admin,
            bootstrap,
            prefix,
            dir,
        };
        stack.wait_ready(&stack.admin, Duration::from_secs(240));
        stack
    }

    pub fn wait_ready(&self, admin: &SocketAddr, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = corral_tests::http::http_get(*admin, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("corral-profiles not ready within {timeout:?}");
    }

    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A token of `space`, as `corralctl tokens create` makes it.
    pub fn token(&self, space: &str, id: &str) -> String {
        corral_ops::tokens::create(
            &self.bootstrap,
            &BTreeMap::new(),
            &self.topic("definitions"),
            space,
            id,
            None,
        )
        .unwrap()
        .token
    }

    /// Writes definitions as `corralctl audiences apply` does.
    pub fn apply_definitions(&self, yaml: &str) {
        corral_ops::audiences::apply_text(
            &corral_ops::audiences::DefinitionsTopic {
                bootstrap: self.bootstrap.clone(),
                kafka: BTreeMap::new(),
                topic: self.topic("definitions"),
                space: SPACE.into(),
            },
            yaml,
            "test",
            None,
        )
        .unwrap();
    }

    /// Writes messages to `events.valid` as the validator would.
    pub fn send(&self, messages: Vec<SegmentMessage>) {
        let records = messages.into_iter().map(|m| {
            let key = m.message_id.clone().into_bytes();
            let v = ValidEvent {
                message: m,
                protocols: ProtocolsAnnotation::default(),
            };
            (key, v.encode().unwrap())
        });
        corral_tests::produce(&self.topic("events.valid"), records);
    }
}

/// A message of `space` at `ts_ms` from source `src-web`.
pub fn message(kind: MessageType, id: &str, user: &str, ts_ms: i64) -> SegmentMessage {
    let mut m = SegmentMessage::new(SPACE, kind, id);
    m.user_id = Some(user.to_string());
    m.source_id = Some("src-web".into());
    m.timestamp =
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ts_ms).map(|d| d.to_rfc3339());
    m.received_at_ms = Some(ts_ms);
    m
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Base64 of `user:` (HTTP Basic with the token as the user name, as Segment documents).
pub fn basic(token: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{token}:"))
    )
}

/// A plain HTTP/1.1 request (`Connection: close`, the body read to the end).
pub fn request(
    at: SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n");
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Asks until `pred` holds for the answer (or panics after `timeout` with the last answer).
pub fn until(
    timeout: Duration,
    mut ask: impl FnMut() -> Answer,
    pred: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + timeout;
    loop {
        let a = ask();
        if pred(&a) {
            return a;
        }
        if Instant::now() > deadline {
            panic!(
                "condition not met within {timeout:?}; last answer: {} {}",
                a.status, a.body
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
