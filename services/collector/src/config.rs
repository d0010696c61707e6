//! Configuration: flags, `CORRAL_*` environment variables, an optional YAML file, defaults; in
//! that order of precedence. The defaults are the local stack's (`make up`): listen on
//! 127.0.0.1:8080, Kafka on 127.0.0.1:9092, topics `corral.events.raw` / `corral.events.dlq`; no
//! write key is implied (the local stack passes the demo's with `--write-key`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::auth::{Source, WriteKeys};
use crate::error::ConfigError;
use crate::ingest::Limits;
use crate::ip::Cidr;
use crate::settings::PublicUrl;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";
pub const DEFAULT_PREFIX: &str = "corral.";

/// Command line (each flag also reads its `CORRAL_*` variable).
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "corral-collector",
    version,
    about = "Segment's HTTP Tracking API in front of Kafka"
)]
pub struct Args {
    /// YAML config file (see docs/collector.md).
    #[arg(long, env = "CORRAL_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the Tracking API [default: 127.0.0.1:8080].
    #[arg(long, env = "CORRAL_COLLECTOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve /metrics, /healthz, /readyz here instead of on the API address.
    #[arg(long, visible_alias = "admin", env = "CORRAL_ADMIN_ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Kafka bootstrap servers [default: 127.0.0.1:9092].
    #[arg(long, visible_alias = "bootstrap", env = "CORRAL_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    /// Extra librdkafka producer properties, NAME=VALUE (repeatable; TLS, SASL, tuning).
    #[arg(
        long = "kafka",
        value_name = "NAME=VALUE",
        env = "CORRAL_KAFKA_PROPERTIES",
        value_delimiter = ';'
    )]
    pub kafka: Vec<String>,
    /// A properties file of client settings (`name=value` lines), as in every service.
    #[arg(long, env = "CORRAL_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,
    /// Topic name prefix [default: corral.].
    #[arg(long, env = "CORRAL_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// Full name of the raw events topic [default: <prefix>events.raw].
    #[arg(long, env = "CORRAL_TOPIC_RAW")]
    pub raw_topic: Option<String>,
    /// Full name of the dead-letter topic [default: <prefix>events.dlq].
    #[arg(long, env = "CORRAL_TOPIC_DLQ")]
    pub dlq_topic: Option<String>,
    /// Write key, KEY=SOURCE or KEY=SOURCE:SPACE (space defaults to `default`); repeatable, or
    /// comma-separated in the variable. Replaces the keys of the config file. Without any, only
    /// the sources in the definitions topic are accepted.
    #[arg(
        long = "write-key",
        env = "CORRAL_COLLECTOR_WRITE_KEYS",
        value_delimiter = ',',
        value_name = "KEY=SOURCE[:SPACE]"
    )]
    pub write_keys: Vec<String>,
    /// The definitions topic whose `source` records add write keys live
    /// [default: <prefix>definitions].
    #[arg(long, env = "CORRAL_TOPIC_DEFINITIONS")]
    pub definitions_topic: Option<String>,
    /// Accept only the configured write keys; do not follow the definitions topic.
    #[arg(long, env = "CORRAL_COLLECTOR_NO_DEFINITIONS")]
    pub no_definitions: bool,
    /// Peers whose X-Forwarded-For is believed (IP or CIDR; repeatable or comma-separated).
    #[arg(
        long = "trusted-proxy",
        env = "CORRAL_COLLECTOR_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Per-message limit in bytes [default: 32768].
    #[arg(long, env = "CORRAL_COLLECTOR_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Per-request limit in bytes, before and after decompression [default: 512000].
    #[arg(long, env = "CORRAL_COLLECTOR_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Messages per batch [default: 2500].
    #[arg(long, env = "CORRAL_COLLECTOR_MAX_BATCH_MESSAGES")]
    pub max_batch_messages: Option<usize>,
    /// How long a request waits for Kafka before answering 503, in ms (librdkafka
    /// message.timeout.ms) [default: 5000].
    #[arg(long, env = "CORRAL_COLLECTOR_DELIVERY_TIMEOUT_MS")]
    pub delivery_timeout_ms: Option<u64>,
    /// Retry-After seconds on 503 and 429 [default: 1].
    #[arg(long, env = "CORRAL_COLLECTOR_RETRY_AFTER_SECONDS")]
    pub retry_after_seconds: Option<u64>,
    /// How long a request's headers may take to arrive, in ms; slow clients are dropped
    /// [default: 10000].
    #[arg(long, env = "CORRAL_COLLECTOR_HEADER_TIMEOUT_MS")]
    pub header_timeout_ms: Option<u64>,
    /// How long a request's body may take to arrive, in ms; 408 after that [default: 10000].
    #[arg(long, env = "CORRAL_COLLECTOR_BODY_TIMEOUT_MS")]
    pub body_timeout_ms: Option<u64>,
    /// Requests per second per write key (429 with Retry-After above it) [default: no limit].
    #[arg(long, env = "CORRAL_COLLECTOR_RATE_LIMIT_PER_KEY")]
    pub rate_limit_per_key: Option<u32>,
    /// Where browsers reach the collector, e.g. https://collect.example.com: the apiHost that
    /// /v1/projects/{writeKey}/settings gives analytics.js [default: the request's Host, http].
    #[arg(long, env = "CORRAL_COLLECTOR_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Serve analytics.js from this folder (the dist/umd folder of @segment/analytics-next):
    /// /analytics.js/v1/{writeKey}/analytics.min.js and /analytics-next/bundles/* [default: not
    /// served].
    #[arg(long, env = "CORRAL_COLLECTOR_ANALYTICS_JS", value_name = "DIR")]
    pub analytics_js: Option<PathBuf>,
    /// Log JSON lines (production).
    #[arg(long, env = "CORRAL_LOG_JSON")]
    pub log_json: bool,
}

