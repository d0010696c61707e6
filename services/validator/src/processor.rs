//! The validator's [`Processor`]: decode, de-duplicate, validate, emit, all inside the runtime's
//! transaction.

use std::sync::Arc;

use corral_codec::{
    AvroRecord, BlockedEvent, MessageType, RawEvent, SegmentMessage, ValidEvent, Violation,
    ViolationDetail,
};
use corral_runtime::{InputRecord, ProcessContext, ProcessError, Processor, Store, StoreSpec};
use serde_json::json;

use crate::engine::{self, Verdict};
use crate::metrics::Metrics;
use crate::plan::CompiledPlan;
use crate::registry::PlanStore;
use crate::{dedup, now_ms};

/// The de-duplication store: messageId → when it was delivered. Logged by `events.valid` (see
/// [`dedup_store`]), so it has no changelog topic; named apart from the earlier changelogged
/// `dedup` store, whose local offsets were of another topic.
pub const DEDUP: Store = Store::named("message-ids");

/// The de-duplication store's declaration: `events.valid` logs it, and a partition without
/// local state restores only the window's records.
pub fn dedup_store(window_ms: i64) -> StoreSpec {
    StoreSpec::logged_by_output(DEDUP, ValidEvent::TOPIC, Some(window_ms))
}

/// Name and user of the events that forward violations (Segment's shape).
pub const VIOLATION_EVENT: &str = "Violation Generated";
pub const VIOLATION_USER: &str = "schema-violations";

pub struct ValidatorProcessor {
    plans: Arc<PlanStore>,
    metrics: Arc<Metrics>,
    /// How long a messageId stays a duplicate.
    dedup_window_ms: i64,
}

impl ValidatorProcessor {
    pub fn new(plans: Arc<PlanStore>, metrics: Arc<Metrics>, dedup_window_ms: i64) -> Self {
        ValidatorProcessor {
            plans,
            metrics,
            dedup_window_ms,
        }
    }
}

impl Processor for ValidatorProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        let bad = |reason, msg: String| {
            self.metrics
                .messages
                .with_label_values(&["dead_letter"])
                .inc();
            ProcessError::bad_input(reason, msg)
        };
        let value = record
            .value
            .ok_or_else(|| bad("missing_value", "record has no value".into()))?;
        let msg = RawEvent::decode(value).map_err(|e| bad(e.reason(), e.to_string()))?;
        // The record's time, not the wall clock: a rewound batch decides the same way again.
        let now = record
            .timestamp_ms
            .filter(|t| *t > 0)
            .or(msg.received_at_ms)
            .unwrap_or_else(now_ms);

        let dkey = dedup::key(&msg.space_id, &msg.message_id);
        let seen = ctx.get(DEDUP, &dkey)?;
        if dedup::is_duplicate(seen.as_deref(), now, self.dedup_window_ms) {
            self.metrics
                .messages
                .with_label_values(&["duplicate"])
                .inc();
            return Ok(());
        }

        let snapshot = self.plans.snapshot();
        let plan = snapshot.for_source(&msg.space_id, msg.source_id.as_deref());
        let decision = engine::evaluate(plan.map(|p| p.as_ref()), &msg);
        let key = msg.message_id.as_bytes();

        let outcome = decision.outcome();
        let name = engine::event_name(&msg);
        let planned = match (plan, msg.message_type) {
            (Some(p), MessageType::Track) => name.is_some_and(|n| p.events.contains_key(n)),
            _ => false,
        };
        let label = match msg.message_type {
            MessageType::Track => self.metrics.event_label(name, planned),
            other => other.as_str().to_string(),
        };
        self.metrics.messages.with_label_values(&[outcome]).inc();
        self.metrics
            .events
            .with_label_values(&[label.as_str(), outcome])
            .inc();

        match decision.verdict {
            Verdict::Valid { message, protocols } => {
                let out = ValidEvent {
                    message: *message,
                    protocols,
                };
                // Keyed by the identifier identity's stitcher looks the event up by. It goes to
                // this task's partition, which is that key's: the collector keys events.raw the
                // same way (`corral_codec::routing`). The record also carries the messageId's
                // store entry: events.valid is the de-duplication store's log, so remembering a
                // message costs no record of its own. Only delivered messages are remembered: a
                // blocked one can be replayed once the plan is fixed.
                let routing = corral_codec::routing::routing_key(&out.message);
                let routing = routing.unwrap_or_else(|| key.to_vec());
                ctx.emit_logging(routing, &out, DEDUP, (dkey, dedup::encode(now)))?;
            }
            Verdict::Blocked { reason } => {
                let out = BlockedEvent {
                    message: msg.clone(),
                    reason: reason.to_string(),
                    tracking_plan_id: plan.map(|p| p.key.clone()),
                    violations: decision.violations.clone(),
                    blocked_at_ms: now,
                };
                ctx.emit_record(key, &out)?;
            }
        }

        let forward_to = plan
            .and_then(|p| p.controls.forward_violations_to.clone())
            .filter(|_| !is_violation_event(&msg));
        for (i, v) in decision.violations.iter().enumerate() {
            self.metrics
                .violations
                .with_label_values(&[v.violation_type.as_str()])
                .inc();
            let record = violation_record(&msg, plan.map(|p| p.as_ref()), v, now);
            ctx.emit_record(key, &record)?;
            if let Some(source) = &forward_to {
                let ev = violation_event(&record, source, i, now);
                ctx.emit_record(corral_codec::routing::message_key(&ev), &ev)?;
            }
        }
        Ok(())
    }
}

