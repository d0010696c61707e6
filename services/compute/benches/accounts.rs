//! Account-level evaluation through the real broker (`deploy/local`), the figures of the accounts
//! issue:
//!
//! - `scale`: 1,000 accounts × 50 users (`COMPUTE_BENCH_ACCOUNTS`, `COMPUTE_BENCH_USERS`) and 10
//!   account definitions ([`DEFINITIONS`]). Group calls put every user in its account (as fast as
//!   the broker takes them; figure: calls/s until every account's `account:<id>` entry into
//!   `bench_none_login` is committed), then `COMPUTE_BENCH_ACCOUNT_EVENTS` (100,000) track events
//!   of those users (events/s: offsets of `events.resolved` compute committed / time between its
//!   first and last commit), then one `Flip` per account at `COMPUTE_BENCH_FLIP_RATE` (200/s):
//!   p50/p99 from the send to the account's `bench_any_flip` entry being readable
//!   (`read_committed`).
//! - `big`: one account of 10,000 users (`COMPUTE_BENCH_BIG_USERS`). A user's flip that changes
//!   nothing at account level (`Flip` of a second user, ANY already true), and one that changes
//!   the account (the first `Flip`): latency to the account's own change and to the last of its
//!   users' changes (delivery is per user, the one part that grows with the account).
//!
//! `cargo bench -p corral-compute --bench accounts [scale|big]`. Bounded: every wait has a
//! deadline; loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MembershipChange, MessageType, SegmentMessage};
use corral_compute::admin::{self, DefinitionsTopic};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::{assign_from_beginning, bootstrap, create_topic, produce, unique, Service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_corral-compute");
const SPACE: &str = "bench";
const PARTITIONS: i32 = 3;

/// Ten account definitions: every quantifier, account traits, a window (timers), a reference.
const DEFINITIONS: &str = r#"
audiences:
  - {key: bench_any_flip, type: accounts, include_historical_data: false, query: "ANY event('Flip').count() >= 1"}
  - {key: bench_none_login, type: accounts, include_historical_data: false, query: "NONE event('Logged In').within(30 days).count() >= 1"}
  - {key: bench_all_e1, type: accounts, include_historical_data: false, query: "ALL event('E1').count() >= 1"}
  - {key: bench_biz_quiet, type: accounts, include_historical_data: false, query: "trait('plan') = 'business' AND NONE event('E2').within(7 days).count() >= 1"}
  - {key: bench_any_e3_twice, type: accounts, include_historical_data: false, query: "ANY event('E3').count() >= 2"}
  - {key: bench_none_e4, type: accounts, include_historical_data: false, query: "NONE event('E4').count() >= 1"}
  - {key: bench_any_pro_user, type: accounts, include_historical_data: false, query: "ANY trait('plan') = 'pro'"}
  - {key: bench_big_active, type: accounts, include_historical_data: false, query: "trait('size') > 100 AND ANY event('E1').count() >= 1"}
  - {key: bench_all_light_e2, type: accounts, include_historical_data: false, query: "ALL NOT event('E2').count() >= 3"}
  - {key: bench_flipped_business, type: accounts, include_historical_data: false, query: "trait('bench_any_flip') = true AND trait('plan') = 'business'"}
"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stack {
    app: String,
    resolved: String,
    membership: String,
    _state: tempfile::TempDir,
    svc: Service,
}

