//! Least-privilege Kafka ACLs for a deployment: one principal per service and one for operators,
//! each allowed exactly what docs/security.md's table lists, under the deployment's topic names
//! and application ids (`corralctl acls`).
//!
//! The plan is data ([`AclPlan`]); [`AclPlan::commands`] turns it into arguments of Kafka's own
//! ACL tool (`kafka-acls.sh`), one invocation per principal, resource type, pattern type and set
//! of operations, so applying it needs nothing but the tool every Kafka distribution ships.
//! `Describe` is never listed: Kafka implies it from `Read` and `Write`.

use corral_runtime::cli::{names, TopicNames};
use serde::Serialize;

/// The stream services, in pipeline order; each is a principal and (but the collector) an
/// application id.
pub const SERVICES: [&str; 5] = ["collector", "validator", "identity", "compute", "fanout"];

/// What the ACLs are for.
#[derive(Debug, Clone)]
pub struct AclInput {
    /// The deployment's topic names (prefix and overrides).
    pub topics: TopicNames,
    /// Principal of service `s` is `{principal_prefix}{s}` (e.g. `User:corral-`).
    pub principal_prefix: String,
    /// Application id of service `s` is `{app_prefix}{s}` (services default `--app` to their
    /// name, so the default prefix is empty).
    pub app_prefix: String,
    /// The operators' principal (`corralctl`): the only one that may write `definitions`.
    pub operator: String,
    /// Topics of fanout's Kafka destinations (it writes them).
    pub destination_topics: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Operation {
    Read,
    Write,
    Create,
    DescribeConfigs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceType {
    Topic,
    Group,
    TransactionalId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Literal,
    Prefixed,
}

/// `operations` on every resource in `names` of one type and pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub operations: Vec<Operation>,
    pub resource: ResourceType,
    pub pattern: Pattern,
    pub names: Vec<String>,
}

/// Everything one principal is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrincipalAcls {
    /// `collector` … `fanout`, or `operators`.
    pub role: String,
    pub principal: String,
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclPlan {
    pub principals: Vec<PrincipalAcls>,
}

/// One principal's grants, gathered as (operations, resource, pattern, name) and grouped later.
struct Builder {
    entries: Vec<(Vec<Operation>, ResourceType, Pattern, String)>,
}

impl Builder {
    fn topics(&mut self, ops: &[Operation], names: impl IntoIterator<Item = String>) -> &mut Self {
        for n in names {
            self.entries
                .push((ops.to_vec(), ResourceType::Topic, Pattern::Literal, n));
        }
        self
    }

    fn prefixed(&mut self, ops: &[Operation], resource: ResourceType, prefix: String) -> &mut Self {
        self.entries
            .push((ops.to_vec(), resource, Pattern::Prefixed, prefix));
        self
    }

    fn group(&mut self, pattern: Pattern, name: String) -> &mut Self {
        self.entries
            .push((vec![Read], ResourceType::Group, pattern, name));
        self
    }

