//! Kafka at the edges: the internal topic, the `identity_settings` reader (hot reload), and the
//! changelog follower that fills the [`IdentityView`] (on `corral_runtime::follow`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corral_runtime::definitions::{self, DefinitionEvent};
use corral_runtime::follow::follow_topic;
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::rules::{Rules, RulesStore, Settings, KIND};
use crate::view::IdentityView;

#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    #[error("topic {0} does not exist (create it with `corralctl topics apply`)")]
    NoTopic(String),
    #[error("topic administration: {0}")]
    Admin(String),
    #[error("reading definitions: {0}")]
    Definitions(#[from] corral_runtime::RuntimeError),
    #[error("following the graph changelog: {0}")]
    Changelog(corral_runtime::RuntimeError),
}

/// Creates `topic` like `like` (same partition count, delete policy) when missing: the router's
/// output must exist before the coordinator subscribes. Returns its partition count.
pub fn ensure_topic_like(
    bootstrap: &str,
    extra: &BTreeMap<String, String>,
    topic: &str,
    like: &str,
) -> Result<i32, KafkaOpError> {
    let admin =
        TopicAdmin::connect(bootstrap, extra).map_err(|e| KafkaOpError::Admin(e.to_string()))?;
    let partitions = admin
        .partitions(like)
        .map_err(|e| KafkaOpError::Admin(e.to_string()))?
        .ok_or_else(|| KafkaOpError::NoTopic(like.to_string()))?;
    match admin
        .partitions(topic)
        .map_err(|e| KafkaOpError::Admin(e.to_string()))?
    {
        Some(n) => Ok(n),
        None => {
            admin
                .create(&DesiredTopic {
                    name: topic.to_string(),
                    partitions,
                    replication_factor: 1,
                    cleanup_policy: CleanupPolicy::Delete,
                    retention_ms: None,
                })
                .map_err(|e| KafkaOpError::Admin(e.to_string()))?;
            info!(topic, partitions, "created the coordinator topic");
            Ok(partitions)
        }
    }
}

/// Applies one `definitions` record to the rules; returns false when it was an invalid
/// `identity_settings` definition (the previous settings stay).
pub fn apply_definition(rules: &RulesStore, event: DefinitionEvent<'_>) -> bool {
    let def = match event {
        DefinitionEvent::Upsert { definition, .. } => definition,
        DefinitionEvent::Delete { key } => {
            // Definition keys are `{space}/{kind}/{key}`.
            let mut parts = key.splitn(3, '/');
            if let (Some(space), Some(KIND)) = (parts.next(), parts.next()) {
                rules.remove_space(space);
            }
            return true;
        }
        // Not ours to judge; other services own other kinds.
        DefinitionEvent::Undecodable { .. } => return true,
    };
    if def.kind != KIND {
        return true;
    }
    let compiled = serde_json::from_value::<Settings>(def.body.clone())
        .map_err(|e| e.to_string())
        .and_then(|s| Rules::compile(&s).map_err(|e| e.to_string()));
    match compiled {
        Ok(r) => {
            info!(space = %def.space_id, version = def.version, "identity settings loaded");
            rules.set_space(&def.space_id, r);
            true
        }
        Err(e) => {
            warn!(space = %def.space_id, version = def.version, error = %e, "invalid identity settings ignored");
            false
        }
    }
}

/// Follows `definitions` from the beginning, applying `identity_settings`. Sets `caught_up` once
/// every partition reached its end once, or at once when the topic does not exist (the file or
/// built-in defaults then apply; a warning says so). `group` names the reader (`group.id`).
#[allow(clippy::too_many_arguments)] // plain handles; a struct would only rename them
pub fn spawn_definitions_reader(
    bootstrap: String,
    extra: BTreeMap<String, String>,
    topic: String,
    group: String,
    rules: Arc<RulesStore>,
    metrics: Arc<Metrics>,
    caught_up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Option<std::thread::JoinHandle<()>>, KafkaOpError> {
    let admin =
        TopicAdmin::connect(&bootstrap, &extra).map_err(|e| KafkaOpError::Admin(e.to_string()))?;
    if admin
        .partitions(&topic)
        .map_err(|e| KafkaOpError::Admin(e.to_string()))?
        .is_none()
    {
        warn!(
            topic,
            "definitions topic does not exist; using the settings file or Segment's defaults"
        );
        caught_up.store(true, Ordering::SeqCst);
        return Ok(None);
    }
    let mut cfg = BTreeMap::from([("group.id".to_string(), group)]);
    cfg.extend(extra);
    let handle = definitions::follow(&bootstrap, &cfg, &topic, caught_up, stop, move |ev| {
        if !apply_definition(&rules, ev) {
            metrics.definition_errors.inc();
        }
    })?;
    Ok(Some(handle))
}

/// Follows the graph store's changelog (all partitions, read_committed) into `view` until `stop`.
/// The topic is created by the coordinator runtime; until it exists the follower retries. Each
/// poll's records are applied under one lock, so a reader does not see an identifier moved to a
/// profile whose record is not applied yet (a merge or a rename half done).
pub fn spawn_view_follower(
    bootstrap: String,
    extra: BTreeMap<String, String>,
    changelog: String,
    group: String,
    view: Arc<IdentityView>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaOpError> {
    let caught_up = view.caught_up_flag();
    follow_topic(
        &bootstrap,
        &extra,
        &changelog,
        &group,
        caught_up,
        stop,
        move |batch| view.apply_records(batch),
    )
    .map_err(KafkaOpError::Changelog)
}