/// Forwarded violations are never validated into more violation events.
pub fn is_violation_event(msg: &SegmentMessage) -> bool {
    msg.message_type == MessageType::Track
        && msg.event.as_deref() == Some(VIOLATION_EVENT)
        && msg.user_id.as_deref() == Some(VIOLATION_USER)
}

/// The `events.violations` record of one violation.
pub fn violation_record(
    msg: &SegmentMessage,
    plan: Option<&CompiledPlan>,
    v: &ViolationDetail,
    now: i64,
) -> Violation {
    let app_version = msg
        .context
        .as_ref()
        .and_then(|c| c.get("app"))
        .and_then(|a| a.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Violation {
        space_id: msg.space_id.clone(),
        message_id: msg.message_id.clone(),
        event_type: msg.message_type,
        event_name: engine::event_name(msg).map(str::to_string),
        source_id: msg.source_id.clone(),
        source_name: None,
        source_slug: None,
        tracking_plan_id: plan.map(|p| p.key.clone()),
        tracking_plan_name: plan.and_then(|p| p.name.clone()),
        violation_type: v.violation_type.clone(),
        violation_field: v.field.clone(),
        violation_description: v.description.clone(),
        event_timestamp: msg.timestamp.clone(),
        event_sent_at: msg.sent_at.clone(),
        app_version,
        detected_at_ms: now,
    }
}

/// Segment's `Violation Generated` track event for one violation, with a deterministic messageId
/// (`{messageId}-violation-{n}`), so a reprocessed message forwards the same events.
pub fn violation_event(v: &Violation, source_id: &str, n: usize, now: i64) -> RawEvent {
    let mut ev = SegmentMessage::new(
        v.space_id.clone(),
        MessageType::Track,
        format!("{}-violation-{n}", v.message_id),
    );
    ev.event = Some(VIOLATION_EVENT.into());
    ev.user_id = Some(VIOLATION_USER.into());
    ev.properties = Some(json!({
        "appVersion": v.app_version,
        "eventMessageID": v.message_id,
        "eventName": v.event_name,
        "eventSentAt": v.event_sent_at,
        "eventTimestamp": v.event_timestamp,
        "eventType": v.event_type.as_str(),
        "sourceID": v.source_id,
        "sourceName": v.source_name,
        "sourceSlug": v.source_slug,
        "trackingPlanID": v.tracking_plan_id,
        "trackingPlanName": v.tracking_plan_name,
        "violationDescription": v.violation_description,
        "violationField": v.violation_field,
        "violationType": v.violation_type,
    }));
    ev.source_id = Some(source_id.to_string());
    ev.received_at_ms = Some(now);
    ev
}
