//! Every rule with Segment's worked examples and the peers' failure cases
//! (docs/identity.md, "Rules" and "Flat matching").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_codec::{MessageType, SegmentMessage};
use serde_json::json;

use crate::engine::{profile_id, MemGraph, MergeKind, Outcome};
use crate::ids::{extract, Ident};
use crate::rules::Rules;

const S: &str = "space-1";

fn uid(v: &str) -> Ident {
    Ident::new("user_id", v)
}
fn anon(v: &str) -> Ident {
    Ident::new("anonymous_id", v)
}
fn email(v: &str) -> Ident {
    Ident::new("email", v)
}

fn pid(i: &Ident) -> String {
    profile_id(S, i)
}

#[test]
fn no_known_id_creates_a_profile_with_a_deterministic_id() {
    let mut g = MemGraph::default();
    let r = g.resolve(&Rules::default(), S, &[anon("a1")], 1).unwrap();
    assert_eq!(r.outcome, Outcome::Created);
    assert_eq!(r.profile_id(), pid(&anon("a1")));
    assert!(r.profile_id().starts_with("use_") && r.profile_id().len() == 26);
    assert_ne!(profile_id("other-space", &anon("a1")), pid(&anon("a1")));
    // Same input, fresh graph: same id.
    let mut g2 = MemGraph::default();
    assert_eq!(
        g2.resolve(&Rules::default(), S, &[anon("a1")], 99)
            .unwrap()
            .profile_id(),
        r.profile_id()
    );
}

#[test]
fn one_profile_adds_ids_and_a_higher_priority_id_renames_it() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[anon("a1")], 1).unwrap();
    let r = g.resolve(&rules, S, &[uid("u1"), anon("a1")], 2).unwrap();
    assert_eq!(r.outcome, Outcome::Added);
    assert_eq!(
        r.profile_id(),
        pid(&uid("u1")),
        "anchored at the user_id now"
    );
    assert_eq!(r.merges.len(), 1);
    assert_eq!(r.merges[0].kind, MergeKind::Rename);
    assert_eq!(r.merges[0].from, pid(&anon("a1")));
    // The old id resolves forever.
    assert_eq!(g.follow(S, &pid(&anon("a1"))), pid(&uid("u1")));
    assert_eq!(g.profile_of(S, &anon("a1")), Some(pid(&uid("u1"))));
    // A lower-priority addition keeps the id and writes no merge.
    let r = g.resolve(&rules, S, &[uid("u1"), anon("a2")], 3).unwrap();
    assert_eq!(r.outcome, Outcome::Added);
    assert!(r.merges.is_empty());
    assert_eq!(r.profile.identifiers.len(), 3);
    // Only known ids: matched, nothing written.
    let r = g.resolve(&rules, S, &[anon("a2")], 4).unwrap();
    assert_eq!(r.outcome, Outcome::Matched);
    assert_eq!(r.profile_id(), pid(&uid("u1")));
}

#[test]
fn several_profiles_merge_into_the_highest_priority_anchor() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[anon("a1")], 1).unwrap();
    g.resolve(&rules, S, &[email("jane@example.com"), anon("a2")], 2)
        .unwrap();
    let r = g.resolve(&rules, S, &[anon("a1"), anon("a2")], 3).unwrap();
    assert_eq!(r.outcome, Outcome::Merged);
    assert_eq!(r.profile_id(), pid(&email("jane@example.com")));
    assert_eq!(r.profile.merges, 1);
    assert_eq!(r.merges.len(), 1);
    assert_eq!(r.merges[0].kind, MergeKind::Merge);
    assert_eq!(r.merges[0].from, pid(&anon("a1")));
    assert_eq!(
        r.profile.created_ms, 1,
        "the older profile's creation time survives"
    );
    for i in [anon("a1"), anon("a2"), email("jane@example.com")] {
        assert_eq!(g.profile_of(S, &i), Some(r.profile_id().to_string()));
    }
}

