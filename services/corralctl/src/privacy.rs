//! `corralctl privacy delete|suppress|suppress-with-delete|unsuppress|list|status`: privacy
//! regulations of one space (the operations are `corral_ops::privacy`; see docs/privacy.md).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use corral_ops::privacy::{self, Regulation, RegulationType, Subject};

use crate::sources::Where;
use crate::{print_json, Kafka, Output};

/// What every request takes.
#[derive(Args)]
pub struct Request {
    /// Identifiers of the person, `TYPE:VALUE` (`user_id:ada`, `email:ada@example.com`,
    /// `anonymous_id:...`); one or more.
    #[arg(required = true, value_parser = parse_subject)]
    identifiers: Vec<Subject>,
    #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
    space: String,
    /// The regulation's id [default: a new random one].
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    at: Where,
    /// Recorded as `updated_by`.
    #[arg(long, env = "USER")]
    by: Option<String>,
}

fn parse_subject(s: &str) -> Result<Subject, String> {
    s.parse()
}

#[derive(Subcommand)]
pub enum PrivacyAction {
    /// Delete what Corral stores about the person (see docs/privacy.md for what is covered).
    Delete(Request),
    /// Drop the person's new events at the collector, from about a second after this returns.
    Suppress(Request),
    /// Suppress and delete.
    SuppressWithDelete(Request),
    /// Accept the person's events again (undoes earlier suppressions of these identifiers).
    Unsuppress(Request),
    /// Every regulation, oldest first, with its status (a deletion's progress is read as
    /// `status` reads it, one pass over each topic for all of them).
    List {
        /// Only this space (default: every space).
        #[arg(long, env = "CORRAL_SPACE")]
        space: Option<String>,
        #[command(flatten)]
        at: Where,
        /// Compute's application id (see `status`).
        #[arg(long, env = "CORRAL_COMPUTE_APP", default_value = "compute")]
        compute_app: String,
    },
    /// One regulation's status: `finished` only when every part of it is done (exit 0), else
    /// `pending` (exit 3); exit 1 when there is no such regulation.
    Status {
        id: String,
        #[arg(long, env = "CORRAL_SPACE")]
        space: Option<String>,
        #[command(flatten)]
        at: Where,
        /// Compute's application id (`--app` of corral-compute): its backfill changelog
        /// `{prefix}{app}.backfill-changelog` holds the marks of committed deletions.
        #[arg(long, env = "CORRAL_COMPUTE_APP", default_value = "compute")]
        compute_app: String,
    },
}

pub fn privacy(kafka: &Kafka, output: Output, action: PrivacyAction) -> anyhow::Result<ExitCode> {
    let (b, p) = (&kafka.bootstrap, &kafka.properties);
    let (t, req) = match action {
        PrivacyAction::Delete(r) => (RegulationType::Delete, r),
        PrivacyAction::Suppress(r) => (RegulationType::Suppress, r),
        PrivacyAction::SuppressWithDelete(r) => (RegulationType::SuppressWithDelete, r),
        PrivacyAction::Unsuppress(r) => (RegulationType::Unsuppress, r),
        PrivacyAction::List {
            space,
            at,
            compute_app,
        } => {
            let progress = privacy::ProgressTopics {
                merges: at.prefixed("profiles.merges"),
                compute_changelog: at.prefixed(&format!("{compute_app}.backfill-changelog")),
            };
            let listed: Vec<privacy::Listed> = privacy::checked(
                b,
                p,
                &at.definitions_topic(),
                space.as_deref(),
                None,
                &progress,
            )?
            .into_iter()
            .map(|(l, _)| l)
            .collect();
            if output == Output::Json {
                print_json(&listed)?;
            } else {
                for l in listed {
                    println!(
                        "{:<12} {:<22} {:<21} {:<9} {}",
                        l.space_id,
                        l.id,
                        l.regulation.regulation_type.as_str(),
                        l.status,
                        l.regulation.subjects.len()
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        PrivacyAction::Status {
            id,
            space,
            at,
            compute_app,
        } => {
            let progress = privacy::ProgressTopics {
                merges: at.prefixed("profiles.merges"),
                compute_changelog: at.prefixed(&format!("{compute_app}.backfill-changelog")),
            };
            let Some(l) = privacy::status(
                b,
                p,
                &at.definitions_topic(),
                space.as_deref(),
                &id,
                &progress,
            )?
            else {
                eprintln!("no regulation {id}");
                return Ok(ExitCode::from(1));
            };
            if output == Output::Json {
                print_json(&l)?;
            } else {
                println!("{} {} ({})", l.id, l.status, l.detail);
            }
            return Ok(ExitCode::from(if l.status == "finished" { 0 } else { 3 }));
        }
    };
    let id = req.id.unwrap_or_else(privacy::new_id);
    let regulation = Regulation {
        regulation_type: t,
        subjects: req.identifiers,
        created_at_ms: corral_ops::now_ms(),
    };
    // The regulation, then (a deletion) the request to identity's coordinator of the space
    // (docs/privacy.md); a failure between the two leaves it pending: re-run with --id.
    let applied = privacy::request(
        b,
        p,
        &privacy::RequestTopics {
            definitions: req.at.definitions_topic(),
            by_space: req.at.prefixed("identity.events-by-space"),
        },
        &req.space,
        &id,
        &regulation,
        req.by.as_deref(),
    )?;
    eprintln!("{applied}");
    // The id alone on stdout, for scripts: `id=$(corralctl privacy delete user_id:ada)`.
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}
