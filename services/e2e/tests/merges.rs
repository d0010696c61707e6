//! Merges keep every event: through the real pipeline (Segment's Python client -> collector ->
//! validator -> identity -> compute, on unique topics of the local Kafka), whatever order compute
//! reads a profile's events, its merge record and the merged-away state in, the survivor's
//! memberships and computed traits are what the reference evaluator gives over all events of
//! all ids of the final profile.
//!
//! Two parts on one stack:
//! 1. The reported case, three variants of 50 users in spaces of their own (an audience applied
//!    before any event: `Account Created` done anonymously, then `plan: trial` from an identify
//!    that merges the anonymous profile): every user must enter.
//! 2. A randomized differential run: generated users with anonymous activity on several devices,
//!    email-only identifies (a rename to the email's profile, then another to the user id's),
//!    identify chains across devices, group and alias calls, interleaved across users and sent
//!    through 6 partitions; every USERS definition of `examples/definitions.yaml` must equal
//!    the reference evaluator (`corral_query`) for every final profile.
//!
//! Knobs (the long run, `make soak-merges`, sets them): `MERGE_DIFF_USERS` (2000),
//! `MERGE_DIFF_SEED` (random, printed), `MERGE_DIFF_INSTANCES` (1: instances of validator,
//! identity and compute), `MERGE_DIFF_KILLS` (0: SIGKILLs of a random identity or compute
//! instance while the stream is processed; each is restarted at once), `MERGE_DIFF_SCALE` (1:
//! with one instance, validator, identity and compute scale 1 -> 3 -> 1 while the stream is
//! processed, as a StatefulSet does: new instance ids 1 and 2, removed with SIGTERM; compute's
//! `corral_kafka_consumer_lag_records` must rise and fall back to 0).
//!
//! Needs the service binaries (`cargo build --workspace --bins`; `make test` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed step should stop it loudly

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    add_instance, binary, create_topics, decode_all, repo_root, run, send_with_python,
    start_pipeline, PipelineConfig, Stack, TopicReader,
};
use corral_codec::{
    MembershipChange, MembershipChangeKind, MessageType, ProfileMerge, ResolvedEvent, TraitChange,
};
use corral_query::check::{DefinitionKind, Target};
use corral_query::{evaluate_audience, evaluate_trait, Event, Profile, Subject};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const DAY_MS: i64 = 86_400_000;
/// How long the pipeline may take to reach the expected result after the last call was sent.
fn settle_deadline(calls: usize) -> Duration {
    Duration::from_secs(120 + (calls / 200) as u64)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pipeline's outputs, read as they grow.
struct Outputs {
    resolved: TopicReader,
    merges: TopicReader,
    membership: TopicReader,
    traits: TopicReader,
}

impl Outputs {
    fn poll(&mut self) {
        for r in [
            &mut self.resolved,
            &mut self.merges,
            &mut self.membership,
            &mut self.traits,
        ] {
            r.poll(Duration::from_millis(20));
        }
    }
}

/// What identity decided and compute emitted for one space.
struct SpaceView {
    /// Resolved events in the order of their partitions (any order between partitions).
    resolved: Vec<ResolvedEvent>,
    /// Merged-away profile -> the profile it went into.
    merged: HashMap<String, String>,
    /// Last membership per (profile, audience): true when the last change is `entered`.
    member: BTreeMap<(String, String), bool>,
    /// Last value per (profile, computed trait).
    traits: BTreeMap<(String, String), Option<Value>>,
}

impl SpaceView {
    fn read(out: &Outputs, space: &str) -> SpaceView {
        let resolved = decode_all::<ResolvedEvent>(&out.resolved)
            .into_iter()
            .filter(|r| r.message.space_id == space)
            .collect();
        let merged = decode_all::<ProfileMerge>(&out.merges)
            .into_iter()
            .filter(|m| m.space_id == space)
            .map(|m| (m.from_profile_id, m.into_profile_id))
            .collect();
        // One key's records are in one partition, read in offset order: the last one counts.
        let mut member = BTreeMap::new();
        for m in decode_all::<MembershipChange>(&out.membership) {
            if m.space_id == space {
                member.insert(
                    (m.profile_id, m.audience_key),
                    m.change == MembershipChangeKind::Entered,
                );
            }
        }
        let mut traits = BTreeMap::new();
        for t in decode_all::<TraitChange>(&out.traits) {
            if t.space_id == space {
                traits.insert((t.profile_id, t.trait_key), t.value);
            }
        }
        SpaceView {
            resolved,
            merged,
            member,
            traits,
        }
    }

    /// The profile `id` lives in now (following merges and renames).
    fn final_of(&self, id: &str) -> String {
        let mut at = id.to_string();
        for _ in 0..1000 {
            match self.merged.get(&at) {
                Some(next) => at = next.clone(),
                None => return at,
            }
        }
        panic!("the merges from {id} form a loop");
    }

    /// Every final profile's full history, as the reference evaluator takes it.
    fn histories(&self) -> BTreeMap<String, Profile> {
        let mut traits: BTreeMap<String, BTreeMap<String, (Value, i64)>> = BTreeMap::new();
        let mut out: BTreeMap<String, Profile> = BTreeMap::new();
        for r in &self.resolved {
            let m = &r.message;
            let owner = self.final_of(&r.profile_id);
            let profile = out.entry(owner.clone()).or_default();
            let at = corral_compute::service::event_time_ms(m, 0);
            let obj = |v: &Option<Value>| match v {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            if m.message_type == MessageType::Identify {
                let t = traits.entry(owner).or_default();
                for (k, v) in obj(&m.traits) {
                    if t.get(&k).is_none_or(|(_, cur)| at >= *cur) {
                        t.insert(k, (v, at));
                    }
                }
            } else if let Some(name) =
                corral_compute::service::event_name(m.message_type, m.event.as_deref())
            {
                profile.events.push(Event {
                    name: name.to_string(),
                    timestamp: chrono::DateTime::from_timestamp_millis(at).unwrap(),
                    properties: obj(&m.properties),
                    context: obj(&m.context),
                    source_id: m.source_id.clone(),
                });
            }
        }
        for (owner, t) in traits {
            let p = out.entry(owner).or_default();
            for (k, (v, _)) in t {
                if !v.is_null() {
                    p.traits.insert(k, v);
                }
            }
        }
        out
    }
}

/// The definitions the differential part checks: every USERS one of examples/definitions.yaml.
fn example_definitions() -> corral_query::definitions::Definitions {
    let text = std::fs::read_to_string(repo_root().join("examples/definitions.yaml")).unwrap();
    corral_query::load_definitions_str(&text, "examples/definitions.yaml")
        .unwrap_or_else(|e| panic!("examples/definitions.yaml: {e}"))
}

/// Where compute disagrees with the reference evaluator (empty when it agrees everywhere).
fn mismatches(
    view: &SpaceView,
    defs: &corral_query::definitions::Definitions,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (profile, history) in view.histories() {
        for d in &defs.definitions {
            if d.kind != DefinitionKind::Users {
                continue;
            }
            let key = (profile.clone(), d.key.clone());
            let (expected, got) = match d.target {
                Target::Audience => {
                    let e =
                        evaluate_audience(&d.query, Subject::User(&history), now, &defs.catalogue)
                            .unwrap();
                    (
                        json!(e),
                        json!(view.member.get(&key).copied().unwrap_or(false)),
                    )
                }
                Target::ComputedTrait => {
                    let e = evaluate_trait(&d.query, Subject::User(&history), now, &defs.catalogue)
                        .unwrap();
                    (json!(e), json!(view.traits.get(&key).cloned().flatten()))
                }
            };
            if expected != got {
                out.push(format!(
                    "{profile} {}: expected {expected}, compute says {got} ({} events, {} ids merged in)",
                    d.key,
                    history.events.len(),
                    view.merged.values().filter(|v| **v == profile).count()
                ));
            }
        }
    }
    out
}

/// An ISO 8601 time `ms` milliseconds after the epoch.
fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Calls sent in two steps: the anonymous ones, then (once they resolved) the identifies.
type Calls = (Vec<Value>, Vec<Value>);

/// The reported case in one space: 50 users, each an anonymous `Account Created` 30 days ago
/// (after an anonymous `Product Viewed` 31 days ago, or a `group` call by user id, depending on
/// `variant`), then an identify with the user id, the same anonymous id and `plan: trial`.
/// Returns the anonymous calls and the identifies (sent after the anonymous calls resolved).
fn reported_case(run_id: &str, variant: &str, now: i64) -> Calls {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for i in 0..50 {
        let anon = format!("{run_id}-{variant}-anon-{i}");
        let user = format!("{run_id}-{variant}-user-{i}");
        match variant {
            "viewed" => first.push(json!({"call": "track", "anonymous_id": anon,
                "event": "Product Viewed", "properties": {"price": 20},
                "timestamp": iso(now - 31 * DAY_MS + i)})),
            "group" => second.push(json!({"call": "group", "user_id": user,
                "group_id": format!("{run_id}-acme"), "traits": {"name": "Acme"}})),
            _ => {}
        }
        first.push(
            json!({"call": "track", "anonymous_id": anon, "event": "Account Created",
            "timestamp": iso(now - 30 * DAY_MS + i)}),
        );
        second.push(
            json!({"call": "identify", "user_id": user, "anonymous_id": anon,
            "traits": {"plan": "trial", "email": format!("{user}@example.com")}}),
        );
    }
    (first, second)
}

/// Days before now an event may be dated: each at least half a day from the examples' window
/// edges (2, 7, 14, 30, 90 days), so the reference (evaluated later) and compute agree.
const AGES_DAYS: [f64; 9] = [0.3, 1.0, 3.0, 5.0, 10.0, 20.0, 40.0, 60.0, 100.0];

/// Makes calls with unique event times (equal times across a merge have no defined order).
struct Gen {
    rng: StdRng,
    now: i64,
    unique_ms: i64,
}

impl Gen {
    /// An event time at one of [`AGES_DAYS`] (± 0.2 days), unique in the stream.
    fn at(&mut self) -> i64 {
        self.unique_ms += 1;
        let base = AGES_DAYS[self.rng.random_range(0..AGES_DAYS.len())];
        let jitter = self.rng.random_range(-0.2..0.2);
        self.now - ((base + jitter) * DAY_MS as f64) as i64 - self.unique_ms
    }

    /// A random event the example definitions read (or a page call), by `who` = (field, id).
    fn event(&mut self, who: (&str, &str)) -> Value {
        const FEATURES: [&str; 4] = ["export", "dashboards", "reports", "alerts"];
        const PRODUCTS: [&str; 5] = ["p1", "p2", "p3", "p4", "p5"];
        let rng = &mut self.rng;
        let (name, props) = match rng.random_range(0..9) {
            0 => ("Account Created", json!({})),
            1 => ("Onboarding Completed", json!({})),
            2 => ("Activation Milestone Reached", json!({})),
            3 => (
                "Feature Used",
                json!({"feature_name": FEATURES[rng.random_range(0..FEATURES.len())]}),
            ),
            4 => (
                "Product Viewed",
                json!({"price": rng.random_range(20..200),
                       "product_id": PRODUCTS[rng.random_range(0..PRODUCTS.len())]}),
            ),
            5 => (
                "Order Completed",
                json!({"revenue": rng.random_range(10..400),
                       "product_id": PRODUCTS[rng.random_range(0..PRODUCTS.len())]}),
            ),
            6 => ("Checkout Started", json!({})),
            7 => ("Session Started", json!({})),
            _ => ("page", json!({"path": "/pricing"})),
        };
        let mut call = if name == "page" {
            json!({"call": "page", "name": "Pricing", "properties": props})
        } else {
            json!({"call": "track", "event": name, "properties": props})
        };
        call[who.0] = json!(who.1);
        call["timestamp"] = json!(iso(self.at()));
        call
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }
}

/// Generated users: anonymous activity on one to three devices, then (for most) identifies
/// that tie the devices to a user id, sometimes an email-only identify first; events by user
/// id after that, group and alias calls. Users' sequences are interleaved at random.
fn generated_stream(run_id: &str, users: usize, now: i64, seed: u64) -> Vec<Value> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        now,
        unique_ms: 0,
    };
    let mut sequences: Vec<Vec<Value>> = Vec::new();
    for u in 0..users {
        let user = format!("{run_id}-u{u}");
        let email = format!("{user}@example.com");
        let devices: Vec<String> = (0..1 + g.below(3))
            .map(|d| format!("{run_id}-a{u}-{d}"))
            .collect();
        let mut seq = Vec::new();
        for d in &devices {
            for _ in 0..g.below(4) {
                seq.push(g.event(("anonymous_id", d)));
            }
        }
        if g.chance(0.3) {
            // Email before the user id: anonymous -> email profile -> user id profile.
            seq.push(json!({"call": "identify", "anonymous_id": devices[0],
                "traits": {"email": email}}));
            seq.push(g.event(("anonymous_id", &devices[0])));
        }
        if g.chance(0.9) {
            let plan = if g.chance(0.6) { "trial" } else { "pro" };
            let created = iso(g.at());
            for (i, d) in devices.iter().enumerate() {
                if i == 0 || g.chance(0.7) {
                    seq.push(
                        json!({"call": "identify", "user_id": user, "anonymous_id": d,
                        "traits": {"plan": plan, "created_at": created, "email": email}}),
                    );
                    // Devices keep sending anonymously now and then after the identify.
                    if g.chance(0.3) {
                        seq.push(g.event(("anonymous_id", d)));
                    }
                }
            }
            for _ in 0..g.below(4) {
                seq.push(g.event(("user_id", &user)));
            }
            if g.chance(0.3) {
                seq.push(json!({"call": "group", "user_id": user,
                    "group_id": format!("{run_id}-g{}", u % 50), "traits": {"name": "Acme"}}));
            }
            if g.chance(0.1) {
                seq.push(json!({"call": "alias", "user_id": user, "previous_id": devices[0]}));
            }
        }
        sequences.push(seq);
    }
    // Interleave: each step takes the next call of a random user still sending; now and then
    // two neighbours swap, so a user's own calls are not always in order either.
    let mut out = Vec::new();
    let mut next = vec![0usize; sequences.len()];
    let mut live: Vec<usize> = (0..sequences.len())
        .filter(|u| !sequences[*u].is_empty())
        .collect();
    while !live.is_empty() {
        let k = g.below(live.len());
        let u = live[k];
        out.push(sequences[u][next[u]].take());
        next[u] += 1;
        if next[u] == sequences[u].len() {
            live.swap_remove(k);
        }
    }
    for i in 1..out.len() {
        if g.chance(0.1) {
            out.swap(i - 1, i);
        }
    }
    out
}

