//! The command-line flags every runtime service shares, so each binary declares them once:
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     runtime: corral_runtime::cli::RuntimeArgs,
//!     /// The service's own flags follow; the application id stays here because its flag name
//!     /// differs between services (`--app`, `--application-id`).
//!     #[arg(long, env = "CORRAL_APPLICATION_ID", default_value = "validator")]
//!     app: String,
//! }
//! let cfg = args.runtime.runtime_config(&args.app)?; // then topics and stores
//! ```
//!
//! A service that wants another default for a flag overrides it on its command, e.g.
//! `#[command(mut_arg("state_dir", |a| a.default_value("state/fanout")))]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Fault, RuntimeConfig};
use crate::error::RuntimeError;

/// Kafka, identity, state, timing, admin and fault-injection flags of a runtime service, each
/// also read from its `CORRAL_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "CORRAL_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Stable instance identity (StatefulSet ordinal), never random: transactional.id and
    /// group.instance.id.
    #[arg(long, env = "CORRAL_INSTANCE_ID", default_value = "0")]
    pub instance: String,
    /// Prefix of every topic name.
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    pub topic_prefix: String,
    /// Where the RocksDB state stores live.
    #[arg(long, env = "CORRAL_STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,
    /// How often the transaction commits, in ms.
    #[arg(long, env = "CORRAL_COMMIT_INTERVAL_MS", default_value_t = 100)]
    pub commit_interval_ms: u64,
    /// Consumer group session timeout, in ms: a killed instance is replaced after this long.
    #[arg(long, env = "CORRAL_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,
    /// Admin endpoint (`/metrics`, `/healthz`, `/readyz`); none when absent.
    #[arg(long, env = "CORRAL_ADMIN_ADDR")]
    pub admin: Option<SocketAddr>,
    /// Test-only crash injection, e.g. `after_commit@3`.
    #[arg(long, env = "CORRAL_FAULT")]
    pub fault: Option<String>,
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

    /// A [`RuntimeConfig`] for `application_id` with these flags applied; the caller sets the
    /// topics (input, DLQ) and stores.
    pub fn runtime_config(&self, application_id: &str) -> Result<RuntimeConfig, RuntimeError> {
        let mut cfg = RuntimeConfig::new(application_id, &self.instance, &self.bootstrap);
        cfg.topic_prefix = self.topic_prefix.clone();
        cfg.state_dir = self.state_dir.clone();
        cfg.commit_interval = self.commit_interval();
        cfg.session_timeout = self.session_timeout();
        cfg.admin_addr = self.admin;
        cfg.fault = self.fault()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
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
        ])
        .unwrap();
        let cfg = cli.runtime.runtime_config("app").unwrap();
        assert_eq!(cfg.application_id, "app");
        assert_eq!(cfg.instance_id, "2");
        assert_eq!(cfg.bootstrap_servers, "k:9092");
        assert_eq!(cfg.topic_prefix, "t.");
        assert_eq!(cfg.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(cfg.commit_interval, Duration::from_millis(50));
        assert_eq!(cfg.session_timeout, Duration::from_millis(6000));
        assert_eq!(cfg.admin_addr, Some("127.0.0.1:9999".parse().unwrap()));
        assert!(cfg.fault.is_some());
    }

    #[test]
    fn a_bad_fault_is_an_error() {
        let cli = Cli::try_parse_from(["svc", "--fault", "sometimes"]).unwrap();
        assert!(cli.runtime.runtime_config("app").is_err());
    }
}