/// The YAML file; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    #[serde(default)]
    pub kafka: FileKafka,
    #[serde(default)]
    pub topics: FileTopics,
    pub write_keys: Option<Vec<FileWriteKey>>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub limits: FileLimits,
    pub delivery_timeout_ms: Option<u64>,
    pub retry_after_seconds: Option<u64>,
    pub public_url: Option<String>,
    pub analytics_js: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKafka {
    pub bootstrap: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTopics {
    pub prefix: Option<String>,
    pub raw: Option<String>,
    pub dlq: Option<String>,
    pub definitions: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWriteKey {
    pub key: String,
    pub source: String,
    #[serde(default = "default_space")]
    pub space: String,
    /// Written as `write_key_id`; defaults to the source id.
    pub id: Option<String>,
}

fn default_space() -> String {
    "default".to_string()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_message_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub max_batch_messages: Option<usize>,
}

/// The resolved configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub kafka_bootstrap: String,
    pub kafka_properties: BTreeMap<String, String>,
    pub raw_topic: String,
    pub dlq_topic: String,
    /// `None`: sources are not followed (`--no-definitions`).
    pub definitions_topic: Option<String>,
    pub write_keys: WriteKeys,
    pub trusted_proxies: Vec<Cidr>,
    pub limits: Limits,
    pub delivery_timeout_ms: u64,
    pub retry_after_seconds: u64,
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    /// Requests per second per write key; `None`: no limit.
    pub rate_limit_per_key: Option<std::num::NonZeroU32>,
    /// Where browsers reach the collector; `None`: each request's Host.
    pub public_url: Option<PublicUrl>,
    /// The folder analytics.js is served from; `None`: not served.
    pub analytics_js: Option<PathBuf>,
    pub log_json: bool,
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n.max(1))
}

/// Parses `KEY=SOURCE[:SPACE]`.
pub fn parse_write_key(s: &str) -> Result<(String, Source), ConfigError> {
    let bad = || ConfigError::WriteKey(s.to_string());
    let (key, rest) = s.trim().split_once('=').ok_or_else(bad)?;
    let (source, space) = rest.split_once(':').unwrap_or((rest, "default"));
    if key.is_empty() || source.is_empty() || space.is_empty() {
        return Err(bad());
    }
    Ok((
        key.to_string(),
        Source {
            source_id: source.to_string(),
            space_id: space.to_string(),
            key_id: source.to_string(),
        },
    ))
}

