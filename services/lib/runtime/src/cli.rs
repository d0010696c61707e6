//! The command-line flags every service shares, declared once so that a flag and its `CORRAL_*`
//! variable mean the same thing in every binary:
//!
//! ```text
//! #[derive(clap::Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     common: corral_runtime::cli::RuntimeArgs,
//!     // the service's own flags follow
//! }
//! let service = corral_runtime::service::Service::start("validator", args.common)?;
//! ```
//!
//! A service that wants another default for a flag overrides it on its command, e.g.
//! `#[command(mut_arg("state_dir", |a| a.default_value("state/fanout")))]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use corral_codec::AvroRecord;

use crate::config::{Fault, RuntimeConfig};
use crate::error::RuntimeError;

/// The standard (unprefixed) names of the topics that carry no Avro record of their own; the
/// others are named by their record type's [`AvroRecord::TOPIC`].
pub mod names {
    pub const DEFINITIONS: &str = "definitions";
    pub const DLQ: &str = "events.dlq";
    /// Identity's router output: valid events keyed by space.
    pub const BY_SPACE: &str = "identity.events-by-space";
    /// Identity's stitcher input: valid events keyed by their highest-priority identifier, and the
    /// coordinator's links (identifier -> profile) under the same keys.
    pub const BY_ID: &str = "identity.events-by-id";
    /// Compute's merge hand-over: merged-away state sent to the survivor's partition.
    pub const MERGE_STATE: &str = "compute.merge-state";
    /// Fanout's replay input (co-partitioned with `audiences.membership`).
    pub const REPLAY: &str = "deliveries.replay";
    /// Fanout's deliveries that exhausted their retries.
    pub const DELIVERIES_DLQ: &str = "deliveries.dlq";
}

/// Kafka, identity, state, timing, admin, logging and fault-injection flags of a service, each
/// also read from its `CORRAL_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group, transactional id prefix and changelog prefix [default: the service's name].
    #[arg(long, visible_alias = "application-id", env = "CORRAL_APPLICATION_ID")]
    pub app: Option<String>,
    /// Stable instance identity (StatefulSet ordinal), never random: transactional.id and
    /// group.instance.id.
    #[arg(long, env = "CORRAL_INSTANCE_ID", default_value = "0")]
    pub instance: String,
    /// Stream threads per process, each with its own consumer, transactional producer and
    /// tasks (Kafka Streams' num.stream.threads); more than the partitions leaves some idle.
    #[arg(long, env = "CORRAL_STREAM_THREADS", default_value_t = 1)]
    pub threads: usize,
    /// Prefix of every topic name.
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    pub topic_prefix: String,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Replication factor of the topics the service creates (changelogs, internal topics);
    /// -1 takes the broker's `default.replication.factor`.
    #[arg(long, env = "CORRAL_REPLICATION_FACTOR", default_value_t = -1, allow_negative_numbers = true)]
    pub replication_factor: i32,
    /// Where the RocksDB state stores live.
    #[arg(long, env = "CORRAL_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// How often the transaction commits, in ms.
    #[arg(long, env = "CORRAL_COMMIT_INTERVAL_MS", default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Consumer group session timeout, in ms: a killed instance is replaced after this long.
    #[arg(long, env = "CORRAL_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// How often, in ms, the stream consumers report their lag (`corral_kafka_consumer_lag_records`).
    #[arg(long, env = "CORRAL_LAG_INTERVAL_MS", default_value_t = 5_000)]
    pub lag_interval_ms: u64,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`); none when absent.
    #[arg(long, env = "CORRAL_ADMIN_ADDR")]
    pub admin: Option<SocketAddr>,
    /// Query interfaces (`--query`) require a token of the space they read (`corralctl tokens
    /// create`); `off` answers anyone, for a local stack only.
    #[arg(
        long,
        value_enum,
        env = "CORRAL_QUERY_AUTH",
        default_value = "required"
    )]
    pub query_auth: QueryAuth,
    /// Log JSON lines (production) instead of text.
    #[arg(long, env = "CORRAL_LOG_JSON")]
    pub log_json: bool,
    /// Test-only crash injection, e.g. `after_commit@3`.
    #[arg(long, env = "CORRAL_FAULT")]
    pub fault: Option<String>,
}

