//! Definitions lifecycle on the real broker: `corralctl audiences apply` (through the same
//! library function, `corral_compute::admin::apply_text`) with created / changed / unchanged,
//! list and delete; and backfill: an audience created after the history with
//! `include_historical_data: true` ends with the same members as one defined before the first
//! event (also for profiles merged away after their history), while one without historical
//! data counts only later events; the same with compute
//! killed (SIGKILL) in the middle of the backfill and restarted.
//! `COMPUTE_BACKFILL_PROFILES` (default 200) scales the history (e.g. 20000 for ~100k events).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MembershipChange, MessageType, ProfileMerge, SegmentMessage};
use corral_compute::admin::{self, Applied, DefinitionsTopic};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::metric;
use corral_tests::{bootstrap, create_topic, produce, read_committed, unique, Service};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
/// Merges in the history (pairs of once-only profiles).
const MERGED_PAIRS: usize = 5;
const SPACE: &str = "demo";

const BEFORE: &str = r#"
audiences:
  - key: buyers_from_start
    include_historical_data: true
    query: event('Order Completed').count() >= 2
"#;

const AFTER: &str = r#"
audiences:
  - key: buyers_from_start
    include_historical_data: true
    query: event('Order Completed').count() >= 2
  - key: buyers_backfilled
    include_historical_data: true
    query: event('Order Completed').where(property('revenue') >= 0).count() >= 2
  - key: buyers_from_now
    include_historical_data: false
    query: event('Order Completed').where(property('revenue') > -1).count() >= 2
"#;

fn event(profile: &str, id: &str, at: i64) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, MessageType::Track, id);
    m.event = Some("Order Completed".into());
    m.properties = Some(json!({"revenue": 10}));
    corral_tests::resolved_event(profile, m, at)
}

/// (audience, profile) -> entered/exited sequence, once `min` records are committed and the
/// output stopped changing.
fn memberships(topic: &str, min: usize) -> BTreeMap<(String, String), Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut prev = 0;
    loop {
        let recs = read_committed(topic, min, Duration::from_secs(5));
        if recs.len() >= min && recs.len() == prev {
            let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
            for r in recs {
                let m = MembershipChange::decode(r.value.as_deref().unwrap()).unwrap();
                out.entry((m.audience_key, m.profile_id))
                    .or_default()
                    .push(m.change.as_str().to_string());
            }
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {min} membership records",
            recs.len()
        );
        prev = recs.len();
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn members(m: &BTreeMap<(String, String), Vec<String>>, audience: &str) -> BTreeSet<String> {
    m.iter()
        .filter(|((a, _), ch)| a == audience && ch.last().map(String::as_str) == Some("entered"))
        .map(|((_, p), _)| p.clone())
        .collect()
}

/// A free loopback address for compute's admin endpoint.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn apply_and_backfill() {
    scenario(false);
}

/// SIGKILL while history is being applied: the restarted process resumes from the committed
/// progress; the result is the same, every member entered exactly once.
#[test]
fn backfill_survives_kill9() {
    scenario(true);
}

