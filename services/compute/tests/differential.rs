//! THE core test: the incremental engine against the reference evaluator.
//!
//! Random definitions from the grammar (audiences with counts and every comparator, windows,
//! property filters, trait and computed-trait conditions, references to other audiences,
//! funnels with `within(parent:)` and `property(parent:)`, trait-dependent filters; computed
//! traits with every reducer, windows and `expires_after`) and random histories (track events,
//! late events, identifies including removals, merges, time passing) are fed to the engine;
//! at every check point the results it has *emitted* (entered/exited, trait changes, applied
//! in order) equal `corral_query::evaluate_audience` / `evaluate_trait` over the full history at
//! that "now". Timers are honoured exactly as the service does: a profile is re-evaluated only
//! when its `wake_ms` has passed.
//!
//! Deliberate restrictions of the generator (documented bounds, docs/compute.md):
//! - event times are unique and never later than the clock when they arrive (equal-time
//!   ordering across merged profiles and future-dated events are outside the reference's
//!   determinism / the engine's exactness);
//! - lateness stays below the engine's `allowed_lateness_ms` (late events can bridge only
//!   sessions still kept); with merges in a history the bound is raised beyond the test's
//!   span, since a merge is an arbitrarily late arrival for the surviving profile;
//! - numeric properties are small integers (float sums are exact, order-independent);
//! - one window per chain, `where` before `expires_after` (the planner keeps one window and
//!   applies filters before it), no funnels under `expires_after`;
//! - no ACCOUNTS definitions (rejected by compute).
//!
//! Cases: `COMPUTE_DIFF_CASES` (default 5000; `COMPUTE_DIFF_CASES=100000` for the long run).

use chrono::{DateTime, Utc};
use corral_compute::{ChangeKind, DefinitionSpec, Engine, EngineConfig, InEvent, ProfileState};
use corral_query::check::{Catalogue, DefinitionKind, Target};
use corral_query::{evaluate_audience, evaluate_trait, Event, Profile, Subject};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

const NAMES: [&str; 3] = ["A", "B", "C"];
const DURS: [&str; 6] = [
    "1 hours",
    "6 hours",
    "1 days",
    "2 days",
    "3 days",
    "30 minutes",
];
const STRS: [&str; 3] = ["x", "y", "z"];

fn name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&NAMES[..])
}
fn dur() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&DURS[..])
}
fn sval() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&STRS[..])
}

/// Per-event conditions that read only the event.
fn static_filter() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        (0..5i32).prop_map(|k| format!("property('p') > {k}")),
        (0..5i32).prop_map(|k| format!("property('p') <= {k}")),
        sval().prop_map(|s| format!("property('s') = '{s}'")),
        sval().prop_map(|s| format!("property('s') != '{s}'")),
        (sval(), sval()).prop_map(|(a, b)| format!("property('s').one_of('{a}', '{b}')")),
        Just("property('s').exists()".to_string()),
        Just("property('p').absent()".to_string()),
        sval().prop_map(|s| format!("property('s').contains('{s}')")),
    ];
    atom.prop_recursive(2, 4, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| format!("NOT ({f})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} OR {b})")),
        ]
    })
}

/// Conditions that make a leaf keep its events: traits, funnels, parent references.
fn dynamic_filter() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("property('s') = trait('t')".to_string()),
        Just("property('p') >= trait('n')".to_string()),
        (name(), dur(), 1..3i32).prop_map(|(n, d, k)| format!(
            "event('{n}').within(parent: {d}).count() >= {k}"
        )),
        (name(), dur()).prop_map(|(n, d)| format!(
            "NOT event('{n}').within(parent: {d}).count() >= 1"
        )),
        (name(), dur()).prop_map(|(n, d)| format!(
            "event('{n}').where(property('s') = property(parent: 's')).within(parent: {d}).count() >= 1"
        )),
        (name(), dur()).prop_map(|(n, d)| format!(
            "NOT event('{n}').where(property('s') = property(parent: 's')).within(parent: {d}).count() >= 1"
        )),
        (name(), dur()).prop_map(|(n, d)| format!(
            "event('{n}').between(parent: 30 minutes, {d}).count() >= 1"
        )),
        (name(), 0..3i32).prop_map(|(n, k)| format!("event('{n}').count() > {k}")),
        Just("context('timestamp').within_last(1 days)".to_string()),
    ]
}

fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => static_filter(),
        2 => dynamic_filter(),
        1 => (static_filter(), dynamic_filter()).prop_map(|(a, b)| format!("{a} AND {b}")),
    ]
}

fn window() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just(String::new()),
        2 => dur().prop_map(|d| format!(".within({d})")),
        1 => (dur(), dur()).prop_map(|(a, b)| format!(".between({a}, {b})")),
    ]
}

fn stream() -> impl Strategy<Value = String> {
    (
        name(),
        prop::option::weighted(0.5, filter()),
        window(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(n, f, w, src)| {
            let f = f.map(|f| format!(".where({f})")).unwrap_or_default();
            let s = if src {
                ".sources({exclude: 'src1'})"
            } else {
                ""
            };
            format!("event('{n}'){f}{s}{w}")
        })
}

fn reduced_condition() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (0..4i32).prop_map(|k| format!("count() >= {k}")),
        1 => Just("count() = 0".to_string()),
        1 => (0..3i32).prop_map(|k| format!("count() < {k}")),
        1 => (0..8i32).prop_map(|k| format!("sum(property('p')) > {k}")),
        1 => (0..4i32).prop_map(|k| format!("avg(property('p')) >= {k}")),
        1 => (0..4i32).prop_map(|k| format!("min(property('p')) <= {k}")),
        1 => (0..4i32).prop_map(|k| format!("max(property('p')) > {k}")),
        1 => sval().prop_map(|s| format!("max(property('s') as string) = '{s}'")),
        1 => sval().prop_map(|s| format!("first(property('s')) = '{s}'")),
        1 => sval().prop_map(|s| format!("last(property('s')) = '{s}'")),
        1 => (1..3i32).prop_map(|k| format!("unique(property('s')).count() >= {k}")),
        1 => sval().prop_map(|s| format!("mode(property('s'), 2) = '{s}'")),
        1 => Just("avg(property('p')).exists()".to_string()),
    ]
}

fn trait_condition() -> impl Strategy<Value = String> {
    prop_oneof![
        sval().prop_map(|s| format!("trait('t') = '{s}'")),
        (0..4i32).prop_map(|k| format!("trait('n') > {k}")),
        Just("trait('d').within_last(2 days)".to_string()),
        Just("trait('d').before_last(1 days)".to_string()),
        Just("trait('d').within_next(1 days)".to_string()),
        Just("trait('d').after_next(6 hours)".to_string()),
        Just("trait('t').exists()".to_string()),
        Just("trait('n').absent()".to_string()),
        (0..4i32).prop_map(|k| format!("trait('ct0') >= {k}")),
        Just("trait('ct1').exists()".to_string()),
    ]
}

/// An audience condition; `refs` are earlier audiences it may reference.
fn condition(refs: Vec<&'static str>) -> BoxedStrategy<String> {
    let reff = if refs.is_empty() {
        Just("trait('t').exists()".to_string()).boxed()
    } else {
        prop::sample::select(refs)
            .prop_map(|r| format!("trait('{r}') = 'true'"))
            .boxed()
    };
    let atom = prop_oneof![
        4 => (stream(), reduced_condition()).prop_map(|(s, r)| format!("{s}.{r}")),
        2 => trait_condition(),
        1 => reff,
    ];
    atom.prop_recursive(2, 4, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|c| format!("NOT ({c})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a} AND {b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a} OR {b})")),
        ]
    })
    .boxed()
}

