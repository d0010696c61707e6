//! The controls and outcomes of Segment Protocols, as a pure function of a compiled plan and a
//! message: no Kafka, no clock, no state.
//!
//! Order (Segment's Schema Configuration): unplanned events (allow / block), unplanned properties
//! or traits (allow / omit), JSON Schema violations (allow / block / omit), then the common schema
//! as a second pass on the whole payload (allow / block / omit). A blocked message is returned
//! exactly as it came in; an allowed one carries what was omitted and every violation.

use corral_codec::{MessageType, ProtocolsAnnotation, SegmentMessage, ViolationDetail};
use jsonschema::error::ValidationErrorKind;
use jsonschema::ValidationError;
use serde_json::{Map, Value as Json};

use crate::plans::plan::{AllowBlock, AllowOmit, CompiledPlan, Schema, ViolationControl};

/// Violation types: a closed set (they label metrics).
pub mod kind {
    pub const UNPLANNED_EVENT: &str = "Unplanned Event";
    pub const UNPLANNED_PROPERTY: &str = "Unplanned Property";
    pub const UNPLANNED_TRAIT: &str = "Unplanned Trait";
    pub const REQUIRED: &str = "Required";
    pub const INVALID_TYPE: &str = "Invalid Type";
    pub const INVALID_VALUE: &str = "Invalid Value";
    pub const ALL: [&str; 6] = [
        UNPLANNED_EVENT,
        UNPLANNED_PROPERTY,
        UNPLANNED_TRAIT,
        REQUIRED,
        INVALID_TYPE,
        INVALID_VALUE,
    ];
}

/// Why a message was blocked (`BlockedEvent.reason`).
pub mod reason {
    pub const UNPLANNED_EVENT: &str = "unplanned_event";
    pub const VIOLATION: &str = "violation";
    pub const COMMON_VIOLATION: &str = "common_violation";
}

/// What happens to a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// To `events.valid`: the message (with omissions applied and `context.protocols` set).
    Valid {
        message: Box<SegmentMessage>,
        protocols: ProtocolsAnnotation,
    },
    /// To `events.blocked`, the original message unchanged.
    Blocked { reason: &'static str },
}

/// The verdict, every violation found, and the steps taken (for `plans check-event`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub violations: Vec<ViolationDetail>,
    pub steps: Vec<String>,
}

impl Decision {
    pub fn is_valid(&self) -> bool {
        matches!(self.verdict, Verdict::Valid { .. })
    }
    pub fn outcome(&self) -> &'static str {
        match self.verdict {
            Verdict::Valid { .. } => "valid",
            Verdict::Blocked { .. } => "blocked",
        }
    }
}

/// `context.protocols.event_version`, when it is an integer.
pub fn requested_event_version(msg: &SegmentMessage) -> Option<i64> {
    msg.context
        .as_ref()?
        .get("protocols")?
        .get("event_version")?
        .as_i64()
}

/// The event name a message is grouped by: track `event`, page/screen `name`, else the type.
pub fn event_name(msg: &SegmentMessage) -> Option<&str> {
    match msg.message_type {
        MessageType::Track => msg.event.as_deref(),
        MessageType::Page | MessageType::Screen => msg.name.as_deref(),
        _ => None,
    }
}

struct Run<'p> {
    plan: &'p CompiledPlan,
    msg: SegmentMessage,
    ann: ProtocolsAnnotation,
    violations: Vec<ViolationDetail>,
    steps: Vec<String>,
}

type Blocked = &'static str;