#[test]
fn segment_worked_example_abc123_abc456() {
    // Profile {user_id: abc123, email: jane}; an event {user_id: abc456, email: jane} would give
    // the profile two user_ids. Email has the lower priority: it is dropped from the event, which
    // then matches nothing, and a new profile user_id:abc456 is created.
    let rules = Rules::from_yaml("blocked_values: {use_defaults: false}").unwrap();
    let mut g = MemGraph::default();
    let first = g
        .resolve(&rules, S, &[uid("abc123"), email("jane@example.com")], 1)
        .unwrap();
    let r = g
        .resolve(&rules, S, &[uid("abc456"), email("jane@example.com")], 2)
        .unwrap();
    assert_eq!(r.outcome, Outcome::Created);
    assert_eq!(r.demoted, vec![email("jane@example.com")]);
    assert_eq!(r.profile_id(), pid(&uid("abc456")));
    assert_ne!(r.profile_id(), first.profile_id());
    assert_eq!(
        g.profile_of(S, &email("jane@example.com")),
        Some(first.profile_id().to_string())
    );
    assert_eq!(r.profile.identifiers.len(), 1);
}

#[test]
fn demotion_drops_the_lowest_priority_id_first_and_retries() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[uid("u1"), email("e1@x.io")], 1)
        .unwrap();
    // anonymous_id (lowest) goes first, then email; the event ends as a new u2 profile.
    let r = g
        .resolve(&rules, S, &[uid("u2"), email("e1@x.io"), anon("a9")], 2)
        .unwrap();
    assert_eq!(r.demoted, vec![anon("a9"), email("e1@x.io")]);
    assert_eq!(r.outcome, Outcome::Created);
    assert_eq!(
        g.profile_of(S, &anon("a9")),
        None,
        "a demoted id is not stored"
    );
}

#[test]
fn limits_per_type_and_windows() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let mut ids = vec![uid("u1")];
    for n in 0..5 {
        ids.push(anon(&format!("a{n}")));
    }
    g.resolve(&rules, S, &ids, 1).unwrap();
    // A sixth anonymous_id breaks "5 ever": demoted; the event still resolves to u1.
    let r = g.resolve(&rules, S, &[uid("u1"), anon("a5")], 2).unwrap();
    assert_eq!(r.demoted, vec![anon("a5")]);
    assert_eq!(r.outcome, Outcome::Matched);
    assert_eq!(r.profile_id(), pid(&uid("u1")));

    // "1 weekly": an anonymous_id first seen more than a week ago no longer counts.
    let rules = Rules::from_yaml("limits: {anonymous_id: {max: 1, window: 7d}}").unwrap();
    let mut g = MemGraph::default();
    let day = 86_400_000;
    g.resolve(&rules, S, &[uid("u1"), anon("a1")], day).unwrap();
    let r = g
        .resolve(&rules, S, &[uid("u1"), anon("a2")], 2 * day)
        .unwrap();
    assert_eq!(r.demoted, vec![anon("a2")], "two within a week");
    let r = g
        .resolve(&rules, S, &[uid("u1"), anon("a3")], 10 * day)
        .unwrap();
    assert_eq!(r.outcome, Outcome::Added, "a1 is outside the window");
    assert!(r.demoted.is_empty());
}

#[test]
fn a_profile_already_over_a_tightened_limit_still_resolves() {
    let mut g = MemGraph::default();
    let loose = Rules::from_yaml("limits: {anonymous_id: {max: 5}}").unwrap();
    g.resolve(&loose, S, &[uid("u1"), anon("a1"), anon("a2")], 1)
        .unwrap();
    let tight = Rules::from_yaml("limits: {anonymous_id: {max: 1}}").unwrap();
    let r = g.resolve(&tight, S, &[uid("u1"), anon("a2")], 2).unwrap();
    assert_eq!(r.outcome, Outcome::Matched);
    assert!(r.demoted.is_empty());
}

