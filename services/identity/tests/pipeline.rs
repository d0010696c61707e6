//! End to end against the real broker: the same stream of `events.valid` (6 partitions, several
//! spaces, no conflicting identifiers) processed
//! - by one instance,
//! - by three instances,
//! - by one instance killed with SIGKILL mid-stream and restarted,
//!
//! each from scratch (own application id, empty state, own output topics). All three must give
//! the grouping and profile ids the pure engine computes, every message resolved exactly once,
//! every resolved event's profile id forwarding (through the merge aliases) to the final profile
//! of its identifiers.
//!
//! Size: `CORRAL_IDENTITY_E2E_EVENTS` (default 100,000: the three runs take about 30 s on two
//! cores).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, ProfileMerge, ResolvedEvent, ValidEvent};
use corral_identity::store::{decode_key, TAG_ALIAS, TAG_ID};
use corral_identity::{extract, Ident, MemGraph, Rules};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Service};

mod common;
use common::{generate, keyed};

const PARTITIONS: i32 = 6;

/// (space, identifier) -> profile id.
type Mappings = HashMap<(String, Ident), String>;
/// (space, retired profile id) -> the id it forwards to.
type Aliases = HashMap<(String, String), String>;

struct Run {
    prefix: String,
    app: String,
    state: tempfile::TempDir,
}

impl Run {
    fn new(name: &str) -> Run {
        let prefix = format!("{}.", unique(name));
        for (t, n, policy) in [
            ("events.resolved", PARTITIONS, CleanupPolicy::Delete),
            ("profiles.merges", PARTITIONS, CleanupPolicy::Delete),
            (
                "identity.events-by-space",
                PARTITIONS,
                CleanupPolicy::Delete,
            ),
            ("events.dlq", 1, CleanupPolicy::Delete),
        ] {
            create_topic(&format!("{prefix}{t}"), n, policy);
        }
        Run {
            app: unique("identity"),
            prefix,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn spawn(&self, input: &str, instance: u32, env: &[(&str, String)]) -> Service {
        let args = vec![
            "--bootstrap".into(),
            bootstrap(),
            "--app".into(),
            self.app.clone(),
            "--instance".into(),
            instance.to_string(),
            "--topic-prefix".into(),
            self.prefix.clone(),
            "--valid-topic".into(),
            input.to_string(),
            "--state-dir".into(),
            self.state.path().display().to_string(),
            "--session-timeout-ms".into(),
            "6000".into(),
        ];
        Service::spawn(
            &format!("identity-{instance}"),
            env!("CARGO_BIN_EXE_corral-identity"),
            &args,
            env,
        )
    }

    fn resolved(&self, min: usize, timeout: Duration) -> Vec<ResolvedEvent> {
        read_committed(&format!("{}events.resolved", self.prefix), min, timeout)
            .into_iter()
            .map(|r| ResolvedEvent::decode(&r.value.unwrap()).unwrap())
            .collect()
    }

    /// Waits until `n` resolved events are committed.
    fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ResolvedEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.resolved(n, Duration::from_secs(5));
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
        }
    }

    /// The final graph from the store's changelog: identifier -> profile id, and aliases.
    fn graph(&self) -> (Mappings, Aliases) {
        let topic = format!("{}{}.graph-changelog", self.prefix, self.app);
        let mut latest: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
        for r in read_committed(&topic, 0, Duration::from_secs(30)) {
            latest.insert(r.key.unwrap(), r.value);
        }
        let mut ids = HashMap::new();
        let mut aliases = HashMap::new();
        for (k, v) in latest {
            let Some(v) = v else { continue };
            let (tag, parts) = decode_key(&k).unwrap();
            let v = String::from_utf8(v).unwrap_or_default();
            if tag == TAG_ID {
                ids.insert(
                    (
                        parts[0].clone(),
                        Ident::new(parts[1].clone(), parts[2].clone()),
                    ),
                    v,
                );
            } else if tag == TAG_ALIAS {
                aliases.insert((parts[0].clone(), parts[1].clone()), v);
            }
        }
        (ids, aliases)
    }