/// How to reach Kafka: the same flags in every service and in `corralctl`. Client properties
/// (librdkafka's names: `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …) come from a
/// properties file, then `CORRAL_KAFKA_PROP_*` variables, then `--kafka` flags, each overriding
/// the one before, and reach every client the process creates.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        visible_alias = "kafka-bootstrap",
        env = "CORRAL_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,
    /// A librdkafka client property, NAME=VALUE (repeatable; `;`-separated in the variable).
    #[arg(
        long = "kafka",
        global = true,
        value_name = "NAME=VALUE",
        env = "CORRAL_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub properties: Vec<String>,
    /// A properties file of client settings (`name=value` lines, `#` comments), e.g. the one a
    /// managed Kafka service hands out.
    #[arg(long, global = true, env = "CORRAL_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
}

/// Variables named `CORRAL_KAFKA_PROP_<NAME>` set the client property `<name>` with `_` read as
/// `.` (`CORRAL_KAFKA_PROP_SASL_PASSWORD` → `sasl.password`): secrets from the environment.
pub const KAFKA_PROPERTY_ENV_PREFIX: &str = "CORRAL_KAFKA_PROP_";

impl KafkaArgs {
    /// The client properties: file, then `CORRAL_KAFKA_PROP_*`, then `--kafka`.
    pub fn properties(&self) -> Result<BTreeMap<String, String>, RuntimeError> {
        client_properties(
            self.kafka_config.as_deref(),
            std::env::vars(),
            &self.properties,
        )
    }
}

/// Client properties from a properties file, the environment (`CORRAL_KAFKA_PROP_*`) and
/// `NAME=VALUE` flags, later sources overriding earlier ones.
pub fn client_properties(
    file: Option<&std::path::Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, RuntimeError> {
    let mut out = BTreeMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RuntimeError::Config(format!("reading Kafka properties {}: {e}", path.display()))
        })?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .map(String::from)
            .collect();
        out.extend(
            parse_properties(&lines)
                .map_err(|e| RuntimeError::Config(format!("in {}: {e}", path.display())))?,
        );
    }
    for (k, v) in env {
        if let Some(name) = k.strip_prefix(KAFKA_PROPERTY_ENV_PREFIX) {
            if !name.is_empty() {
                out.insert(name.to_ascii_lowercase().replace('_', "."), v);
            }
        }
    }
    out.extend(parse_properties(flags)?);
    Ok(out)
}

/// Whether the query interfaces check tokens.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryAuth {
    Required,
    Off,
}

/// One flag and one variable per topic, each a full name that replaces the prefix + the standard
/// name. Every service accepts all of them and reads the ones it uses, so a deployment can set
/// them once for every service.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Topic names (default: prefix + standard name)")]
pub struct TopicArgs {
    #[arg(long, env = "CORRAL_TOPIC_RAW", value_name = "TOPIC")]
    pub raw_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_VALID", value_name = "TOPIC")]
    pub valid_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_BLOCKED", value_name = "TOPIC")]
    pub blocked_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_VIOLATIONS", value_name = "TOPIC")]
    pub violations_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DLQ", value_name = "TOPIC")]
    pub dlq_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DEFINITIONS", value_name = "TOPIC")]
    pub definitions_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_IDENTITY_BY_SPACE", value_name = "TOPIC")]
    pub by_space_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_IDENTITY_BY_ID", value_name = "TOPIC")]
    pub by_id_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_RESOLVED", value_name = "TOPIC")]
    pub resolved_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_MERGES", value_name = "TOPIC")]
    pub merges_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_MERGE_STATE", value_name = "TOPIC")]
    pub merge_state_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_MEMBERSHIP", value_name = "TOPIC")]
    pub membership_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_TRAITS", value_name = "TOPIC")]
    pub traits_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_REPLAY", value_name = "TOPIC")]
    pub replay_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DELIVERIES_DLQ", value_name = "TOPIC")]
    pub deliveries_dlq_topic: Option<String>,
}

impl TopicArgs {
    /// The names under `prefix` with these overrides.
    pub fn names(&self, prefix: &str) -> TopicNames {
        TopicNames {
            prefix: prefix.to_string(),
            overrides: self.overrides(),
        }
    }

