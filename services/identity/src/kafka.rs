//! Kafka at the edges: the internal topic, the `identity_settings` reader (hot reload), and the
//! changelog follower that fills the [`IdentityView`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_runtime::definitions::{self, DefinitionEvent};
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::rules::{Rules, RulesStore, Settings, KIND};
use crate::view::IdentityView;

#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    #[error("Kafka error while {during}: {source}")]
    Kafka {
        during: &'static str,
        source: KafkaError,
    },
    #[error("topic {0} does not exist (create it with `corralctl topics apply`)")]
    NoTopic(String),
    #[error("topic administration: {0}")]
    Admin(String),
    #[error("cannot start thread {0}")]
    Thread(String),
    #[error("reading definitions: {0}")]
    Definitions(#[from] corral_runtime::RuntimeError),
}

fn kafka(during: &'static str) -> impl FnOnce(KafkaError) -> KafkaOpError {
    move |source| KafkaOpError::Kafka { during, source }
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

/// rdkafka reports every end of partition twice: as `PartitionEOF` from `poll` (which the
/// follower uses to know it caught up) and as a "global error" logged at ERROR by the default
/// context, i.e. an error line each time the replica catches up with a commit. The second is
/// dropped here; real client errors are still logged.
struct FollowerContext;

impl ClientContext for FollowerContext {
    fn error(&self, err: KafkaError, reason: &str) {
        if err == KafkaError::Global(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        error!(error = %err, reason, "librdkafka");
    }
}

impl ConsumerContext for FollowerContext {}

fn consumer(
    bootstrap: &str,
    extra: &BTreeMap<String, String>,
    group: &str,
) -> Result<BaseConsumer<FollowerContext>, KafkaOpError> {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    for (k, v) in extra {
        cc.set(k, v);
    }
    cc.create_with_context(FollowerContext)
        .map_err(kafka("creating a consumer"))
}

/// Assigns every partition of `topic` from the beginning; `None` when the topic does not exist
/// (the changelog follower waits for it; `definitions` goes through `corral_runtime::definitions`).
fn assign_all<C: ConsumerContext>(
    c: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<i32>, KafkaOpError> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(kafka("fetching metadata"))?;
    let n = md
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(0);
    if n == 0 {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka("assigning partitions"))?;
    }
    c.assign(&tpl).map_err(kafka("assigning partitions"))?;
    Ok(Some(n))
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

/// Changelog records applied under one lock at most (bounds the time readers wait while the
/// replica loads).
const MAX_VIEW_BATCH: usize = 10_000;

/// Follows the graph store's changelog (all partitions, read_committed) into `view` until `stop`.
/// The topic is created by the coordinator runtime; until it exists the follower retries.
pub fn spawn_view_follower(
    bootstrap: String,
    extra: BTreeMap<String, String>,
    changelog: String,
    group: String,
    view: Arc<IdentityView>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, KafkaOpError> {
    let c = consumer(&bootstrap, &extra, &group)?;
    std::thread::Builder::new()
        .name("identity-view".into())
        .spawn(move || {
            let mut partitions = None;
            let mut at_end = HashSet::new();
            while !stop.load(Ordering::SeqCst) {
                let Some(n) = partitions else {
                    match assign_all(&c, &changelog) {
                        Ok(Some(n)) => partitions = Some(n),
                        Ok(None) => std::thread::sleep(Duration::from_millis(500)),
                        Err(e) => {
                            warn!(error = %e, "identity view: waiting for the changelog");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                    continue;
                };
                let Some(first) = c.poll(Duration::from_millis(200)) else {
                    continue;
                };
                // A transaction's records become readable together (at its commit marker) and
                // normally arrive in one fetch: what is queued now is applied under one lock, so
                // a reader does not see an identifier moved to a profile whose record is not
                // applied yet (a merge or a rename half done).
                let mut batch = Vec::new();
                let mut ends = Vec::new();
                let mut next = Some(first);
                while let Some(polled) = next.take() {
                    match polled {
                        Ok(m) => {
                            if let Some(k) = m.key() {
                                batch.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
                            }
                        }
                        Err(KafkaError::PartitionEOF(p)) => ends.push(p),
                        Err(e) => warn!(error = %e, "identity view: reading the changelog"),
                    }
                    if batch.len() < MAX_VIEW_BATCH {
                        next = c.poll(Duration::ZERO);
                    }
                }
                view.apply_batch(batch);
                // Caught up only once what was read before the ends is applied.
                for p in ends {
                    if at_end.insert(p) && at_end.len() as i32 == n && !view.is_caught_up() {
                        info!(entries = view.len(), "identity view caught up");
                        view.set_caught_up();
                    }
                }
            }
        })
        .map_err(|e| KafkaOpError::Thread(e.to_string()))
}
