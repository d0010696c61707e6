//! The operator actions behind `corralctl plans apply` and `corralctl replay blocked`, on the
//! runtime's definitions and reader primitives.

use std::collections::BTreeMap;
use std::path::Path;

use corral_codec::{AvroRecord, BlockedEvent};
use corral_runtime::definitions::{apply_versioned, Applied, Desired};
use corral_runtime::reader::{copy_selected, Start};
use rdkafka::message::Message;
use tracing::warn;

use crate::plans::plan::{self, PlanFile, KIND};

#[derive(Debug, thiserror::Error)]
pub enum KafkaOpError {
    #[error("{0}")]
    Plan(String),
    #[error("encoding: {0}")]
    Codec(#[from] corral_codec::CodecError),
    #[error(transparent)]
    Runtime(#[from] corral_runtime::RuntimeError),
}

/// Validates the plan file and writes it to `definitions` as the next version (unchanged plans
/// are not written again). Refuses a plan that claims a source another plan of the space has.
pub fn apply_plan(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    definitions_topic: &str,
    path: &Path,
    updated_by: Option<String>,
) -> Result<Applied, KafkaOpError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KafkaOpError::Plan(format!("cannot read {}: {e}", path.display())))?;
    let diags = plan::diagnose(&path.display().to_string(), &text);
    if !diags.is_empty() {
        let lines: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(KafkaOpError::Plan(lines.join("\n")));
    }
    let file = PlanFile::parse(&text).map_err(|e| KafkaOpError::Plan(e.to_string()))?;
    let desired = Desired {
        space_id: file.space_id.clone(),
        kind: KIND.to_string(),
        key: file.key.clone(),
        name: file.name.clone(),
        body: file.to_json(),
    };
    let one_plan_per_source = |current: &BTreeMap<String, corral_codec::Definition>| {
        let others = current
            .values()
            .filter(|d| d.kind == KIND && d.space_id == file.space_id && d.key != file.key);
        for d in others {
            if let Ok(other) = PlanFile::from_json(d.body.clone()) {
                if let Some(s) = other.sources.iter().find(|s| file.sources.contains(s)) {
                    return Err(KafkaOpError::Plan(format!(
                        "source {s:?} is already connected to plan {:?}; a source has at most one plan",
                        other.key
                    )));
                }
            }
        }
        Ok(())
    };
    let mut applied = apply_versioned(
        bootstrap,
        kafka,
        definitions_topic,
        std::slice::from_ref(&desired),
        updated_by.as_deref(),
        one_plan_per_source,
    )?;
    applied
        .pop()
        .ok_or_else(|| KafkaOpError::Plan("nothing was applied".into()))
}

/// Which blocked messages to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFilter {
    pub since_ms: i64,
    pub until_ms: Option<i64>,
    pub source_id: Option<String>,
    pub reason: Option<String>,
    pub dry_run: bool,
}

/// Re-produces the original messages of `events.blocked` (blocked since `since_ms`) into
/// `events.raw`, keyed by messageId, for validation with the current plans. Returns the count.
/// `progress` is called with the records read so far.
pub fn replay_blocked(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    blocked_topic: &str,
    raw_topic: &str,
    filter: &ReplayFilter,
    progress: &mut dyn FnMut(u64),
) -> Result<usize, KafkaOpError> {
    copy_selected(
        bootstrap,
        kafka,
        "corralctl-replay",
        blocked_topic,
        Start::Time(filter.since_ms),
        raw_topic,
        filter.dry_run,
        progress,
        |m| {
            let Some(v) = m.payload() else {
                return Ok(None);
            };
            let b = match BlockedEvent::decode(v) {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, offset = m.offset(), "skipping an undecodable blocked record");
                    return Ok(None);
                }
            };
            if b.blocked_at_ms < filter.since_ms
                || filter.until_ms.is_some_and(|u| b.blocked_at_ms >= u)
                || filter
                    .source_id
                    .as_ref()
                    .is_some_and(|s| b.message.source_id.as_ref() != Some(s))
                || filter.reason.as_ref().is_some_and(|r| &b.reason != r)
            {
                return Ok(None);
            }
            let value = b.message.encode()?;
            // Keyed as the collector keys it, so it reaches the validator partition that
            // remembers its messageId.
            Ok(Some((
                corral_codec::routing::message_key(&b.message),
                value,
            )))
        },
    )
}