    fn check(&self, events: &[ValidEvent], expected: &HashMap<(String, Ident), String>) {
        let resolved = self.wait_for(events.len(), Duration::from_secs(150));
        // Exactly once: every message once, nothing else.
        let mut seen = HashSet::new();
        for r in &resolved {
            assert!(
                seen.insert(r.message.message_id.clone()),
                "{} resolved twice",
                r.message.message_id
            );
        }
        assert_eq!(
            resolved.len(),
            events.len(),
            "every message resolved ({})",
            self.app
        );

        let (ids, aliases) = self.graph();
        assert_eq!(ids.len(), expected.len(), "identifier count ({})", self.app);
        for (k, pid) in expected {
            assert_eq!(
                ids.get(k),
                Some(pid),
                "profile of {}:{} ({})",
                k.0,
                k.1,
                self.app
            );
        }
        // Each event's profile at that moment forwards to the final profile of its identifiers.
        let rules = Rules::default();
        for r in &resolved {
            let space = &r.message.space_id;
            let mut pid = r.profile_id.clone();
            while let Some(next) = aliases.get(&(space.clone(), pid.clone())) {
                pid = next.clone();
            }
            let first = extract(&r.message, &rules).ids.remove(0);
            assert_eq!(
                Some(&pid),
                expected.get(&(space.clone(), first)),
                "message {}",
                r.message.message_id
            );
            assert!(r.external_ids.iter().any(|e| e.id_type == "anonymous_id"));
        }
        // Merge records name live-at-the-time ids and their survivors.
        let merges = read_committed(
            &format!("{}profiles.merges", self.prefix),
            0,
            Duration::from_secs(30),
        );
        for m in merges {
            let m = ProfileMerge::decode(&m.value.unwrap()).unwrap();
            assert!(aliases.contains_key(&(m.space_id.clone(), m.from_profile_id.clone())));
            assert_ne!(m.from_profile_id, m.into_profile_id);
        }
    }
}

