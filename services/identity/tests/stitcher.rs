//! The stitcher protocol under any interleaving, without Kafka: events reach the stitcher, misses
//! queue for the coordinator, and the coordinator's link updates reach the stitcher's store late,
//! in a random schedule (per identifier in order, as on a Kafka partition). Whatever the schedule:
//! every event is resolved once; the profile it was resolved to, followed through the merge
//! aliases, is the final profile of every one of its identifiers; the final grouping is the one a
//! single coordinator gives for the same events. A lookup that races a merge (a hit on a link that
//! names a retired profile) happens in the generated schedules and is resolved that way too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use corral_identity::stitch::{self, Link, StitchInput};
use corral_identity::{Ident, MemGraph, Rules};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const SPACE: &str = "stitch";

/// Ids of one person that never break Segment's default limits together (see union_find.rs).
fn person_ids(p: usize, has_user: bool) -> Vec<Ident> {
    let mut ids = Vec::new();
    if has_user {
        ids.push(Ident::new("user_id", format!("u{p}")));
    }
    for k in 0..3 {
        ids.push(Ident::new("anonymous_id", format!("a{p}-{k}")));
        ids.push(Ident::new("email", format!("p{p}.{k}@example.com")));
    }
    ids
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The next event reaches its stitcher.
    Event,
    /// The coordinator resolves the oldest miss.
    Coordinate,
    /// The oldest pending link update reaches the stitchers' store.
    Link,
}

#[derive(Debug, Clone)]
struct Case {
    events: Vec<Vec<Ident>>,
    schedule: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    let events =
        (1usize..5, prop::collection::vec(any::<bool>(), 5)).prop_flat_map(|(people, users)| {
            let event =
                (0..people, prop::collection::vec(0usize..8, 1..3)).prop_map(move |(p, picks)| {
                    let ids = person_ids(p, users[p]);
                    let mut ev: Vec<Ident> =
                        picks.iter().map(|i| ids[i % ids.len()].clone()).collect();
                    ev.sort();
                    ev.dedup();
                    ev
                });
            // Returning users: repeat earlier events so lookups can hit.
            prop::collection::vec(event, 1..40).prop_flat_map(|evs| {
                let n = evs.len();
                prop::collection::vec(0..n, 0..40).prop_map(move |repeats| {
                    let mut all = evs.clone();
                    all.extend(repeats.iter().map(|&i| evs[i].clone()));
                    all
                })
            })
        });
    let step = prop_oneof![
        3 => Just(Step::Event),
        2 => Just(Step::Coordinate),
        2 => Just(Step::Link),
    ];
    (events, prop::collection::vec(step, 0..200))
        .prop_map(|(events, schedule)| Case { events, schedule })
}

#[derive(Default)]
struct Counts {
    hits: AtomicUsize,
    stale_hits: AtomicUsize,
}

/// Runs one case; returns each event's resolved profile id, in event order.
fn run(case: &Case, counts: &Counts) -> (Vec<String>, MemGraph) {
    let rules = Rules::default();
    let mut graph = MemGraph::default();
    let mut store: HashMap<Vec<u8>, Link> = HashMap::new();
    let mut misses: VecDeque<usize> = VecDeque::new();
    let mut links: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
    let mut resolved: Vec<Option<String>> = vec![None; case.events.len()];
    let mut next_event = 0;

    let stitch_event = |i: usize,
                        store: &HashMap<Vec<u8>, Link>,
                        graph: &mut MemGraph,
                        misses: &mut VecDeque<usize>,
                        resolved: &mut Vec<Option<String>>| {
        let ids = &case.events[i];
        let key = stitch::link_key(SPACE, stitch::routing_ident(ids).unwrap());
        match store.get(&key) {
            Some(link) if stitch::hit(link, ids) => {
                counts.hits.fetch_add(1, Ordering::Relaxed);
                if graph.follow(SPACE, &link.profile_id) != link.profile_id {
                    counts.stale_hits.fetch_add(1, Ordering::Relaxed);
                }
                resolved[i] = Some(link.profile_id.clone());
            }
            _ => misses.push_back(i),
        }
    };
    let coordinate = |i: usize,
                      graph: &mut MemGraph,
                      links: &mut VecDeque<(Vec<u8>, Vec<u8>)>,
                      resolved: &mut Vec<Option<String>>| {
        let ids = &case.events[i];
        let res = graph.resolve(&rules, SPACE, ids, 0).unwrap();
        links.extend(stitch::links_after(
            SPACE,
            &res.profile,
            ids,
            !res.merges.is_empty(),
        ));
        resolved[i] = Some(res.profile.id.clone());
    };
    let apply_link = |(key, value): (Vec<u8>, Vec<u8>), store: &mut HashMap<Vec<u8>, Link>| {
        match stitch::classify(&value).unwrap() {
            StitchInput::Link(Some(link)) => {
                store.insert(key, link);
            }
            StitchInput::Link(None) => {
                store.remove(&key);
            }
            StitchInput::Event(_) => panic!("only links here"),
        }
    };

    // The schedule, then everything left in the same rotation.
    let tail = std::iter::repeat([Step::Event, Step::Coordinate, Step::Link]).flatten();
    for step in case.schedule.iter().copied().chain(tail) {
        if next_event == case.events.len() && misses.is_empty() && links.is_empty() {
            break;
        }
        match step {
            Step::Event if next_event < case.events.len() => {
                stitch_event(next_event, &store, &mut graph, &mut misses, &mut resolved);
                next_event += 1;
            }
            Step::Coordinate => {
                if let Some(i) = misses.pop_front() {
                    coordinate(i, &mut graph, &mut links, &mut resolved);
                }
            }
            Step::Link => {
                if let Some(l) = links.pop_front() {
                    apply_link(l, &mut store);
                }
            }
            Step::Event => {}
        }
    }
    let resolved = resolved
        .into_iter()
        .map(|r| r.expect("every event resolved"))
        .collect();
    (resolved, graph)
}

