//! The two processors of the service, each on its own exactly-once runtime:
//!
//! - [`StitcherProcessor`] (application `identity-stitcher`): `events.valid` (key: the event's
//!   routing identifier, `corral_codec::routing`) and the links on `identity.events-by-id`
//!   (co-partitioned with it) -> the `links` store, and for each event either `events.resolved`
//!   (every identifier already linked to one profile: a hit) or `identity.events-by-space` (key:
//!   space id) for the coordinator.
//! - [`CoordinatorProcessor`] (application `identity`): `identity.events-by-space` -> the graph
//!   store, `events.resolved` (key: the event's history key, on the profile id's partition), `profiles.merges` (key: the merged-away id), and
//!   link updates back to `identity.events-by-id`. The single writer of the graph of every space
//!   hashed to its partition.

use std::sync::Arc;

use corral_codec::{
    AvroRecord, ExternalId, ProfileMerge, ResolvedEvent, SegmentMessage, ValidEvent,
};
use corral_runtime::cli::names;
use corral_runtime::{InputRecord, Output, ProcessContext, ProcessError, Processor};

use crate::engine::{resolve, Cap, MergeKind, Outcome, Resolution};
use crate::ids::{extract, Extracted};
use crate::metrics::{type_label, Metrics};
use crate::rules::RulesStore;
use crate::stitch::{self, StitchInput};
use crate::store::CtxGraph;

/// The stitcher's store: identifier -> [`stitch::Link`].
pub const LINKS: corral_runtime::Store = corral_runtime::Store::named("links");

fn decode(record: &InputRecord<'_>) -> Result<ValidEvent, ProcessError> {
    let value = record
        .value
        .ok_or_else(|| ProcessError::bad_input("missing_value", "record has no value"))?;
    ValidEvent::decode(value).map_err(|e| ProcessError::bad_input(e.reason(), e.to_string()))
}

pub struct StitcherProcessor {
    rules: Arc<RulesStore>,
    metrics: Arc<Metrics>,
}

impl StitcherProcessor {
    pub fn new(rules: Arc<RulesStore>, metrics: Arc<Metrics>) -> Self {
        StitcherProcessor { rules, metrics }
    }
}

impl Processor for StitcherProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::bad_input("missing_value", "record has no value"))?;
        let input =
            stitch::classify(value).map_err(|e| ProcessError::bad_input("undecodable_link", e))?;
        let StitchInput::Event(_) = input else {
            let key = record
                .key
                .ok_or_else(|| ProcessError::bad_input("missing_key", "link record has no key"))?
                .to_vec();
            match input {
                StitchInput::Link(Some(link)) => ctx.put(LINKS, key, stitch::encode_link(&link)),
                _ => ctx.delete(LINKS, key),
            }
            return Ok(());
        };
        let ev = decode(record).inspect_err(|_| {
            self.metrics
                .events
                .with_label_values(&["dead_letter"])
                .inc();
        })?;
        let rules = self.rules.for_space(&ev.message.space_id);
        let extracted = extract(&ev.message, &rules);
        let link = match stitch::routing_ident(&extracted.ids) {
            Some(id) => ctx
                .get(LINKS, &stitch::link_key(&ev.message.space_id, id))?
                .map(|b| stitch::decode_link(&b).map_err(ProcessError::Fatal))
                .transpose()?,
            None => None,
        };
        match link {
            Some(link) if stitch::hit(&link, &extracted.ids) => {
                self.metrics.lookups.with_label_values(&["hit"]).inc();
                self.metrics.events.with_label_values(&["matched"]).inc();
                count_blocked(&self.metrics, &extracted);
                let now = event_time(&ev.message, record);
                let mut external_ids: Vec<ExternalId> =
                    link.ids.iter().map(|i| i.to_external()).collect();
                external_ids.extend(extracted.accounts);
                let out = ResolvedEvent {
                    message: ev.message,
                    profile_id: link.profile_id.clone(),
                    external_ids,
                    resolved_at_ms: now,
                };
                ctx.emit_record_partitioned(
                    corral_codec::history::key(&out),
                    out.profile_id.as_bytes(),
                    &out,
                )?;
            }
            _ => {
                self.metrics.lookups.with_label_values(&["miss"]).inc();
                ctx.emit_to(Output {
                    topic: ctx.topic(names::BY_SPACE),
                    key: Some(ev.message.space_id.into_bytes()),
                    value: Some(value.to_vec()),
                    partition: None,
                    headers: Vec::new(),
                });
            }
        }
        Ok(())
    }
}

fn count_blocked(metrics: &Metrics, extracted: &Extracted) {
    for b in &extracted.blocked {
        metrics
            .blocked_values
            .with_label_values(&[type_label(&b.id_type)])
            .inc();
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
        // A deletion request (docs/privacy.md), in order with the space's events.
        if let Some(req) = record
            .value
            .and_then(corral_ops::privacy::DeletionRequest::decode)
        {
            let req = req.map_err(|e| ProcessError::bad_input("undecodable_deletion", e))?;
            let done = crate::privacy::on_request(ctx, &req)?;
            self.metrics.deletions.inc();
            self.metrics.deleted_profiles.inc_by(done.profiles as u64);
            tracing::info!(
                regulation = %req.regulation_id,
                profiles = done.profiles,
                identifiers = done.identifiers,
                "deletion request carried out"
            );
            return Ok(());
        }
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
        count_blocked(&self.metrics, &extracted);
        if crate::privacy::erased(ctx, &space, &extracted.ids, now)? {
            // Received before a deletion of one of its identifiers (docs/privacy.md).
            self.metrics.events.with_label_values(&["erased"]).inc();
            return Ok(());
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
        // Fresh links for the profile this event touched (also when it only matched: the event
        // missed, so its stitcher lacked the link or had an older one).
        let by_id = ctx.topic(names::BY_ID);
        let links =
            stitch::links_after(&space, &res.profile, &extracted.ids, !res.merges.is_empty());
        let kind = if res.profile.identifiers.len() > stitch::LINK_MAX_IDS {
            "unlink"
        } else {
            "link"
        };
        self.metrics
            .links
            .with_label_values(&[kind])
            .inc_by(links.len() as u64);
        for (key, value) in links {
            ctx.emit_to(Output {
                topic: by_id.clone(),
                key: Some(key),
                value: Some(value),
                partition: None,
                headers: Vec::new(),
            });
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
        ctx.emit_record_partitioned(
            corral_codec::history::key(&out),
            out.profile_id.as_bytes(),
            &out,
        )?;
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
