//! `profiles-bench` (`make bench`, part `profiles`): corral-profiles over N profiles.
//!
//! 1. Writes, under a fresh topic prefix, what identity and compute would have written for N
//!    profiles (graph changelog: two ids and the profile; profiles changelog: traits and
//!    results) and one event per profile to `events.resolved` (half `Order Completed` with a
//!    revenue, half page views): N events of history.
//! 2. Starts the release `corral-profiles` on them and times the load to ready; reads its
//!    resident memory (VmRSS, VmHWM) and the store's size.
//! 3. Open-loop load at R requests/s over K keep-alive connections for S seconds, with a space
//!    token as Segment's clients send it: random profiles, 80 % `/traits?limit=100`, 10 %
//!    `/external_ids`, 10 % `/events`. Latency counts from each request's scheduled time (no
//!    coordinated omission). Baseline in the same run: `/readyz` on the same listener at the
//!    same rate (the HTTP floor: no token check, no lookup).
//! 4. Previews an audience over the N events; baseline: reading `events.resolved` to its end
//!    in this process with the same reader (what any preview must at least do).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use corral_codec::{AvroRecord, ExternalId, MessageType, ResolvedEvent, SegmentMessage};
use corral_compute::state::{StoredResult, TraitValue};
use corral_compute::{ExtId, ProfileState};
use corral_identity::engine::{Member, Profile};
use corral_identity::ids::Ident;
use corral_identity::store::{id_key, profile_key};
use corral_runtime::reader::{read_to_end, Flow, Start};
use corral_runtime::topics::{CleanupPolicy, DesiredTopic, TopicAdmin};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, env = "CORRAL_TEST_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Profiles (and events of history).
    #[arg(long, default_value_t = 1_000_000)]
    profiles: usize,
    /// Requests per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Seconds of load (each: baseline and the API).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: u64,
}

const SPACE: &str = "default";
const PARTITIONS: i32 = 6;

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn producer(bootstrap: &str) -> anyhow::Result<BaseProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .set("partitioner", "murmur2_random")
        .create()?)
}

fn send(p: &BaseProducer, topic: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    loop {
        match p.send(BaseRecord::to(topic).key(key).payload(value)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => bail!("producing to {topic}: {e}"),
        }
    }
}

fn pid(n: usize) -> String {
    format!("use_bench{n:09}")
}

