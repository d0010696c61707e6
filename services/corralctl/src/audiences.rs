//! `corralctl audiences apply|list|delete|status`: audiences and computed traits in the
//! `definitions` topic. The record format and the operations live in `corral_compute::admin`
//! (the same code compute reads with and the end-to-end tests call).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use corral_compute::admin::{self, AdminError, DefinitionsTopic};

#[derive(Args)]
pub struct Where {
    /// Space the definitions belong to.
    #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
    space: String,
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    prefix: String,
    /// Full name of the definitions topic (default: prefix + `definitions`).
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Subcommand)]
pub enum AudiencesAction {
    /// Validate FILE (refused on any error) and write every changed audience and computed
    /// trait as a new version; reports created / changed / unchanged.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        at: Where,
        /// Recorded as `updated_by`.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Current audiences and computed traits with their versions.
    List {
        #[command(flatten)]
        at: Where,
    },
    /// Delete an audience or computed trait (tombstone; compute frees its state).
    Delete {
        key: String,
        #[command(flatten)]
        at: Where,
    },
    /// Versions, and backfill progress read from compute's metrics endpoint.
    Status {
        #[command(flatten)]
        at: Where,
        /// Compute's admin address(es) (`host:port`, the service's `--admin`).
        #[arg(long = "compute-admin", env = "CORRAL_COMPUTE_ADMIN")]
        compute_admin: Vec<String>,
    },
}

fn topic(bootstrap: &str, w: Where) -> DefinitionsTopic {
    DefinitionsTopic {
        bootstrap: bootstrap.to_string(),
        kafka: BTreeMap::new(),
        topic: w
            .topic
            .unwrap_or_else(|| format!("{}definitions", w.prefix)),
        space: w.space,
    }
}

pub fn audiences(bootstrap: &str, action: AudiencesAction) -> anyhow::Result<ExitCode> {
    match action {
        AudiencesAction::Apply { file, at, by } => {
            match admin::apply_file(&topic(bootstrap, at), &file, by) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(AdminError::Invalid(report)) => {
                    println!("{report}");
                    println!("nothing applied");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        AudiencesAction::List { at } => {
            for d in admin::list(&topic(bootstrap, at))? {
                let (kind, hist, query) = match &d.body {
                    Some(b) => (
                        b.kind.clone().unwrap_or_else(|| "users".into()),
                        b.include_historical_data,
                        b.query.split_whitespace().collect::<Vec<_>>().join(" "),
                    ),
                    None => ("?".into(), false, "(unreadable body)".into()),
                };
                println!(
                    "{:<15} {:<32} v{:<4} {:<8} historical={:<5} {}",
                    d.kind, d.key, d.version, kind, hist, query
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AudiencesAction::Delete { key, at } => match admin::delete(&topic(bootstrap, at), &key) {
            Ok(kind) => {
                println!("deleted {kind} {key}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ AdminError::NotFound { .. }) => {
                eprintln!("{e}");
                Ok(ExitCode::from(1))
            }
            Err(e) => Err(e.into()),
        },
        AudiencesAction::Status { at, compute_admin } => {
            let defs = admin::list(&topic(bootstrap, at))?;
            let mut progress: BTreeMap<String, admin::BackfillStatus> = BTreeMap::new();
            for addr in &compute_admin {
                match scrape(addr) {
                    Ok(text) => admin::merge_backfill_status(&mut progress, &text),
                    Err(e) => eprintln!("cannot read compute metrics at {addr}: {e}"),
                }
            }
            for d in defs {
                let backfill = if compute_admin.is_empty() {
                    String::new()
                } else {
                    match progress.get(&d.key) {
                        Some(s) => s.to_string(),
                        None => "live".to_string(),
                    }
                };
                println!(
                    "{:<15} {:<32} v{:<4} {}",
                    d.kind, d.key, d.version, backfill
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// GET /metrics over plain HTTP/1.0 (loopback admin endpoint; no client library needed).
fn scrape(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(buf))
}