#[test]
fn shared_anonymous_id_across_two_users_does_not_merge_them() {
    // rudder-transformer #1180: two users on one device were merged irreversibly.
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let u1 = g
        .resolve(&rules, S, &[uid("u1"), anon("device")], 1)
        .unwrap();
    let u2 = g
        .resolve(&rules, S, &[uid("u2"), anon("device")], 2)
        .unwrap();
    assert_ne!(u1.profile_id(), u2.profile_id());
    assert_eq!(u2.demoted, vec![anon("device")]);
    assert_eq!(
        g.profile_of(S, &anon("device")),
        Some(u1.profile_id().to_string())
    );

    // Both users already known: the shared id would join two identified profiles. Merge
    // protection refuses it as untrusted, even with a user_id limit that would allow it.
    let rules = Rules::from_yaml("limits: {user_id: {max: 3}}").unwrap();
    let mut g = MemGraph::default();
    let p1 = g
        .resolve(&rules, S, &[uid("u1"), anon("device")], 1)
        .unwrap();
    let p2 = g
        .resolve(&rules, S, &[uid("u2"), anon("phone")], 2)
        .unwrap();
    let r = g
        .resolve(&rules, S, &[uid("u2"), anon("device")], 3)
        .unwrap();
    assert_eq!(r.untrusted, vec![anon("device")]);
    assert_eq!(r.outcome, Outcome::Matched);
    assert_eq!(r.profile_id(), p2.profile_id());
    assert_eq!(
        g.profile_of(S, &anon("device")),
        Some(p1.profile_id().to_string())
    );

    // Without merge protection (and the permissive limit), they merge.
    let rules = Rules::from_yaml("{limits: {user_id: {max: 3}}, merge_protection: false}").unwrap();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[uid("u1"), anon("device")], 1)
        .unwrap();
    g.resolve(&rules, S, &[uid("u2"), anon("phone")], 2)
        .unwrap();
    let r = g
        .resolve(&rules, S, &[uid("u2"), anon("device")], 3)
        .unwrap();
    assert_eq!(r.outcome, Outcome::Merged);
}

#[test]
fn merge_protection_keeps_unidentified_profiles_mergeable() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[uid("u1"), anon("a1")], 1).unwrap();
    g.resolve(&rules, S, &[anon("a2")], 2).unwrap();
    let r = g.resolve(&rules, S, &[anon("a1"), anon("a2")], 3).unwrap();
    assert_eq!(r.outcome, Outcome::Merged);
    assert!(r.untrusted.is_empty());
    assert_eq!(r.profile_id(), pid(&uid("u1")));
}

fn message(user: Option<&str>, anon_id: &str) -> SegmentMessage {
    let mut m = SegmentMessage::new(S, MessageType::Identify, format!("m-{anon_id}"));
    m.user_id = user.map(str::to_string);
    m.anonymous_id = Some(anon_id.to_string());
    m
}

#[test]
fn identify_null_does_not_merge_strangers() {
    // PostHog #5527: identify(null) created blob persons.
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let mut pids = Vec::new();
    for a in ["a1", "a2", "a3"] {
        let e = extract(&message(Some("null"), a), &rules);
        assert_eq!(e.blocked, vec![uid("null")]);
        pids.push(
            g.resolve(&rules, S, &e.ids, 1)
                .unwrap()
                .profile_id()
                .to_string(),
        );
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "three strangers stay three profiles");
}

#[test]
fn undefined_and_object_object_ids_do_not_merge_users() {
    // PostHog #12008: Segment-sourced ids `undefined` / `[object Object]` merged many users.
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let mut pids = Vec::new();
    for (n, bad) in [
        "undefined",
        "[object Object]",
        "undefined",
        "[object Object]",
    ]
    .iter()
    .enumerate()
    {
        let u = format!("u{n}");
        let e = extract(&message(Some(&u), bad), &rules);
        assert_eq!(e.ids, vec![uid(&u)]);
        pids.push(
            g.resolve(&rules, S, &e.ids, 1)
                .unwrap()
                .profile_id()
                .to_string(),
        );
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4);
    // An event with only blocked ids resolves to nothing.
    let e = extract(&message(Some("null"), "undefined"), &rules);
    assert!(g.resolve(&rules, S, &e.ids, 1).is_none());
}