/// Applies `plan` (or none: everything passes unannotated) to `msg`.
pub fn evaluate(plan: Option<&CompiledPlan>, msg: &SegmentMessage) -> Decision {
    let Some(plan) = plan else {
        return Decision {
            verdict: Verdict::Valid {
                message: Box::new(msg.clone()),
                protocols: ProtocolsAnnotation {
                    source_id: msg.source_id.clone(),
                    ..Default::default()
                },
            },
            violations: Vec::new(),
            steps: vec!["no tracking plan is connected to this source: allowed unchanged".into()],
        };
    };
    let mut run = Run {
        plan,
        msg: msg.clone(),
        ann: ProtocolsAnnotation {
            tracking_plan_id: Some(plan.key.clone()),
            tracking_plan_version: Some(plan.version),
            source_id: msg.source_id.clone(),
            ..Default::default()
        },
        violations: Vec::new(),
        steps: Vec::new(),
    };
    let result = run.standard().and_then(|()| run.common());
    let Run {
        mut msg,
        mut ann,
        violations,
        mut steps,
        ..
    } = run;
    let verdict = match result {
        Err(reason) => {
            steps.push(format!(
                "blocked ({reason}): sent to events.blocked unchanged"
            ));
            Verdict::Blocked { reason }
        }
        Ok(()) => {
            ann.violations = violations.clone();
            annotate_context(&mut msg, &ann);
            steps.push(if violations.is_empty() {
                "allowed: no violations".to_string()
            } else {
                format!("allowed with {} violation(s) annotated", violations.len())
            });
            Verdict::Valid {
                message: Box::new(msg),
                protocols: ann,
            }
        }
    };
    Decision {
        verdict,
        violations,
        steps,
    }
}

