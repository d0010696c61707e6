//! Every control and outcome with the sample plan (`examples/tracking-plan.yaml`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_codec::{MessageType, ProtocolsAnnotation, SegmentMessage};
use serde_json::{json, Value as Json};

use crate::engine::*;
use crate::plan::{AllowBlock, AllowOmit, CompiledPlan, Controls, PlanFile, ViolationControl};

const SAMPLE: &str = include_str!("../../../examples/tracking-plan.yaml");

/// The sample plan with all controls at allow, changed by `f`.
fn plan(f: impl FnOnce(&mut Controls)) -> CompiledPlan {
    let mut file = PlanFile::parse(SAMPLE).unwrap();
    file.controls = Controls::default();
    f(&mut file.controls);
    file.compile(7).unwrap()
}

fn track(event: &str, props: Json) -> SegmentMessage {
    let mut m = SegmentMessage::new("default", MessageType::Track, "m-1");
    m.event = Some(event.into());
    m.user_id = Some("u-1".into());
    m.properties = Some(props);
    m.source_id = Some("web".into());
    m
}

fn traits(t: MessageType, traits: Json) -> SegmentMessage {
    let mut m = SegmentMessage::new("default", t, "m-2");
    m.user_id = Some("u-1".into());
    m.traits = Some(traits);
    m
}

fn valid(d: &Decision) -> (&SegmentMessage, &ProtocolsAnnotation) {
    match &d.verdict {
        Verdict::Valid { message, protocols } => (message, protocols),
        other => panic!("expected valid, got {other:?} ({:?})", d.steps),
    }
}

fn blocked(d: &Decision) -> &'static str {
    match &d.verdict {
        Verdict::Blocked { reason } => reason,
        other => panic!("expected blocked, got {other:?}"),
    }
}

fn types(d: &Decision) -> Vec<(&str, &str)> {
    d.violations
        .iter()
        .map(|v| (v.violation_type.as_str(), v.field.as_str()))
        .collect()
}

fn feature_used() -> Json {
    json!({"feature_name": "export", "feature_category": "reports", "time_spent_seconds": 12.5})
}

#[test]
fn a_planned_valid_event_passes_unchanged_with_the_plan_annotated() {
    for strict in [false, true] {
        let p = plan(|c| {
            if strict {
                c.track.unplanned_events = AllowBlock::Block;
                c.track.unplanned_properties = AllowOmit::Omit;
                c.track.violations = ViolationControl::Block;
                c.common.violations = ViolationControl::Block;
            }
        });
        let m = track("Feature Used", feature_used());
        let d = evaluate(Some(&p), &m);
        let (out, ann) = valid(&d);
        assert_eq!(
            out, &m,
            "nothing to omit or annotate: the message is unchanged"
        );
        assert!(d.violations.is_empty());
        assert_eq!(ann.tracking_plan_id.as_deref(), Some("engagement"));
        assert_eq!(ann.tracking_plan_version, Some(7));
        assert_eq!(ann.event_version, Some(1));
        assert_eq!(ann.source_id.as_deref(), Some("web"));
    }
}

