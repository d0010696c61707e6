//! `corralctl tokens create|list|delete`: tokens for identity's and compute's query interfaces
//! (the operations are `corral_ops::tokens`).

use std::process::ExitCode;

use clap::Subcommand;

use crate::sources::Where;
use crate::{print_json, Kafka, Output};

#[derive(Subcommand)]
pub enum TokensAction {
    /// Create a token that reads one space, or replace token ID (its old secret stops working).
    /// The secret is printed once; only its SHA-256 is stored.
    Create {
        #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
        space: String,
        /// The token's name [default: a new random one].
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        at: Where,
        /// Recorded as `updated_by`.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
    /// Tokens in force (never their secrets).
    List {
        /// Only this space (default: every space).
        #[arg(long, env = "CORRAL_SPACE")]
        space: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Delete a token: it stops working at once on every instance.
    Delete {
        id: String,
        #[arg(long, env = "CORRAL_SPACE", default_value = "default")]
        space: String,
        #[command(flatten)]
        at: Where,
    },
}

pub fn tokens(kafka: &Kafka, output: Output, action: TokensAction) -> anyhow::Result<ExitCode> {
    let topic = Where::definitions_topic;
    let (b, p) = (&kafka.bootstrap, &kafka.properties);
    match action {
        TokensAction::Create { space, id, at, by } => {
            let id =
                id.unwrap_or_else(|| format!("token-{}", &corral_ops::tokens::generate()[4..12]));
            let created =
                corral_ops::tokens::create(b, p, &topic(&at), &space, &id, by.as_deref())?;
            eprintln!(
                "{} (space {space}); the secret below is shown once:",
                created.applied
            );
            println!("{}", created.token);
        }
        TokensAction::List { space, at } => {
            let listed = corral_ops::tokens::list(b, p, &topic(&at), space.as_deref())?;
            if output == Output::Json {
                print_json(&listed)?;
            } else {
                for t in listed {
                    println!("{:<12} {:<24} v{}", t.space_id, t.id, t.version);
                }
            }
        }
        TokensAction::Delete { id, space, at } => {
            if !corral_ops::tokens::delete(b, p, &topic(&at), &space, &id)? {
                eprintln!("no token {id} in space {space}");
                return Ok(ExitCode::from(1));
            }
            println!("deleted token {id} of space {space}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
