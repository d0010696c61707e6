//! In-process benchmark of the engine with the store round trip (decode, apply, evaluate,
//! encode), no Kafka: events/s with 10 and 100 definitions, timers fired/s, and state bytes
//! per profile (median, p99). Bounded: `--events N` (default 200000), `--profiles N`.
//!
//! `cargo run --release -p corral-compute --bin compute-bench -- --events 200000`

use corral_compute::{DefinitionSpec, Engine, EngineConfig, InEvent, ProfileState};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::Instant;

fn specs(n: usize) -> Vec<DefinitionSpec> {
    corral_compute::bench_defs::definitions(n)
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(defs: usize, events: usize, profiles: usize) {
    let engine = Engine::new(EngineConfig::default(), specs(defs));
    let names = corral_compute::bench_defs::EVENT_NAMES;
    let mut store: HashMap<u64, Vec<u8>> = HashMap::new();
    let start_ms = 1_735_689_600_000i64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let empty = Map::new();
    let mut changes = 0usize;
    let t = Instant::now();
    for i in 0..events {
        let p = next() % profiles as u64;
        let r = next();
        let now = start_ms + (i as i64) * 60_000 / 10; // 6 s of event time per event
        let mut st = store
            .get(&p)
            .and_then(|b| ProfileState::decode(b).ok())
            .unwrap_or_default();
        let ch = if r % 10 == 0 {
            let traits: Map<String, Value> = json!({"plan": if r % 3 == 0 {"trial"} else {"pro"}, "created_at": "2024-01-01T00:00:00Z"})
                .as_object()
                .cloned()
                .unwrap_or_default();
            engine.apply_identify(&mut st, &traits, now, now)
        } else {
            let props: Map<String, Value> = json!({"revenue": r % 200, "price": r % 300, "product_id": format!("p{}", r % 20), "feature_name": format!("f{}", r % 12), "name": "n"})
                .as_object()
                .cloned()
                .unwrap_or_default();
            engine.apply_event(
                &mut st,
                &InEvent {
                    name: names[(r >> 8) as usize % names.len()],
                    ts_ms: now,
                    properties: &props,
                    context: &empty,
                    source_id: None,
                },
                now,
            )
        };
        changes += ch.len();
        store.insert(p, st.encode());
    }
    let secs = t.elapsed().as_secs_f64();
    let mut sizes: Vec<usize> = store.values().map(Vec::len).collect();
    sizes.sort_unstable();
    let q = |f: f64| {
        sizes
            .get(((sizes.len() as f64 - 1.0) * f) as usize)
            .copied()
            .unwrap_or(0)
    };
    // COMPUTE_BENCH_DUMP=1: show what a p99-sized state holds (as JSON), to see what to shrink.
    if std::env::var_os("COMPUTE_BENCH_DUMP").is_some() {
        if let Some(st) = store
            .values()
            .find(|b| b.len() >= q(0.99))
            .and_then(|b| ProfileState::decode(b).ok())
        {
            eprintln!(
                "p99 state: {}",
                serde_json::to_string(&st).unwrap_or_default()
            );
        }
    }
    // Timers: re-evaluate every profile 31 days later (the window exits).
    let later = start_ms + events as i64 * 6_000 + 31 * 86_400_000;
    let t2 = Instant::now();
    let mut fired = 0usize;
    for b in store.values_mut() {
        if let Ok(mut st) = ProfileState::decode(b) {
            if st.wake_ms.is_some_and(|w| w <= later) {
                fired += 1;
                changes += engine.tick(&mut st, later).len();
                *b = st.encode();
            }
        }
    }
    let secs2 = t2.elapsed().as_secs_f64();
    println!(
        "definitions={} (leaves {}) events={} profiles={} events_per_s={:.0} changes={} state_bytes_median={} state_bytes_p99={} timers_fired={} timers_per_s={:.0}",
        engine.definitions().len(),
        engine.leaf_count(),
        events,
        store.len(),
        events as f64 / secs,
        changes,
        q(0.5),
        q(0.99),
        fired,
        fired as f64 / secs2.max(1e-9),
    );
}

/// One user's flip on the account side, in accounts of `sizes` users, with the store round
/// trip (decode the account and the user's record, adjust the counters, evaluate 10 account
/// definitions, encode both), against the baseline of recounting every user's conditions on
/// each flip (what an account side without counters would do).
fn accounts_flip(sizes: &[usize], flips: usize) {
    use corral_compute::accounts::{AccountState, MemberState};
    let yaml = r#"
audiences:
  - {key: a0, type: accounts, query: "ANY event('Flip').count() >= 1"}
  - {key: a1, type: accounts, query: "NONE event('Logged In').within(30 days).count() >= 1"}
  - {key: a2, type: accounts, query: "ALL event('E1').count() >= 1"}
  - {key: a3, type: accounts, query: "trait('plan') = 'business' AND NONE event('E2').within(7 days).count() >= 1"}
  - {key: a4, type: accounts, query: "ANY event('E3').count() >= 2"}
  - {key: a5, type: accounts, query: "NONE event('E4').count() >= 1"}
  - {key: a6, type: accounts, query: "ANY trait('plan') = 'pro'"}
  - {key: a7, type: accounts, query: "trait('size') > 100 AND ANY event('E1').count() >= 1"}
  - {key: a8, type: accounts, query: "ALL NOT event('E2').count() >= 3"}
  - {key: a9, type: accounts, query: "trait('a0') = true AND trait('plan') = 'business'"}
"#;
    let Ok(defs) = corral_query::load_definitions_str(yaml, "bench") else {
        return;
    };
    let specs: Vec<DefinitionSpec> = defs
        .definitions
        .iter()
        .map(|d| DefinitionSpec {
            key: d.key.clone(),
            name: None,
            target: d.target,
            kind: d.kind,
            version: 1,
            query: d.text.clone(),
            include_historical_data: false,
        })
        .collect();
    let engine = Engine::new(EngineConfig::default(), specs);
    let Some(side) = engine.accounts() else {
        return;
    };
    let conds: Vec<String> = side.conditions.keys().cloned().collect();
    let now = 1_735_689_600_000i64;
    for &n in sizes {
        let mut acct = AccountState::default();
        let mut members: Vec<Vec<u8>> = Vec::with_capacity(n);
        for u in 0..n {
            let m = MemberState {
                ids: Vec::new(),
                conditions: conds
                    .iter()
                    .filter(|_| u % 2 == 0)
                    .take(3)
                    .cloned()
                    .collect(),
            };
            acct.set_member(None, Some(&m));
            members.push(rmp_serde::to_vec_named(&m).unwrap_or_default());
        }
        let _ = side.evaluate(&mut acct, now);
        let mut acct_bytes = rmp_serde::to_vec_named(&acct).unwrap_or_default();
        // Counters: O(conditions) per flip.
        let t = Instant::now();
        for i in 0..flips {
            let u = (i * 7919) % n;
            let mut a: AccountState = rmp_serde::from_slice(&acct_bytes).unwrap_or_default();
            let old: MemberState = rmp_serde::from_slice(&members[u]).unwrap_or_default();
            let mut new = old.clone();
            let k = &conds[i % conds.len()];
            if !new.conditions.remove(k) {
                new.conditions.insert(k.clone());
            }
            a.set_member(Some(&old), Some(&new));
            let _ = side.evaluate(&mut a, now + i as i64);
            members[u] = rmp_serde::to_vec_named(&new).unwrap_or_default();
            acct_bytes = rmp_serde::to_vec_named(&a).unwrap_or_default();
        }
        let per = t.elapsed().as_secs_f64() / flips as f64;
        // Baseline: recount every user's conditions on each flip.
        let base_flips = (flips / n.max(1)).clamp(5, flips);
        let t = Instant::now();
        for i in 0..base_flips {
            let mut a: AccountState = rmp_serde::from_slice(&acct_bytes).unwrap_or_default();
            a.users = 0;
            a.satisfied.clear();
            for m in &members {
                let m: MemberState = rmp_serde::from_slice(m).unwrap_or_default();
                a.set_member(None, Some(&m));
            }
            let _ = side.evaluate(&mut a, now + i as i64);
        }
        let base = t.elapsed().as_secs_f64() / base_flips as f64;
        println!(
            "accounts flip users_in_account={n} definitions=10 counters_us_per_flip={:.1} recount_baseline_us_per_flip={:.1} account_record_bytes={}",
            per * 1e6,
            base * 1e6,
            acct_bytes.len()
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--accounts") {
        accounts_flip(&[10, 1_000, 10_000], arg("--flips", 20_000));
        return;
    }
    let events = arg("--events", 200_000);
    let profiles = arg("--profiles", 20_000);
    run(10, events, profiles);
    run(100, events, profiles);
}