    /// The grants, one per distinct (operations, resource, pattern), names sorted and unique.
    fn grants(self) -> Vec<Grant> {
        let mut out: Vec<Grant> = Vec::new();
        for (mut ops, resource, pattern, name) in self.entries {
            ops.sort_unstable();
            ops.dedup();
            match out
                .iter_mut()
                .find(|g| g.operations == ops && g.resource == resource && g.pattern == pattern)
            {
                Some(g) if !g.names.contains(&name) => g.names.push(name),
                Some(_) => {}
                None => out.push(Grant {
                    operations: ops,
                    resource,
                    pattern,
                    names: vec![name],
                }),
            }
        }
        out.iter_mut().for_each(|g| g.names.sort());
        out
    }
}

use Operation::{Create, DescribeConfigs, Read, Write};

/// The plan for `input`: docs/security.md's table under the deployment's names.
pub fn plan(input: &AclInput) -> AclPlan {
    let t = |standard: &str| input.topics.name(standard);
    let app = |service: &str| format!("{}{service}", input.app_prefix);
    // A service's changelogs are `{prefix}{app}.{store}-changelog`.
    let changelogs = |service: &str| format!("{}{}.", input.topics.prefix(), app(service));
    let mut principals = Vec::new();
    for service in SERVICES {
        let mut b = Builder {
            entries: Vec::new(),
        };
        let (reads, writes, creates): (Vec<&str>, Vec<&str>, Vec<&str>) = match service {
            "collector" => (vec![], vec!["events.raw", names::DLQ], vec![]),
            "validator" => (
                vec!["events.raw"],
                vec![
                    "events.valid",
                    "events.blocked",
                    "events.violations",
                    "events.raw",
                    names::DLQ,
                ],
                vec![],
            ),
            "identity" => (
                vec!["events.valid", names::BY_ID, names::BY_SPACE],
                vec![
                    names::BY_ID,
                    names::BY_SPACE,
                    "events.resolved",
                    "profiles.merges",
                    names::DLQ,
                ],
                vec![names::BY_ID, names::BY_SPACE],
            ),
            "compute" => (
                vec![
                    "events.resolved",
                    "profiles.merges",
                    names::MERGE_STATE,
                    crate::accounts::ACCOUNTS_TOPIC,
                ],
                vec![
                    "audiences.membership",
                    "traits.changes",
                    names::MERGE_STATE,
                    crate::accounts::ACCOUNTS_TOPIC,
                    names::DLQ,
                ],
                vec![names::MERGE_STATE, crate::accounts::ACCOUNTS_TOPIC],
            ),
            _ => (
                vec!["audiences.membership", "traits.changes", names::REPLAY],
                vec![names::DELIVERIES_DLQ, names::DLQ],
                vec![],
            ),
        };
        // Every service follows the definitions topic; none may write it.
        b.topics(&[Read], [t(names::DEFINITIONS)]);
        b.topics(&[Read], reads.into_iter().map(t));
        b.topics(&[Write], writes.into_iter().map(t));
        b.topics(&[Create], creates.into_iter().map(t));
        if service == "fanout" {
            b.topics(&[Write], input.destination_topics.iter().cloned());
        }
        if service == "collector" {
            // Its definitions follower never joins the group but names it (and looks up its
            // coordinator).
            b.group(
                Pattern::Literal,
                corral_runtime::definitions::COLLECTOR_GROUP.to_string(),
            );
        } else {
            b.prefixed(
                &[Read, Write, Create],
                ResourceType::Topic,
                changelogs(service),
            );
            if service == "identity" {
                // The stitcher is its own application: `{prefix}{app}-stitcher.links-changelog`.
                b.prefixed(
                    &[Read, Write, Create],
                    ResourceType::Topic,
                    format!("{}{}-stitcher.", input.topics.prefix(), app(service)),
                );
            }
            // Prefixed: the group `{app}` and the readers outside it (`{app}-restore`,
            // `{app}-definitions`, `{app}-view-*`, identity's `{app}-stitcher`).
            b.group(Pattern::Prefixed, app(service));
            b.prefixed(&[Write], ResourceType::TransactionalId, app(service));
        }
        principals.push(PrincipalAcls {
            role: service.to_string(),
            principal: format!("{}{service}", input.principal_prefix),
            grants: b.grants(),
        });
    }
    // Operators: read and create every topic of the deployment (tail, topics apply with drift),
    // write definitions, the replay inputs and deletion requests (identity's coordinator input,
    // docs/privacy.md); their readers' groups are `corralctl-*`.
    let mut b = Builder {
        entries: Vec::new(),
    };
    b.prefixed(
        &[Read, Create, DescribeConfigs],
        ResourceType::Topic,
        input.topics.prefix().to_string(),
    );
    b.topics(
        &[Write],
        [
            names::DEFINITIONS,
            "events.raw",
            names::REPLAY,
            names::BY_SPACE,
        ]
        .map(t),
    );
    b.group(Pattern::Prefixed, "corralctl".to_string());
    b.group(
        Pattern::Literal,
        corral_runtime::definitions::READER_GROUP.to_string(),
    );
    principals.push(PrincipalAcls {
        role: "operators".to_string(),
        principal: input.operator.clone(),
        grants: b.grants(),
    });
    AclPlan { principals }
}

impl AclPlan {
    /// Arguments of `kafka-acls.sh` (after `--bootstrap-server … --command-config …`), one
    /// invocation per grant.
    pub fn commands(&self) -> Vec<AclCommand> {
        let mut out = Vec::new();
        for p in &self.principals {
            for g in &p.grants {
                let mut args = vec![
                    "--add".to_string(),
                    "--allow-principal".to_string(),
                    p.principal.clone(),
                ];
                for op in &g.operations {
                    args.push("--operation".into());
                    args.push(format!("{op:?}"));
                }
                let flag = match g.resource {
                    ResourceType::Topic => "--topic",
                    ResourceType::Group => "--group",
                    ResourceType::TransactionalId => "--transactional-id",
                };
                for n in &g.names {
                    args.push(flag.into());
                    args.push(n.clone());
                }
                if g.pattern == Pattern::Prefixed {
                    args.push("--resource-pattern-type".into());
                    args.push("prefixed".into());
                }
                out.push(AclCommand {
                    role: p.role.clone(),
                    args,
                });
            }
        }
        out
    }