impl Stack {
    fn start(name: &str) -> Stack {
        let app = unique(name);
        let t = |n: &str| format!("{app}.{n}");
        for n in [
            "events.resolved",
            "profiles.merges",
            "audiences.membership",
            "traits.changes",
        ] {
            create_topic(&t(n), PARTITIONS, CleanupPolicy::Delete);
        }
        create_topic(&t("events.dlq"), 1, CleanupPolicy::Delete);
        create_topic(&t("definitions"), 1, CleanupPolicy::Compact);
        let defs = DefinitionsTopic {
            bootstrap: bootstrap(),
            kafka: BTreeMap::new(),
            topic: t("definitions"),
            space: SPACE.into(),
        };
        admin::apply_text(&defs, DEFINITIONS, "bench.yaml", Some("bench".into())).unwrap();
        let state = tempfile::tempdir().unwrap();
        let args: Vec<String> = [
            ("--bootstrap", bootstrap()),
            ("--app", app.clone()),
            ("--instance", "0".into()),
            ("--resolved-topic", t("events.resolved")),
            ("--merges-topic", t("profiles.merges")),
            ("--merge-state-topic", t("compute.merge-state")),
            ("--membership-topic", t("audiences.membership")),
            ("--traits-topic", t("traits.changes")),
            ("--definitions-topic", t("definitions")),
            ("--dlq-topic", t("events.dlq")),
            ("--state-dir", state.path().to_str().unwrap().to_string()),
            ("--commit-interval-ms", "100".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        let svc = Service::spawn("compute", BIN, &args, &[]);
        Stack {
            resolved: t("events.resolved"),
            membership: t("audiences.membership"),
            app,
            _state: state,
            svc,
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn call(
    user: &str,
    id: &str,
    t: MessageType,
    f: impl FnOnce(&mut SegmentMessage),
    at: i64,
) -> (Vec<u8>, Vec<u8>) {
    let mut m = SegmentMessage::new(SPACE, t, id);
    f(&mut m);
    corral_tests::resolved_event(user, m, at)
}

fn group(user: &str, id: &str, account: &str, size: u64, at: i64) -> (Vec<u8>, Vec<u8>) {
    let plan = if size.is_multiple_of(2) {
        "business"
    } else {
        "free"
    };
    call(
        user,
        id,
        MessageType::Group,
        |m| {
            m.group_id = Some(account.into());
            m.traits = Some(json!({"plan": plan, "size": size}));
        },
        at,
    )
}

fn track(user: &str, id: &str, name: &str, at: i64) -> (Vec<u8>, Vec<u8>) {
    call(
        user,
        id,
        MessageType::Track,
        |m| m.event = Some(name.into()),
        at,
    )
}

fn reader(topic: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("bench-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    assign_from_beginning(&c, topic);
    c
}

/// Reads changes until `f` says done or the deadline passes.
fn read_until(
    c: &BaseConsumer,
    deadline: Instant,
    mut f: impl FnMut(MembershipChange, Instant) -> bool,
) -> bool {
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let at = Instant::now();
            if let Some(ch) = m.payload().and_then(|v| MembershipChange::decode(v).ok()) {
                if f(ch, at) {
                    return true;
                }
            }
        }
    }
    false
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() as f64 - 1.0) * p).round() as usize).min(sorted.len() - 1)]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn committed_total(group: &str, topic: &str) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    c.committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => o.max(0) as u64,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Records of `topic` the group has not committed yet, over all partitions (a transactional
/// topic keeps one commit marker after the last record: an idle consumer lags 1 per partition).
fn account_lag(group: &str, topic: &str) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else {
        return u64::MAX;
    };
    let mut lag = 0u64;
    for p in 0..PARTITIONS {
        let Ok((_, high)) = c.fetch_watermarks(topic, p, Duration::from_secs(5)) else {
            return u64::MAX;
        };
        let done = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0);
        lag += (high - done).max(0) as u64;
    }
    lag
}

