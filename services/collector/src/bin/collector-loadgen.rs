//! Load generator for the collector: POSTs batches of N messages and single-message requests
//! over loopback from this (second) process, and reports messages/s, p50/p99 request latency and
//! the collector's CPU time per 10k messages (from /proc/<pid>/stat).
//!
//! `--spawn` (default when no --pid is given) creates fresh topics on the broker, starts the
//! `corral-collector` next to this binary on a free port, runs both phases, stops it and deletes
//! the topics. Loops are bounded by the request counts; traffic is loopback only.
//!
//! ```text
//! cargo build --release -p corral-collector
//! target/release/collector-loadgen --batch-requests 3000 --single-requests 20000
//! ```

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

#[derive(Debug, Parser)]
#[command(about = "Load generator for corral-collector")]
struct Args {
    /// Kafka bootstrap (spawn mode: topics are created and deleted here).
    #[arg(long, env = "CORRAL_TEST_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// Collector address of an already running collector (then --pid is needed for CPU figures).
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Pid of the running collector, for CPU per 10k messages.
    #[arg(long)]
    pid: Option<u32>,
    /// Write key the collector accepts.
    #[arg(long, default_value = "loadgen-key")]
    write_key: String,
    /// Collector binary for spawn mode [default: corral-collector next to this binary].
    #[arg(long)]
    collector_bin: Option<std::path::PathBuf>,
    /// Partitions of the events.raw topic in spawn mode.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Messages per batch request.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Batch requests to send (0 skips the phase).
    #[arg(long, default_value_t = 3000)]
    batch_requests: usize,
    /// Concurrent connections for the batch phase.
    #[arg(long, default_value_t = 16)]
    batch_connections: usize,
    /// Single-message requests (/v1/track) to send (0 skips the phase).
    #[arg(long, default_value_t = 20000)]
    single_requests: usize,
    /// Concurrent connections for the single-message phase.
    #[arg(long, default_value_t = 64)]
    single_connections: usize,
    /// Keep the topics after the run.
    #[arg(long)]
    keep_topics: bool,
    /// Anonymous ids: `unique` (a new one on every message: each is a new identifier for
    /// identity) or `per-user` (one per user and run, as a browser keeps one: the user's later
    /// messages carry identifiers identity already linked).
    #[arg(long, value_enum, default_value_t = AnonymousIds::Unique)]
    anonymous_ids: AnonymousIds,
    /// Events: `product` (`Product Added`, not in the example tracking plan, so each call is
    /// also an `Unplanned Event` violation) or `planned` (`Session Started` and `Feature Used`
    /// with the example plan's properties, the events the example definitions read).
    #[arg(long, value_enum, default_value_t = Events::Product)]
    events: Events,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Events {
    Product,
    Planned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AnonymousIds {
    Unique,
    PerUser,
}

const USERS: usize = 5000;
const FEATURES: [&str; 3] = ["export", "search", "share"];

fn track(i: usize, run: &str, args: &Args) -> serde_json::Value {
    let anonymous_id = match args.anonymous_ids {
        AnonymousIds::Unique => format!("anon-{run}-{i}"),
        AnonymousIds::PerUser => format!("anon-{run}-u{}", i % USERS),
    };
    let (event, properties) = match (args.events, i % 4) {
        (Events::Product, _) => (
            "Product Added",
            serde_json::json!({"product_id": format!("sku-{}", i % 300), "price": 19.99,
                "quantity": (i % 4) + 1, "currency": "EUR", "category": "Games",
                "position": i % 10, "coupon": null}),
        ),
        (Events::Planned, 0) => (
            "Session Started",
            serde_json::json!({"platform": "web", "session_id": format!("s-{run}-{i}"),
                "referrer_source": null}),
        ),
        (Events::Planned, _) => (
            "Feature Used",
            serde_json::json!({"feature_name": FEATURES[i % FEATURES.len()],
                "feature_category": "reports", "time_spent_seconds": (i % 120) as f64 / 2.0}),
        ),
    };
    // Shaped like an @segment/analytics-node track call (~600 bytes of JSON).
    serde_json::json!({
        "type": "track",
        "event": event,
        "userId": format!("user-{}", i % USERS),
        "anonymousId": anonymous_id,
        "timestamp": "2026-11-30T12:00:00.000Z",
        "properties": properties,
        "context": {"library": {"name": "@segment/analytics-node", "version": "3.1.0"},
                    "page": {"path": "/shop", "url": "https://shop.example/shop"},
                    "userAgent": "Mozilla/5.0 (X11; Linux x86_64)", "locale": "en-US"},
        "integrations": {},
        "_metadata": {"nodeVersion": "20.20.2", "jsRuntime": "node"}
    })
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

struct Phase {
    name: &'static str,
    path: &'static str,
    bodies: Vec<Bytes>,
    per_request: usize,
    requests: usize,
    connections: usize,
}

struct Outcome {
    latencies_us: Vec<u64>,
    failures: usize,
    first_failure: Option<String>,
}

async fn worker(
    addr: SocketAddr,
    auth: String,
    path: &'static str,
    bodies: Arc<Vec<Bytes>>,
    from: usize,
    n: usize,
) -> anyhow::Result<Outcome> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .context("connecting")?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Outcome {
        latencies_us: Vec::with_capacity(n),
        failures: 0,
        first_failure: None,
    };
    for i in from..from + n {
        let body = bodies[i % bodies.len()].clone();
        let req = hyper::Request::post(path)
            .header("host", addr.to_string())
            .header("authorization", auth.as_str())
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        sender.ready().await?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        out.latencies_us.push(t.elapsed().as_micros() as u64);
        if status != 200 {
            out.failures += 1;
            out.first_failure
                .get_or_insert_with(|| format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
    }
    Ok(out)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn run_phase(
    addr: SocketAddr,
    auth: &str,
    pid: Option<&str>,
    phase: Phase,
) -> anyhow::Result<()> {
    let bodies = Arc::new(phase.bodies);
    // Warm-up (not measured): one request per connection.
    let mut warm = Vec::new();
    for c in 0..phase.connections {
        warm.push(tokio::spawn(worker(
            addr,
            auth.to_string(),
            phase.path,
            bodies.clone(),
            c,
            1,
        )));
    }
    for w in warm {
        w.await??;
    }
    let cpu0 = pid.and_then(cpu_seconds);
    let self0 = cpu_seconds("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per = phase.requests / phase.connections;
    let extra = phase.requests % phase.connections;
    let mut from = 0;
    for c in 0..phase.connections {
        let n = per + usize::from(c < extra);
        tasks.push(tokio::spawn(worker(
            addr,
            auth.to_string(),
            phase.path,
            bodies.clone(),
            from,
            n,
        )));
        from += n;
    }
    let mut lat = Vec::with_capacity(phase.requests);
    let mut failures = 0;
    let mut first_failure = None;
    for t in tasks {
        let o = t.await??;
        lat.extend(o.latencies_us);
        failures += o.failures;
        if first_failure.is_none() {
            first_failure = o.first_failure;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let self_cpu = match (self0, cpu_seconds("self")) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    lat.sort_unstable();
    let messages = (phase.requests - failures) * phase.per_request;
    let per_10k = |c: Option<f64>| {
        c.map(|c| format!("{:.3}", c / messages.max(1) as f64 * 10_000.0))
            .unwrap_or_else(|| "n/a".into())
    };
    println!(
        "collector {} requests={} messages_per_request={} connections={} failures={} seconds={:.2} msgs_per_sec={:.0} requests_per_sec={:.0} p50_ms={:.2} p99_ms={:.2} collector_cpu_s_per_10k_msgs={} loadgen_cpu_s_per_10k_msgs={}",
        phase.name,
        phase.requests,
        phase.per_request,
        phase.connections,
        failures,
        wall,
        messages as f64 / wall,
        phase.requests as f64 / wall,
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        per_10k(cpu),
        per_10k(self_cpu),
    );
    if let Some(f) = first_failure {
        eprintln!("first failure: {f}");
    }
    Ok(())
}

struct Spawned {
    child: Child,
    admin: AdminClient<DefaultClientContext>,
    topics: Vec<String>,
    keep: bool,
}

async fn spawn_collector(args: &Args) -> anyhow::Result<(SocketAddr, Spawned)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka_bootstrap)
        .create()
        .context("creating the Kafka admin client")?;
    let prefix = format!("loadgen-{}-{:08x}.", std::process::id(), rand_suffix());
    let raw = format!("{prefix}events.raw");
    let dlq = format!("{prefix}events.dlq");
    let topics = [
        NewTopic::new(&raw, args.partitions, TopicReplication::Fixed(1)),
        NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        if let Err((t, e)) = r {
            bail!("creating topic {t}: {e}");
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let bin = match &args.collector_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("corral-collector"),
    };
    let child = Command::new(&bin)
        .args([
            "--listen",
            &addr.to_string(),
            "--kafka-bootstrap",
            &args.kafka_bootstrap,
            "--topic-prefix",
            &prefix,
        ])
        .args(["--write-key", &format!("{}=loadgen", args.write_key)])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let spawned = Spawned {
        child,
        admin,
        topics: vec![raw.clone(), dlq],
        keep: args.keep_topics,
    };
    // Wait until ready (Kafka reachable, topics present).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("the collector did not become ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "collector pid {} on {addr}, topic {raw} ({} partitions)",
        spawned.child.id(),
        args.partitions
    );
    Ok((addr, spawned))
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let auth = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:", args.write_key))
        )
    };
    let (addr, mut spawned) = match args.target {
        Some(t) => (t, None),
        None => {
            let (a, s) = spawn_collector(&args).await?;
            (a, Some(s))
        }
    };
    let pid = match (&spawned, args.pid) {
        (Some(s), _) => Some(s.child.id().to_string()),
        (None, p) => p.map(|p| p.to_string()),
    };
    println!(
        "# machine: {} cores; collector {addr}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let run_id = format!("{:08x}", rand_suffix());
    let result = async {
        if args.batch_requests > 0 {
            let bodies = (0..16)
                .map(|b| {
                    let batch: Vec<_> = (0..args.batch_size)
                        .map(|i| track(b * args.batch_size + i, &run_id, &args))
                        .collect();
                    Bytes::from(
                        serde_json::json!({"batch": batch, "sentAt": "2026-11-30T12:00:01.000Z"})
                            .to_string(),
                    )
                })
                .collect();
            run_phase(
                addr,
                &auth,
                pid.as_deref(),
                Phase {
                    name: "batch",
                    path: "/v1/batch",
                    bodies,
                    per_request: args.batch_size,
                    requests: args.batch_requests,
                    connections: args.batch_connections,
                },
            )
            .await?;
        }
        if args.single_requests > 0 {
            let bodies = (0..64)
                .map(|i| Bytes::from(track(i, &run_id, &args).to_string()))
                .collect();
            run_phase(
                addr,
                &auth,
                pid.as_deref(),
                Phase {
                    name: "single",
                    path: "/v1/track",
                    bodies,
                    per_request: 1,
                    requests: args.single_requests,
                    connections: args.single_connections,
                },
            )
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(s) = spawned.as_mut() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(s.child.id().to_string())
            .status();
        let _ = s.child.wait();
        if !s.keep {
            let names: Vec<&str> = s.topics.iter().map(String::as_str).collect();
            let _ = s.admin.delete_topics(&names, &AdminOptions::new()).await;
        }
    }
    result
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}
