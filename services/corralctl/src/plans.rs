//! `corralctl plans ...` and `corralctl replay blocked`: thin wrappers over `corral-validator`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::Kafka;

#[derive(Subcommand)]
pub enum PlansAction {
    /// Check a tracking plan file: every error with file, line and a plain message.
    Validate { file: PathBuf },
    /// Validate FILE and store it in `definitions` as the plan's next version.
    Apply {
        file: PathBuf,
        /// Full name of the definitions topic (default: prefix + `definitions`).
        #[arg(long)]
        topic: Option<String>,
        #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
        prefix: String,
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Dry run: what the plan would do with the Segment message in EVENT and why.
    CheckEvent { plan: PathBuf, event: PathBuf },
}

#[derive(Subcommand)]
pub enum ReplayAction {
    /// Re-send blocked messages to events.raw for validation with the current plans.
    Blocked {
        /// RFC 3339 time, or a duration ago (`24h`, `7d`).
        #[arg(long)]
        since: String,
        #[arg(long)]
        until: Option<String>,
        /// Only messages of this source id.
        #[arg(long)]
        source: Option<String>,
        /// Only messages blocked for this reason (unplanned_event, violation, common_violation).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
        prefix: String,
        /// Count what would be replayed without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn plans(kafka: &Kafka, action: PlansAction) -> anyhow::Result<ExitCode> {
    match action {
        PlansAction::Validate { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let diags = corral_ops::plans::plan::diagnose(&file.display().to_string(), &text);
            for d in &diags {
                println!("{d}");
            }
            if diags.is_empty() {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        PlansAction::Apply {
            file,
            topic,
            prefix,
            by,
        } => {
            let topic = topic.unwrap_or_else(|| format!("{prefix}definitions"));
            match corral_ops::plans::kafka::apply_plan(
                &kafka.bootstrap,
                &kafka.properties,
                &topic,
                &file,
                by,
            ) {
                Ok(r) => {
                    println!("{r}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        PlansAction::CheckEvent { plan, event } => {
            let (decision, report) = corral_ops::plans::check::check_event(&plan, &event)?;
            print!("{report}");
            Ok(if decision.is_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

pub fn replay(kafka: &Kafka, action: ReplayAction) -> anyhow::Result<ExitCode> {
    let ReplayAction::Blocked {
        since,
        until,
        source,
        reason,
        prefix,
        dry_run,
    } = action;
    let now = corral_ops::now_ms();
    let filter = corral_ops::plans::kafka::ReplayFilter {
        since_ms: corral_ops::parse_since(&since, now).map_err(anyhow::Error::msg)?,
        until_ms: until
            .map(|u| corral_ops::parse_since(&u, now))
            .transpose()
            .map_err(anyhow::Error::msg)?,
        source_id: source,
        reason,
        dry_run,
    };
    let bar = crate::read_progress("reading blocked events");
    let n = corral_ops::plans::kafka::replay_blocked(
        &kafka.bootstrap,
        &kafka.properties,
        &format!("{prefix}events.blocked"),
        &format!("{prefix}events.raw"),
        &filter,
        &mut |read| bar.set_position(read),
    )?;
    bar.finish_and_clear();
    println!(
        "{} {n} blocked message(s)",
        if dry_run { "would replay" } else { "replayed" }
    );
    Ok(ExitCode::SUCCESS)
}