#[test]
fn unplanned_event_allow_annotates_and_block_blocks() {
    let m = track("Report Generated", json!({"x": 1}));
    let d = evaluate(Some(&plan(|_| {})), &m);
    let (out, ann) = valid(&d);
    assert_eq!(types(&d), vec![("Unplanned Event", "event")]);
    assert_eq!(ann.violations, d.violations);
    assert_eq!(
        out.properties, m.properties,
        "an unplanned event's properties are not checked"
    );
    assert_eq!(
        out.context.as_ref().unwrap()["protocols"]["violations"][0]["type"],
        "Unplanned Event"
    );

    let d = evaluate(
        Some(&plan(|c| c.track.unplanned_events = AllowBlock::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::UNPLANNED_EVENT);
    assert_eq!(types(&d), vec![("Unplanned Event", "event")]);
}

#[test]
fn unplanned_properties_allow_keeps_and_omit_removes() {
    let mut props = feature_used();
    props["colour"] = json!("red");
    let m = track("Feature Used", props);

    let d = evaluate(Some(&plan(|_| {})), &m);
    let (out, ann) = valid(&d);
    assert_eq!(out.properties.as_ref().unwrap()["colour"], "red");
    assert!(ann.omitted.is_empty());
    assert_eq!(types(&d), vec![("Unplanned Property", "properties.colour")]);

    let d = evaluate(
        Some(&plan(|c| c.track.unplanned_properties = AllowOmit::Omit)),
        &m,
    );
    let (out, ann) = valid(&d);
    assert!(out.properties.as_ref().unwrap().get("colour").is_none());
    assert_eq!(out.properties.as_ref().unwrap()["feature_name"], "export");
    assert_eq!(ann.omitted, vec!["properties.colour"]);
    let p = &out.context.as_ref().unwrap()["protocols"];
    assert_eq!(p["omitted"], json!(["properties.colour"]));
    assert_eq!(p["sourceId"], "web");
}

#[test]
fn wrong_type_allow_keeps_block_blocks_omit_removes() {
    let m = track(
        "Feature Used",
        json!({"feature_name": "export", "time_spent_seconds": "long"}),
    );
    let expected = vec![("Invalid Type", "properties.time_spent_seconds")];

    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Allow)),
        &m,
    );
    let (out, ann) = valid(&d);
    assert_eq!(types(&d), expected);
    assert_eq!(
        out.properties.as_ref().unwrap()["time_spent_seconds"],
        "long"
    );
    assert_eq!(ann.violations.len(), 1);

    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::VIOLATION);
    assert_eq!(types(&d), expected);

    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Omit)),
        &m,
    );
    let (out, ann) = valid(&d);
    assert!(out
        .properties
        .as_ref()
        .unwrap()
        .get("time_spent_seconds")
        .is_none());
    assert_eq!(
        ann.omitted_on_violation,
        vec!["properties.time_spent_seconds"]
    );
    assert_eq!(types(&d), expected);
}

#[test]
fn invalid_values_enum_and_minimum() {
    let m = track(
        "Feature Used",
        json!({"feature_name": "export", "time_spent_seconds": -1}),
    );
    let d = evaluate(Some(&plan(|_| {})), &m);
    assert_eq!(
        types(&d),
        vec![("Invalid Value", "properties.time_spent_seconds")]
    );
    let m = track(
        "Session Started",
        json!({"session_id": "s", "platform": "tv"}),
    );
    let d = evaluate(Some(&plan(|_| {})), &m);
    assert_eq!(types(&d), vec![("Invalid Value", "properties.platform")]);
}

#[test]
fn missing_required_allow_block_omit() {
    let m = track("Onboarding Step Completed", json!({"step_index": 2}));
    let expected = vec![("Required", "properties.step_name")];
    let d = evaluate(Some(&plan(|_| {})), &m);
    valid(&d);
    assert_eq!(types(&d), expected);
    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::VIOLATION);
    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Omit)),
        &m,
    );
    let (out, ann) = valid(&d);
    assert!(
        ann.omitted_on_violation.is_empty(),
        "nothing to omit for a missing property"
    );
    assert_eq!(out.properties.as_ref().unwrap()["step_index"], 2);
    assert_eq!(types(&d), expected);
    // A track without properties at all is checked as `{}`.
    let mut m = track("Onboarding Step Completed", json!({}));
    m.properties = None;
    assert_eq!(types(&evaluate(Some(&plan(|_| {})), &m)), expected);
}

#[test]
fn omit_of_unplanned_then_block_of_violation_blocks_with_both_violations() {
    let m = track(
        "Feature Used",
        json!({"time_spent_seconds": 1, "colour": "red"}),
    );
    let p = plan(|c| {
        c.track.unplanned_properties = AllowOmit::Omit;
        c.track.violations = ViolationControl::Block;
    });
    let d = evaluate(Some(&p), &m);
    assert_eq!(blocked(&d), reason::VIOLATION);
    assert_eq!(
        types(&d),
        vec![
            ("Unplanned Property", "properties.colour"),
            ("Required", "properties.feature_name")
        ]
    );
}

#[test]
fn event_versions_are_selected_by_context_protocols_event_version() {
    let p = plan(|_| {});
    let mut m = track("Session Started", json!({"session_id": "s-1"}));
    let d = evaluate(Some(&p), &m);
    assert!(
        d.violations.is_empty(),
        "v1 (the oldest) does not require platform"
    );
    assert_eq!(valid(&d).1.event_version, Some(1));

    m.context = Some(json!({"protocols": {"event_version": 2}}));
    let d = evaluate(Some(&p), &m);
    assert_eq!(types(&d), vec![("Required", "properties.platform")]);
    assert_eq!(valid(&d).1.event_version, Some(2));
    // The annotation keeps event_version next to Segment's fields.
    let ctx = valid(&d).0.context.clone().unwrap();
    assert_eq!(ctx["protocols"]["event_version"], 2);
    assert_eq!(
        ctx["protocols"]["violations"][0]["field"],
        "properties.platform"
    );

    m.context = Some(json!({"protocols": {"event_version": 9}}));
    let d = evaluate(Some(&p), &m);
    assert!(
        d.violations.is_empty(),
        "an unknown version validates against the oldest"
    );
    assert_eq!(valid(&d).1.event_version, Some(1));
}