/// What identity, compute and the pipeline would have written for `n` profiles.
fn write_history(args: &Args, prefix: &str, t0: i64) -> anyhow::Result<()> {
    let admin = TopicAdmin::connect(&args.bootstrap, &BTreeMap::new())?;
    for (name, policy, partitions) in [
        (
            "identity.graph-changelog",
            CleanupPolicy::Compact,
            PARTITIONS,
        ),
        (
            "compute.profiles-changelog",
            CleanupPolicy::Compact,
            PARTITIONS,
        ),
        ("events.resolved", CleanupPolicy::Delete, PARTITIONS),
        ("definitions", CleanupPolicy::Compact, 1),
    ] {
        let topic = DesiredTopic {
            name: format!("{prefix}{name}"),
            partitions,
            replication_factor: -1,
            cleanup_policy: policy,
            retention_ms: None,
            configs: Default::default(),
        };
        // A busy broker can time out a creation that then completes: ask again, then check.
        for attempt in 1..=5 {
            match admin.create(&topic) {
                Ok(_) => break,
                Err(e) if attempt < 5 => {
                    eprintln!("creating {}: {e}; again", topic.name);
                    std::thread::sleep(Duration::from_secs(2));
                    if admin.partitions(&topic.name)?.is_some() {
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let p = producer(&args.bootstrap)?;
    let graph = format!("{prefix}identity.graph-changelog");
    let compute = format!("{prefix}compute.profiles-changelog");
    let resolved = format!("{prefix}events.resolved");
    for n in 0..args.profiles {
        let id = pid(n);
        let user = format!("u{n}");
        let email = format!("u{n}@example.com");
        let ts = t0 + n as i64;
        let profile = Profile {
            id: id.clone(),
            created_ms: ts,
            merges: 0,
            identifiers: vec![
                Member {
                    id_type: "email".into(),
                    value: email.clone(),
                    first_seen_ms: ts,
                },
                Member {
                    id_type: "user_id".into(),
                    value: user.clone(),
                    first_seen_ms: ts,
                },
            ],
        };
        send(
            &p,
            &graph,
            &id_key(SPACE, &Ident::new("user_id", user.as_str())),
            id.as_bytes(),
        )?;
        send(
            &p,
            &graph,
            &id_key(SPACE, &Ident::new("email", email.as_str())),
            id.as_bytes(),
        )?;
        send(
            &p,
            &graph,
            &profile_key(SPACE, &id),
            &serde_json::to_vec(&profile)?,
        )?;
        let mut st = ProfileState {
            space_id: SPACE.into(),
            ..ProfileState::default()
        };
        st.add_ids([
            ExtId {
                id_type: "user_id".into(),
                id: user.clone(),
                collection: None,
            },
            ExtId {
                id_type: "email".into(),
                id: email.clone(),
                collection: None,
            },
        ]);
        for (k, v) in [
            ("plan", json!(["free", "pro", "enterprise"][n % 3])),
            ("name", json!(format!("User {n}"))),
        ] {
            st.traits.insert(k.into(), TraitValue { v, t: ts });
        }
        if n % 3 == 0 {
            st.results.insert(
                "bench_audience".into(),
                StoredResult {
                    ver: 1,
                    v: json!(true),
                },
            );
        }
        st.results.insert(
            "orders".into(),
            StoredResult {
                ver: 1,
                v: json!(n % 10),
            },
        );
        send(&p, &compute, id.as_bytes(), &st.encode())?;
        let kind = if n % 2 == 0 {
            MessageType::Track
        } else {
            MessageType::Page
        };
        let mut m = SegmentMessage::new(SPACE, kind, format!("bench-{n}"));
        m.user_id = Some(user.clone());
        m.source_id = Some("bench".into());
        m.timestamp =
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ts).map(|d| d.to_rfc3339());
        if kind == MessageType::Track {
            m.event = Some("Order Completed".into());
            m.properties = Some(json!({"revenue": n % 500}));
        } else {
            m.name = Some("Pricing".into());
        }
        let ev = ResolvedEvent {
            message: m,
            profile_id: id.clone(),
            external_ids: vec![ExternalId {
                id_type: "user_id".into(),
                id: user,
                collection: Some("users".into()),
            }],
            resolved_at_ms: ts,
        };
        send(&p, &resolved, id.as_bytes(), &ev.encode()?)?;
        if n % 10_000 == 0 {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(300))?;
    corral_ops::audiences::apply_text(
        &corral_ops::audiences::DefinitionsTopic {
            bootstrap: args.bootstrap.clone(),
            kafka: BTreeMap::new(),
            topic: format!("{prefix}definitions"),
            space: SPACE.into(),
        },
        "audiences:\n  - key: bench_audience\n    query: event('Order Completed').count() >= 1\ncomputed_traits:\n  - key: orders\n    query: event('Order Completed').count()\n",
        "bench",
        None,
    )?;
    Ok(())
}

/// Resident and peak resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_mib(path: &std::path::Path) -> f64 {
    let mut total = 0u64;
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            if let Ok(md) = e.metadata() {
                total += if md.is_dir() {
                    (dir_mib(&e.path()) * 1048576.0) as u64
                } else {
                    md.len()
                };
            }
        }
    }
    total as f64 / 1048576.0
}

/// A keep-alive HTTP/1.1 GET; the status.
fn get(conn: &mut BufReader<TcpStream>, host: &str, path: &str, auth: &str) -> anyhow::Result<u16> {
    write!(
        conn.get_mut(),
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
    )?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok(status)
}

/// Open-loop load; latencies in µs from each request's scheduled time, and the errors.
fn load(
    args: &Args,
    api: SocketAddr,
    auth: &str,
    path_of: impl Fn(u64) -> String + Send + Sync,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let per_conn = args.rate as f64 / args.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let total = (per_conn * args.seconds as f64) as u64;
    let start = Instant::now() + Duration::from_millis(200);
    let path_of = &path_of;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.connections)
            .map(|c| {
                s.spawn(move || -> anyhow::Result<(Vec<u64>, usize)> {
                    let mut conn = BufReader::new(TcpStream::connect(api)?);
                    conn.get_ref().set_nodelay(true)?;
                    let host = api.to_string();
                    let mut lat = Vec::with_capacity(total as usize);
                    let mut errors = 0;
                    // Connections start spread over one interval.
                    let offset = interval.mul_f64(c as f64 / args.connections as f64);
                    for i in 0..total {
                        let at = start + offset + interval.mul_f64(i as f64);
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                        let status = get(&mut conn, &host, &path_of(c * 1_000_003 + i), auth)?;
                        if status != 200 {
                            errors += 1;
                        }
                        lat.push(at.elapsed().as_micros() as u64);
                    }
                    Ok((lat, errors))
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for h in handles {
            let (l, e) = h
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
            all.extend(l);
            errors += e;
        }
        all.sort_unstable();
        Ok((all, errors))
    })
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(what: &str, args: &Args, lat: &[u64], errors: usize) {
    println!(
        "profiles {what}: {} requests at {}/s over {} connections: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} errors",
        lat.len(),
        args.rate,
        args.connections,
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 0.999),
        pct(lat, 1.0),
        errors
    );
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let prefix = format!("bench{}-{:08x}.", std::process::id(), rand::random::<u32>());
    let t0 = corral_ops::now_ms() - 86_400_000;
    let started = Instant::now();
    write_history(&args, &prefix, t0)?;
    println!(
        "profiles history: {} profiles, {} events written in {:.1} s",
        args.profiles,
        args.profiles,
        started.elapsed().as_secs_f64()
    );
    let token = corral_ops::tokens::create(
        &args.bootstrap,
        &BTreeMap::new(),
        &format!("{prefix}definitions"),
        SPACE,
        "bench",
        None,
    )?
    .token;
    let auth = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{token}:"))
        )
    };

    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("bench folder")?
        .join("corral-profiles");
    let state = tempfile::tempdir()?;
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = std::fs::File::create(state.path().join("profiles.log"))?;
    let child = Command::new(&bin)
        .args([
            "--bootstrap",
            &args.bootstrap,
            "--topic-prefix",
            &prefix,
            "--state-dir",
            &state.path().display().to_string(),
            "--listen",
            &api.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let child = Killed(child);
    let pid = child.0.id();
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(admin) {
            let _ = write!(
                s,
                "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(3_600) {
            bail!("corral-profiles not ready after an hour");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (rss, hwm) = memory_mib(pid);
    println!(
        "profiles load: ready after {:.1} s ({} graph, {} compute, {} event records); RSS {:.0} MiB (peak {:.0} MiB), store on disk {:.0} MiB",
        t.elapsed().as_secs_f64(),
        3 * args.profiles,
        args.profiles,
        args.profiles,
        rss,
        hwm,
        dir_mib(state.path())
    );

    let n = args.profiles as u64;
    let (lat, errors) = load(&args, api, &auth, |_| "/readyz".to_string())?;
    report("baseline /readyz (HTTP floor)", &args, &lat, errors);
    let (lat, errors) = load(&args, api, &auth, move |i| {
        let user = (i.wrapping_mul(2_654_435_761)) % n;
        let base = format!("/v1/spaces/default/collections/users/profiles/user_id:u{user}");
        match i % 10 {
            0 => format!("{base}/external_ids"),
            1 => format!("{base}/events"),
            _ => format!("{base}/traits?limit=100"),
        }
    })?;
    report(
        "api (80 % traits, 10 % external_ids, 10 % events)",
        &args,
        &lat,
        errors,
    );
    let (rss, hwm) = memory_mib(pid);
    println!("profiles memory after the load: RSS {rss:.0} MiB (peak {hwm:.0} MiB)");

    // Baseline: just reading the history to its end.
    let t = Instant::now();
    let mut read = 0u64;
    read_to_end::<corral_runtime::RuntimeError>(
        &args.bootstrap,
        &BTreeMap::new(),
        "profiles-bench-read",
        &format!("{prefix}events.resolved"),
        Start::Beginning,
        Duration::from_secs(1_800),
        |_| {
            read += 1;
            Ok(Flow::Continue)
        },
    )?;
    println!(
        "profiles preview baseline: read {read} events of events.resolved in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let body = json!({
        "name": "Big orders",
        "definition": {"query": "event('Order Completed').where(property('revenue') > 250).count() >= 1", "type": "USERS"},
        "sampleSize": 10,
    })
    .to_string();
    let t = Instant::now();
    let mut s = TcpStream::connect(api)?;
    write!(
        s,
        "POST /spaces/default/audiences/previews HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let secs = t.elapsed().as_secs_f64();
    let answer: serde_json::Value = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .context("the preview's answer is not JSON")?;
    let p = &answer["data"]["audiencePreview"];
    println!(
        "profiles preview: {} members of {} profiles over {} events in {secs:.2} s (expected {} members)",
        p["size"]["count"],
        p["profilesEvaluated"],
        p["eventsRead"],
        (0..args.profiles).filter(|n| n % 2 == 0 && n % 500 > 250).count()
    );
    let (rss, hwm) = memory_mib(pid);
    println!("profiles memory after the preview: RSS {rss:.0} MiB (peak {hwm:.0} MiB)");
    Ok(())
}
