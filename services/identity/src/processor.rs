//! The two processors of the service, each on its own exactly-once runtime:
//!
//! - [`RouterProcessor`] (application `identity-router`): `events.valid` (key: messageId) ->
//!   `identity.events-by-space` (key: space id, value unchanged). Stateless.
//! - [`CoordinatorProcessor`] (application `identity`): `identity.events-by-space` -> the graph
//!   store, `events.resolved` (key: profile id), `profiles.merges` (key: the merged-away id). The
//!   single writer of the graph of every space hashed to its partition.

use std::sync::Arc;

use corral_codec::{
    AvroRecord, ExternalId, ProfileMerge, ResolvedEvent, SegmentMessage, ValidEvent,
};
use corral_runtime::cli::names;
use corral_runtime::{InputRecord, Output, ProcessContext, ProcessError, Processor};

use crate::engine::{resolve, Cap, MergeKind, Outcome, Resolution};
use crate::ids::extract;
use crate::metrics::{type_label, Metrics};
use crate::rules::RulesStore;
use crate::store::CtxGraph;

fn decode(record: &InputRecord<'_>) -> Result<ValidEvent, ProcessError> {
    let value = record
        .value
        .ok_or_else(|| ProcessError::bad_input("missing_value", "record has no value"))?;
    ValidEvent::decode(value).map_err(|e| ProcessError::bad_input(e.reason(), e.to_string()))
}

pub struct RouterProcessor {
    metrics: Arc<Metrics>,
}

impl RouterProcessor {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        RouterProcessor { metrics }
    }
}

impl Processor for RouterProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        // Decoding here sends unusable records to the dead-letter topic before they reach a
        // coordinator, and reads the space id to route by.
        let ev = decode(record).inspect_err(|_| {
            self.metrics
                .events
                .with_label_values(&["dead_letter"])
                .inc();
        })?;
        // Keyed by space: the murmur2 partitioner picks the bucket, the same one every time.
        let topic = ctx.topic(names::BY_SPACE);
        ctx.emit_to(Output {
            topic,
            key: Some(ev.message.space_id.into_bytes()),
            value: record.value.map(<[u8]>::to_vec),
            partition: None,
        });
        self.metrics.routed.inc();
        Ok(())
    }
}

pub struct CoordinatorProcessor {
    rules: Arc<RulesStore>,
    metrics: Arc<Metrics>,
}

impl CoordinatorProcessor {
    pub fn new(rules: Arc<RulesStore>, metrics: Arc<Metrics>) -> Self {
        CoordinatorProcessor { rules, metrics }
    }
}

/// The event's time: the collector's receive time, else the Kafka timestamp. Never the wall
/// clock, so a replay decides windowed limits the same way.
pub fn event_time(msg: &SegmentMessage, record: &InputRecord<'_>) -> i64 {
    msg.received_at_ms
        .or_else(|| {
            msg.timestamp
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
        })
        .or(record.timestamp_ms)
        .unwrap_or(0)
}

impl Processor for CoordinatorProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        let ev = decode(record).inspect_err(|_| {
            self.metrics
                .events
                .with_label_values(&["dead_letter"])
                .inc();
        })?;
        let msg = ev.message;
        let space = msg.space_id.clone();
        let rules = self.rules.for_space(&space);
        let now = event_time(&msg, record);
        let extracted = extract(&msg, &rules);
        for b in &extracted.blocked {
            self.metrics
                .blocked_values
                .with_label_values(&[type_label(&b.id_type)])
                .inc();
        }
        let mut graph = CtxGraph { ctx };
        let Some(res) = resolve(&mut graph, &rules, &space, &extracted.ids, now)? else {
            self.metrics
                .events
                .with_label_values(&["no_identifiers"])
                .inc();
            return Err(ProcessError::bad_input(
                "no_identifiers",
                format!(
                    "message has no identifier that is not blocked ({} blocked)",
                    extracted.blocked.len()
                ),
            ));
        };
        self.count(&res);
        let trigger_ids: Vec<ExternalId> = extracted.ids.iter().map(|i| i.to_external()).collect();
        for step in &res.merges {
            let merge = ProfileMerge {
                space_id: space.clone(),
                from_profile_id: step.from.clone(),
                into_profile_id: step.into.clone(),
                trigger_message_id: Some(msg.message_id.clone()),
                trigger_ids: trigger_ids.clone(),
                merged_at_ms: now,
            };
            // Keyed by the merged-away id: compute moves that profile's state from its partition.
            ctx.emit_record(step.from.as_bytes(), &merge)?;
        }
        let mut external_ids: Vec<ExternalId> =
            res.profile.idents().map(|i| i.to_external()).collect();
        external_ids.extend(extracted.accounts);
        let pid = res.profile.id.clone();
        let out = ResolvedEvent {
            message: msg,
            profile_id: pid.clone(),
            external_ids,
            resolved_at_ms: now,
        };
        ctx.emit_record(pid.as_bytes(), &out)?;
        Ok(())
    }
}

impl CoordinatorProcessor {
    fn count(&self, res: &Resolution) {
        let m = &self.metrics;
        let outcome = match res.outcome {
            Outcome::Created => {
                m.profiles_created.inc();
                "created"
            }
            Outcome::Added => "added",
            Outcome::Matched => "matched",
            Outcome::Merged => "merged",
            Outcome::Capped(cap) => {
                m.caps
                    .with_label_values(&[match cap {
                        Cap::Merges => "merges",
                        Cap::Identifiers => "identifiers",
                    }])
                    .inc();
                "capped"
            }
        };
        m.events.with_label_values(&[outcome]).inc();
        for s in &res.merges {
            m.merges
                .with_label_values(&[match s.kind {
                    MergeKind::Merge => "merge",
                    MergeKind::Rename => "rename",
                }])
                .inc();
        }
        for d in &res.demoted {
            m.demotions
                .with_label_values(&[type_label(&d.id_type)])
                .inc();
        }
        m.merge_protection_refusals
            .inc_by(res.untrusted.len() as u64);
    }
}
