//! Topic provisioning: a manifest (`deploy/topics.yaml`) applied idempotently, with drift reported
//! rather than silently "fixed" (changing a partition count moves keys between partitions, which
//! breaks co-partitioning and state).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;
use serde::Deserialize;

use crate::error::RuntimeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CleanupPolicy {
    Delete,
    Compact,
}

impl CleanupPolicy {
    pub fn as_kafka(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDefaults {
    pub partitions: i32,
    #[serde(default = "one")]
    pub replication_factor: i32,
}

fn one() -> i32 {
    1
}

/// One topic of the manifest; `name` is without the prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: Option<i32>,
    pub cleanup_policy: CleanupPolicy,
    /// `7d`, `12h`, `30m`, `45s`, or `forever`; absent keeps the broker default.
    pub retention: Option<String>,
    /// Other topic-level settings (`max.compaction.lag.ms`, `min.cleanable.dirty.ratio`, ...),
    /// set at creation and checked for drift like the rest.
    #[serde(default)]
    pub configs: BTreeMap<String, ConfigValue>,
}

/// A topic setting's value as YAML writes it (a number, a string or a boolean).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Int(v) => write!(f, "{v}"),
            ConfigValue::Float(v) => write!(f, "{v}"),
            ConfigValue::Bool(v) => write!(f, "{v}"),
            ConfigValue::Text(v) => f.write_str(v),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub defaults: ManifestDefaults,
    pub topics: Vec<TopicSpec>,
}

fn default_prefix() -> String {
    "corral.".into()
}

/// A topic as it should exist, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub cleanup_policy: CleanupPolicy,
    pub retention_ms: Option<i64>,
    /// Other topic-level settings (name -> value as Kafka takes it).
    pub configs: BTreeMap<String, String>,
}

/// Parses `7d`, `12h`, `30m`, `45s`, `500ms` or `forever` (-1) into milliseconds.
pub fn parse_retention(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s == "forever" || s == "-1" {
        return Ok(-1);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("retention `{s}` has no unit; use e.g. 7d, 12h, 30m, 45s"))?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| format!("retention `{s}` does not start with a number"))?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "retention `{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    n.checked_mul(ms)
        .ok_or_else(|| format!("retention `{s}` is too large"))
}

impl Manifest {
    pub fn from_yaml(text: &str) -> Result<Self, RuntimeError> {
        serde_yaml_ng::from_str(text)
            .map_err(|e| RuntimeError::Config(format!("topic manifest: {e}")))
    }

    /// Resolves every topic with `prefix` (the manifest's own unless overridden).
    pub fn desired(&self, prefix: Option<&str>) -> Result<Vec<DesiredTopic>, RuntimeError> {
        let prefix = prefix.unwrap_or(&self.prefix);
        self.topics
            .iter()
            .map(|t| {
                let retention_ms = t
                    .retention
                    .as_deref()
                    .map(parse_retention)
                    .transpose()
                    .map_err(|e| RuntimeError::Config(format!("topic {}: {e}", t.name)))?;
                Ok(DesiredTopic {
                    name: format!("{prefix}{}", t.name),
                    partitions: t.partitions.unwrap_or(self.defaults.partitions),
                    replication_factor: self.defaults.replication_factor,
                    cleanup_policy: t.cleanup_policy,
                    retention_ms,
                    configs: t
                        .configs
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_string()))
                        .collect(),
                })
            })
            .collect()
    }
}