fn check(case: &Case, counts: &Counts) -> Result<(), TestCaseError> {
    let (resolved, mut graph) = run(case, counts);
    // The oracle: one coordinator, every event, in order.
    let rules = Rules::default();
    let mut oracle = MemGraph::default();
    for ids in &case.events {
        oracle.resolve(&rules, SPACE, ids, 0);
    }
    for (ids, pid) in case.events.iter().zip(&resolved) {
        let live = graph.follow(SPACE, pid);
        for id in ids {
            let holder = graph.profile_of(SPACE, id);
            prop_assert_eq!(
                holder.as_deref(),
                Some(live.as_str()),
                "{} resolved to {} (live {}), which does not hold {}",
                ids.len(),
                pid,
                live,
                id
            );
            prop_assert_eq!(graph.profile_of(SPACE, id), oracle.profile_of(SPACE, id));
        }
    }
    prop_assert_eq!(graph.mappings.len(), oracle.mappings.len());
    Ok(())
}

#[test]
fn any_schedule_resolves_every_event_to_its_identifiers_final_profile() {
    let counts = Counts::default();
    let mut runner = TestRunner::new(Config {
        cases: 512,
        ..Config::default()
    });
    runner
        .run(&case(), |c| check(&c, &counts))
        .expect("property holds");
    // The property is only interesting if lookups hit, and hit links that a merge made stale.
    assert!(counts.hits.load(Ordering::Relaxed) > 0, "no lookup hit");
    assert!(
        counts.stale_hits.load(Ordering::Relaxed) > 0,
        "no lookup raced a merge"
    );
}

/// The race, step by step: `a1`'s link names profile A; `{a1, u1}` renames A into U at the
/// coordinator; `{a1}` reaches its stitcher before the new link does and resolves to A, which
/// forwards to U, the profile that holds `a1`. Once the link arrives, `{a1}` resolves to U.
#[test]
fn a_lookup_that_races_a_merge_resolves_to_the_retired_id_which_forwards_to_the_survivor() {
    let a1 = Ident::new("anonymous_id", "a1");
    let u1 = Ident::new("user_id", "u1");
    let case = Case {
        events: vec![
            vec![a1.clone()],
            vec![a1.clone(), u1.clone()],
            vec![a1.clone()],
            vec![a1.clone()],
        ],
        schedule: vec![
            Step::Event,      // {a1}: miss
            Step::Coordinate, // A created, link a1 -> A queued
            Step::Link,       // a1 -> A
            Step::Event,      // {a1, u1}: miss (u1 not in A)
            Step::Coordinate, // A renamed into U, links a1 -> U, u1 -> U queued
            Step::Event,      // {a1}: hits the stale link, resolves to A
            Step::Link,
            Step::Link,
            Step::Event, // {a1}: hits the fresh link, resolves to U
        ],
    };
    let counts = Counts::default();
    let (resolved, mut graph) = run(&case, &counts);
    let a = resolved[0].clone();
    let u = graph.profile_of(SPACE, &u1).unwrap();
    assert_ne!(a, u);
    assert_eq!(resolved[1], u);
    assert_eq!(resolved[2], a, "the racing lookup names the retired id");
    assert_eq!(graph.follow(SPACE, &a), u, "which forwards to the survivor");
    assert_eq!(resolved[3], u);
    assert_eq!(counts.hits.load(Ordering::Relaxed), 2);
    assert_eq!(counts.stale_hits.load(Ordering::Relaxed), 1);
}