fn computed_trait() -> impl Strategy<Value = String> {
    let reducer = prop::sample::select(vec![
        "count()",
        "sum(property('p'))",
        "avg(property('p'))",
        "min(property('p'))",
        "max(property('p'))",
        "min(property('s') as string)",
        "first(property('s'))",
        "last(property('s'))",
        "last(context('timestamp'))",
        "unique(property('s'))",
        "unique(property('s')).count()",
        "mode(property('s'), 1)",
        "mode(property('p') as number, 2)",
    ]);
    let session = dur().prop_map(|d| format!(".expires_after({d})"));
    prop_oneof![
        3 => (stream(), reducer.clone()).prop_map(|(s, r)| format!("{s}.{r}")),
        1 => (name(), prop::option::of(static_filter()), session, reducer).prop_map(
            |(n, f, s, r)| {
                let f = f.map(|f| format!(".where({f})")).unwrap_or_default();
                format!("event('{n}'){f}{s}.{r}")
            }
        ),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Track {
        prof: usize,
        name: &'static str,
        p: Option<i64>,
        s: Option<&'static str>,
        src1: bool,
        late_min: u32,
    },
    Identify {
        prof: usize,
        t: Option<Option<&'static str>>,
        n: Option<Option<i64>>,
        d_hours: Option<i64>,
        late_min: u32,
    },
    Merge {
        from: usize,
        into: usize,
    },
    Advance {
        minutes: u32,
    },
    Check,
}

fn late() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(0u32), 1 => 0..(2 * 24 * 60u32)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, name(), prop::option::weighted(0.8, 0..5i64),
              prop::option::weighted(0.8, sval()), prop::bool::weighted(0.1), late())
            .prop_map(|(prof, name, p, s, src1, late_min)| Op::Track { prof, name, p, s, src1, late_min }),
        3 => (0..4usize,
              prop::option::of(prop::option::weighted(0.8, sval())),
              prop::option::of(prop::option::weighted(0.8, 0..5i64)),
              prop::option::of(-72..72i64), late())
            .prop_map(|(prof, t, n, d_hours, late_min)| Op::Identify { prof, t, n, d_hours, late_min }),
        1 => (0..4usize, 0..4usize).prop_map(|(from, into)| Op::Merge { from, into }),
        4 => prop_oneof![0..90u32, 60..(3 * 24 * 60u32)].prop_map(|minutes| Op::Advance { minutes }),
        1 => Just(Op::Check),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    audiences: Vec<String>,
    traits: Vec<String>,
    ops: Vec<Op>,
}

const AUD_KEYS: [&str; 3] = ["aud0", "aud1", "aud2"];
const CT_KEYS: [&str; 2] = ["ct0", "ct1"];

fn case() -> impl Strategy<Value = Case> {
    (
        condition(vec![]),
        condition(vec!["aud0"]),
        condition(vec!["aud0", "aud1"]),
        computed_trait(),
        computed_trait(),
        prop::collection::vec(op(), 1..60),
    )
        .prop_map(|(a0, a1, a2, t0, t1, ops)| Case {
            audiences: vec![a0, a1, a2],
            traits: vec![t0, t1],
            ops,
        })
}

#[derive(Default, Clone)]
struct RefProfile {
    events: Vec<Event>,
    traits: BTreeMap<String, (Value, i64)>,
}

