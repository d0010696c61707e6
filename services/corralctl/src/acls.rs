//! `corralctl acls`: the least-privilege ACLs of a deployment (`corral_ops::acls`), as a script of
//! `kafka-acls.sh` calls or as JSON.

use clap::Args;
use corral_ops::acls::{plan, AclInput};

use crate::{print_json, Output};

#[derive(Args)]
pub struct AclsArgs {
    /// Principal of each service: this prefix + the service's name.
    #[arg(long, default_value = "User:corral-")]
    principal_prefix: String,
    /// Application id of each service: this prefix + its name (as the services' `--app`).
    #[arg(long, default_value = "")]
    app_prefix: String,
    /// The operators' principal, the only one allowed to write the definitions topic.
    #[arg(long, default_value = "User:corral-operator")]
    operator: String,
    /// A topic of one of fanout's Kafka destinations (repeatable).
    #[arg(long = "destination-topic", value_name = "TOPIC")]
    destination_topics: Vec<String>,
    /// Prefix of every topic name.
    #[arg(long, env = "CORRAL_TOPIC_PREFIX", default_value = "corral.")]
    topic_prefix: String,
    #[command(flatten)]
    topics: corral_runtime::TopicArgs,
}

pub fn acls(output: Output, args: AclsArgs) -> anyhow::Result<()> {
    let plan = plan(&AclInput {
        topics: args.topics.names(&args.topic_prefix),
        principal_prefix: args.principal_prefix,
        app_prefix: args.app_prefix,
        operator: args.operator,
        destination_topics: args.destination_topics,
    });
    match output {
        Output::Text => print!("{}", plan.script()),
        Output::Json => print_json(&serde_json::json!({
            "principals": plan.principals,
            "commands": plan.commands(),
        }))?,
    }
    Ok(())
}