#[test]
fn one_vs_three_instances_sigkill_and_replay_give_the_same_profiles() {
    let n: usize = std::env::var("CORRAL_IDENTITY_E2E_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let events = generate(n, 8, 0.05, 7);
    let rules = Rules::default();
    let mut g = MemGraph::default();
    for e in &events {
        let ids = extract(&e.message, &rules).ids;
        g.resolve(&rules, &e.message.space_id, &ids, 0).unwrap();
    }
    let expected: HashMap<(String, Ident), String> = g.mappings.clone();
    let spaces: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.message.space_id.as_str()).or_default() += 1;
        m
    });
    assert!(
        spaces.len() > 3,
        "several spaces, so coordinators spread over instances"
    );

    let input = format!("{}.events.valid", unique("identity-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    let records: Vec<(Vec<u8>, Vec<u8>)> = events.iter().map(keyed).collect();
    let (first_half, second_half) = records.split_at(n / 2);

    // One instance; three instances; one instance crashed mid-stream. All from scratch.
    let single = Run::new("id-single");
    let triple = Run::new("id-triple");
    let killed = Run::new("id-killed");
    let s = single.spawn(&input, 0, &[]);
    let t: Vec<Service> = (0..3).map(|i| triple.spawn(&input, i, &[])).collect();
    // The runtime's fault harness aborts the process at its second commit that carries records,
    // after producing that commit's outputs and changelog but before committing: its work must
    // be redone, once. The second commit is certain to carry records: the second half of the
    // input is produced only after the first half was committed.
    let k = killed.spawn(
        &input,
        0,
        &[("CORRAL_FAULT", "before_commit@2".to_string())],
    );
    produce(&input, first_half.to_vec());
    let part = killed.wait_for(1, Duration::from_secs(120));
    assert!(!part.is_empty(), "progress before the crash");
    produce(&input, second_half.to_vec());
    let status = k.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "the injected crash happened");
    // Restart on the same state directory, SIGKILL it wherever it is, restart again.
    let k = killed.spawn(&input, 0, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    k.kill9();
    let k = killed.spawn(&input, 0, &[]);

    single.check(&events, &expected);
    triple.check(&events, &expected);
    killed.check(&events, &expected);
    for svc in [s, k].into_iter().chain(t) {
        svc.terminate();
    }
}

#[test]
fn undecodable_and_identifier_less_messages_go_to_the_dead_letter_topic() {
    let input = format!("{}.events.valid", unique("identity-dlq-in"));
    create_topic(&input, 2, CleanupPolicy::Delete);
    let run = Run::new("id-dlq");
    let mut good = generate(3, 1, 0.0, 1);
    let mut blocked = good[0].clone();
    blocked.message.message_id = "all-blocked".into();
    blocked.message.user_id = Some("null".into());
    blocked.message.anonymous_id = Some("undefined".into());
    blocked.message.traits = None;
    good.push(blocked);
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = good.iter().map(keyed).collect();
    records.push((b"garbage".to_vec(), b"not avro".to_vec()));
    produce(&input, records);
    let svc = run.spawn(&input, 0, &[]);
    let resolved = run.wait_for(3, Duration::from_secs(90));
    assert_eq!(resolved.len(), 3);
    let dlq = read_committed(
        &format!("{}events.dlq", run.prefix),
        2,
        Duration::from_secs(60),
    );
    let reasons: Vec<String> = dlq
        .iter()
        .map(|r| {
            corral_codec::DeadLetter::decode(r.value.as_ref().unwrap())
                .unwrap()
                .reason
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.contains(&"no_identifiers".to_string()),
        "{reasons:?}"
    );
    svc.terminate();
}

/// Sums the samples of `name` whose labels contain `label` (e.g. `result="hit"`).
fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// One space, two instances: the space's events are spread over every partition of the stitcher
/// topic (no longer all on the space's one coordinator partition), and the result is what one
/// coordinator gives. A second wave repeats 3,000 of the first wave's calls (returning users):
/// the links of their identifiers were committed with the first wave's resolutions, before the
/// second wave was produced, so each of its lookups hits, whatever the timing.
#[test]
fn one_space_is_resolved_on_every_partition() {
    let first = generate(12_000, 1, 0.05, 11);
    let again: Vec<ValidEvent> = first[..3_000]
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.message.message_id = format!("{}-again", e.message.message_id);
            e
        })
        .collect();
    let events: Vec<ValidEvent> = first.iter().chain(&again).cloned().collect();
    let n = events.len();
    let rules = Rules::default();
    let mut g = MemGraph::default();
    for e in &events {
        let ids = extract(&e.message, &rules).ids;
        g.resolve(&rules, &e.message.space_id, &ids, 0).unwrap();
    }
    let expected = g.mappings.clone();
    let input = format!("{}.events.valid", unique("identity-spread-in"));
    create_topic(&input, PARTITIONS, CleanupPolicy::Delete);
    let run = Run::new("id-spread");
    let admins: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", corral_tests::http::free_port()))
        .collect();
    let services: Vec<Service> = admins
        .iter()
        .enumerate()
        .map(|(i, a)| run.spawn(&input, i as u32, &[("CORRAL_ADMIN_ADDR", a.clone())]))
        .collect();
    produce(&input, first.iter().map(keyed));
    run.check(&first, &expected);
    produce(&input, again.iter().map(keyed));
    run.check(&events, &expected);

    let mut per_partition = [0usize; PARTITIONS as usize];
    // Keyed by identifier, the space's events are spread over every stitcher partition.
    for r in read_committed(&input, n, Duration::from_secs(60)) {
        per_partition[r.partition as usize] += 1;
    }
    assert_eq!(per_partition.iter().sum::<usize>(), n, "{per_partition:?}");
    for (p, count) in per_partition.iter().enumerate() {
        assert!(
            *count > n / PARTITIONS as usize / 3,
            "partition {p} resolved {count} of the space's {n} events: {per_partition:?}"
        );
    }
    let text: String = admins
        .iter()
        .map(|a| corral_tests::http::metrics_text(a))
        .collect();
    let hits = counter(&text, "corral_identity_lookups_total", "result=\"hit\"");
    let misses = counter(&text, "corral_identity_lookups_total", "result=\"miss\"");
    eprintln!(
        "one space: events per stitcher partition {per_partition:?}, hits {hits}, misses {misses}"
    );
    assert!(
        hits >= again.len() as f64,
        "every returning call hits ({hits} hits, {misses} misses, {} returning)",
        again.len()
    );
    assert!(
        hits + misses >= n as f64,
        "every event looked up once at least"
    );
    for s in services {
        s.terminate();
    }
}
