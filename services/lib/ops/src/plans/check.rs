//! `corralctl plans check-event PLAN EVENT.json`: a dry run that tells what would happen and why.

use std::fmt::Write as _;
use std::path::Path;

use corral_codec::SegmentMessage;
use serde_json::Value as Json;

use crate::plans::engine::{self, Decision, Verdict};
use crate::plans::plan::{self, LoadError};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Plan(#[from] LoadError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a Segment message: {message}")]
    Event { path: String, message: String },
}

/// Reads a Segment JSON payload; `messageId` defaults to `check-event`, the space to the plan's.
pub fn message_from_json(space_id: &str, mut payload: Json) -> Result<SegmentMessage, String> {
    if let Json::Object(m) = &mut payload {
        m.entry("messageId")
            .or_insert_with(|| Json::String("check-event".into()));
    }
    SegmentMessage::from_segment_json(space_id, payload).map_err(|e| e.to_string())
}

/// Runs the plan file against the event file and returns the decision with a report.
pub fn check_event(plan_path: &Path, event_path: &Path) -> Result<(Decision, String), CheckError> {
    let (file, compiled) = plan::load_file(plan_path)?;
    let text = std::fs::read_to_string(event_path).map_err(|source| CheckError::Io {
        path: event_path.display().to_string(),
        source,
    })?;
    let ev_err = |message: String| CheckError::Event {
        path: event_path.display().to_string(),
        message,
    };
    let payload: Json = serde_json::from_str(&text).map_err(|e| ev_err(e.to_string()))?;
    let msg = message_from_json(&file.space_id, payload).map_err(ev_err)?;
    let decision = engine::evaluate(Some(&compiled), &msg);
    Ok((decision.clone(), report(&file.key, &decision)))
}

/// A human-readable account of a decision.
pub fn report(plan_key: &str, d: &Decision) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "plan {plan_key}");
    for step in &d.steps {
        let _ = writeln!(s, "  - {step}");
    }
    if !d.violations.is_empty() {
        let _ = writeln!(s, "violations ({}):", d.violations.len());
        for v in &d.violations {
            let _ = writeln!(
                s,
                "  - {} at {}: {}",
                v.violation_type, v.field, v.description
            );
        }
    }
    match &d.verdict {
        Verdict::Valid { message, protocols } => {
            let _ = writeln!(s, "outcome: VALID -> events.valid");
            if !protocols.omitted.is_empty() {
                let _ = writeln!(s, "omitted (unplanned): {}", protocols.omitted.join(", "));
            }
            if !protocols.omitted_on_violation.is_empty() {
                let _ = writeln!(
                    s,
                    "omitted on violation: {}",
                    protocols.omitted_on_violation.join(", ")
                );
            }
            let _ = writeln!(
                s,
                "message as delivered:\n{}",
                serde_json::to_string_pretty(&message.to_segment_json()).unwrap_or_default()
            );
        }
        Verdict::Blocked { reason } => {
            let _ = writeln!(
                s,
                "outcome: BLOCKED ({reason}) -> events.blocked, unchanged and replayable"
            );
        }
    }
    let _ = writeln!(s, "{} record(s) -> events.violations", d.violations.len());
    s
}
