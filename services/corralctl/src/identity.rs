//! `corralctl identity lookup|show`: Profile API reads from identity's query interface
//! (`corral-identity --query ADDR`), printed as JSON. The client is
//! `corral_ops::query::identity::QueryClient`; this module only maps its answers to output and exit
//! codes: 0 found, 1 unknown id, 2 anything else (bad id, unreachable, not ready).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use corral_ops::query::identity::{ClientError, QueryClient, DEFAULT_ADDR};

#[derive(Args)]
pub struct IdentityArgs {
    /// Identity's query interface (`--query` of corral-identity).
    #[arg(long, global = true, env = "CORRAL_IDENTITY_QUERY", default_value = DEFAULT_ADDR)]
    identity_query: String,
    /// Space the profile belongs to.
    #[arg(long, global = true, env = "CORRAL_SPACE", default_value = "default")]
    space: String,
    /// A token of the space (`corralctl tokens create`).
    #[arg(long, global = true, env = "CORRAL_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: IdentityAction,
}

#[derive(Subcommand)]
enum IdentityAction {
    /// The profile an external id belongs to (`user_id:abc123`, `email:jane@example.com`,
    /// `anonymous_id:...`), with all its external ids.
    Lookup {
        #[arg(value_name = "TYPE:VALUE")]
        id: String,
    },
    /// A profile's external ids; a merged-away profile id answers with its survivor.
    Show {
        #[arg(value_name = "PROFILE_ID")]
        profile_id: String,
    },
}

pub fn identity(args: IdentityArgs) -> anyhow::Result<ExitCode> {
    let client = QueryClient::new(&args.identity_query).with_token(args.token.clone());
    // Printed from the typed answers, so fields keep the interface's order (profile id first).
    let answer = match &args.action {
        IdentityAction::Lookup { id } => client
            .profile(&args.space, id)
            .map(|p| serde_json::to_string_pretty(&p)),
        IdentityAction::Show { profile_id } => client
            .external_ids(&args.space, profile_id)
            .map(|p| serde_json::to_string_pretty(&p)),
    };
    match answer {
        Ok(json) => {
            // `| head` closing the pipe is not an error.
            match writeln!(std::io::stdout().lock(), "{}", json?) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Err(ClientError::NotFound(e)) => {
            eprintln!("not found: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
