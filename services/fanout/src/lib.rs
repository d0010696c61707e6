//! Corral's fanout service: audience and trait changes (`audiences.membership`,
//! `traits.changes`) delivered to destinations.
//!
//! - [`payload`]: pure builders of Segment's identify/track payloads and each adapter's request.
//! - [`limit`], [`retry`]: the rate limiter (governor GCRA, adaptive to 429) and retry policy.
//! - [`outbox`]: deliveries and their retry state in a changelogged state store.
//! - [`lane`]: one delivery lane per destination (limiter, concurrency, Retry-After pause).
//! - [`processor`]: the exactly-once processor that ties them together. A deleted profile's
//!   exits become user-deletion requests for the destinations that have such an API (Braze,
//!   Iterable), queued once per profile and destination through the outbox.
//! - [`destination`], [`registry`]: destination definitions (file or `definitions` topic).
//!
//! Operator guide: `docs/fanout.md`.

/// Destination specs and their operator actions, shared with `corralctl`.
pub use corral_ops::destination;
pub mod lane;
pub mod limit;
pub mod metrics;
pub use corral_ops::destinations as ops;
pub mod outbox;
pub mod payload;
pub mod processor;
pub mod registry;
pub mod retry;

use std::path::Path;

use corral_runtime::cli::names;
use corral_runtime::definitions::DefinitionEvent;
use corral_runtime::topics::CleanupPolicy;
use corral_runtime::{Service, ServiceError, TopicNames};
use tracing::warn;

use crate::destination::{DestinationType, DestinationsFile};
use crate::processor::Topics;
use crate::registry::{apply_definition, Destinations, SharedDestinations};

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("destinations: {0}")]
    Destinations(String),
}

impl Topics {
    /// The standard topics under `names`.
    pub fn from_names(names: &TopicNames) -> Self {
        use corral_codec::{MembershipChange, TraitChange};
        Topics {
            membership: names.of::<MembershipChange>(),
            traits: names.of::<TraitChange>(),
            replay: names.name(names::REPLAY),
            deliveries_dlq: names.name(names::DELIVERIES_DLQ),
        }
    }
}

/// Destinations from a file (no hot reload); every error of the file is reported.
pub fn load_destinations_file(path: &Path) -> Result<Destinations, FanoutError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FanoutError::Destinations(format!("reading {}: {e}", path.display())))?;
    let file = DestinationsFile::from_yaml(&text).map_err(|errs| {
        let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
        FanoutError::Destinations(lines.join("; "))
    })?;
    Destinations::from_file(&file).map_err(|e| FanoutError::Destinations(e.to_string()))
}

/// Follows destination definitions into `shared` (hot reload); a rejected version leaves the
/// previous one in force.
pub fn follow_destinations(
    svc: &mut Service,
    shared: SharedDestinations,
) -> Result<(), FanoutError> {
    svc.follow_definitions("destinations", move |ev| {
        let res = match ev {
            DefinitionEvent::Upsert { key, definition } => {
                apply_definition(&shared, key, Some(&definition))
            }
            DefinitionEvent::Delete { key } => apply_definition(&shared, key, None),
            DefinitionEvent::Undecodable { key, error } => {
                warn!(key, error, "skipping an undecodable definition");
                Ok(())
            }
        };
        if let Err(e) = res {
            warn!(error = %e, "destination definition rejected; the previous version stays");
        }
    })?;
    Ok(())
}

/// Creates what fanout reads and writes besides its main input when missing: `traits.changes`
/// and the replay input (co-partitioned with the membership topic), the deliveries dead-letter
/// topic and Kafka destinations' topics.
pub fn ensure_topics(
    svc: &Service,
    topics: &Topics,
    dests: &Destinations,
) -> Result<(), FanoutError> {
    let like = &topics.membership;
    svc.ensure_topic_like(&topics.traits, like, CleanupPolicy::Delete, None)?;
    svc.ensure_topic_like(&topics.replay, like, CleanupPolicy::Delete, None)?;
    svc.ensure_topic_like(&topics.deliveries_dlq, like, CleanupPolicy::Delete, None)?;
    let kafka_targets = dests
        .iter()
        .filter(|d| d.spec.dest_type == DestinationType::Kafka)
        .filter_map(|d| d.spec.topic.as_deref());
    for t in kafka_targets {
        svc.ensure_topic_like(t, like, CleanupPolicy::Delete, None)?;
    }
    Ok(())
}