    /// The overrides given, by standard name.
    fn overrides(&self) -> BTreeMap<String, String> {
        let given = [
            ("events.raw", &self.raw_topic),
            ("events.valid", &self.valid_topic),
            ("events.blocked", &self.blocked_topic),
            ("events.violations", &self.violations_topic),
            (names::DLQ, &self.dlq_topic),
            (names::DEFINITIONS, &self.definitions_topic),
            (names::BY_SPACE, &self.by_space_topic),
            (names::BY_ID, &self.by_id_topic),
            ("events.resolved", &self.resolved_topic),
            ("profiles.merges", &self.merges_topic),
            (names::MERGE_STATE, &self.merge_state_topic),
            ("audiences.membership", &self.membership_topic),
            ("traits.changes", &self.traits_topic),
            (names::REPLAY, &self.replay_topic),
            (names::DELIVERIES_DLQ, &self.deliveries_dlq_topic),
        ];
        given
            .into_iter()
            .filter_map(|(name, full)| full.clone().map(|f| (name.to_string(), f)))
            .collect()
    }
}

/// Full topic names: the prefix + the standard name, unless overridden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    prefix: String,
    overrides: BTreeMap<String, String>,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self::new("corral.")
    }
}

impl TopicNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            overrides: BTreeMap::new(),
        }
    }

    /// Names `standard` `full` instead of prefix + `standard`.
    pub fn with(mut self, standard: &str, full: &str) -> Self {
        self.overrides
            .insert(standard.to_string(), full.to_string());
        self
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full name of the topic whose standard name is `standard` (e.g. `events.valid`).
    pub fn name(&self, standard: &str) -> String {
        self.overrides
            .get(standard)
            .cloned()
            .unwrap_or_else(|| format!("{}{standard}", self.prefix))
    }

    /// The full name of the topic that carries records of type `R`.
    pub fn of<R: AvroRecord>(&self) -> String {
        self.name(R::TOPIC)
    }
}

/// Parses `NAME=VALUE` librdkafka properties.
pub fn parse_properties(given: &[String]) -> Result<BTreeMap<String, String>, RuntimeError> {
    given
        .iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(RuntimeError::Config(format!(
                "Kafka property `{p}` is not NAME=VALUE (e.g. security.protocol=SASL_SSL)"
            ))),
        })
        .collect()
}