/// A difference between the manifest and the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    Partitions {
        topic: String,
        want: i32,
        have: i32,
    },
    CleanupPolicy {
        topic: String,
        want: String,
        have: String,
    },
    Retention {
        topic: String,
        want: i64,
        have: Option<i64>,
    },
    ReplicationFactor {
        topic: String,
        want: i32,
        have: i32,
    },
    Config {
        topic: String,
        name: String,
        want: String,
        have: Option<String>,
    },
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Drift::Partitions { topic, want, have } => write!(
                f,
                "{topic}: has {have} partitions, manifest says {want} (not changed automatically: repartitioning moves keys; migrate with a new topic)"
            ),
            Drift::CleanupPolicy { topic, want, have } => write!(
                f,
                "{topic}: cleanup.policy is `{have}`, manifest says `{want}`"
            ),
            Drift::Config {
                topic,
                name,
                want,
                have,
            } => write!(
                f,
                "{topic}: {name} is `{}`, manifest says `{want}` (change it with kafka-configs --alter)",
                have.as_deref().unwrap_or("unset")
            ),
            Drift::ReplicationFactor { topic, want, have } => write!(
                f,
                "{topic}: replication factor is {have}, manifest says {want} (change it with a partition reassignment)"
            ),
            Drift::Retention { topic, want, have } => write!(
                f,
                "{topic}: retention.ms is {}, manifest says {want}",
                have.map_or("unset".to_string(), |h| h.to_string())
            ),
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<Drift>,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.created {
            writeln!(f, "created   {t}")?;
        }
        for t in &self.unchanged {
            writeln!(f, "ok        {t}")?;
        }
        for d in &self.drift {
            writeln!(f, "DRIFT     {d}")?;
        }
        write!(
            f,
            "{} created, {} unchanged, {} drifted",
            self.created.len(),
            self.unchanged.len(),
            self.drift.len()
        )
    }
}

/// Remembers the last error librdkafka reported on a client: a wrong password or an untrusted
/// certificate shows there as what it is, while the request that failed only says the broker
/// could not be reached.
#[derive(Default)]
pub struct LastError(std::sync::Mutex<Option<String>>);

impl LastError {
    pub fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

impl ConsumerContext for LastError {}

impl ClientContext for LastError {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::error!(%error, reason, "Kafka client error");
        if let Ok(mut g) = self.0.lock() {
            *g = Some(format!("{error}: {reason}"));
        }
    }
}

/// A small synchronous wrapper over rdkafka's admin client.
pub struct TopicAdmin {
    admin: AdminClient<DefaultClientContext>,
    /// Reads metadata; unlike the admin client it is polled, so it hears why a request failed.
    metadata: BaseConsumer<LastError>,
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
}

fn admin_err(what: &str, e: impl fmt::Display) -> RuntimeError {
    RuntimeError::Admin(format!("{what}: {e}"))
}

impl TopicAdmin {
    pub fn connect(
        bootstrap: &str,
        extra: &BTreeMap<String, String>,
    ) -> Result<Self, RuntimeError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", bootstrap);
        for (k, v) in extra {
            c.set(k, v);
        }
        let admin = c
            .create()
            .map_err(|e| admin_err("creating the admin client", e))?;
        let metadata = c
            .clone()
            .set("group.id", "corral-admin")
            .create_with_context(LastError::default())
            .map_err(|e| admin_err("creating the metadata client", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| admin_err("starting the admin runtime", e))?;
        Ok(Self {
            admin,
            metadata,
            runtime,
            timeout: Duration::from_secs(30),
        })
    }