fn scale() {
    let accounts: u64 = env_or("COMPUTE_BENCH_ACCOUNTS", 1000);
    let per: u64 = env_or("COMPUTE_BENCH_USERS", 50);
    let events: u64 = env_or("COMPUTE_BENCH_ACCOUNT_EVENTS", 100_000);
    let flip_rate: u64 = env_or("COMPUTE_BENCH_FLIP_RATE", 200);
    let stack = Stack::start("compute-bench-accounts");
    let members = reader(&stack.membership);
    let load = loadavg();
    let t0 = now_ms() - 86_400_000;
    let user = |a: u64, k: u64| format!("u{a}-{k}");

    // 1. Group calls: every user joins its account.
    let n = accounts * per;
    let start = Instant::now();
    produce(
        &stack.resolved,
        (0..n).map(|i| {
            let (a, k) = (i % accounts, i / accounts);
            group(
                &user(a, k),
                &format!("g{i}"),
                &format!("a{a}"),
                a,
                t0 + i as i64,
            )
        }),
    );
    // Done when every account is in bench_none_login with all its users (its last user's
    // entry is the last record of that account's users... any order): count user entries.
    let mut account_in = 0u64;
    let mut users_in = 0u64;
    let ok = read_until(
        &members,
        Instant::now() + Duration::from_secs(900),
        |ch, _| {
            if ch.audience_key == "bench_none_login" {
                if ch.profile_id.starts_with("account:") {
                    account_in += 1;
                } else {
                    users_in += 1;
                }
            }
            account_in >= accounts && users_in >= n
        },
    );
    assert!(
        ok,
        "group phase: {account_in} accounts, {users_in} users in after 900 s"
    );
    let group_secs = start.elapsed().as_secs_f64();
    println!(
        "compute accounts group_calls accounts={accounts} users_per_account={per} definitions=10 calls={n} calls_per_s={:.0} seconds={group_secs:.1} loadavg={load}",
        n as f64 / group_secs
    );

    // 2. Track events of those users as fast as the broker takes them.
    let names = ["E1", "E2", "E3", "E4", "Logged In", "Other"];
    let before = committed_total(&stack.app, &stack.resolved);
    let resolved = stack.resolved.clone();
    let producer = std::thread::spawn(move || {
        produce(
            &resolved,
            (0..events).map(|i| {
                let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
                let (a, k) = (r % accounts, (r / accounts) % per);
                track(
                    &format!("u{a}-{k}"),
                    &format!("t{i}"),
                    names[(i % names.len() as u64) as usize],
                    t0 + (n + i) as i64,
                )
            }),
        )
    });
    let produced_from = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut last = (before, Instant::now());
    while Instant::now() < deadline && last.0 < before + events {
        let done = committed_total(&stack.app, &stack.resolved);
        if done > last.0 {
            last = (done, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    producer.join().unwrap();
    // From the first event produced to the commit covering the last (compute consumes while
    // the producer writes): the user side. Then until the account side has applied every
    // message the users sent it (its input lag back to the transaction markers).
    let secs = last.1.duration_since(produced_from).as_secs_f64().max(1e-3);
    let accounts_topic = format!("corral.{}.accounts", stack.app);
    let deadline = Instant::now() + Duration::from_secs(900);
    while account_lag(&stack.app, &accounts_topic) > PARTITIONS as u64 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = produced_from.elapsed().as_secs_f64();
    println!(
        "compute accounts track_events accounts={accounts} users_per_account={per} definitions=10 events={events} user_side_events_per_s={:.0} user_side_seconds={secs:.1} with_account_side_events_per_s={:.0} with_account_side_seconds={drained:.1} loadavg={}",
        (last.0 - before) as f64 / secs,
        events as f64 / drained,
        loadavg()
    );

    // 3. One Flip per account at a fixed rate: latency to the account's bench_any_flip entry.
    // The partitioner identity and the harness use: a user's events on its state's partition.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut lat: Vec<f64> = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / flip_rate.max(1) as f64);
    let t_start = Instant::now();
    let mut next_send = t_start;
    let mut a = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while (lat.len() as u64) < accounts && Instant::now() < deadline {
        if a < accounts && Instant::now() >= next_send {
            let (k, v) = track(&user(a, a % per), &format!("flip{a}"), "Flip", now_ms());
            producer
                .send(BaseRecord::to(&stack.resolved).key(&k).payload(&v))
                .unwrap();
            producer.poll(Duration::ZERO);
            sent.insert(format!("account:a{a}"), Instant::now());
            a += 1;
            next_send += interval;
        }
        if let Some(Ok(m)) = members.poll(Duration::from_millis(1)) {
            let at = Instant::now();
            if let Some(ch) = m.payload().and_then(|v| MembershipChange::decode(v).ok()) {
                if ch.audience_key == "bench_any_flip" {
                    if let Some(s) = sent.remove(&ch.profile_id) {
                        lat.push(at.duration_since(s).as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    lat.sort_by(f64::total_cmp);
    println!(
        "compute accounts flip_latency accounts={accounts} users_per_account={per} definitions=10 rate_per_s={flip_rate} flips={} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} loadavg={}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        loadavg()
    );
    assert_eq!(lat.len() as u64, accounts, "every account's flip is seen");
    assert!(stack.svc.terminate().success());
}

fn big() {
    let users: u64 = env_or("COMPUTE_BENCH_BIG_USERS", 10_000);
    let stack = Stack::start("compute-bench-big-account");
    let members = reader(&stack.membership);
    let t0 = now_ms() - 86_400_000;
    produce(
        &stack.resolved,
        (0..users).map(|k| {
            group(
                &format!("b{k}"),
                &format!("g{k}"),
                "big",
                1000,
                t0 + k as i64,
            )
        }),
    );
    let mut users_in = 0u64;
    assert!(
        read_until(
            &members,
            Instant::now() + Duration::from_secs(600),
            |ch, _| {
                if ch.audience_key == "bench_none_login" && !ch.profile_id.starts_with("account:") {
                    users_in += 1;
                }
                users_in >= users
            }
        ),
        "{users_in} of {users} users entered"
    );
    // A flip that changes the account: account entry, then every user's.
    let sent = Instant::now();
    produce(
        &stack.resolved,
        vec![track("b0", "flip-0", "Flip", now_ms())],
    );
    let (mut account_at, mut users_seen, mut last_user_at) = (None, 0u64, sent);
    assert!(read_until(
        &members,
        Instant::now() + Duration::from_secs(300),
        |ch, at| {
            if ch.audience_key == "bench_any_flip" {
                if ch.profile_id == "account:big" {
                    account_at = Some(at);
                } else {
                    users_seen += 1;
                    last_user_at = at;
                }
            }
            account_at.is_some() && users_seen >= users
        }
    ));
    let ms = |i: Instant| i.duration_since(sent).as_secs_f64() * 1000.0;
    // A flip that changes nothing at account level: b1's Flip (ANY is already true). Nothing is
    // emitted; the figure is the time until compute committed it (its input offset).
    let before = committed_total(&stack.app, &stack.resolved);
    let quiet_sent = Instant::now();
    produce(
        &stack.resolved,
        vec![track("b1", "flip-1", "Flip", now_ms())],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed_total(&stack.app, &stack.resolved) <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let quiet_ms = quiet_sent.elapsed().as_secs_f64() * 1000.0;
    println!(
        "compute accounts big_account users={users} flip_changing_account account_change_ms={:.0} last_user_change_ms={:.0} user_changes={users_seen}; flip_not_changing_account committed_ms={quiet_ms:.0} (offset polling every 5 ms) loadavg={}",
        account_at.map(ms).unwrap_or(f64::NAN),
        ms(last_user_at),
        loadavg()
    );
    assert!(stack.svc.terminate().success());
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let want = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    if want("scale") {
        scale();
    }
    if want("big") {
        big();
    }
}
