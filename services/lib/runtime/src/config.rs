//! Runtime configuration. Services build it from their own config file and `CORRAL_*` overrides;
//! `kafka` entries pass through to librdkafka (TLS, SASL, tuning).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::cli::TopicNames;
use crate::error::RuntimeError;

/// Parses a duration such as `250ms`, `90s`, `30m`, `24h`, `7d` or `52w` into milliseconds: the one
/// format for every duration in Corral's flags and definition files.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h, 7d or 52w"))?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m, h, d or w")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A state store the processor uses. Its changelog topic is `{topic_prefix}{application_id}.{name}-changelog`,
/// unless an output topic logs it ([`StoreLog::Output`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    pub name: String,
    #[serde(skip)]
    pub log: StoreLog,
}

/// Where a store's writes are logged, so a new owner of a partition can rebuild it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreLog {
    /// Its own compacted changelog topic: every dirty key is one more record per commit.
    #[default]
    Changelog,
    /// The records the processor writes to an output topic (a standard name), which carry the
    /// store's entry in a header ([`crate::ProcessContext::emit_logging`]), as Kafka Streams
    /// restores a source table from its source topic. No changelog record is written. The
    /// output topic must have the input's partition count: each task writes its own partition.
    /// A partition without local state restores only the records of the last `restore_window_ms`
    /// (entries older than that are of no use to the processor), else the whole partition.
    Output {
        topic: String,
        restore_window_ms: Option<i64>,
    },
}

impl StoreSpec {
    /// A store logged by the entries its processor puts on records of the standard topic `topic`.
    pub fn logged_by_output(
        store: crate::processor::Store,
        topic: &str,
        restore_window_ms: Option<i64>,
    ) -> Self {
        StoreSpec {
            name: store.name().to_string(),
            log: StoreLog::Output {
                topic: topic.to_string(),
                restore_window_ms,
            },
        }
    }
}

impl From<crate::processor::Store> for StoreSpec {
    fn from(store: crate::processor::Store) -> Self {
        StoreSpec {
            name: store.name().to_string(),
            log: StoreLog::Changelog,
        }
    }
}

/// A crash injected at a point of the commit protocol, for recovery tests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Abort the process after the changelog and offsets were sent, before `commit_transaction`.
    BeforeCommit,
    /// Abort the process after `commit_transaction` succeeded, before the overlay reached RocksDB.
    AfterCommit,
}

/// Crash at `point` on the `nth` commit that carried records (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub point: FaultPoint,
    pub nth: u64,
}

impl std::str::FromStr for Fault {
    type Err = RuntimeError;
    /// `before_commit@3` or `after_commit@3`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            RuntimeError::Config(format!(
                "fault `{s}` is not `before_commit@N` or `after_commit@N`"
            ))
        };
        let (point, nth) = s.split_once('@').ok_or_else(bad)?;
        let point = match point {
            "before_commit" => FaultPoint::BeforeCommit,
            "after_commit" => FaultPoint::AfterCommit,
            _ => return Err(bad()),
        };
        let nth = nth.parse().map_err(|_| bad())?;
        Ok(Fault { point, nth })
    }
}

/// Everything a stream runtime needs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Stream threads of this process (Kafka Streams' `num.stream.threads`): each owns a group
    /// member (`group.instance.id` `{instance}-{thread}`), a transactional producer
    /// (`{app}-{instance}-{thread}`) and its tasks' state folder.
    pub threads: usize,
    /// How often the stream consumers report their lag (librdkafka's statistics interval on
    /// those consumers only; other clients keep statistics off).
    pub lag_interval: Duration,
    /// The service name: consumer group id, transactional id prefix and changelog topic prefix.
    pub application_id: String,
    /// A stable identity of this instance (the StatefulSet ordinal or pod name), never random:
    /// it makes `transactional.id` and `group.instance.id` survive restarts, so a restarted instance
    /// fences its predecessor at once and gets its partitions back without a rebalance.
    pub instance_id: String,
    pub bootstrap_servers: String,
    /// Prefix of every topic name (default `corral.`); names changelogs.
    pub topic_prefix: String,
    /// Full names of the standard topics, for [`crate::ProcessContext::emit_record`].
    pub topics: TopicNames,
    /// Full input topic names. Inputs are co-partitioned: partition N of each forms one task.
    pub input_topics: Vec<String>,
    /// Full name of the dead-letter topic.
    pub dlq_topic: String,
    pub stores: Vec<StoreSpec>,
    /// Where RocksDB stores live; one folder per instance and thread below it.
    pub state_dir: PathBuf,
    /// How often the transaction commits (Kafka Streams' EOS default: 100 ms).
    pub commit_interval: Duration,
    pub transaction_timeout: Duration,
    /// Commit early when the open transaction's state writes exceed this many bytes.
    pub max_uncommitted_bytes: usize,
    /// Passed through to librdkafka (every client).
    pub kafka: BTreeMap<String, String>,
    /// Replication factor of the changelogs the runtime creates; -1: the broker's default.
    pub replication_factor: i32,
    /// Admin endpoint address (`/metrics`, `/healthz`, `/readyz`); `None` serves none.
    pub admin_addr: Option<SocketAddr>,
    /// Test-only crash injection (`CORRAL_FAULT`).
    pub fault: Option<Fault>,
    /// Consumer group session timeout; a killed static member is replaced after this long.
    pub session_timeout: Duration,
    /// How often `Processor::punctuate` runs for each assigned task (wall clock); `None` never.
    pub punctuate_interval: Option<Duration>,
}