    /// A shell script of `kafka-acls.sh` calls; `$KAFKA_BOOTSTRAP` and `$KAFKA_ADMIN_CONFIG` (a
    /// client properties file of an admin principal) are left for the operator to set.
    pub fn script(&self) -> String {
        let mut s = String::from(
            "#!/bin/sh\n# Least-privilege ACLs for Corral (corralctl acls). Set KAFKA_BOOTSTRAP and\n\
             # KAFKA_ADMIN_CONFIG (client properties of a principal allowed to alter ACLs).\nset -e\n",
        );
        let mut last = String::new();
        for c in self.commands() {
            if c.role != last {
                s.push_str(&format!("\n# {}\n", c.role));
                last.clone_from(&c.role);
            }
            s.push_str(
                "kafka-acls.sh --bootstrap-server \"$KAFKA_BOOTSTRAP\" --command-config \"$KAFKA_ADMIN_CONFIG\" ",
            );
            s.push_str(&c.args.join(" "));
            s.push('\n');
        }
        s
    }
}

/// One `kafka-acls.sh` invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclCommand {
    pub role: String,
    pub args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AclInput {
        AclInput {
            topics: TopicNames::new("corral."),
            principal_prefix: "User:corral-".into(),
            app_prefix: String::new(),
            operator: "User:corral-operator".into(),
            destination_topics: vec!["crm.audiences".into()],
        }
    }

    fn allowed(plan: &AclPlan, principal: &str, op: Operation, topic: &str) -> bool {
        plan.principals
            .iter()
            .filter(|p| p.principal == principal)
            .flat_map(|p| &p.grants)
            .filter(|g| g.resource == ResourceType::Topic && g.operations.contains(&op))
            .any(|g| match g.pattern {
                Pattern::Literal => g.names.iter().any(|n| n == topic),
                Pattern::Prefixed => g.names.iter().any(|n| topic.starts_with(n.as_str())),
            })
    }

    #[test]
    fn only_operators_write_definitions() {
        let plan = plan(&input());
        for p in &plan.principals {
            let may = allowed(&plan, &p.principal, Write, "corral.definitions");
            assert_eq!(may, p.role == "operators", "{}", p.role);
            assert!(allowed(&plan, &p.principal, Read, "corral.definitions"));
        }
    }

    #[test]
    fn each_service_gets_its_own_topics_group_and_transactional_ids() {
        let plan = plan(&input());
        let v = "User:corral-validator";
        assert!(allowed(&plan, v, Read, "corral.events.raw"));
        assert!(allowed(&plan, v, Write, "corral.events.valid"));
        assert!(allowed(
            &plan,
            v,
            Create,
            "corral.validator.dedup-changelog"
        ));
        assert!(!allowed(&plan, v, Read, "corral.events.resolved"));
        let identity = "User:corral-identity";
        assert!(allowed(
            &plan,
            identity,
            Create,
            "corral.identity-stitcher.links-changelog"
        ));
        assert!(allowed(
            &plan,
            identity,
            Write,
            "corral.identity.events-by-id"
        ));
        assert!(!allowed(&plan, v, Write, "corral.audiences.membership"));
        assert!(!allowed(
            &plan,
            "User:corral-collector",
            Read,
            "corral.events.raw"
        ));
        assert!(allowed(&plan, "User:corral-fanout", Write, "crm.audiences"));
        assert!(!allowed(
            &plan,
            "User:corral-compute",
            Write,
            "crm.audiences"
        ));
        let compute = &plan.principals[3];
        assert!(compute
            .grants
            .iter()
            .any(|g| g.resource == ResourceType::Group
                && g.pattern == Pattern::Prefixed
                && g.names == ["compute"]));
        assert!(compute
            .grants
            .iter()
            .any(|g| g.resource == ResourceType::TransactionalId && g.names == ["compute"]));
    }

    #[test]
    fn names_follow_the_deployment() {
        let plan = plan(&AclInput {
            topics: TopicNames::new("t1.").with("events.raw", "ingest"),
            app_prefix: "prod-".into(),
            ..input()
        });
        let v = "User:corral-validator";
        assert!(allowed(&plan, v, Read, "ingest"));
        assert!(!allowed(&plan, v, Read, "t1.events.raw"));
        assert!(allowed(
            &plan,
            v,
            Write,
            "t1.prod-validator.dedup-changelog"
        ));
        let cmds = plan.commands();
        let group = cmds
            .iter()
            .find(|c| c.role == "identity" && c.args.contains(&"--group".to_string()))
            .unwrap();
        assert_eq!(
            group.args,
            [
                "--add",
                "--allow-principal",
                "User:corral-identity",
                "--operation",
                "Read",
                "--group",
                "prod-identity",
                "--resource-pattern-type",
                "prefixed"
            ]
        );
        assert!(plan.script().contains("# operators\nkafka-acls.sh"));
    }
}