fn scenario(crash: bool) {
    let profiles: usize = std::env::var("COMPUTE_BACKFILL_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let app = unique(if crash {
        "compute-life-crash"
    } else {
        "compute-life"
    });
    let t = |n: &str| format!("{app}.{n}");
    let (resolved, merges, membership, traits, defs, dlq) = (
        t("events.resolved"),
        t("profiles.merges"),
        t("audiences.membership"),
        t("traits.changes"),
        t("definitions"),
        t("events.dlq"),
    );
    for topic in [&resolved, &merges, &membership, &traits] {
        create_topic(topic, 3, CleanupPolicy::Delete);
    }
    create_topic(&dlq, 1, CleanupPolicy::Delete);
    create_topic(&defs, 1, CleanupPolicy::Compact);
    let at = DefinitionsTopic {
        bootstrap: bootstrap(),
        kafka: BTreeMap::new(),
        topic: defs.clone(),
        space: SPACE.into(),
    };

    // A file with an error is refused whole.
    let bad = "audiences:\n  - key: x\n    query: event('A').count( >= 1\n";
    assert!(matches!(
        admin::apply_text(&at, bad, "bad.yaml", None),
        Err(admin::AdminError::Invalid(_))
    ));
    assert!(admin::list(&at).unwrap().is_empty());

    let r = admin::apply_text(&at, BEFORE, "before.yaml", Some("test".into())).unwrap();
    assert_eq!(
        r,
        vec![Applied::Created {
            kind: "audience".into(),
            key: "buyers_from_start".into()
        }]
    );

    let state = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "--bootstrap",
        &bootstrap(),
        "--app",
        &app,
        "--instance",
        "0",
        "--resolved-topic",
        &resolved,
        "--merges-topic",
        &merges,
        "--merge-state-topic",
        &t("compute.merge-state"),
        "--membership-topic",
        &membership,
        "--traits-topic",
        &traits,
        "--definitions-topic",
        &defs,
        "--dlq-topic",
        &dlq,
        "--state-dir",
        state.path().to_str().unwrap(),
        "--punctuate-interval-ms",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if crash {
        // Small history slices, so the kill lands in the middle of the backfill.
        args.extend(["--backfill-max-records".to_string(), "10".to_string()]);
    }
    let with_admin = |addr: &str| {
        let mut a = args.clone();
        a.extend(["--admin".to_string(), addr.to_string()]);
        a
    };
    let admin_addr = free_addr();
    let mut svc = Service::spawn("compute", BIN, &with_admin(&admin_addr), &[]);

    // History: every profile orders 3 times; the last quarter's profiles once only.
    let base = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let quarter = profiles / 4;
    let mut history = Vec::new();
    let mut n = 0i64;
    for round in 0..3 {
        for p in 0..profiles {
            if round > 0 && p >= profiles - quarter {
                continue;
            }
            history.push(event(&format!("p{p}"), &format!("h{n}"), base + n));
            n += 1;
        }
    }
    for chunk in history.chunks(5000) {
        produce(&resolved, chunk.to_vec());
    }
    let before = memberships(&membership, profiles - quarter);
    assert_eq!(
        members(&before, "buyers_from_start").len(),
        profiles - quarter
    );

    // Merges inside the history: pairs of once-only profiles, the first into the second. Live,
    // the survivor now has two orders and enters; the backfilled audience must see the
    // merged-away profile's history on the survivor too (not on an orphan of the old id).
    let merged: Vec<(String, String)> = (0..MERGED_PAIRS)
        .map(|k| {
            let q = profiles - quarter + 2 * k;
            (format!("p{q}"), format!("p{}", q + 1))
        })
        .collect();
    produce(
        &merges,
        merged.iter().map(|(from, into)| {
            let m = ProfileMerge {
                space_id: SPACE.into(),
                from_profile_id: from.clone(),
                into_profile_id: into.clone(),
                trigger_message_id: None,
                trigger_ids: vec![],
                merged_at_ms: base + n,
            };
            (from.as_bytes().to_vec(), m.encode().unwrap())
        }),
    );
    let merged_live = memberships(&membership, profiles - quarter + MERGED_PAIRS);
    for (_, into) in &merged {
        assert!(members(&merged_live, "buyers_from_start").contains(into));
    }
    let merged_away: BTreeSet<String> = merged.iter().map(|(from, _)| from.clone()).collect();

    // The crash: SIGKILL once a few history slices were read (some progress committed, most
    // of the history not yet; compute starts reading as soon as it sees the first new
    // definition, while `apply_text` still publishes).
    let killer = crash.then(|| {
        let (addr, pid) = (admin_addr.clone(), svc.child.id());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while metric(&addr, "corral_compute_backfill_read_total").unwrap_or(0.0) < 60.0 {
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success()
        })
    });
    // New definitions after the history: one backfilled, one not; the first is unchanged.
    let r = admin::apply_text(&at, AFTER, "after.yaml", Some("test".into())).unwrap();
    assert_eq!(
        r,
        vec![
            Applied::Unchanged {
                kind: "audience".into(),
                key: "buyers_from_start".into(),
                version: 1
            },
            Applied::Created {
                kind: "audience".into(),
                key: "buyers_backfilled".into()
            },
            Applied::Created {
                kind: "audience".into(),
                key: "buyers_from_now".into()
            },
        ]
    );
    let listed: Vec<(String, i64)> = admin::list(&at)
        .unwrap()
        .into_iter()
        .map(|d| (d.key, d.version))
        .collect();
    assert_eq!(listed.len(), 3);

    let mut restarted_admin = None;
    if let Some(killer) = killer {
        assert!(killer.join().unwrap(), "backfill did not start");
        svc.kill9();
        let addr = free_addr();
        svc = Service::spawn("compute", BIN, &with_admin(&addr), &[]);
        restarted_admin = Some(addr);
    }

    // Wait for the backfilled audience to catch up with the history before new events.
    let caught_up = memberships(&membership, 2 * (profiles - quarter + MERGED_PAIRS));
    assert_eq!(
        members(&caught_up, "buyers_backfilled"),
        members(&caught_up, "buyers_from_start")
    );

    // Later events: the once-only profiles order once more; the first 10 profiles twice.
    let mut later = Vec::new();
    for p in profiles - quarter..profiles {
        if merged_away.contains(&format!("p{p}")) {
            continue; // identity resolves its ids to the survivor now; it has orders enough
        }
        later.push(event(&format!("p{p}"), &format!("l{n}"), base + n));
        n += 1;
    }
    for _ in 0..2 {
        for p in 0..10 {
            later.push(event(&format!("p{p}"), &format!("l{n}"), base + n));
            n += 1;
        }
    }
    produce(&resolved, later);
    let out = memberships(&membership, 2 * (profiles - MERGED_PAIRS) + 10);
    let all: BTreeSet<String> = (0..profiles)
        .map(|p| format!("p{p}"))
        .filter(|p| !merged_away.contains(p))
        .collect();
    assert_eq!(members(&out, "buyers_from_start"), all);
    assert_eq!(
        members(&out, "buyers_backfilled"),
        all,
        "backfilled = defined from the start"
    );
    let from_now: BTreeSet<String> = (0..10).map(|p| format!("p{p}")).collect();
    assert_eq!(
        members(&out, "buyers_from_now"),
        from_now,
        "only later events count"
    );
    // Each member entered exactly once (held during backfill, no flapping).
    for ((a, p), ch) in &out {
        assert_eq!(ch, &vec!["entered".to_string()], "{a} {p}");
    }
    if let Some(addr) = &restarted_admin {
        // The kill landed mid-backfill: the restarted process applied the rest.
        let applied = metric(addr, "corral_compute_backfill_applied_total").unwrap_or(0.0);
        assert!(applied > 0.0, "the backfill had finished before the kill");
    }

    // Delete: a tombstone; the definition disappears from the list.
    assert_eq!(admin::delete(&at, "buyers_from_now").unwrap(), "audience");
    assert!(admin::list(&at)
        .unwrap()
        .iter()
        .all(|d| d.key != "buyers_from_now"));
    assert!(matches!(
        admin::delete(&at, "buyers_from_now"),
        Err(admin::AdminError::NotFound { .. })
    ));
    assert!(svc.terminate().success());
}
