//! `corralctl audiences apply|list|delete|status|export`: audiences and computed traits in the
//! `definitions` topic. The record format and the operations live in `corral_ops::audiences`
//! (the same code compute reads with and the end-to-end tests call); `export` asks the Profile
//! API service for an audience's members as CSV (`corral_ops::export`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::{print_json, Kafka, Output};
use corral_ops::audiences::{self as admin, AdminError, DefinitionsTopic};

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
    /// Members of an audience as CSV in Segment's layouts (unformatted, indexed, single_column
    /// hashed with SHA-256 unless --raw), as the Profile API service (corral-profiles) holds them.
    Export {
        key: String,
        /// unformatted, indexed or single_column.
        #[arg(long, default_value = "unformatted")]
        format: String,
        /// The external-id type of single_column (email, user_id, ...).
        #[arg(long)]
        id_type: Option<String>,
        /// single_column: the values as they are, not their SHA-256.
        #[arg(long)]
        raw: bool,
        /// Space the audience belongs to.
        #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
        space: String,
        /// The Profile API service (`--listen` of corral-profiles).
        #[arg(long, env = "CORRAL_PROFILES_API", default_value = corral_ops::export::DEFAULT_ADDR)]
        api: String,
        /// A token of the space (`corralctl tokens create`).
        #[arg(long, env = "CORRAL_API_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Write the CSV to this file instead of standard output.
        #[arg(long = "out", short = 'o')]
        out: Option<PathBuf>,
    },
    /// Versions, and backfill progress read from compute's metrics endpoint.
    Status {
        #[command(flatten)]
        at: Where,
        /// Compute's admin address(es) (`host:port`, the service's `--admin`).
        #[arg(long = "compute-admin", env = "CORRAL_COMPUTE_ADMIN")]
        compute_admin: Vec<String>,
        /// Wait until no backfill is pending (a progress bar shows the events left to read).
        #[arg(long, requires = "compute_admin")]
        wait: bool,
        /// How long `--wait` waits before giving up (exit 1).
        #[arg(long, default_value = "1h")]
        timeout: String,
    },
}

fn topic(kafka: &Kafka, w: Where) -> DefinitionsTopic {
    DefinitionsTopic {
        bootstrap: kafka.bootstrap.clone(),
        kafka: kafka.properties.clone(),
        topic: w
            .topic
            .unwrap_or_else(|| format!("{}definitions", w.prefix)),
        space: w.space,
    }
}

pub fn audiences(
    kafka: &Kafka,
    output: Output,
    action: AudiencesAction,
) -> anyhow::Result<ExitCode> {
    match action {
        AudiencesAction::Apply { file, at, by } => {
            match admin::apply_file(&topic(kafka, at), &file, by) {
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
                Err(e @ AdminError::Unsupported(_)) => {
                    println!("{e}");
                    println!("nothing applied");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        AudiencesAction::List { at } => {
            let listed = admin::list(&topic(kafka, at))?;
            if output == Output::Json {
                let rows: Vec<_> = listed
                    .iter()
                    .map(|d| {
                        json!({
                            "kind": d.kind,
                            "key": d.key,
                            "version": d.version,
                            "name": d.name,
                            "body": d.body.as_ref().map(|b| b.to_json()),
                            "updated_at_ms": d.updated_at_ms,
                        })
                    })
                    .collect();
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
            }
            for d in listed {
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
        AudiencesAction::Delete { key, at } => match admin::delete(&topic(kafka, at), &key) {
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
        AudiencesAction::Export {
            key,
            format,
            id_type,
            raw,
            space,
            api,
            token,
            out,
        } => {
            let format =
                match corral_ops::export::Format::parse(&format, id_type.as_deref(), Some(!raw)) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("{e}");
                        return Ok(ExitCode::from(2));
                    }
                };
            let csv = match corral_ops::export::fetch(
                &api,
                &space,
                &key,
                &format,
                token.as_deref(),
                Duration::from_secs(300),
            ) {
                Ok(csv) => csv,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            match out {
                Some(path) => std::fs::write(&path, csv)?,
                None => std::io::stdout().write_all(csv.as_bytes())?,
            }
            Ok(ExitCode::SUCCESS)
        }
        AudiencesAction::Status {
            at,
            compute_admin,
            wait,
            timeout,
        } => {
            let defs = admin::list(&topic(kafka, at))?;
            let progress = if wait {
                match wait_for_backfill(&compute_admin, &timeout)? {
                    Some(p) => p,
                    None => return Ok(ExitCode::from(1)),
                }
            } else {
                let (progress, failures) = backfill_progress(&compute_admin);
                for f in failures {
                    eprintln!("{f}");
                }
                progress
            };
            if output == Output::Json {
                let rows: Vec<_> = defs
                    .iter()
                    .map(|d| {
                        let backfill = progress.get(&d.key).map(|s| {
                            json!({
                                "pending_partitions": s.pending_partitions,
                                "remaining_events": s.remaining_events,
                            })
                        });
                        json!({
                            "kind": d.kind,
                            "key": d.key,
                            "version": d.version,
                            // null: no compute admin given; "live": nothing pending.
                            "backfill": match (compute_admin.is_empty(), backfill) {
                                (true, _) => Value::Null,
                                (false, None) => json!("live"),
                                (false, Some(b)) => b,
                            },
                        })
                    })
                    .collect();
                print_json(&rows)?;
                return Ok(ExitCode::SUCCESS);
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

/// Backfill progress over every compute instance, and the instances that could not be read.
fn backfill_progress(addrs: &[String]) -> (BTreeMap<String, admin::BackfillStatus>, Vec<String>) {
    let mut progress = BTreeMap::new();
    let mut failures = Vec::new();
    for addr in addrs {
        match scrape(addr) {
            Ok(text) => admin::merge_backfill_status(&mut progress, &text),
            Err(e) => failures.push(format!("cannot read compute metrics at {addr}: {e}")),
        }
    }
    (progress, failures)
}

/// Polls compute until no backfill is pending (every instance answering), with a progress bar
/// of the events read; `None` when `timeout` passed first.
fn wait_for_backfill(
    addrs: &[String],
    timeout: &str,
) -> anyhow::Result<Option<BTreeMap<String, admin::BackfillStatus>>> {
    let limit = corral_runtime::config::parse_duration_ms(timeout).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_millis(limit.max(0) as u64);
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} backfill [{bar:40}] {pos}/{len} events read ({eta} left) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut most = 0i64;
    loop {
        let (progress, failures) = backfill_progress(addrs);
        let left = progress
            .values()
            .map(|s| s.remaining_events)
            .max()
            .unwrap_or(0);
        most = most.max(left);
        bar.set_length(most as u64);
        bar.set_position((most - left) as u64);
        bar.set_message(match failures.first() {
            Some(f) => f.clone(),
            None => format!("{} definitions pending", progress.len()),
        });
        if progress.is_empty() && failures.is_empty() {
            bar.finish_and_clear();
            return Ok(Some(progress));
        }
        if Instant::now() >= deadline {
            bar.abandon();
            eprintln!(
                "backfill still pending after {timeout}: {}",
                progress.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            return Ok(None);
        }
        std::thread::sleep(Duration::from_secs(1));
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