/// Final profiles of `space` that are members of `audience`.
fn members(view: &SpaceView, audience: &str) -> usize {
    view.member
        .iter()
        .filter(|((p, a), m)| **m && a == audience && !view.merged.contains_key(p))
        .count()
}

struct Run {
    stack: Stack,
    out: Outputs,
    kills_left: usize,
    rng: StdRng,
    /// The highest lag compute's first instance reported, and when it was last asked.
    max_lag: f64,
    lag_asked: Instant,
}

/// The sum of `corral_kafka_consumer_lag_records` over the partitions a process owns, and how
/// many partitions it reports.
fn lag(admin: std::net::SocketAddr) -> Option<(f64, usize)> {
    let (_, body) = common::http_get(admin, "/metrics")?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("corral_kafka_consumer_lag_records{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    Some((values.iter().sum(), values.len()))
}

impl Run {
    /// SIGKILLs a random identity or compute instance and starts it again at once.
    fn kill_one(&mut self) {
        let victims: Vec<usize> = (0..self.stack.procs.len())
            .filter(|i| {
                let n = &self.stack.procs[*i].name;
                n.starts_with("identity") || n.starts_with("compute")
            })
            .collect();
        let i = victims[self.rng.random_range(0..victims.len())];
        eprintln!("SIGKILL {}", self.stack.procs[i].name);
        self.stack.kill_and_restart(i);
        self.kills_left -= 1;
    }

    /// Polls until `done` holds or the deadline passes; SIGKILLs (and restarts) a random
    /// identity or compute instance now and then while kills are left.
    fn until(&mut self, deadline: Duration, mut done: impl FnMut(&Outputs) -> bool) -> bool {
        let end = Instant::now() + deadline;
        let mut next_kill = Instant::now() + Duration::from_millis(self.rng.random_range(0..4000));
        loop {
            self.out.poll();
            if self.lag_asked.elapsed() >= Duration::from_millis(200) {
                self.lag_asked = Instant::now();
                let first = self
                    .stack
                    .procs
                    .iter()
                    .find(|p| p.name.starts_with("compute"));
                if let Some((sum, _)) = first.and_then(|p| lag(p.admin)) {
                    self.max_lag = self.max_lag.max(sum);
                }
            }
            if done(&self.out) {
                return true;
            }
            if self.kills_left > 0 && Instant::now() >= next_kill {
                self.kill_one();
                next_kill = Instant::now() + Duration::from_millis(self.rng.random_range(0..4000));
            }
            self.stack.assert_running();
            if Instant::now() >= end {
                return false;
            }
        }
    }
}

#[test]
fn merges_keep_every_event() {
    for name in [
        "corral-collector",
        "corral-validator",
        "corral-identity",
        "corral-compute",
        "corralctl",
    ] {
        binary(name);
    }
    let users = env_or("MERGE_DIFF_USERS", 2000usize);
    let seed = env_or("MERGE_DIFF_SEED", rand::rng().random::<u64>());
    let instances = env_or("MERGE_DIFF_INSTANCES", 1usize);
    let kills = env_or("MERGE_DIFF_KILLS", 0usize);
    let scale = instances == 1 && env_or("MERGE_DIFF_SCALE", 1usize) == 1;
    eprintln!(
        "merges_keep_every_event: MERGE_DIFF_USERS={users} MERGE_DIFF_SEED={seed} \
         MERGE_DIFF_INSTANCES={instances} MERGE_DIFF_KILLS={kills} MERGE_DIFF_SCALE={}",
        u8::from(scale)
    );
    let bootstrap = corral_tests::bootstrap();
    let run_id = corral_tests::unique("merges");
    let prefix = format!("{run_id}.");
    let dir = tempfile::tempdir().unwrap();
    create_topics(&bootstrap, &prefix);
    let ctl = binary("corralctl");
    let variants = ["plain", "viewed", "group"];
    let key_of = |space: &str| format!("{run_id}-{space}-key");

    // Definitions before any event, as a user would apply them.
    let reported = dir.path().join("reported.yaml");
    std::fs::write(
        &reported,
        "audiences:\n  - key: trial_signups\n    type: users\n    include_historical_data: true\n    \
         query: event('Account Created').count() >= 1 AND trait('plan') = 'trial'\n",
    )
    .unwrap();
    let apply = |file: &std::path::Path, space: &str| {
        run(
            Command::new(&ctl)
                .args(["--bootstrap", &bootstrap, "audiences", "apply"])
                .arg(file)
                .args(["--space", space, "--prefix", &prefix, "--by", "corral-e2e"]),
            "corralctl audiences apply",
        );
    };
    for v in variants {
        apply(&reported, v);
    }
    apply(&repo_root().join("examples/definitions.yaml"), "diff");

    let mut write_keys: Vec<String> = variants
        .iter()
        .map(|v| format!("{}=src-{v}:{v}", key_of(v)))
        .collect();
    write_keys.push(format!("{}=src-diff:diff", key_of("diff")));
    // Statistics every 500 ms, so the lag is seen while the stream is worked through.
    let stats = vec![("CORRAL_LAG_INTERVAL_MS".to_string(), "500".to_string())];
    let config = PipelineConfig {
        bootstrap: &bootstrap,
        prefix: &prefix,
        run_id: &run_id,
        dir: dir.path(),
        write_keys,
        instances,
        fanout: false,
        env: BTreeMap::from([("compute", stats)]),
    };
    let (mut stack, collector) = start_pipeline(&config);
    stack.wait_ready(Duration::from_secs(90));
    let topic = |name: &str| TopicReader::new(&bootstrap, &format!("{prefix}{name}"));
    let mut r = Run {
        stack,
        out: Outputs {
            resolved: topic("events.resolved"),
            merges: topic("profiles.merges"),
            membership: topic("audiences.membership"),
            traits: topic("traits.changes"),
        },
        kills_left: kills,
        rng: StdRng::seed_from_u64(seed),
        max_lag: 0.0,
        lag_asked: Instant::now(),
    };
    let now = chrono::Utc::now().timestamp_millis();

    // ---- 1. The reported case: anonymous calls first, identifies once they resolved ----
    let cases: Vec<(&str, Calls)> = variants
        .iter()
        .map(|v| (*v, reported_case(&run_id, v, now)))
        .collect();
    for (v, (first, _)) in &cases {
        send_with_python(&collector, &key_of(v), &Value::Array(first.clone()));
    }
    let anonymous_calls: usize = cases.iter().map(|(_, (f, _))| f.len()).sum();
    assert!(
        r.until(Duration::from_secs(60), |o| {
            decode_all::<ResolvedEvent>(&o.resolved).len() >= anonymous_calls
        }),
        "the {anonymous_calls} anonymous calls were not resolved within 60 s"
    );
    for (v, (_, second)) in &cases {
        send_with_python(&collector, &key_of(v), &Value::Array(second.clone()));
    }

    // ---- 2. The differential stream ----
    let stream = generated_stream(&run_id, users, now, seed);
    // With kills asked for, the stream goes in chunks and half the kills land between them
    // (at a random moment while the pipeline works on what was sent), the rest while it settles.
    // Scaling: up to three instances once the first chunk is sent, back to one after the second.
    let chunks = (1 + kills / 2).max(if scale { 3 } else { 1 });
    let scaled = ["validator", "identity", "compute"];
    for (i, chunk) in stream
        .chunks(stream.len().div_ceil(chunks).max(1))
        .enumerate()
    {
        send_with_python(&collector, &key_of("diff"), &Value::Array(chunk.to_vec()));
        if scale && i == 0 {
            eprintln!("scaling validator, identity and compute 1 -> 3");
            for service in scaled {
                for n in 1..=2 {
                    add_instance(&mut r.stack, &config, service, n);
                }
            }
            r.stack.wait_ready(Duration::from_secs(90));
        }
        if scale && i == 1 {
            eprintln!("scaling validator, identity and compute 3 -> 1");
            for service in scaled {
                for n in 1..=2 {
                    r.stack.stop(&format!("{service}-{n}"));
                }
            }
        }
        if i + 1 < chunks && r.kills_left > 0 {
            let pause = Duration::from_millis(r.rng.random_range(0..2000));
            r.until(pause, |_| false);
            r.kill_one();
        }
    }

    // ---- Checks: 50 of 50 in every variant; compute equals the reference everywhere ----
    let defs = example_definitions();
    let deadline = settle_deadline(stream.len());
    // Comparing is not free (every profile, every definition): once a second is enough.
    let mut last_check = Instant::now() - Duration::from_secs(1);
    let settled = r.until(deadline, |o| {
        if last_check.elapsed() < Duration::from_secs(1) {
            return false;
        }
        last_check = Instant::now();
        variants
            .iter()
            .all(|v| members(&SpaceView::read(o, v), "trial_signups") == 50)
            && {
                // Every call resolved first: equality over part of the stream proves little.
                let diff = SpaceView::read(o, "diff");
                diff.resolved.len() >= stream.len()
                    && mismatches(&diff, &defs, chrono::Utc::now()).is_empty()
            }
    });
    for v in variants {
        let view = SpaceView::read(&r.out, v);
        assert_eq!(
            members(&view, "trial_signups"),
            50,
            "variant {v}: users in the audience after {deadline:?} ({} merges)",
            view.merged.len()
        );
    }
    let view = SpaceView::read(&r.out, "diff");
    let wrong = mismatches(&view, &defs, chrono::Utc::now());
    assert!(
        settled && wrong.is_empty(),
        "{} differences from the reference evaluator after {deadline:?} (seed {seed}), first ones:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(25)].join("\n")
    );
    let profiles = view.histories().len();
    let resolved_calls = view.resolved.len();
    assert_eq!(
        resolved_calls,
        stream.len(),
        "every generated call resolved exactly once"
    );
    if scale {
        // Compute's lag rose while the stream was worked through, and is 0 on every partition
        // once everything is processed.
        let admin = r.stack.admin("compute");
        let deadline = Instant::now() + Duration::from_secs(30);
        let last = loop {
            let now = lag(admin);
            if matches!(now, Some((sum, n)) if sum == 0.0 && n > 0) {
                break now;
            }
            assert!(
                Instant::now() < deadline,
                "compute's lag did not fall back to 0: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(r.max_lag > 0.0, "compute's lag never rose: {last:?}");
    }
    eprintln!(
        "merges_keep_every_event: {users} users, {} calls, {profiles} final profiles, {} merges or renames, \
         {} SIGKILLs, scaled 1 -> 3 -> 1: {scale}, highest lag of compute {}; compute equals the \
         reference evaluator for every USERS definition",
        stream.len(),
        view.merged.len(),
        kills - r.kills_left,
        r.max_lag
    );
    assert!(
        view.merged.len() > users / 4,
        "the stream should cause many merges"
    );
    r.stack.assert_running();
}