#[test]
fn identify_traits_unplanned_allow_omit_and_violations_allow_block_omit() {
    let m = traits(
        MessageType::Identify,
        json!({"email": "not-an-email", "plan": "trial", "favourite_colour": "red"}),
    );
    let d = evaluate(Some(&plan(|_| {})), &m);
    let (out, _) = valid(&d);
    assert_eq!(out.traits.as_ref().unwrap()["favourite_colour"], "red");
    assert_eq!(
        types(&d),
        vec![
            ("Unplanned Trait", "traits.favourite_colour"),
            ("Invalid Value", "traits.email")
        ]
    );

    let d = evaluate(
        Some(&plan(|c| {
            c.identify.unplanned_traits = AllowOmit::Omit;
            c.identify.violations = ViolationControl::Omit;
        })),
        &m,
    );
    let (out, ann) = valid(&d);
    assert_eq!(out.traits, Some(json!({"plan": "trial"})));
    assert_eq!(ann.omitted, vec!["traits.favourite_colour"]);
    assert_eq!(ann.omitted_on_violation, vec!["traits.email"]);

    let d = evaluate(
        Some(&plan(|c| c.identify.violations = ViolationControl::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::VIOLATION);

    // Group controls are separate from identify's.
    let g = traits(MessageType::Group, json!({"name": 5, "size": 10}));
    let d = evaluate(
        Some(&plan(|c| c.identify.violations = ViolationControl::Block)),
        &g,
    );
    valid(&d);
    assert_eq!(
        types(&d),
        vec![
            ("Unplanned Trait", "traits.size"),
            ("Invalid Type", "traits.name")
        ]
    );
    let d = evaluate(
        Some(&plan(|c| {
            c.group.violations = ViolationControl::Omit;
            c.group.unplanned_traits = AllowOmit::Omit;
        })),
        &g,
    );
    assert_eq!(valid(&d).0.traits, Some(json!({})));
    let d = evaluate(
        Some(&plan(|c| c.group.violations = ViolationControl::Block)),
        &g,
    );
    assert_eq!(blocked(&d), reason::VIOLATION);
}

#[test]
fn page_uses_its_schema_with_the_track_controls_and_alias_passes() {
    let mut m = SegmentMessage::new("default", MessageType::Page, "m-3");
    m.name = Some("Pricing".into());
    m.properties = Some(json!({"path": 3, "extra": true}));
    let d = evaluate(
        Some(&plan(|c| c.track.violations = ViolationControl::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::VIOLATION);
    let d = evaluate(
        Some(&plan(|c| c.track.unplanned_properties = AllowOmit::Omit)),
        &m,
    );
    assert_eq!(
        types(&d),
        vec![
            ("Unplanned Property", "properties.extra"),
            ("Invalid Type", "properties.path")
        ]
    );
    // Screen has no schema in the sample plan: not checked.
    m.message_type = MessageType::Screen;
    assert!(evaluate(Some(&plan(|_| {})), &m).violations.is_empty());
    let a = SegmentMessage::new("default", MessageType::Alias, "m-4");
    assert!(evaluate(Some(&plan(|_| {})), &a).violations.is_empty());
}

#[test]
fn common_schema_is_a_second_pass_allow_block_omit() {
    let mut m = track("Feature Used", feature_used());
    m.context = Some(json!({"app": {"version": 3, "name": "web"}}));
    let expected = vec![("Invalid Type", "context.app.version")];

    let d = evaluate(Some(&plan(|_| {})), &m);
    assert_eq!(types(&d), expected);
    assert_eq!(valid(&d).0.context.as_ref().unwrap()["app"]["version"], 3);

    let d = evaluate(
        Some(&plan(|c| c.common.violations = ViolationControl::Block)),
        &m,
    );
    assert_eq!(blocked(&d), reason::COMMON_VIOLATION);

    let d = evaluate(
        Some(&plan(|c| c.common.violations = ViolationControl::Omit)),
        &m,
    );
    let (out, ann) = valid(&d);
    assert_eq!(out.context.as_ref().unwrap()["app"], json!({"name": "web"}));
    assert_eq!(ann.omitted_on_violation, vec!["context.app.version"]);
    assert_eq!(
        out.source_id.as_deref(),
        Some("web"),
        "Corral metadata survives the omission"
    );

    // The second pass sees the first pass's result: a property omitted as unplanned no longer
    // exists when the common schema runs.
    let mut m = track("Feature Used", feature_used());
    m.context = Some(json!({"app": {"version": "1.2"}}));
    assert!(evaluate(
        Some(&plan(|c| c.common.violations = ViolationControl::Block)),
        &m
    )
    .is_valid());
}

#[test]
fn without_a_plan_everything_passes_unannotated() {
    let m = track("Anything", json!({"x": 1}));
    let d = evaluate(None, &m);
    let (out, ann) = valid(&d);
    assert_eq!(out, &m);
    assert!(ann.tracking_plan_id.is_none());
    assert!(d.violations.is_empty());
}

#[test]
fn plan_set_picks_the_source_plan_then_the_wildcard() {
    use std::sync::Arc;
    let mut web = PlanFile::parse(SAMPLE).unwrap();
    web.key = "web-plan".into();
    web.sources = vec!["web".into()];
    let any = PlanFile::parse(SAMPLE).unwrap();
    let set = crate::registry::PlanSet::of([
        Arc::new(web.compile(1).unwrap()),
        Arc::new(any.compile(1).unwrap()),
    ]);
    assert_eq!(
        set.for_source("default", Some("web")).unwrap().key,
        "web-plan"
    );
    assert_eq!(
        set.for_source("default", Some("ios")).unwrap().key,
        "engagement"
    );
    assert_eq!(set.for_source("default", None).unwrap().key, "engagement");
    assert!(set.for_source("other-space", Some("web")).is_none());
}

#[test]
fn plan_files_report_errors_with_lines() {
    use crate::plan::diagnose;
    assert!(diagnose("p.yaml", SAMPLE).is_empty());
    let bad = SAMPLE.replace("step_index: {type: integer", "step_index: {type: integr");
    let d = diagnose("p.yaml", &bad);
    assert_eq!(d.len(), 1, "{d:?}");
    let line = bad.lines().position(|l| l.contains("integr,")).unwrap() + 1;
    assert_eq!(d[0].line, line, "{}", d[0]);
    assert!(d[0]
        .to_string()
        .starts_with(&format!("p.yaml:{line}: events.Onboarding Step Completed")));

    let bad = SAMPLE.replace("violations: block ", "violations: sometimes ");
    let d = diagnose("p.yaml", &bad);
    let line = bad.lines().position(|l| l.contains("sometimes")).unwrap() + 1;
    assert_eq!(d[0].line, line, "{}", d[0]);
    assert!(d[0].message.contains("unknown variant"), "{}", d[0]);

    let d = diagnose("p.json", r#"{"key": "k", "sources": []}"#);
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("at least one source"));
}

#[test]
fn violation_records_and_forwarded_events_have_segments_shape() {
    use crate::processor::{is_violation_event, violation_event, violation_record};
    let p = plan(|_| {});
    let mut m = track("Feature Used", json!({"time_spent_seconds": "x"}));
    m.context = Some(json!({"app": {"version": "2.1"}}));
    let d = evaluate(Some(&p), &m);
    let recs: Vec<_> = d
        .violations
        .iter()
        .map(|v| violation_record(&m, Some(&p), v, 5))
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].event_name.as_deref(), Some("Feature Used"));
    assert_eq!(recs[0].app_version.as_deref(), Some("2.1"));
    assert_eq!(
        recs[0].tracking_plan_name.as_deref(),
        Some("Engagement and activation")
    );
    let ev = violation_event(&recs[1], "violations-src", 1, 5);
    assert_eq!(ev.message_id, "m-1-violation-1");
    assert_eq!(ev.event.as_deref(), Some("Violation Generated"));
    assert_eq!(ev.user_id.as_deref(), Some("schema-violations"));
    let props = ev.properties.as_ref().unwrap();
    assert_eq!(props["eventMessageID"], "m-1");
    assert_eq!(props["violationType"], recs[1].violation_type.as_str());
    assert_eq!(props["eventType"], "track");
    assert!(is_violation_event(&ev));
    assert!(!is_violation_event(&m));
}
