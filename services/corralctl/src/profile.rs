//! `corralctl profile show TYPE:VALUE`: one profile as the services hold it. Identity's query
//! interface (`corral_ops::query::identity`) resolves the external id to the live profile id and
//! its external ids; compute's (`corral_ops::query::compute`) gives the custom traits, computed
//! trait values and audience memberships. Printed as one JSON document
//! `{profile_id, external_ids, traits, computed_traits, audiences}`. Exit codes: 0 found,
//! 1 unknown id, 2 anything else (bad id, unreachable, not ready).

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use corral_ops::query::compute::{ClientError as ComputeError, QueryClient as ComputeClient};
use corral_ops::query::identity::ExternalIdView;
use corral_ops::query::identity::{ClientError as IdentityError, QueryClient as IdentityClient};
use serde::Serialize;
use serde_json::{Map, Value};

/// What `show` prints, fields in this order.
#[derive(Serialize)]
struct Shown {
    profile_id: String,
    external_ids: Vec<ExternalIdView>,
    traits: Map<String, Value>,
    computed_traits: std::collections::BTreeMap<String, Value>,
    audiences: Vec<String>,
}

#[derive(Args)]
pub struct ProfileArgs {
    /// Identity's query interface (`--query` of corral-identity).
    #[arg(long, global = true, env = "CORRAL_IDENTITY_QUERY", default_value = corral_ops::query::identity::DEFAULT_ADDR)]
    identity_query: String,
    /// Compute's query interface (`--query` of corral-compute).
    #[arg(long, global = true, env = "CORRAL_COMPUTE_QUERY", default_value = corral_ops::query::compute::DEFAULT_ADDR)]
    compute_query: String,
    /// Space the profile belongs to.
    #[arg(long, global = true, env = "CORRAL_SPACE", default_value = "default")]
    space: String,
    /// A token of the space (`corralctl tokens create`).
    #[arg(long, global = true, env = "CORRAL_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    action: ProfileAction,
}

#[derive(Subcommand)]
enum ProfileAction {
    /// Traits, computed traits, audiences and external ids of the profile an external id
    /// (`user_id:abc123`, `email:jane@example.com`) or a profile id (`use_...`) names.
    Show {
        #[arg(value_name = "TYPE:VALUE")]
        id: String,
    },
}

pub fn profile(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    let ProfileAction::Show { id } = &args.action;
    let identity = match IdentityClient::new(&args.identity_query)
        .with_token(args.token.clone())
        .profile(&args.space, id)
    {
        Ok(p) => p,
        Err(IdentityError::NotFound(e)) => {
            eprintln!("not found: {e}");
            return Ok(ExitCode::from(1));
        }
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Identity knows a profile before compute has processed any of its events: that profile
    // has no traits or memberships yet, which is an answer, not an error.
    let computed = match ComputeClient::new(&args.compute_query)
        .with_token(args.token.clone())
        .profile(&args.space, &identity.profile_id)
    {
        Ok(p) => Some(p),
        Err(ComputeError::NotFound(_)) => None,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let (traits, computed_traits, audiences) = match computed {
        Some(p) => (p.traits, p.computed_traits, p.audiences),
        None => Default::default(),
    };
    // Identity's external ids: the graph is the authority on which ids a profile has.
    let doc = Shown {
        profile_id: identity.profile_id,
        external_ids: identity.external_ids,
        traits,
        computed_traits,
        audiences,
    };
    // `| head` closing the pipe is not an error.
    match writeln!(
        std::io::stdout().lock(),
        "{}",
        serde_json::to_string_pretty(&doc)?
    ) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