impl Run<'_> {
    fn standard(&mut self) -> Result<(), Blocked> {
        let plan = self.plan;
        let c = &plan.controls;
        match self.msg.message_type {
            MessageType::Track => {
                let name = self.msg.event.clone().unwrap_or_default();
                let Some(event) = plan.events.get(&name) else {
                    self.violations.push(ViolationDetail {
                        violation_type: kind::UNPLANNED_EVENT.into(),
                        field: "event".into(),
                        description: format!(
                            "event {name:?} is not in tracking plan {:?}",
                            plan.key
                        ),
                    });
                    return match c.track.unplanned_events {
                        AllowBlock::Block => {
                            self.steps
                                .push(format!("unplanned event {name:?}: control is block"));
                            Err(reason::UNPLANNED_EVENT)
                        }
                        AllowBlock::Allow => {
                            self.steps
                                .push(format!("unplanned event {name:?}: control is allow"));
                            Ok(())
                        }
                    };
                };
                let requested = requested_event_version(&self.msg);
                let Some((version, schema)) = event.select(requested) else {
                    return Ok(());
                };
                self.ann.event_version = Some(*version);
                self.steps.push(match requested {
                    Some(r) if r == *version => format!("event {name:?} version {version}"),
                    Some(r) => format!(
                        "event {name:?}: version {r} is not planned, validating with the oldest, {version}"
                    ),
                    None => format!("event {name:?}: no event_version, validating with the oldest, {version}"),
                });
                self.check(
                    Slot::Properties,
                    schema,
                    kind::UNPLANNED_PROPERTY,
                    c.track.unplanned_properties,
                    c.track.violations,
                )
            }
            MessageType::Page | MessageType::Screen => {
                let schema = if self.msg.message_type == MessageType::Page {
                    plan.page.as_ref()
                } else {
                    plan.screen.as_ref()
                };
                match schema {
                    Some(s) => self.check(
                        Slot::Properties,
                        s,
                        kind::UNPLANNED_PROPERTY,
                        c.track.unplanned_properties,
                        c.track.violations,
                    ),
                    None => {
                        self.steps.push(format!(
                            "{}: the plan has no schema for it",
                            self.msg.message_type
                        ));
                        Ok(())
                    }
                }
            }
            MessageType::Identify | MessageType::Group => {
                let (schema, ctl) = if self.msg.message_type == MessageType::Identify {
                    (plan.identify.as_ref(), &c.identify)
                } else {
                    (plan.group.as_ref(), &c.group)
                };
                match schema {
                    Some(s) => self.check(
                        Slot::Traits,
                        s,
                        kind::UNPLANNED_TRAIT,
                        ctl.unplanned_traits,
                        ctl.violations,
                    ),
                    None => {
                        self.steps.push(format!(
                            "{}: the plan has no traits schema",
                            self.msg.message_type
                        ));
                        Ok(())
                    }
                }
            }
            MessageType::Alias => Ok(()),
        }
    }

    /// Unplanned keys, then schema violations, of `properties` or `traits`.
    fn check(
        &mut self,
        slot: Slot,
        schema: &Schema,
        unplanned_kind: &'static str,
        unplanned: AllowOmit,
        control: ViolationControl,
    ) -> Result<(), Blocked> {
        let prefix = slot.name();
        // Unplanned keys.
        let mut extra = Vec::new();
        if let Some(Json::Object(m)) = slot.get(&self.msg) {
            extra = m
                .keys()
                .filter(|k| !schema.is_planned(k))
                .cloned()
                .collect();
        }
        for k in &extra {
            let field = format!("{prefix}.{k}");
            self.violations.push(ViolationDetail {
                violation_type: unplanned_kind.into(),
                field: field.clone(),
                description: format!("{k:?} is not planned for this {}", self.msg.message_type),
            });
            if unplanned == AllowOmit::Omit {
                if let Some(Json::Object(m)) = slot.get_mut(&mut self.msg) {
                    m.remove(k);
                }
                self.ann.omitted.push(field);
            }
        }
        if !extra.is_empty() {
            self.steps.push(format!(
                "unplanned {prefix} {extra:?}: control is {}",
                if unplanned == AllowOmit::Omit {
                    "omit"
                } else {
                    "allow"
                }
            ));
        }
        // Schema violations.
        let empty = Json::Object(Map::new());
        let instance = slot.get(&self.msg).unwrap_or(&empty);
        let mut found = Vec::new();
        let mut offending = Vec::new();
        for e in schema.validator.iter_errors(instance) {
            if let Some(top) = e.instance_path().segments().next() {
                let top = top.to_string();
                if !offending.contains(&top) {
                    offending.push(top);
                }
            }
            found.push(detail(&e, prefix));
        }
        if found.is_empty() {
            return Ok(());
        }
        self.steps.push(format!(
            "{} schema violation(s) in {prefix}: control is {}",
            found.len(),
            control_name(control)
        ));
        self.violations.extend(found);
        match control {
            ViolationControl::Allow => Ok(()),
            ViolationControl::Block => Err(reason::VIOLATION),
            ViolationControl::Omit => {
                if let Some(Json::Object(m)) = slot.get_mut(&mut self.msg) {
                    for k in &offending {
                        if m.remove(k).is_some() {
                            self.ann.omitted_on_violation.push(format!("{prefix}.{k}"));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The common schema, on the whole payload, after the standard controls.
    fn common(&mut self) -> Result<(), Blocked> {
        let Some(schema) = self.plan.common.as_ref() else {
            return Ok(());
        };
        let mut payload = self.msg.to_segment_json();
        let mut found = Vec::new();
        let mut paths: Vec<Vec<String>> = Vec::new();
        for e in schema.validator.iter_errors(&payload) {
            let segs: Vec<String> = e
                .instance_path()
                .segments()
                .map(|s| s.to_string())
                .collect();
            if !segs.is_empty() && !paths.contains(&segs) {
                paths.push(segs);
            }
            found.push(detail(&e, ""));
        }
        if found.is_empty() {
            self.steps.push("common schema: no violations".into());
            return Ok(());
        }
        let control = self.plan.controls.common.violations;
        self.steps.push(format!(
            "{} common schema violation(s): control is {}",
            found.len(),
            control_name(control)
        ));
        self.violations.extend(found);
        match control {
            ViolationControl::Allow => Ok(()),
            ViolationControl::Block => Err(reason::COMMON_VIOLATION),
            ViolationControl::Omit => {
                let mut removed = Vec::new();
                for p in &paths {
                    // The message's identity is never omitted.
                    if p.len() == 1 && (p[0] == "type" || p[0] == "messageId") {
                        continue;
                    }
                    if remove_path(&mut payload, p) {
                        removed.push(p.join("."));
                    }
                }
                if removed.is_empty() {
                    return Ok(());
                }
                match SegmentMessage::from_segment_json(self.msg.space_id.clone(), payload) {
                    Ok(mut m) => {
                        m.source_id = self.msg.source_id.take();
                        m.write_key_id = self.msg.write_key_id.take();
                        m.received_at_ms = self.msg.received_at_ms;
                        m.client_ip = self.msg.client_ip.take();
                        self.msg = m;
                        self.ann.omitted_on_violation.extend(removed);
                    }
                    Err(e) => self.steps.push(format!("cannot omit ({e}); allowed as is")),
                }
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Properties,
    Traits,
}

impl Slot {
    fn name(self) -> &'static str {
        match self {
            Slot::Properties => "properties",
            Slot::Traits => "traits",
        }
    }
    fn get(self, m: &SegmentMessage) -> Option<&Json> {
        match self {
            Slot::Properties => m.properties.as_ref(),
            Slot::Traits => m.traits.as_ref(),
        }
    }
    fn get_mut(self, m: &mut SegmentMessage) -> Option<&mut Json> {
        match self {
            Slot::Properties => m.properties.as_mut(),
            Slot::Traits => m.traits.as_mut(),
        }
    }
}

fn control_name(c: ViolationControl) -> &'static str {
    match c {
        ViolationControl::Allow => "allow",
        ViolationControl::Block => "block",
        ViolationControl::Omit => "omit",
    }
}

/// A schema error as Segment shows it: type, dotted field path, description.
fn detail(e: &ValidationError<'_>, prefix: &str) -> ViolationDetail {
    let mut segs: Vec<String> = Vec::new();
    if !prefix.is_empty() {
        segs.push(prefix.to_string());
    }
    segs.extend(e.instance_path().segments().map(|s| s.to_string()));
    let violation_type = match e.kind() {
        ValidationErrorKind::Required { property } => {
            segs.push(
                property
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| property.to_string()),
            );
            kind::REQUIRED
        }
        ValidationErrorKind::Type { .. } => kind::INVALID_TYPE,
        _ => kind::INVALID_VALUE,
    };
    let field = if segs.is_empty() {
        "(root)".to_string()
    } else {
        segs.join(".")
    };
    let mut description = e.to_string();
    if description.len() > 500 {
        let mut cut = 500;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
        description.push('…');
    }
    ViolationDetail {
        violation_type: violation_type.into(),
        field,
        description,
    }
}

/// Removes the value at `path` (object keys and array indices); true when something was removed.
fn remove_path(v: &mut Json, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for p in parents {
        cur = match cur {
            Json::Object(m) => match m.get_mut(p) {
                Some(x) => x,
                None => return false,
            },
            Json::Array(a) => match p.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Json::Object(m) => m.remove(last).is_some(),
        Json::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Writes Segment's `context.protocols` (`omitted`, `omitted_on_violation`, `violations`,
/// `sourceId`, plus the plan) into the message when there is anything to say.
fn annotate_context(msg: &mut SegmentMessage, ann: &ProtocolsAnnotation) {
    if ann.omitted.is_empty() && ann.omitted_on_violation.is_empty() && ann.violations.is_empty() {
        return;
    }
    let ctx = msg.context.get_or_insert_with(|| Json::Object(Map::new()));
    let Json::Object(ctx) = ctx else {
        // A non-object context is kept as sent; the annotation still travels in ValidEvent.
        return;
    };
    let protocols = ctx
        .entry("protocols")
        .or_insert_with(|| Json::Object(Map::new()));
    if !protocols.is_object() {
        *protocols = Json::Object(Map::new());
    }
    if let Json::Object(p) = protocols {
        p.insert("omitted".into(), serde_json::json!(ann.omitted));
        p.insert(
            "omitted_on_violation".into(),
            serde_json::json!(ann.omitted_on_violation),
        );
        p.insert(
            "violations".into(),
            serde_json::to_value(&ann.violations).unwrap_or(Json::Null),
        );
        if let Some(s) = &ann.source_id {
            p.insert("sourceId".into(), Json::String(s.clone()));
        }
        if let Some(id) = &ann.tracking_plan_id {
            p.insert("tracking_plan_id".into(), Json::String(id.clone()));
        }
        if let Some(v) = ann.tracking_plan_version {
            p.insert("tracking_plan_version".into(), Json::from(v));
        }
    }
}
