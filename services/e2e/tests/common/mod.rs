//! The harness of the end-to-end test: the five service binaries (built by
//! `cargo build --workspace --bins`, found next to the test executable), unique topics from the
//! manifest, incremental `read_committed` readers of the output topics, and Segment's Python
//! client. Free ports, the admin GET and the webhook receiver come from `corral_tests::http`.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test support: a failed setup stops the test loudly

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_runtime::topics::{Manifest, TopicAdmin};
#[allow(unused_imports)] // each test binary uses its own part of the harness
pub use corral_tests::http::{free_port, http_get, Received, Receiver as Webhook};
pub use corral_tests::repo_root;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;

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
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The running stack. On drop every process is killed; if the test is failing, the end of each
/// log is printed first so the failure can be read without re-running.
pub struct Stack {
    pub procs: Vec<Proc>,
}

impl Stack {
    /// Starts `corral-{service}`; `name` tells instances apart (`compute-1`) and names its log.
    pub fn spawn(&mut self, name: &str, args: &[String], admin: SocketAddr, dir: &Path) {
        self.spawn_with_env(name, args, &[], admin, dir);
    }

    /// [`Stack::spawn`] with extra environment variables (client properties, secrets).
    pub fn spawn_with_env(
        &mut self,
        name: &str,
        args: &[String],
        env: &[(String, String)],
        admin: SocketAddr,
        dir: &Path,
    ) {
        let log = dir.join(format!("{name}.log"));
        let child = start(name, args, env, &log);
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            log,
            admin,
            args: args.to_vec(),
            env: env.to_vec(),
        });
    }

    /// SIGKILLs process `i` and starts it again with the same arguments (its log continues).
    pub fn kill_and_restart(&mut self, i: usize) {
        let p = &mut self.procs[i];
        let _ = p.child.kill();
        let _ = p.child.wait();
        p.child = start(&p.name, &p.args, &p.env, &p.log);
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

    /// Stops process `name` as Kubernetes does when it scales down (SIGTERM, then waits for a
    /// clean exit) and forgets it; panics if it does not exit cleanly within 60 s.
    pub fn stop(&mut self, name: &str) {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let mut p = self.procs.remove(i);
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = p.child.kill();
                panic!(
                    "{name} did not stop within 60 s of SIGTERM:\n{}",
                    tail(&p.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "{name} exited with {status} on SIGTERM:\n{}",
            tail(&p.log, 40)
        );
    }

    pub fn admin(&self, name: &str) -> SocketAddr {
        self.procs.iter().find(|p| p.name == name).unwrap().admin
    }
}

/// Starts a service binary (its name before any `-instance` suffix) appending to `log`.
fn start(name: &str, args: &[String], env: &[(String, String)], log: &Path) -> Child {
    let service = name.split('-').next().unwrap_or(name);
    let bin = binary(&format!("corral-{service}"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        // A failing service's error, not anyhow's backtrace, must fit in the tail we print.
        .env("RUST_LIB_BACKTRACE", "0")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(env.iter().cloned())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()))
}

/// What [`start_pipeline`] starts.
pub struct PipelineConfig<'a> {
    pub bootstrap: &'a str,
    /// Topic prefix (every topic of the manifest exists under it).
    pub prefix: &'a str,
    /// Makes application ids (consumer groups, transactional ids) unique to the run.
    pub run_id: &'a str,
    /// State folders and logs.
    pub dir: &'a Path,
    /// `--write-key` values of the collector (`key=source:space`).
    pub write_keys: Vec<String>,
    /// Instances of validator, identity and compute (one collector, one fanout).
    pub instances: usize,
    /// Start corral-fanout too.
    pub fanout: bool,
    /// Extra environment of each service, by name (`collector`, `validator`, …): client
    /// properties of its own principal on a secured listener, say.
    pub env: BTreeMap<&'a str, Vec<(String, String)>>,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts the services as deploy/local/services.sh does, on the run's topics, ports, application
/// ids and state folders; returns the stack (not yet waited for) and the collector's URL.
pub fn start_pipeline(c: &PipelineConfig<'_>) -> (Stack, String) {
    let mut stack = Stack { procs: Vec::new() };
    let api_port = free_port();
    let collector_admin = addr(free_port());
    let mut args = vec![
        "--listen".to_string(),
        addr(api_port).to_string(),
        "--admin-listen".into(),
        collector_admin.to_string(),
        "--kafka-bootstrap".into(),
        c.bootstrap.to_string(),
        "--topic-prefix".into(),
        c.prefix.to_string(),
    ];
    for k in &c.write_keys {
        args.push("--write-key".into());
        args.push(k.clone());
    }
    let collector_env = c.env.get("collector").cloned().unwrap_or_default();
    stack.spawn_with_env("collector", &args, &collector_env, collector_admin, c.dir);
    let mut services = vec!["validator", "identity", "compute"];
    if c.fanout {
        services.push("fanout");
    }
    for service in services {
        let instances = if service == "fanout" { 1 } else { c.instances };
        for i in 0..instances {
            let name = if instances == 1 {
                service.to_string()
            } else {
                format!("{service}-{i}")
            };
            add_instance_named(&mut stack, c, service, i, &name);
        }
    }
    (stack, format!("http://{}", addr(api_port)))
}

/// Starts instance `i` of a stream service (`{service}-{i}`) as [`start_pipeline`] starts
/// them: what a StatefulSet scaled up adds (the instance id is the pod's ordinal).
pub fn add_instance(stack: &mut Stack, c: &PipelineConfig<'_>, service: &str, i: usize) {
    add_instance_named(stack, c, service, i, &format!("{service}-{i}"));
}

fn add_instance_named(
    stack: &mut Stack,
    c: &PipelineConfig<'_>,
    service: &str,
    i: usize,
    name: &str,
) {
    let admin = addr(free_port());
    let mut args = vec![
        "--bootstrap".to_string(),
        c.bootstrap.to_string(),
        "--app".into(),
        format!("{}-{service}", c.run_id),
        "--instance".into(),
        i.to_string(),
        "--topic-prefix".into(),
        c.prefix.to_string(),
        "--state-dir".into(),
        c.dir.join(format!("{name}-state")).display().to_string(),
        "--admin".into(),
        admin.to_string(),
    ];
    if service == "identity" {
        args.push("--rules".into());
        args.push(
            repo_root()
                .join("examples/identity.yaml")
                .display()
                .to_string(),
        );
    }
    let env = c.env.get(service).cloned().unwrap_or_default();
    stack.spawn_with_env(name, &args, &env, admin, c.dir);
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

/// The value of a Prometheus sample whose line contains every one of `parts`.
pub fn metric(addr: SocketAddr, parts: &[&str]) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics")?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
        let partitions = corral_tests::assign_from_beginning(&consumer, topic);
        assert!(partitions > 0, "topic {topic} does not exist");
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

/// Every record of `r` so far, decoded with the topic's Avro type.
pub fn decode_all<T: corral_codec::AvroRecord>(r: &TopicReader) -> Vec<T> {
    r.records
        .iter()
        .filter_map(|rec| rec.value.as_deref())
        .map(|v| T::decode(v).unwrap_or_else(|e| panic!("undecodable record in {}: {e}", r.topic)))
        .collect()
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
