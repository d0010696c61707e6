//! Support for Corral's end-to-end tests: the real local broker (started by `deploy/local`, or
//! reused when one answers), unique topic names, producing inputs, reading outputs with
//! `read_committed`, and driving service processes (spawn, SIGKILL, SIGTERM).
//!
//! [`http`]: free ports, an admin GET, and a recording HTTP receiver (a destination stand-in).
//! [`secure`]: the broker's SASL_SSL listener, its users and ACLs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed setup should stop the test loudly

pub mod http;
pub mod secure;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, ExternalId, ResolvedEvent, SegmentMessage};
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Bootstrap address of the test broker; starts it once per test binary (idempotent: a running
/// broker is reused). `CORRAL_TEST_BOOTSTRAP` points the tests at another broker.
pub fn bootstrap() -> String {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            if let Ok(b) = std::env::var("CORRAL_TEST_BOOTSTRAP") {
                return b;
            }
            let status = Command::new("bash")
                .arg(repo_root().join("deploy/local/kafka.sh"))
                .arg("start")
                .status()
                .expect("running deploy/local/kafka.sh start");
            assert!(status.success(), "deploy/local/kafka.sh start failed");
            "127.0.0.1:9092".to_string()
        })
        .clone()
}

/// A unique prefix so tests never share topics, groups or transactional ids.
pub fn unique(name: &str) -> String {
    format!(
        "{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

pub fn admin() -> TopicAdmin {
    TopicAdmin::connect(&bootstrap(), &BTreeMap::new()).unwrap()
}

pub fn create_topic(name: &str, partitions: i32, policy: CleanupPolicy) {
    admin()
        .create(&DesiredTopic {
            name: name.to_string(),
            partitions,
            replication_factor: 1,
            cleanup_policy: policy,
            retention_ms: None,
            configs: Default::default(),
        })
        .unwrap();
}

pub fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// Produces `records` (key, value) and waits until all are acknowledged.
pub fn produce(topic: &str, records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
    let p = producer();
    for (k, v) in records {
        let mut rec = BaseRecord::to(topic).key(&k).payload(&v);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Assigns every partition of `topic` to `consumer` from the beginning; returns how many (0 when
/// the topic does not exist).
pub fn assign_from_beginning(consumer: &BaseConsumer, topic: &str) -> i32 {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    partitions
}

/// Reads every committed record of `topic` (`read_committed`), from the beginning up to the last
/// stable offset of each partition, waiting up to `timeout` for at least `min` records.
pub fn read_committed(topic: &str, min: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let partitions = assign_from_beginning(&consumer, topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut at_end = std::collections::HashSet::new();
    loop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        let all_at_end = at_end.len() == partitions as usize;
        if all_at_end && out.len() >= min {
            return out;
        }
        if Instant::now() > deadline {
            return out;
        }
    }
}

/// A service process under test.
pub struct Service {
    pub child: Child,
    pub name: String,
}

impl Service {
    pub fn spawn(name: &str, bin: &str, args: &[String], env: &[(&str, String)]) -> Service {
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        Service {
            child,
            name: name.to_string(),
        }
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not stop within 60 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself (after an injected crash).
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `m` as identity writes it to `events.resolved` for `profile` (also its user id) at `at_ms`:
/// the record's key and its encoded `ResolvedEvent`.
pub fn resolved_event(profile: &str, mut m: SegmentMessage, at_ms: i64) -> (Vec<u8>, Vec<u8>) {
    m.user_id = Some(profile.to_string());
    m.timestamp =
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(at_ms).map(|d| d.to_rfc3339());
    let ev = ResolvedEvent {
        message: m,
        profile_id: profile.to_string(),
        external_ids: vec![ExternalId {
            id_type: "user_id".into(),
            id: profile.to_string(),
            collection: Some("users".into()),
        }],
        resolved_at_ms: at_ms,
    };
    (profile.as_bytes().to_vec(), ev.encode().unwrap())
}
