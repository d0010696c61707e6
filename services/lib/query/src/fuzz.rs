//! The fuzzing harness, shared by the cargo-fuzz target (`fuzz/fuzz_targets/parse.rs`) and the
//! proptest fallback (`tests/properties.rs`, ignored by default), so both check the same thing.

use crate::check::{check, Catalogue, CheckContext, DefinitionKind, Target};
use crate::eval::{Account, Evaluator, Event, Profile, Subject};
use crate::{parse, plan, print};

/// Runs the whole pipeline on arbitrary bytes and panics if an invariant breaks: whatever
/// parses must print to text that parses back to the same AST, and whatever checks must plan
/// and evaluate without error. Malformed input must produce errors, never panics.
pub fn harness(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    let Ok(q) = parse(&src) else { return };
    let printed = print(&q);
    match parse(&printed) {
        Ok(again) => assert!(
            again == q,
            "round trip changed the AST: {src:?} -> {printed:?}"
        ),
        Err(e) => panic!("printed form does not parse: {printed:?}: {e}"),
    }
    let mut cat = Catalogue::new();
    if let Ok(aud) = parse("event('A').count() >= 1") {
        cat.insert("aud", Target::Audience, DefinitionKind::Users, Some(aud));
    }
    let Ok(now) = "2024-06-01T00:00:00Z".parse() else {
        return;
    };
    let (Ok(t1), Ok(t2)) = (
        "2024-05-30T00:00:00Z".parse(),
        "2024-05-31T00:00:00Z".parse(),
    ) else {
        return;
    };
    let profile = Profile {
        events: vec![
            Event::new("A", t1).prop("p", 3),
            Event::new("B", t2).prop("p", "x"),
        ],
        ..Default::default()
    };
    let account = Account {
        users: vec![profile.clone()],
        ..Default::default()
    };
    for target in [Target::Audience, Target::ComputedTrait] {
        for kind in [DefinitionKind::Users, DefinitionKind::Accounts] {
            let ctx = CheckContext {
                target,
                kind,
                catalogue: &cat,
                key: Some("me"),
            };
            if check(&q, &ctx).is_err() {
                continue;
            }
            if let Err(e) = plan(&q, &ctx) {
                panic!("checked definition does not plan: {src:?}: {e:?}");
            }
            let ev = Evaluator::new(now, &cat);
            let subject = match kind {
                DefinitionKind::Users => Subject::User(&profile),
                DefinitionKind::Accounts => Subject::Account(&account),
            };
            let r = match target {
                Target::Audience => ev.audience(&q, subject).map(|_| ()),
                Target::ComputedTrait => ev.computed_trait(&q, subject).map(|_| ()),
            };
            if let Err(e) = r {
                panic!("checked definition does not evaluate: {src:?}: {e}");
            }
        }
    }
}
