//! `corralctl sources apply|list|delete`: sources and their write keys in the `definitions`
//! topic, followed live by the collector. The file format, hashing and operations live in
//! `corral_ops::sources` (the same code the collector reads with and its tests call).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::{print_json, Kafka, Output};
use corral_ops::sources::{self, DefinitionsTopic, SourcesError};

/// Where the definitions topic is (also `tokens`).
#[derive(Args)]
pub struct Where {
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    prefix: String,
    /// Full name of the definitions topic (default: prefix + `definitions`).
    #[arg(long)]
    topic: Option<String>,
}

impl Where {
    pub fn definitions_topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("{}definitions", self.prefix))
    }

    /// Topic `name` under the prefix (`identity.events-by-space`, `profiles.merges`, ...).
    pub fn prefixed(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[derive(Subcommand)]
pub enum SourcesAction {
    /// Validate FILE (refused on any error; `env:NAME` keys read from the environment) and
    /// write every changed source as a new version, storing only SHA-256 hashes of its keys.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        at: Where,
        /// Recorded as `updated_by`.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Current sources with their versions and write-key ids (never the keys).
    List {
        /// Only this space (default: every space).
        #[arg(long, env = "CORRAL_SPACE")]
        space: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Delete a source (tombstone): collectors stop accepting its write keys.
    Delete {
        source: String,
        #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
        space: String,
        #[command(flatten)]
        at: Where,
    },
}

fn topic(kafka: &Kafka, w: Where) -> DefinitionsTopic {
    DefinitionsTopic {
        bootstrap: kafka.bootstrap.clone(),
        kafka: kafka.properties.clone(),
        topic: w.definitions_topic(),
    }
}

pub fn sources(kafka: &Kafka, output: Output, action: SourcesAction) -> anyhow::Result<ExitCode> {
    match action {
        SourcesAction::Apply { file, at, by } => {
            match sources::apply_file(&topic(kafka, at), &file, by) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ (SourcesError::Invalid { .. } | SourcesError::Parse { .. })) => {
                    println!("{e}");
                    println!("nothing applied");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        SourcesAction::List { space, at } => {
            let listed = sources::list(&topic(kafka, at), space.as_deref())?;
            if output == Output::Json {
                let rows: Vec<_> = listed
                    .iter()
                    .map(|s| {
                        json!({
                            "space_id": s.space_id,
                            "id": s.id,
                            "version": s.version,
                            "name": s.name,
                            "key_ids": s.key_ids,
                            "updated_at_ms": s.updated_at_ms,
                            "updated_by": s.updated_by,
                        })
                    })
                    .collect();
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            for s in listed {
                let keys = match &s.key_ids {
                    Some(ids) => ids.join(","),
                    None => "(unreadable body)".into(),
                };
                println!(
                    "{:<12} {:<24} v{:<4} {:<24} keys={}",
                    s.space_id,
                    s.id,
                    s.version,
                    s.name.as_deref().unwrap_or("-"),
                    keys
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SourcesAction::Delete { source, space, at } => {
            match sources::delete(&topic(kafka, at), &space, &source) {
                Ok(()) => {
                    println!("deleted source {source} in space {space}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ SourcesError::NotFound { .. }) => {
                    eprintln!("{e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
