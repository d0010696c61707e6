//! `pipeline-latency`: latency through the whole running pipeline (`make bench`, part `pipeline`).
//!
//! Against a running stack (collector, validator, identity, compute, fanout) that has the audience
//! `--audience` (entered on one `Latency Probe` event) connected to a webhook destination at
//! `127.0.0.1:--webhook-port`, it sends `--rate` events/s to the collector for `--seconds`: a
//! background of track calls in batches, and `--probes` single track calls per second, each from a
//! new user (or, with `--probe-users returning`, a user sent one other call before the run), each
//! of which makes that user enter the audience. Per probe it measures the time from
//! sending the HTTP request to (a) the committed `entered` record on the membership topic and (b)
//! the webhook request, both matched by the probe's user id. Prints one
//! `pipeline latency ...` line with p50/p99 of both and what never arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark driver: fail loudly

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use corral_codec::{AvroRecord, MembershipChange, MembershipChangeKind};
use corral_tests::http::Receiver;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "pipeline-latency")]
struct Args {
    #[arg(long, env = "CORRAL_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value = "127.0.0.1:8080")]
    collector: String,
    #[arg(long, default_value = "corral-demo")]
    write_key: String,
    #[arg(long, default_value = "corral.audiences.membership")]
    membership_topic: String,
    #[arg(long, default_value = "bench_latency")]
    audience: String,
    #[arg(long, default_value_t = 9998)]
    webhook_port: u16,
    /// Events per second in all (background and probes).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Probe requests per second (one new audience member each).
    #[arg(long, default_value_t = 20)]
    probes: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events per background batch request.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Background connections, each sending its share of the rate.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Probe users: `new` (first seen on the probe: identity's coordinator resolves it) or
    /// `returning` (each sent one `Latency Warmup` call before the run, so the probe takes the
    /// common path, a stitcher hit).
    #[arg(long, value_enum, default_value_t = ProbeUsers::New)]
    probe_users: ProbeUsers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProbeUsers {
    New,
    Returning,
}

/// One HTTP/1.1 POST on a kept-alive connection; returns the status.
fn post(conn: &mut BufReader<TcpStream>, host: &str, path: &str, body: &[u8]) -> u16 {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = conn.get_mut();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut status_line = String::new();
    conn.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut rest = vec![0; len];
    conn.read_exact(&mut rest).unwrap();
    status
}

fn connect(addr: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let args = Args::parse();
    let receiver = Receiver::start_on(args.webhook_port);
    let stop = Arc::new(AtomicBool::new(false));
    // Its own flag: the reader must outlive the background load, or the last probes' records
    // (those still in flight when sending stops) are never read.
    let reader_stop = Arc::new(AtomicBool::new(false));

    // Committed `entered` records of the audience, by trigger messageId, from the end of the topic.
    let entered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set(
            "group.id",
            format!("pipeline-latency-{}", std::process::id()),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(&args.membership_topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(&args.membership_topic, p.id(), Offset::End)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // Let the assignment settle before the first probe is sent.
    for _ in 0..20 {
        consumer.poll(Duration::from_millis(50));
    }
    let reader = {
        let (entered, stop, audience) =
            (entered.clone(), reader_stop.clone(), args.audience.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let now = Instant::now();
                let Ok(mc) = MembershipChange::decode(m.payload().unwrap_or_default()) else {
                    continue;
                };
                if mc.audience_key == audience && mc.change == MembershipChangeKind::Entered {
                    // By the probe's user id (the entry may come from a later evaluation than
                    // the probe's own event, with another trigger).
                    if let Some(user) = mc.external_ids.iter().find(|i| i.id_type == "user_id") {
                        entered
                            .lock()
                            .unwrap()
                            .entry(user.id.clone())
                            .or_insert(now);
                    }
                }
            }
        })
    };

    let host = args.collector.clone();
    let total = args.probes * args.seconds;
    let run = std::process::id();
    if args.probe_users == ProbeUsers::Returning {
        let mut conn = connect(&host);
        // Known before the run: a call that does not enter the audience, then time for identity
        // to commit the users' links (a commit interval or two; 5 s is ample).
        for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
            let events: Vec<serde_json::Value> = chunk
                .iter()
                .map(|i| {
                    json!({"type": "track", "userId": format!("probe-{run}-{i}"),
                       "event": "Latency Warmup", "messageId": format!("warmup-{run}-{i}")})
                })
                .collect();
            let body =
                serde_json::to_vec(&json!({"writeKey": args.write_key, "batch": events})).unwrap();
            assert_eq!(post(&mut conn, &host, "/v1/batch", &body), 200);
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let background_rate = args.rate.saturating_sub(args.probes);
    let sent_background = Arc::new(AtomicU64::new(0));
    let connections = args.connections.max(1);
    let per_connection = (background_rate / connections).max(1);
    let background: Vec<_> = (0..connections)
        .map(|c| {
            let (stop, sent, host, key) = (
                stop.clone(),
                sent_background.clone(),
                host.clone(),
                args.write_key.clone(),
            );
            let batch = args.batch.max(1);
            std::thread::spawn(move || {
                let mut conn = connect(&host);
                let started = Instant::now();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Open loop: each batch is sent when the schedule says, late ones catch up.
                    let due =
                        started + Duration::from_secs_f64(n as f64 / per_connection as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let events: Vec<serde_json::Value> = (0..batch)
                        .map(|k| {
                            let i = (n + k) * connections + c;
                            json!({"type": "track", "userId": format!("bg-{}", i % 50_000),
                                   "event": "Feature Used", "messageId": format!("bg-{}-{i}", std::process::id()),
                                   "properties": {"feature_name": "search"}})
                        })
                        .collect();
                    let body =
                        serde_json::to_vec(&json!({"writeKey": key, "batch": events})).unwrap();
                    post(&mut conn, &host, "/v1/batch", &body);
                    n += batch;
                    sent.fetch_add(batch, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let mut sent_probes: Vec<(String, String, Instant)> = Vec::new();
    let mut conn = connect(&host);
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / args.probes.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let user = format!("probe-{run}-{i}");
        let message_id = format!("probe-{run}-{i}");
        let body = serde_json::to_vec(&json!({"writeKey": args.write_key, "type": "track",
            "userId": user, "event": "Latency Probe", "messageId": message_id}))
        .unwrap();
        let at = Instant::now();
        let status = post(&mut conn, &host, "/v1/track", &body);
        assert_eq!(status, 200, "the collector accepted the probe");
        sent_probes.push((message_id, user, at));
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for b in background {
        b.join().unwrap();
    }
    let background_sent = sent_background.load(Ordering::Relaxed);

    // Stragglers: wait until every probe arrived both ways, or 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let webhook_at = |reqs: &[corral_tests::http::Received]| -> HashMap<String, Instant> {
        let mut at = HashMap::new();
        for r in reqs {
            if let Some(u) = r.body.get("userId").and_then(|u| u.as_str()) {
                at.entry(u.to_string()).or_insert(r.at);
            }
        }
        at
    };

    loop {
        let hooks = webhook_at(&receiver.requests());
        let members = entered.lock().unwrap().len();
        let hooked = sent_probes
            .iter()
            .filter(|(_, u, _)| hooks.contains_key(u))
            .count();
        if (members >= sent_probes.len() && hooked >= sent_probes.len())
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reader_stop.store(true, Ordering::Relaxed);
    let hooks = webhook_at(&receiver.requests());
    let members = entered.lock().unwrap().clone();
    reader.join().unwrap();
    let mut to_membership = Vec::new();
    let mut to_webhook = Vec::new();
    for (_, user, at) in &sent_probes {
        if let Some(t) = members.get(user) {
            to_membership.push(t.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
        if let Some(t) = hooks.get(user) {
            to_webhook.push(t.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    to_membership.sort_by(f64::total_cmp);
    to_webhook.sort_by(f64::total_cmp);
    println!(
        "pipeline latency probe_users={} events_per_s_sent={:.0} probes={} membership_p50_ms={:.0} membership_p99_ms={:.0} webhook_p50_ms={:.0} webhook_p99_ms={:.0} missing_membership={} missing_webhook={}",
        match args.probe_users {
            ProbeUsers::New => "new",
            ProbeUsers::Returning => "returning",
        },
        (background_sent + total) as f64 / elapsed,
        sent_probes.len(),
        percentile(&to_membership, 0.5),
        percentile(&to_membership, 0.99),
        percentile(&to_webhook, 0.5),
        percentile(&to_webhook, 0.99),
        sent_probes.len() - to_membership.len(),
        sent_probes.len() - to_webhook.len(),
    );
}