impl RuntimeArgs {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_millis(self.session_timeout_ms)
    }

    /// The parsed `--fault`; an unparsable value is an error rather than no fault.
    pub fn fault(&self) -> Result<Option<Fault>, RuntimeError> {
        self.fault.as_deref().map(str::parse).transpose()
    }

    /// `--app`, or `default` (the service's name) when not given.
    pub fn app_or(&self, default: &str) -> String {
        self.app.clone().unwrap_or_else(|| default.to_string())
    }

    /// The topic names these flags give.
    pub fn topic_names(&self) -> TopicNames {
        self.topics.names(&self.topic_prefix)
    }

    /// The client properties (see [`KafkaArgs`]).
    pub fn kafka_properties(&self) -> Result<BTreeMap<String, String>, RuntimeError> {
        self.kafka.properties()
    }

    /// A [`RuntimeConfig`] for `application_id` with these flags applied (topic names, the
    /// dead-letter topic, client properties); the caller sets the inputs and stores.
    pub fn runtime_config(&self, application_id: &str) -> Result<RuntimeConfig, RuntimeError> {
        Ok(self.runtime_config_with(application_id, self.kafka_properties()?, self.fault()?))
    }

    /// [`RuntimeArgs::runtime_config`] with the client properties and fault already parsed.
    pub(crate) fn runtime_config_with(
        &self,
        application_id: &str,
        kafka: BTreeMap<String, String>,
        fault: Option<Fault>,
    ) -> RuntimeConfig {
        let mut cfg = RuntimeConfig::new(application_id, &self.instance, &self.kafka.bootstrap);
        cfg.replication_factor = self.replication_factor;
        cfg.threads = self.threads;
        cfg.lag_interval = Duration::from_millis(self.lag_interval_ms.max(1));
        cfg.topics = self.topic_names();
        cfg.topic_prefix = self.topic_prefix.clone();
        cfg.dlq_topic = cfg.topics.name(names::DLQ);
        cfg.kafka = kafka;
        cfg.state_dir = self.state_dir.clone();
        cfg.commit_interval = self.commit_interval();
        cfg.session_timeout = self.session_timeout();
        cfg.admin_addr = self.admin;
        cfg.fault = fault;
        cfg
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    #[test]
    fn flags_reach_the_runtime_config() {
        let cli = Cli::try_parse_from([
            "svc",
            "--bootstrap",
            "k:9092",
            "--instance",
            "2",
            "--topic-prefix",
            "t.",
            "--state-dir",
            "/tmp/s",
            "--commit-interval-ms",
            "50",
            "--session-timeout-ms",
            "6000",
            "--admin",
            "127.0.0.1:9999",
            "--fault",
            "after_commit@3",
            "--kafka",
            "security.protocol=SASL_SSL",
            "--dlq-topic",
            "my.dlq",
        ])
        .unwrap();
        let cfg = cli.runtime.runtime_config("app").unwrap();
        assert_eq!(cfg.application_id, "app");
        assert_eq!(cfg.instance_id, "2");
        assert_eq!(cfg.bootstrap_servers, "k:9092");
        assert_eq!(cfg.topic_prefix, "t.");
        assert_eq!(cfg.topics.name("events.valid"), "t.events.valid");
        assert_eq!(cfg.dlq_topic, "my.dlq");
        assert_eq!(cfg.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(cfg.commit_interval, Duration::from_millis(50));
        assert_eq!(cfg.session_timeout, Duration::from_millis(6000));
        assert_eq!(cfg.admin_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert!(cfg.fault.is_some());
    }

    #[test]
    fn the_application_id_has_one_flag_and_an_alias() {
        let cli = Cli::try_parse_from(["svc", "--application-id", "x"]).unwrap();
        assert_eq!(cli.runtime.app_or("fanout"), "x");
        let cli = Cli::try_parse_from(["svc"]).unwrap();
        assert_eq!(cli.runtime.app_or("fanout"), "fanout");
    }

    #[test]
    fn topic_names_come_from_the_record_types() {
        let names = TopicNames::new("p.").with("events.raw", "raw");
        assert_eq!(names.of::<corral_codec::ValidEvent>(), "p.events.valid");
        assert_eq!(names.name("events.raw"), "raw");
    }

    #[test]
    fn client_properties_come_from_a_file_the_environment_and_flags_in_that_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# from the provider\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=file\n",
        )
        .unwrap();
        let env = [
            (
                "CORRAL_KAFKA_PROP_SASL_USERNAME".to_string(),
                "env".to_string(),
            ),
            (
                "CORRAL_KAFKA_PROP_SASL_PASSWORD".to_string(),
                "secret".to_string(),
            ),
            (
                "CORRAL_KAFKA_BOOTSTRAP".to_string(),
                "not a property".to_string(),
            ),
        ];
        let got =
            client_properties(Some(&file), env, &["sasl.mechanism=SCRAM-SHA-512".into()]).unwrap();
        assert_eq!(got["security.protocol"], "SASL_SSL");
        assert_eq!(got["sasl.username"], "env");
        assert_eq!(got["sasl.password"], "secret");
        assert_eq!(got["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(got.len(), 4);
        let missing = client_properties(Some(&dir.path().join("none")), [], &[]).unwrap_err();
        assert!(
            missing.to_string().contains("reading Kafka properties"),
            "{missing}"
        );
    }

    #[test]
    fn the_replication_factor_defaults_to_the_brokers() {
        let cli = Cli::try_parse_from(["svc"]).unwrap();
        assert_eq!(
            cli.runtime.runtime_config("a").unwrap().replication_factor,
            -1
        );
        let cli = Cli::try_parse_from(["svc", "--replication-factor", "3"]).unwrap();
        assert_eq!(
            cli.runtime.runtime_config("a").unwrap().replication_factor,
            3
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let cli = Cli::try_parse_from(["svc", "--fault", "sometimes"]).unwrap();
        assert!(cli.runtime.runtime_config("app").is_err());
        let err = parse_properties(&["acks".into()]).unwrap_err().to_string();
        assert!(err.contains("NAME=VALUE"), "{err}");
    }
}
