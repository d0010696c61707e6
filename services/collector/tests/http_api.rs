//! The documented errors, CORS, dead letters and Kafka outages, against a real collector process
//! and the real local broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use corral_codec::DeadLetter;
use serde_json::json;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn assert_error(r: &Response, status: u16, code: &str, mentions: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["code"], code, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "message {msg:?} should mention {mentions:?}"
    );
    assert!(r
        .header("content-type")
        .unwrap()
        .contains("application/json"));
}

#[test]
fn documented_errors_cors_and_dead_letters() {
    let c = Collector::start("collector-http", &[]);
    c.wait_for("/readyz", Duration::from_secs(60));
    let auth = basic(WRITE_KEY);
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/plain"),
    ];

    // Bad JSON.
    assert_error(
        &c.post("/v1/batch", &h, b"{\"batch\": [}"),
        400,
        "invalid_json",
        "not valid JSON",
    );
    // Oversize message (32 KB), in a batch and on a single endpoint.
    let big = "x".repeat(33 * 1024);
    let body = json!({"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"big": big}}]});
    assert_error(
        &c.post("/v1/batch", &h, body.to_string().as_bytes()),
        400,
        "message_too_large",
        "32768 bytes per message",
    );
    let body = json!({"userId": "u", "event": "E", "properties": {"big": big}});
    assert_error(
        &c.post("/v1/track", &h, body.to_string().as_bytes()),
        400,
        "message_too_large",
        "32768",
    );
    // Oversize request (500 KB), made of messages that are each under 32 KB.
    let item = json!({"type": "track", "userId": "u", "event": "E", "properties": {"s": "y".repeat(20_000)}});
    let body = json!({"batch": vec![item; 30]});
    assert_error(
        &c.post("/v1/batch", &h, body.to_string().as_bytes()),
        400,
        "request_too_large",
        "512000 bytes per request",
    );
    // Too many items (2,500).
    let body = json!({"batch": vec![json!({"type": "identify", "userId": "u"}); 2_501]});
    assert_error(
        &c.post("/v1/batch", &h, body.to_string().as_bytes()),
        400,
        "too_many_messages",
        "2500 messages per batch",
    );
    // Bad and missing write keys, in the header and in the body.
    let bad = basic("not-a-key");
    assert_error(
        &c.post(
            "/v1/batch",
            &[("Authorization", bad.as_str())],
            b"{\"batch\":[]}",
        ),
        401,
        "invalid_write_key",
        "not valid",
    );
    assert_error(
        &c.post("/v1/batch", &[], b"{\"batch\":[],\"writeKey\":\"nope\"}"),
        401,
        "invalid_write_key",
        "not valid",
    );
    assert_error(
        &c.post("/v1/batch", &[], b"{\"batch\":[]}"),
        401,
        "missing_write_key",
        "writeKey",
    );
    // A gzip bomb: small on the wire, over the limit once decompressed.
    let bomb = gzip(&vec![b' '; 600 * 1024]);
    assert!(bomb.len() < 10_000);
    assert_error(
        &c.post(
            "/v1/batch",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Encoding", "gzip"),
            ],
            &bomb,
        ),
        400,
        "request_too_large",
        "decompressed",
    );
    assert_error(
        &c.post(
            "/v1/batch",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Encoding", "gzip"),
            ],
            b"not gzip",
        ),
        400,
        "invalid_encoding",
        "gzip",
    );
    // Unknown path and wrong method are JSON too.
    assert_error(
        &c.post("/v2/track", &h, b"{}"),
        404,
        "not_found",
        "/v2/track",
    );
    assert_error(
        &request(c.port, "GET", "/v1/batch", &[], b""),
        405,
        "method_not_allowed",
        "POST",
    );

    // CORS preflight as a browser sends it for analytics.js.
    let pre = request(
        c.port,
        "OPTIONS",
        "/v1/t",
        &[
            ("Origin", "https://shop.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type,x-retry-count",
            ),
        ],
        b"",
    );
    assert_eq!(pre.status, 200);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("authorization,content-type,x-retry-count")
    );
    assert_eq!(
        pre.header("access-control-allow-credentials"),
        None,
        "credentials are never allowed cross-origin"
    );

    // Accepted: gzip batch with writeKey in the body, batch-level context merged; every single
    // endpoint and short alias; the Origin is echoed on the actual request.
    let batch = json!({"writeKey": WRITE_KEY, "sentAt": "2030-01-01T00:00:00Z", "context": {"library": {"name": "raw-http"}},
        "batch": [{"type": "identify", "userId": "gz-1", "messageId": "m-gz-1", "timestamp": "2030-01-01T00:00:00Z"}]});
    let r = c.post(
        "/v1/batch",
        &[
            ("Content-Encoding", "gzip"),
            ("Origin", "https://shop.example"),
        ],
        &gzip(batch.to_string().as_bytes()),
    );
    assert_eq!((r.status, r.json()), (200, json!({"success": true})));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let singles = [
        ("/v1/track", json!({"userId": "s-track", "event": "E"})),
        ("/v1/t", json!({"userId": "s-t", "event": "E"})),
        ("/v1/identify", json!({"userId": "s-identify"})),
        ("/v1/i", json!({"userId": "s-i"})),
        ("/v1/page", json!({"userId": "s-page", "name": "P"})),
        ("/v1/p", json!({"userId": "s-p"})),
        ("/v1/screen", json!({"userId": "s-screen"})),
        ("/v1/s", json!({"userId": "s-s"})),
        ("/v1/group", json!({"userId": "s-group", "groupId": "g"})),
        ("/v1/g", json!({"userId": "s-g", "groupId": "g"})),
        ("/v1/alias", json!({"userId": "s-alias", "previousId": "p"})),
        ("/v1/a", json!({"userId": "s-a", "previousId": "p"})),
        (
            "/v1/import",
            json!({"batch": [{"type": "track", "userId": "s-import", "event": "E"}]}),
        ),
        (
            "/v1/b",
            json!({"batch": [{"type": "track", "userId": "s-b", "event": "E"}]}),
        ),
    ];
    for (path, body) in &singles {
        let r = c.post(
            path,
            &[("Authorization", auth.as_str()), ("X-Retry-Count", "1")],
            body.to_string().as_bytes(),
        );
        assert_eq!(
            (r.status, r.json()),
            (200, json!({"success": true})),
            "{path}"
        );
    }

    // Unusable but valid: 200, and a dead letter with the reason.
    let body = json!({"batch": [
        {"type": "track", "event": "No Identity", "messageId": "dead-1"},
        {"type": "track", "userId": "u-dead", "messageId": "dead-2"},
    ]});
    let r = c.post("/v1/batch", &h, body.to_string().as_bytes());
    assert_eq!(r.status, 200);

    let raw = read_raw(&c.raw_topic, 1 + singles.len(), Duration::from_secs(30));
    assert_eq!(
        raw.len(),
        1 + singles.len(),
        "only the accepted messages, once each"
    );
    let gz = raw
        .iter()
        .find(|(_, e)| e.message_id == "m-gz-1")
        .expect("gzip message")
        .1
        .clone();
    assert_eq!(gz.context.as_ref().unwrap()["library"]["name"], "raw-http");
    assert_eq!(
        gz.original_timestamp.as_deref(),
        Some("2030-01-01T00:00:00Z")
    );
    for (path, body) in &singles {
        let uid = body
            .get("userId")
            .or_else(|| body["batch"][0].get("userId"))
            .unwrap()
            .as_str()
            .unwrap();
        let ev = &raw
            .iter()
            .find(|(_, e)| e.user_id.as_deref() == Some(uid))
            .unwrap_or_else(|| panic!("{path}"))
            .1;
        let want = match &path[4..] {
            "t" | "track" | "import" | "b" => "track",
            "i" | "identify" => "identify",
            "p" | "page" => "page",
            "s" | "screen" => "screen",
            "g" | "group" => "group",
            _ => "alias",
        };
        assert_eq!(ev.message_type.as_str(), want, "{path}");
    }
    let dlq = corral_tests::read_committed(&c.dlq_topic, 2, Duration::from_secs(30));
    let mut reasons: Vec<(String, Option<Vec<u8>>)> = dlq
        .iter()
        .map(|r| {
            let d = DeadLetter::decode(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(d.service, "collector");
            assert_eq!(d.space_id, "s1");
            assert!(
                serde_json::from_slice::<serde_json::Value>(d.value.as_deref().unwrap()).is_ok()
            );
            (d.reason, d.key)
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            ("missing_event".to_string(), Some(b"dead-2".to_vec())),
            ("no_user_anon_id".to_string(), Some(b"dead-1".to_vec())),
        ]
    );
    assert_eq!(
        c.metric(
            "corral_collector_dead_letters_total",
            &["reason=\"no_user_anon_id\""]
        ),
        1.0
    );
    assert_eq!(
        c.metric(
            "corral_collector_dead_letters_total",
            &["reason=\"missing_event\""]
        ),
        1.0
    );
    assert_eq!(
        c.metric("corral_collector_client_retries_total", &[]),
        singles.len() as f64
    );
    assert_eq!(
        c.metric("corral_collector_requests_total", &["status=\"400\""]),
        7.0
    );
    assert!(c.metric("corral_collector_request_duration_seconds_count", &[]) > 0.0);
    assert_eq!(
        c.service.terminate().code(),
        Some(0),
        "clean shutdown on SIGTERM"
    );
}

