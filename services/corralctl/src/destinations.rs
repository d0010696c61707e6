//! `corralctl destinations validate|apply FILE` and `corralctl replay deliveries` (fanout's
//! destinations; the logic lives in `corral_ops::destinations`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::Kafka;
use corral_ops::destinations::{apply_destinations, load_file, replay_deliveries, ReplayFilter};

#[derive(Subcommand)]
pub enum DestinationsAction {
    /// Check a destinations file (every error reported; exit 1 when there is any).
    Validate { file: PathBuf },
    /// Write changed destinations to the definitions topic (fanout reloads them).
    Apply {
        file: PathBuf,
        #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
        prefix: String,
        /// Recorded as `updated_by`.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
}

/// `corralctl replay ...`: the validator's `blocked` plus fanout's `deliveries`.
#[derive(Subcommand)]
pub enum ReplayCommand {
    #[command(flatten)]
    Plans(crate::plans::ReplayAction),
    /// Re-send dead-lettered deliveries through fanout (same message ids, same limits).
    Deliveries {
        /// RFC 3339 time, or a duration ago (`24h`, `7d`); default: everything.
        #[arg(long)]
        since: Option<String>,
        /// Only this destination key.
        #[arg(long)]
        destination: Option<String>,
        /// Only this reason (permanent_http_status, retry_horizon_exceeded, destination_removed).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
        prefix: String,
        /// Count what would be replayed without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn destinations(kafka: &Kafka, action: DestinationsAction) -> anyhow::Result<ExitCode> {
    match action {
        DestinationsAction::Validate { file } => match load_file(&file) {
            Ok(f) => {
                println!(
                    "{}: {} destinations, no errors",
                    file.display(),
                    f.destinations.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("{}:\n{e}", file.display());
                Ok(ExitCode::from(1))
            }
        },
        DestinationsAction::Apply { file, prefix, by } => {
            for r in apply_destinations(
                &kafka.bootstrap,
                &kafka.properties,
                &format!("{prefix}definitions"),
                &file,
                by,
            )? {
                println!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn replay(kafka: &Kafka, action: ReplayCommand) -> anyhow::Result<ExitCode> {
    match action {
        ReplayCommand::Plans(a) => crate::plans::replay(kafka, a),
        ReplayCommand::Deliveries {
            since,
            destination,
            reason,
            prefix,
            dry_run,
        } => {
            let now = corral_ops::now_ms();
            let since_ms = since
                .map(|s| corral_ops::parse_since(&s, now))
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or(0);
            let filter = ReplayFilter {
                since_ms,
                destination,
                reason,
                dry_run,
            };
            let bar = crate::read_progress("reading dead-lettered deliveries");
            let n = replay_deliveries(
                &kafka.bootstrap,
                &kafka.properties,
                &format!("{prefix}deliveries.dlq"),
                &format!("{prefix}deliveries.replay"),
                &filter,
                &mut |read| bar.set_position(read),
            )?;
            bar.finish_and_clear();
            println!(
                "{} {n} deliveries",
                if dry_run { "would replay" } else { "replayed" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
