//! Property: on random event streams whose identifiers never break a limit, the final grouping of
//! identifiers equals the connected components of "seen together" (a plain union-find oracle),
//! every profile id is the id of its component's highest-priority identifier, and the order of
//! the events does not change any of it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use corral_identity::{profile_id, Ident, MemGraph, Rules};
use proptest::prelude::*;

const SPACE: &str = "prop";

/// Each person owns at most 1 user_id and at most 5 ids of every other type, so no event, and no
/// union of a person's ids, can break Segment's default limits.
fn person_ids(p: usize, has_user: bool) -> Vec<Ident> {
    let mut ids = Vec::new();
    if has_user {
        ids.push(Ident::new("user_id", format!("u{p}")));
    }
    for k in 0..5 {
        ids.push(Ident::new("anonymous_id", format!("a{p}-{k}")));
        ids.push(Ident::new("email", format!("p{p}.{k}@example.com")));
        ids.push(Ident::new("ios.id", format!("dev{p}-{k}")));
    }
    ids
}

#[derive(Debug, Clone)]
struct Stream {
    events: Vec<Vec<Ident>>,
    permutation: Vec<usize>,
}

fn stream() -> impl Strategy<Value = Stream> {
    (1usize..6, prop::collection::vec(any::<bool>(), 6))
        .prop_flat_map(|(people, users)| {
            let event =
                (0..people, prop::collection::vec(0usize..16, 1..4)).prop_map(move |(p, picks)| {
                    let ids = person_ids(p, users[p]);
                    let mut ev: Vec<Ident> =
                        picks.iter().map(|i| ids[i % ids.len()].clone()).collect();
                    ev.dedup();
                    ev
                });
            prop::collection::vec(event, 1..60)
        })
        .prop_flat_map(|events| {
            let n = events.len();
            (
                Just(events),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
        })
        .prop_map(|(events, permutation)| Stream {
            events,
            permutation,
        })
}

struct UnionFind {
    parent: HashMap<Ident, Ident>,
}

impl UnionFind {
    fn find(&mut self, x: &Ident) -> Ident {
        let p = self
            .parent
            .entry(x.clone())
            .or_insert_with(|| x.clone())
            .clone();
        if &p == x {
            return p;
        }
        let root = self.find(&p);
        self.parent.insert(x.clone(), root.clone());
        root
    }
    fn union(&mut self, a: &Ident, b: &Ident) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent.insert(ra, rb);
        }
    }
}

fn run(events: &[Vec<Ident>], order: impl Iterator<Item = usize>) -> (MemGraph, usize) {
    let rules = Rules::default();
    let mut g = MemGraph::default();
    let mut dropped = 0;
    for (t, i) in order.enumerate() {
        let r = g.resolve(&rules, SPACE, &events[i], t as i64).unwrap();
        dropped += r.demoted.len() + r.untrusted.len();
    }
    (g, dropped)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn grouping_equals_union_find_components(s in stream()) {
        let mut uf = UnionFind { parent: HashMap::new() };
        for ev in &s.events {
            for w in ev.windows(2) {
                uf.union(&w[0], &w[1]);
            }
            uf.find(&ev[0]);
        }
        let all: BTreeSet<Ident> = s.events.iter().flatten().cloned().collect();
        let mut components: BTreeMap<Ident, BTreeSet<Ident>> = BTreeMap::new();
        for i in &all {
            let root = uf.find(i);
            components.entry(root).or_default().insert(i.clone());
        }

        let (mut g, dropped) = run(&s.events, 0..s.events.len());
        prop_assert_eq!(dropped, 0, "no limit can break, so nothing is demoted or refused");
        let rules = Rules::default();
        for members in components.values() {
            let anchor = members.iter().min_by(|a, b| rules.ident_order(a, b)).unwrap();
            let expected = profile_id(SPACE, anchor);
            for m in members {
                prop_assert_eq!(g.profile_of(SPACE, m), Some(expected.clone()), "{} in the component of {}", m, anchor);
            }
            let profile = g.profiles.get(&(SPACE.to_string(), expected.clone())).unwrap();
            let held: BTreeSet<Ident> = profile.idents().collect();
            prop_assert_eq!(&held, members, "the profile holds exactly its component");
        }
        prop_assert_eq!(g.profiles.len(), components.len());
        // Every profile id ever handed out still resolves to a live profile.
        let aliases: Vec<String> = g.aliases.keys().map(|(_, from)| from.clone()).collect();
        for from in aliases {
            let live = g.follow(SPACE, &from);
            prop_assert!(g.profiles.contains_key(&(SPACE.to_string(), live)));
        }

        // Another arrival order gives the same ids.
        let (g2, _) = run(&s.events, s.permutation.iter().copied());
        for i in &all {
            prop_assert_eq!(g.profile_of(SPACE, i), g2.profile_of(SPACE, i));
        }
    }
}