/// A TCP forwarder from `listener` to `target`, one thread pair per connection.
fn forward(listener: TcpListener, target: String) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
}

#[test]
fn kafka_unreachable_gives_503_then_retries_land_every_message() {
    let bootstrap = bootstrap();
    let prefix = format!("{}.", unique("collector-down"));
    let raw_topic = format!("{prefix}events.raw");
    let dlq_topic = format!("{prefix}events.dlq");
    create_topic(&raw_topic, 3, corral_runtime::topics::CleanupPolicy::Delete);
    create_topic(&dlq_topic, 1, corral_runtime::topics::CleanupPolicy::Delete);
    // Nothing listens on this port yet: Kafka is unreachable for the collector.
    let kafka_port = free_port();
    let c = Collector::spawn(
        "collector-down",
        &format!("127.0.0.1:{kafka_port}"),
        &prefix,
        &[
            "--delivery-timeout-ms",
            "1500",
            "--retry-after-seconds",
            "1",
        ],
        raw_topic.clone(),
        dlq_topic,
    );
    let ready = request(c.port, "GET", "/readyz", &[], b"");
    assert_eq!(ready.status, 503, "not ready while Kafka is unreachable");

    let auth = basic(WRITE_KEY);
    let batch = |n: usize| {
        json!({"batch": (0..n).map(|i| json!({"type": "track", "userId": format!("down-{i}"),
            "event": "While Down", "messageId": format!("down-msg-{i}")})).collect::<Vec<_>>()})
        .to_string()
    };
    let body = batch(20);
    let r = c.post(
        "/v1/batch",
        &[("Authorization", auth.as_str())],
        body.as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["code"], "unavailable");
    assert!(r.json()["message"].as_str().unwrap().len() > 10);

    // Kafka becomes reachable: a forwarder on the bootstrap port.
    forward(
        TcpListener::bind(("127.0.0.1", kafka_port)).unwrap(),
        bootstrap,
    );
    // A client retrying the same batch (same messageIds) until it is accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 1;
    loop {
        let retry = attempts.to_string();
        let r = c.post(
            "/v1/batch",
            &[
                ("Authorization", auth.as_str()),
                ("X-Retry-Count", retry.as_str()),
            ],
            body.as_bytes(),
        );
        attempts += 1;
        if r.status == 200 {
            break;
        }
        assert!(
            matches!(r.status, 503 | 429),
            "retryable status, got {}",
            r.status
        );
        assert!(Instant::now() < deadline, "Kafka did not become writable");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.wait_for("/readyz", Duration::from_secs(30));
    let raw = read_raw(&raw_topic, 20, Duration::from_secs(30));
    let mut ids: Vec<String> = raw.iter().map(|(_, e)| e.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut want: Vec<String> = (0..20).map(|i| format!("down-msg-{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "every message landed");
    assert!(c.metric("corral_collector_requests_total", &["status=\"503\""]) >= 1.0);
    assert!(c.metric("corral_collector_client_retries_total", &[]) >= 1.0);
}

/// What analytics.js loads first, from a real collector process: the settings point at the
/// request's Host by default, at `--public-url` (or `CORRAL_COLLECTOR_PUBLIC_URL`) when given;
/// unknown keys get a JSON 404.
#[test]
fn analytics_js_settings_follow_host_or_public_url() {
    let c = Collector::start("collector-settings", &[]);
    let r = request(
        c.port,
        "GET",
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let io = &r.json()["integrations"]["Segment.io"];
    assert_eq!(io["apiKey"], WRITE_KEY);
    assert_eq!(io["apiHost"], format!("127.0.0.1:{}/v1", c.port));
    assert_eq!(io["protocol"], "http");
    assert_error(
        &request(c.port, "GET", "/v1/projects/unknown-key/settings", &[], b""),
        404,
        "invalid_write_key",
        "write key",
    );
    assert_error(
        &request(
            c.port,
            "GET",
            &format!("/analytics.js/v1/{WRITE_KEY}/analytics.min.js"),
            &[],
            b"",
        ),
        404,
        "not_found",
        "--analytics-js",
    );
    assert_eq!(
        c.metric(
            "corral_collector_requests_total",
            &["endpoint=\"settings\"", "status=\"200\""]
        ),
        1.0
    );
    drop(c);

    // The flag, then the variable.
    let c = Collector::start(
        "collector-settings-flag",
        &["--public-url", "https://collect.example.com/corral/"],
    );
    let r = request(
        c.port,
        "GET",
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        &[],
        b"",
    );
    let io = &r.json()["integrations"]["Segment.io"];
    assert_eq!(
        (io["apiHost"].as_str(), io["protocol"].as_str()),
        (Some("collect.example.com/corral/v1"), Some("https"))
    );
    let port = free_port();
    let service = Service::spawn(
        "collector-settings-env",
        env!("CARGO_BIN_EXE_corral-collector"),
        &[
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--kafka-bootstrap".to_string(),
            bootstrap(),
            "--no-definitions".to_string(),
            "--write-key".to_string(),
            format!("{WRITE_KEY}=e2e:s1"),
        ],
        &[(
            "CORRAL_COLLECTOR_PUBLIC_URL",
            "http://10.1.2.3:8080".to_string(),
        )],
    );
    let env_collector = Collector {
        service,
        port,
        raw_topic: c.raw_topic.clone(),
        dlq_topic: c.dlq_topic.clone(),
    };
    env_collector.wait_for("/healthz", Duration::from_secs(30));
    let r = request(
        port,
        "GET",
        &format!("/v1/projects/{WRITE_KEY}/settings"),
        &[],
        b"",
    );
    assert_eq!(
        r.json()["integrations"]["Segment.io"]["apiHost"],
        "10.1.2.3:8080/v1"
    );
}