impl RuntimeConfig {
    /// A config with the runtime's defaults; callers set topics and stores.
    pub fn new(application_id: &str, instance_id: &str, bootstrap_servers: &str) -> Self {
        Self {
            threads: 1,
            lag_interval: Duration::from_secs(5),
            application_id: application_id.to_string(),
            instance_id: instance_id.to_string(),
            bootstrap_servers: bootstrap_servers.to_string(),
            topic_prefix: "corral.".to_string(),
            topics: TopicNames::default(),
            input_topics: Vec::new(),
            dlq_topic: "corral.events.dlq".to_string(),
            stores: Vec::new(),
            state_dir: PathBuf::from("state"),
            commit_interval: Duration::from_millis(100),
            transaction_timeout: Duration::from_secs(10),
            max_uncommitted_bytes: 64 * 1024 * 1024,
            kafka: BTreeMap::new(),
            replication_factor: -1,
            admin_addr: None,
            fault: None,
            session_timeout: Duration::from_secs(10),
            punctuate_interval: None,
        }
    }

    pub fn changelog_topic(&self, store: &str) -> String {
        format!(
            "{}{}.{}-changelog",
            self.topic_prefix, self.application_id, store
        )
    }

    /// The topic a store is restored from: its changelog, or the output topic that logs it.
    pub fn store_log_topic(&self, store: &StoreSpec) -> String {
        match &store.log {
            StoreLog::Changelog => self.changelog_topic(&store.name),
            StoreLog::Output { topic, .. } => self.topics.name(topic),
        }
    }

    pub fn transactional_id(&self, thread: usize) -> String {
        format!("{}-{}-{}", self.application_id, self.instance_id, thread)
    }

    /// Checks the exactly-once configuration invariants at startup.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let fail = |m: String| Err(RuntimeError::Config(m));
        if self.application_id.is_empty() || self.instance_id.is_empty() {
            return fail("application_id and instance_id must not be empty".into());
        }
        if self.threads == 0 {
            return fail("--threads must be at least 1".into());
        }
        if self.input_topics.is_empty() {
            return fail("at least one input topic is required".into());
        }
        if self.commit_interval >= self.transaction_timeout {
            return fail(format!(
                "commit interval ({:?}) must be shorter than the transaction timeout ({:?})",
                self.commit_interval, self.transaction_timeout
            ));
        }
        for reserved in [
            "transactional.id",
            "group.id",
            "group.instance.id",
            "isolation.level",
            "enable.auto.commit",
        ] {
            if self.kafka.contains_key(reserved) {
                return fail(format!(
                    "kafka.{reserved} is set by the runtime for exactly-once processing; remove it"
                ));
            }
        }
        if self.punctuate_interval == Some(Duration::ZERO) {
            return fail("punctuate interval must be positive (or unset)".into());
        }
        let mut names: Vec<_> = self.stores.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return fail("store names must be unique".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invariants_are_checked() {
        let mut c = RuntimeConfig::new("counter", "0", "127.0.0.1:9092");
        assert!(c.validate().is_err(), "no inputs");
        c.input_topics.push("in".into());
        c.validate().unwrap();
        c.commit_interval = Duration::from_secs(20);
        assert!(c.validate().is_err());
        c.commit_interval = Duration::from_millis(100);
        c.kafka.insert("transactional.id".into(), "x".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn durations_have_one_format() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms(" 24h "), Ok(86_400_000));
        assert_eq!(parse_duration_ms("2w"), Ok(14 * 86_400_000));
        assert!(parse_duration_ms("24").unwrap_err().contains("unit"));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("5y").is_err());
        assert!(parse_duration_ms("99999999999999999w").is_err());
    }

    #[test]
    fn names_are_stable() {
        let c = RuntimeConfig::new("identity", "2", "b");
        assert_eq!(c.transactional_id(0), "identity-2-0");
        assert_eq!(
            c.changelog_topic("graph"),
            "corral.identity.graph-changelog"
        );
        assert_eq!(
            "after_commit@3".parse::<Fault>().unwrap(),
            Fault {
                point: FaultPoint::AfterCommit,
                nth: 3
            }
        );
        assert!("sometime".parse::<Fault>().is_err());
    }
}
