//! `corralctl`: the operator CLI.
//!
//! - `corralctl topics apply [--manifest deploy/topics.yaml]`: creates missing topics, reports
//!   drift (exit 2 when there is any); running it again changes nothing.
//! - `corralctl definitions validate FILE`: reports every error in a file of audiences and
//!   computed traits (exit 1 when there is any).
//! - `corralctl tail TOPIC`: a topic's records as JSON lines (see `tail.rs`).
//! - `corralctl plans validate|apply|check-event` and `corralctl replay blocked`: tracking plans
//!   (see `plans.rs` and `corral_ops::plans`).
//! - `corralctl audiences apply|list|delete|status`: audiences and computed traits (see
//!   `audiences.rs` and `corral_ops::audiences`).
//! - `corralctl destinations validate|apply FILE` and `corralctl replay deliveries`: fanout
//!   destinations (see `destinations.rs` and `corral_ops::destinations`).
//! - `corralctl identity lookup TYPE:VALUE` and `corralctl identity show PROFILE_ID`: profiles
//!   from identity's query interface (see `identity.rs` and `corral_ops::query::identity`).
//! - `corralctl profile show TYPE:VALUE`: traits, computed traits, audiences and external ids
//!   from identity's and compute's query interfaces (see `profile.rs`).
//! - `corralctl sources apply|list|delete`: sources and write keys (see `sources.rs`).
//! - `corralctl tokens create|list|delete`: tokens for the query interfaces (see `tokens.rs`).
//! - `corralctl privacy delete|suppress|suppress-with-delete|unsuppress|list|status`: privacy
//!   regulations (see `privacy.rs` and `corral_ops::privacy`).
//! - `corralctl acls`: least-privilege Kafka ACLs, one principal per service (see `acls.rs`).

mod acls;
mod audiences;
mod destinations;
mod identity;
mod plans;
mod privacy;
mod profile;
mod sources;
mod tail;
mod tokens;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corral_runtime::topics::{Manifest, TopicAdmin};

#[derive(Parser)]
#[command(name = "corralctl", version, about = "Operate a Corral deployment")]
struct Cli {
    #[command(flatten)]
    kafka: corral_runtime::KafkaArgs,
    /// How list and status commands print: aligned text, or JSON for scripts.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CORRAL_OUTPUT",
        default_value = "text"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// How list and status commands print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Prints `value` as pretty JSON; a closed pipe (`| head`) is not an error.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let text = serde_json::to_string_pretty(value)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Kafka topics from the manifest.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Audience and computed-trait definitions.
    Definitions {
        #[command(subcommand)]
        action: DefinitionsAction,
    },
    /// Tracking plans (Segment Protocols).
    Plans {
        #[command(subcommand)]
        action: plans::PlansAction,
    },
    /// Print a topic's records as JSON lines, decoded with its Avro schema.
    Tail(tail::TailArgs),
    /// Fanout destinations (webhook, Segment, Braze, Iterable, Kafka, list HTTP).
    Destinations {
        #[command(subcommand)]
        action: destinations::DestinationsAction,
    },
    /// Audiences and computed traits in the definitions topic (compute).
    Audiences {
        #[command(subcommand)]
        action: audiences::AudiencesAction,
    },
    /// Sources and their write keys in the definitions topic (collector).
    Sources {
        #[command(subcommand)]
        action: sources::SourcesAction,
    },
    /// Tokens for the query interfaces (`identity`, `profile`), one space each.
    Tokens {
        #[command(subcommand)]
        action: tokens::TokensAction,
    },
    /// Privacy regulations: suppress or delete a person's data by identifier, and their status.
    Privacy {
        #[command(subcommand)]
        action: privacy::PrivacyAction,
    },
    /// Profiles from identity's query interface: the profile of an external id, a profile's ids.
    Identity(identity::IdentityArgs),
    /// A profile's traits, computed traits, audiences and external ids (identity + compute).
    Profile(profile::ProfileArgs),
    /// Least-privilege Kafka ACLs (one principal per service, operators alone write
    /// definitions) as `kafka-acls.sh` calls, or JSON with `--output json`.
    Acls(Box<acls::AclsArgs>),
    /// Replay quarantined messages.
    Replay {
        #[command(subcommand)]
        action: destinations::ReplayCommand,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create missing topics and report drift.
    Apply {
        #[arg(long, default_value = "deploy/topics.yaml")]
        manifest: PathBuf,
        /// Topic name prefix (overrides the manifest's).
        #[arg(long, env = "CORRAL_TOPIC_PREFIX")]
        prefix: Option<String>,
        /// Replication factor of every topic (overrides the manifest's; -1: the broker's default).
        #[arg(long, env = "CORRAL_REPLICATION_FACTOR", allow_negative_numbers = true)]
        replication_factor: Option<i32>,
    },
}

#[derive(Subcommand)]
enum DefinitionsAction {
    /// Parse and type-check every definition in FILE.
    Validate { file: PathBuf },
}

/// Where Kafka is and the client properties every command's clients take.
pub struct Kafka {
    pub bootstrap: String,
    pub properties: BTreeMap<String, String>,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let kafka = &Kafka {
        bootstrap: cli.kafka.bootstrap.clone(),
        properties: cli.kafka.properties()?,
    };
    match cli.command {
        Command::Tail(args) => tail::tail(kafka, args).map(|()| ExitCode::SUCCESS),
        Command::Plans { action } => plans::plans(kafka, action),
        Command::Audiences { action } => audiences::audiences(kafka, cli.output, action),
        Command::Sources { action } => sources::sources(kafka, cli.output, action),
        Command::Tokens { action } => tokens::tokens(kafka, cli.output, action),
        Command::Privacy { action } => privacy::privacy(kafka, cli.output, action),
        Command::Acls(args) => acls::acls(cli.output, *args).map(|()| ExitCode::SUCCESS),
        Command::Identity(args) => identity::identity(args),
        Command::Profile(args) => profile::profile(args),
        Command::Replay { action } => destinations::replay(kafka, action),
        Command::Destinations { action } => destinations::destinations(kafka, action),
        Command::Topics {
            action:
                TopicsAction::Apply {
                    manifest,
                    prefix,
                    replication_factor,
                },
        } => {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading topic manifest {}", manifest.display()))?;
            let mut desired = Manifest::from_yaml(&text)?.desired(prefix.as_deref())?;
            if let Some(rf) = replication_factor {
                desired.iter_mut().for_each(|t| t.replication_factor = rf);
            }
            let admin = TopicAdmin::connect(&kafka.bootstrap, &kafka.properties)?;
            let report = admin.apply(&desired)?;
            println!("{report}");
            Ok(if report.drift.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Definitions {
            action: DefinitionsAction::Validate { file },
        } => {
            let report = corral_query::validate_definitions_file(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            println!("{report}");
            Ok(if report.has_errors() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// A spinner on stderr counting records read, for long reads (replays); hidden when stderr is
/// not a terminal, so scripts and logs see only the result line.
pub fn read_progress(what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {pos} records read ({per_sec})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}