impl Config {
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let p = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                serde_yaml_ng::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: p, source })?
            }
            None => FileConfig::default(),
        };
        Config::resolve(args, file)
    }

    pub fn resolve(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| ConfigError::Invalid("default listen address".into()))?,
        };
        let prefix = args
            .topic_prefix
            .or(file.topics.prefix)
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let raw_topic = args
            .raw_topic
            .or(file.topics.raw)
            .unwrap_or_else(|| format!("{prefix}events.raw"));
        let dlq_topic = args
            .dlq_topic
            .or(file.topics.dlq)
            .unwrap_or_else(|| format!("{prefix}events.dlq"));

        let definitions_topic = if args.no_definitions {
            None
        } else {
            Some(
                args.definitions_topic
                    .or(file.topics.definitions)
                    .unwrap_or_else(|| format!("{prefix}definitions")),
            )
        };

        // The config file's properties, then the shared sources (properties file,
        // CORRAL_KAFKA_PROP_* variables, --kafka), as in every service.
        let mut kafka_properties = file.kafka.properties;
        kafka_properties.extend(
            corral_runtime::cli::client_properties(
                args.kafka_config.as_deref(),
                std::env::vars(),
                &args.kafka,
            )
            .map_err(|e| ConfigError::KafkaProperty(e.to_string()))?,
        );

        let entries: Vec<(String, Source)> = if !args.write_keys.is_empty() {
            args.write_keys
                .iter()
                .filter(|s| !s.trim().is_empty())
                .map(|s| parse_write_key(s))
                .collect::<Result<_, _>>()?
        } else if let Some(keys) = file.write_keys {
            keys.into_iter()
                .map(|k| {
                    let id = k.id.unwrap_or_else(|| k.source.clone());
                    (
                        k.key,
                        Source {
                            source_id: k.source,
                            space_id: k.space,
                            key_id: id,
                        },
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let write_keys = if entries.is_empty() && definitions_topic.is_none() {
            return Err(ConfigError::Invalid(
                "no write keys configured and --no-definitions given".into(),
            ));
        } else {
            WriteKeys::new(entries)
        };

        let trusted_proxies = args
            .trusted_proxies
            .iter()
            .chain(file.trusted_proxies.iter())
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse::<Cidr>())
            .collect::<Result<_, _>>()?;

        let d = Limits::default();
        let limits = Limits {
            max_message_bytes: args
                .max_message_bytes
                .or(file.limits.max_message_bytes)
                .unwrap_or(d.max_message_bytes),
            max_request_bytes: args
                .max_request_bytes
                .or(file.limits.max_request_bytes)
                .unwrap_or(d.max_request_bytes),
            max_batch_messages: args
                .max_batch_messages
                .or(file.limits.max_batch_messages)
                .unwrap_or(d.max_batch_messages),
        };
        if limits.max_message_bytes == 0
            || limits.max_request_bytes == 0
            || limits.max_batch_messages == 0
        {
            return Err(ConfigError::Invalid("limits must be positive".into()));
        }
        let delivery_timeout_ms = args
            .delivery_timeout_ms
            .or(file.delivery_timeout_ms)
            .unwrap_or(5_000);
        if delivery_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "delivery timeout must be positive".into(),
            ));
        }
        let public_url = args
            .public_url
            .or(file.public_url)
            .filter(|u| !u.trim().is_empty())
            .map(|u| u.parse::<PublicUrl>())
            .transpose()?;
        Ok(Config {
            listen,
            admin_listen: args.admin_listen.or(file.admin_listen),
            kafka_bootstrap: args
                .kafka_bootstrap
                .or(file.kafka.bootstrap)
                .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_string()),
            kafka_properties,
            raw_topic,
            dlq_topic,
            definitions_topic,
            write_keys,
            trusted_proxies,
            limits,
            delivery_timeout_ms,
            retry_after_seconds: args
                .retry_after_seconds
                .or(file.retry_after_seconds)
                .unwrap_or(1)
                .max(1),
            header_timeout: ms(args.header_timeout_ms.unwrap_or(10_000)),
            body_timeout: ms(args.body_timeout_ms.unwrap_or(10_000)),
            rate_limit_per_key: args.rate_limit_per_key.and_then(std::num::NonZeroU32::new),
            public_url,
            analytics_js: args.analytics_js.or(file.analytics_js),
            log_json: args.log_json,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_the_local_stack() {
        let c = Config::resolve(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.kafka_bootstrap, "127.0.0.1:9092");
        assert_eq!(c.raw_topic, "corral.events.raw");
        assert_eq!(c.dlq_topic, "corral.events.dlq");
        assert_eq!(c.definitions_topic.as_deref(), Some("corral.definitions"));
        // No implicit key: the local demo passes its own `--write-key`.
        assert!(c.write_keys.get("corral-demo").is_none());
        assert!(c.write_keys.is_empty());
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let file: FileConfig = serde_yaml_ng::from_str(
            "listen: 0.0.0.0:9000\ntopics: {prefix: 'x.', dlq: dead}\nwrite_keys:\n  - {key: k1, source: web, space: s1, id: web-2024}\nlimits: {max_batch_messages: 10}\nkafka: {properties: {linger.ms: '1'}}\n",
        )
        .unwrap();
        let args = Args::parse_from([
            "c",
            "--listen",
            "127.0.0.1:1",
            "--kafka",
            "compression.type=lz4",
        ]);
        let c = Config::resolve(args, file.clone()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        assert_eq!(c.raw_topic, "x.events.raw");
        assert_eq!(c.dlq_topic, "dead");
        assert_eq!(c.write_keys.get("k1").unwrap().key_id, "web-2024");
        assert!(c.write_keys.get("corral-demo").is_none());
        assert_eq!(c.definitions_topic.as_deref(), Some("x.definitions"));
        assert_eq!(c.limits.max_batch_messages, 10);
        assert_eq!(c.kafka_properties.get("linger.ms").unwrap(), "1");
        assert_eq!(c.kafka_properties.get("compression.type").unwrap(), "lz4");

        let args = Args::parse_from([
            "c",
            "--write-key",
            "a=src",
            "--write-key",
            "b=src2:sp",
            "--no-definitions",
        ]);
        let c = Config::resolve(args, file).unwrap();
        assert_eq!(c.write_keys.len(), 2);
        assert_eq!(c.write_keys.get("a").unwrap().space_id, "default");
        assert_eq!(c.write_keys.get("b").unwrap().space_id, "sp");
        assert_eq!(c.definitions_topic, None);
    }

    #[test]
    fn bad_entries_are_errors() {
        assert!(parse_write_key("nokey").is_err());
        assert!(parse_write_key("=src").is_err());
        let args = Args::parse_from(["c", "--trusted-proxy", "x/y"]);
        assert!(Config::resolve(args, FileConfig::default()).is_err());
        assert!(serde_yaml_ng::from_str::<FileConfig>("lisen: x").is_err());
        let args = Args::parse_from(["c", "--public-url", "collect.example.com"]);
        let e = Config::resolve(args, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("http:// or https://"), "{e}");
    }

    #[test]
    fn public_url_from_flag_or_file() {
        let file: FileConfig =
            serde_yaml_ng::from_str("public_url: https://collect.example.com/\n").unwrap();
        let c = Config::resolve(Args::default(), file.clone()).unwrap();
        assert_eq!(c.public_url.unwrap().api_host(), "collect.example.com/v1");
        let args = Args::parse_from(["c", "--public-url", "http://127.0.0.1:9/x"]);
        let c = Config::resolve(args, file).unwrap();
        assert_eq!(c.public_url.unwrap().url(), "http://127.0.0.1:9/x");
        let c = Config::resolve(Args::default(), FileConfig::default()).unwrap();
        assert_eq!(c.public_url, None);
    }
}