#[test]
fn merge_cap_stops_merges_but_events_keep_resolving() {
    let rules = Rules::from_yaml("max_merges: 1").unwrap();
    let mut g = MemGraph::default();
    for a in ["a1", "a2", "a3"] {
        g.resolve(&rules, S, &[anon(a)], 1).unwrap();
    }
    let r = g.resolve(&rules, S, &[anon("a1"), anon("a2")], 2).unwrap();
    assert_eq!(r.outcome, Outcome::Merged);
    let r = g.resolve(&rules, S, &[anon("a1"), anon("a3")], 3).unwrap();
    assert_eq!(r.outcome, Outcome::Capped(crate::engine::Cap::Merges));
    assert_eq!(r.profile_id(), pid(&anon("a1")));
    assert_eq!(
        g.profile_of(S, &anon("a3")),
        Some(pid(&anon("a3"))),
        "not merged"
    );
}

#[test]
fn identifier_cap_stops_additions() {
    let rules = Rules::from_yaml("{max_identifiers: 3, default_limit: {max: 100}}").unwrap();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[uid("u1"), anon("a1"), anon("a2")], 1)
        .unwrap();
    let r = g.resolve(&rules, S, &[uid("u1"), anon("a3")], 2).unwrap();
    assert_eq!(r.outcome, Outcome::Capped(crate::engine::Cap::Identifiers));
    assert_eq!(r.profile_id(), pid(&uid("u1")));
    assert_eq!(g.profile_of(S, &anon("a3")), None);
}

#[test]
fn merged_away_ids_resolve_to_their_survivor_through_chains() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    g.resolve(&rules, S, &[anon("a3")], 1).unwrap();
    g.resolve(&rules, S, &[anon("a3"), anon("a2")], 2).unwrap(); // rename a3 -> a2
    g.resolve(&rules, S, &[anon("a2"), email("e@x.io")], 3)
        .unwrap(); // rename a2 -> email
    g.resolve(&rules, S, &[email("e@x.io"), uid("u")], 4)
        .unwrap(); // rename email -> user
    for old in [anon("a3"), anon("a2"), email("e@x.io")] {
        assert_eq!(g.follow(S, &pid(&old)), pid(&uid("u")));
    }
}

#[test]
fn ids_depend_on_grouping_not_on_order() {
    let rules = Rules::default();
    let events = [
        vec![anon("a1")],
        vec![anon("a2"), email("e@x.io")],
        vec![anon("a1"), anon("a2")],
        vec![uid("u1"), anon("a3")],
        vec![anon("a3"), anon("a1")],
    ];
    let mut finals = Vec::new();
    // Every rotation and the reverse order.
    let mut orders: Vec<Vec<usize>> = (0..events.len())
        .map(|k| (0..events.len()).map(|i| (i + k) % events.len()).collect())
        .collect();
    orders.push((0..events.len()).rev().collect());
    for order in orders {
        let mut g = MemGraph::default();
        for i in order {
            g.resolve(&rules, S, &events[i], 1).unwrap();
        }
        let ids: Vec<_> = [
            anon("a1"),
            anon("a2"),
            anon("a3"),
            email("e@x.io"),
            uid("u1"),
        ]
        .iter()
        .map(|i| g.profile_of(S, i).unwrap())
        .collect();
        finals.push(ids);
    }
    assert!(finals.windows(2).all(|w| w[0] == w[1]), "{finals:#?}");
    assert_eq!(finals[0][0], pid(&uid("u1")));
}

#[test]
fn an_event_with_ids_breaking_limits_by_itself_is_demoted_before_creation() {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let r = g.resolve(&rules, S, &[uid("u1"), uid("u2")], 1).unwrap();
    assert_eq!(r.outcome, Outcome::Created);
    assert_eq!(r.demoted, vec![uid("u2")]);
}

#[test]
fn extraction_feeds_resolution_end_to_end() {
    let rules = Rules::default();
    let mut m = message(Some("u1"), "a1");
    m.traits = Some(json!({"email": "jane@example.com"}));
    let e = extract(&m, &rules);
    let mut g = MemGraph::default();
    let r = g.resolve(&rules, S, &e.ids, 1).unwrap();
    assert_eq!(r.profile.identifiers.len(), 3);
    assert_eq!(r.profile_id(), pid(&uid("u1")));
}