    /// Partition count of `topic`, or `None` when it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<Option<i32>, RuntimeError> {
        Ok(self.shape(topic)?.map(|(partitions, _)| partitions))
    }

    /// The shape of `topic` once the metadata shows it: a topic created a moment ago (by us or a
    /// concurrent creator) can take a while to appear on a busy broker, and a reader that starts
    /// before then would find it missing. Waits up to 30 s.
    pub fn shape_once_visible(&self, topic: &str) -> Result<(i32, i32), RuntimeError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(shape) = self.shape(topic)? {
                return Ok(shape);
            }
            if std::time::Instant::now() >= deadline {
                return Err(RuntimeError::Admin(format!(
                    "topic {topic} was created but the broker's metadata has not shown it for 30 s; \
                     check the broker's health and try again"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Partition count and replication factor (of its first partition) of `topic`, or `None`
    /// when it does not exist.
    pub fn shape(&self, topic: &str) -> Result<Option<(i32, i32)>, RuntimeError> {
        let md = self
            .metadata
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| {
                // The client's own error events say why (authentication, TLS); they arrive on poll.
                for _ in 0..10 {
                    if self.metadata.context().last().is_some() {
                        break;
                    }
                    let _ = self.metadata.poll(Duration::from_millis(100));
                }
                let why = match self.metadata.context().last() {
                    Some(client) => format!("{e}; the client reported: {client}"),
                    None => format!("{e} (is Kafka running? `make up` starts it)"),
                };
                admin_err(&format!("reading metadata of {topic}"), why)
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        let replicas = t
            .partitions()
            .first()
            .map_or(0, |p| p.replicas().len() as i32);
        match t.error() {
            None => Ok(Some((t.partitions().len() as i32, replicas))),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => Err(admin_err(
                &format!("metadata of {topic}"),
                RDKafkaErrorCode::from(e),
            )),
        }
    }

    fn topic_configs(&self, topic: &str) -> Result<BTreeMap<String, Option<String>>, RuntimeError> {
        let opts = AdminOptions::new().request_timeout(Some(self.timeout));
        let res = self
            .runtime
            .block_on(
                self.admin
                    .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts),
            )
            .map_err(|e| admin_err(&format!("describing {topic}"), e))?;
        let mut out = BTreeMap::new();
        for r in res {
            let r = r.map_err(|e| admin_err(&format!("describing {topic}"), e))?;
            for e in r.entries {
                out.insert(e.name, e.value);
            }
        }
        Ok(out)
    }

    /// Creates `topic` if missing (tolerating a concurrent creator).
    pub fn create(&self, topic: &DesiredTopic) -> Result<bool, RuntimeError> {
        let retention = topic.retention_ms.map(|r| r.to_string());
        let mut nt = NewTopic::new(
            &topic.name,
            topic.partitions,
            TopicReplication::Fixed(topic.replication_factor),
        )
        .set("cleanup.policy", topic.cleanup_policy.as_kafka());
        if let Some(r) = retention.as_deref() {
            nt = nt.set("retention.ms", r);
        }
        for (k, v) in &topic.configs {
            nt = nt.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        let res = self
            .runtime
            .block_on(self.admin.create_topics([&nt], &opts))
            .map_err(|e| admin_err(&format!("creating {}", topic.name), e))?;
        // One topic was asked for, so there is one result.
        match res.into_iter().next() {
            Some(Ok(_)) => Ok(true),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => Ok(false),
            Some(Err((name, RDKafkaErrorCode::InvalidReplicationFactor))) => Err(admin_err(
                &format!("creating {name}"),
                format!(
                    "the broker refuses replication factor {} (more than its brokers?); set --replication-factor (CORRAL_REPLICATION_FACTOR), -1 for the broker's default",
                    topic.replication_factor
                ),
            )),
            Some(Err((name, e))) => Err(admin_err(&format!("creating {name}"), e)),
        }
    }

    /// Deletes topics (tests).
    pub fn delete(&self, topics: &[&str]) -> Result<(), RuntimeError> {
        let opts = AdminOptions::new().operation_timeout(Some(self.timeout));
        self.runtime
            .block_on(self.admin.delete_topics(topics, &opts))
            .map_err(|e| admin_err("deleting topics", e))?;
        Ok(())
    }

    /// Creates what is missing and reports drift of what exists. Running it twice changes nothing.
    pub fn apply(&self, desired: &[DesiredTopic]) -> Result<ApplyReport, RuntimeError> {
        let mut report = ApplyReport::default();
        for t in desired {
            let shape = match self.shape(&t.name)? {
                Some(shape) => shape,
                None if self.create(t)? => {
                    report.created.push(t.name.clone());
                    continue;
                }
                // It exists but the metadata we read did not show it yet (created a moment ago):
                // wait for it, so its shape is checked like any other.
                None => self.shape_once_visible(&t.name)?,
            };
            let (have, replicas) = shape;
            let before = report.drift.len();
            if t.replication_factor > 0 && replicas != t.replication_factor {
                report.drift.push(Drift::ReplicationFactor {
                    topic: t.name.clone(),
                    want: t.replication_factor,
                    have: replicas,
                });
            }
            if have != t.partitions {
                report.drift.push(Drift::Partitions {
                    topic: t.name.clone(),
                    want: t.partitions,
                    have,
                });
            }
            let configs = self.topic_configs(&t.name)?;
            let policy = configs
                .get("cleanup.policy")
                .cloned()
                .flatten()
                .unwrap_or_default();
            if policy != t.cleanup_policy.as_kafka() {
                report.drift.push(Drift::CleanupPolicy {
                    topic: t.name.clone(),
                    want: t.cleanup_policy.as_kafka().into(),
                    have: policy,
                });
            }
            if let Some(want) = t.retention_ms {
                let have = configs
                    .get("retention.ms")
                    .cloned()
                    .flatten()
                    .and_then(|v| v.parse().ok());
                if have != Some(want) {
                    report.drift.push(Drift::Retention {
                        topic: t.name.clone(),
                        want,
                        have,
                    });
                }
            }
            for (name, want) in &t.configs {
                let have = configs.get(name).cloned().flatten();
                let same = match (have.as_deref(), want.parse::<f64>()) {
                    // `0.1` and `0.10` are one ratio.
                    (Some(h), Ok(w)) => h.parse::<f64>().is_ok_and(|h| h == w),
                    (h, _) => h == Some(want.as_str()),
                };
                if !same {
                    report.drift.push(Drift::Config {
                        topic: t.name.clone(),
                        name: name.clone(),
                        want: want.clone(),
                        have,
                    });
                }
            }
            if report.drift.len() == before {
                report.unchanged.push(t.name.clone());
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_units() {
        assert_eq!(parse_retention("7d").unwrap(), 7 * 86_400_000);
        assert_eq!(parse_retention("12h").unwrap(), 12 * 3_600_000);
        assert_eq!(parse_retention("500ms").unwrap(), 500);
        assert_eq!(parse_retention("forever").unwrap(), -1);
        assert!(parse_retention("7").unwrap_err().contains("no unit"));
        assert!(parse_retention("7w").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn manifest_resolves_prefix_and_defaults() {
        let m = Manifest::from_yaml(
            "defaults: {partitions: 6}\ntopics:\n  - {name: events.raw, cleanup_policy: delete, retention: 7d}\n  - {name: definitions, partitions: 1, cleanup_policy: compact}\n",
        )
        .unwrap();
        let d = m.desired(Some("t1.")).unwrap();
        assert_eq!(d[0].name, "t1.events.raw");
        assert_eq!(d[0].partitions, 6);
        assert_eq!(d[0].retention_ms, Some(7 * 86_400_000));
        assert_eq!(d[1].partitions, 1);
        assert_eq!(d[1].cleanup_policy, CleanupPolicy::Compact);
        assert!(d[0].configs.is_empty());
        let m = Manifest::from_yaml(
            "defaults: {partitions: 1}\ntopics: [{name: h, cleanup_policy: compact, configs: {max.compaction.lag.ms: 3600000, min.cleanable.dirty.ratio: 0.1, x: y}}]",
        )
        .unwrap();
        let c = &m.desired(None).unwrap()[0].configs;
        assert_eq!(c["max.compaction.lag.ms"], "3600000");
        assert_eq!(c["min.cleanable.dirty.ratio"], "0.1");
        assert_eq!(c["x"], "y");
        assert!(Manifest::from_yaml(
            "defaults: {partitions: 1}\ntopics: [{name: x, cleanup_policy: sometimes}]"
        )
        .is_err());
    }
}