fn ts(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

fn specs(c: &Case) -> Vec<DefinitionSpec> {
    let mut out = Vec::new();
    for (i, q) in c.audiences.iter().enumerate() {
        out.push(DefinitionSpec {
            key: AUD_KEYS[i].into(),
            name: None,
            target: Target::Audience,
            kind: DefinitionKind::Users,
            version: 1,
            query: q.clone(),
            include_historical_data: false,
        });
    }
    for (i, q) in c.traits.iter().enumerate() {
        out.push(DefinitionSpec {
            key: CT_KEYS[i].into(),
            name: None,
            target: Target::ComputedTrait,
            kind: DefinitionKind::Users,
            version: 1,
            query: q.clone(),
            include_historical_data: false,
        });
    }
    out
}

fn run_case(c: &Case) -> Result<(), TestCaseError> {
    // A merge brings the other profile's events in as if arbitrarily late: with merges in the
    // history, sessions are kept for the whole test so that merged sessions can still bridge
    // (the documented bound: sessions that ended more than `allowed_lateness_ms` ago are
    // dropped and a merge does not resurrect them).
    let merges = c.ops.iter().any(|o| matches!(o, Op::Merge { .. }));
    let cfg = EngineConfig {
        allowed_lateness_ms: if merges { 1000 } else { 3 } * 86_400_000,
        max_entries_per_leaf: 100_000,
    };
    let specs = specs(c);
    let engine = Engine::new(cfg, specs.clone());
    prop_assert!(
        engine.rejected().is_empty(),
        "generator produced a rejected definition: {:?}",
        engine.rejected()
    );
    let mut catalogue = Catalogue::new();
    let mut queries = BTreeMap::new();
    for s in &specs {
        let q = corral_query::parse(&s.query).map_err(|d| TestCaseError::fail(d.message))?;
        catalogue.insert(s.key.clone(), s.target, s.kind, Some(q.clone()));
        queries.insert(s.key.clone(), (s.target, q));
    }

    let base = ts(0).timestamp_millis() + 1_704_067_200_000; // 2024-01-01
    let mut now = base + 30 * 86_400_000 + 999;
    let mut uniq: i64 = 0;
    let mut states: HashMap<usize, ProfileState> = HashMap::new();
    let mut refs: HashMap<usize, RefProfile> = HashMap::new();
    // What downstream has seen: emitted changes applied in order.
    let mut view: HashMap<usize, BTreeMap<String, Value>> = HashMap::new();
    let empty = Map::new();

    let apply = |view: &mut HashMap<usize, BTreeMap<String, Value>>,
                 prof: usize,
                 changes: Vec<corral_compute::Change>| {
        let v = view.entry(prof).or_default();
        for ch in changes {
            match ch.kind {
                ChangeKind::Entered => {
                    v.insert(ch.key, Value::Bool(true));
                }
                ChangeKind::Exited => {
                    v.remove(&ch.key);
                }
                ChangeKind::Trait { value, .. } => match value {
                    Some(x) => {
                        v.insert(ch.key, x);
                    }
                    None => {
                        v.remove(&ch.key);
                    }
                },
            }
        }
    };

    let event_time = |now: i64, late_min: u32, uniq: &mut i64| -> i64 {
        *uniq += 1;
        let t = now - i64::from(late_min) * 60_000;
        t - t.rem_euclid(1000) + (*uniq % 999)
    };

    let mut ops = c.ops.clone();
    ops.push(Op::Check);
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Track {
                prof,
                name,
                p,
                s,
                src1,
                late_min,
            } => {
                let t = event_time(now, *late_min, &mut uniq).min(now);
                let mut props = Map::new();
                if let Some(p) = p {
                    props.insert("p".into(), json!(p));
                }
                if let Some(s) = s {
                    props.insert("s".into(), json!(s));
                }
                let src = if *src1 { Some("src1") } else { Some("src0") };
                let st = states.entry(*prof).or_default();
                let ch = engine.apply_event(
                    st,
                    &InEvent {
                        name,
                        ts_ms: t,
                        properties: &props,
                        context: &empty,
                        source_id: src,
                    },
                    now,
                );
                apply(&mut view, *prof, ch);
                let mut e = Event::new(*name, ts(t));
                e.properties = props;
                e.source_id = src.map(String::from);
                refs.entry(*prof).or_default().events.push(e);
            }
            Op::Identify {
                prof,
                t,
                n,
                d_hours,
                late_min,
            } => {
                let at = event_time(now, *late_min, &mut uniq).min(now);
                let mut traits = Map::new();
                if let Some(t) = t {
                    traits.insert("t".into(), t.map(|x| json!(x)).unwrap_or(Value::Null));
                }
                if let Some(n) = n {
                    traits.insert("n".into(), n.map(|x| json!(x)).unwrap_or(Value::Null));
                }
                if let Some(h) = d_hours {
                    traits.insert("d".into(), json!(ts(now + h * 3_600_000).to_rfc3339()));
                }
                let st = states.entry(*prof).or_default();
                let ch = engine.apply_identify(st, &traits, at, now);
                apply(&mut view, *prof, ch);
                let r = refs.entry(*prof).or_default();
                for (k, v) in traits {
                    let newer = r.traits.get(&k).is_none_or(|(_, ct)| at >= *ct);
                    if newer {
                        r.traits.insert(k, (v, at));
                    }
                }
            }
            Op::Merge { from, into } => {
                if from == into || !states.contains_key(from) || !states.contains_key(into) {
                    continue;
                }
                let Some(fst) = states.remove(from) else {
                    continue;
                };
                let was_in: Vec<String> = view
                    .get(from)
                    .map(|v| v.keys().filter(|k| k.starts_with("aud")).cloned().collect())
                    .unwrap_or_default();
                let ist = states.entry(*into).or_default();
                let absorbed = engine.absorb(ist, fst, now);
                apply(&mut view, *from, absorbed.from_exits);
                apply(&mut view, *into, absorbed.into);
                // The merged-away profile keeps exactly the memberships the survivor carries.
                for k in &was_in {
                    let still = view.get(from).is_some_and(|v| v.contains_key(k));
                    let carried = view.get(into).is_some_and(|v| v.contains_key(k));
                    prop_assert_eq!(
                        still,
                        carried,
                        "merged-away profile's membership of {} after the merge",
                        k
                    );
                }
                view.remove(from);
                let fr = refs.remove(from).unwrap_or_default();
                let ir = refs.entry(*into).or_default();
                ir.events.extend(fr.events);
                for (k, (v, t)) in fr.traits {
                    let newer = ir.traits.get(&k).is_none_or(|(_, ct)| t > *ct);
                    if newer {
                        ir.traits.insert(k, (v, t));
                    }
                }
            }
            Op::Advance { minutes } => {
                now += i64::from(*minutes) * 60_000;
                for (prof, st) in states.iter_mut() {
                    if st.wake_ms.is_some_and(|w| w <= now) {
                        let ch = engine.tick(st, now);
                        apply(&mut view, *prof, ch);
                    }
                }
            }
            Op::Check => {}
        }
        if matches!(op, Op::Advance { .. } | Op::Check) || step % 5 == 0 {
            for (prof, st) in &states {
                let r = refs.get(prof).cloned().unwrap_or_default();
                let mut profile = Profile {
                    events: r.events.clone(),
                    ..Profile::default()
                };
                for (k, (v, _)) in &r.traits {
                    if !v.is_null() {
                        profile.traits.insert(k.clone(), v.clone());
                    }
                }
                let seen = view.get(prof).cloned().unwrap_or_default();
                for (key, (target, q)) in &queries {
                    let expected = match target {
                        Target::Audience => {
                            evaluate_audience(q, Subject::User(&profile), ts(now), &catalogue)
                                .map(|b| if b { Some(Value::Bool(true)) } else { None })
                        }
                        Target::ComputedTrait => {
                            evaluate_trait(q, Subject::User(&profile), ts(now), &catalogue)
                        }
                    }
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let got = seen.get(key).cloned();
                    prop_assert_eq!(
                        &got,
                        &expected,
                        "definition {} = `{}` for profile {} at step {} (now {}), wake {:?}, state {}",
                        key,
                        q_text(c, key),
                        prof,
                        step,
                        now,
                        st.wake_ms,
                        serde_json::to_string(&st).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

fn q_text(c: &Case, key: &str) -> String {
    if let Some(i) = AUD_KEYS.iter().position(|k| *k == key) {
        return c.audiences[i].clone();
    }
    if let Some(i) = CT_KEYS.iter().position(|k| *k == key) {
        return c.traits[i].clone();
    }
    String::new()
}

#[test]
fn engine_matches_reference_evaluator() {
    let cases = std::env::var("COMPUTE_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |c| run_case(&c));
    if let Err(e) = result {
        panic!("{e}");
    }
}
