//! The ingest edge against slow and greedy clients, on the real binary: a connection that never
//! finishes its headers is closed, a body that stalls gets 408 `request_timeout`, and a write key
//! over its request rate gets 429 `rate_limited` with `Retry-After` while another key is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{basic, Collector, WRITE_KEY};

fn connect(c: &Collector) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

#[test]
fn slow_clients_are_dropped_and_each_write_key_has_its_own_rate() {
    let other = "guards-other-key-0123456789";
    let c = Collector::start(
        "collector-guards",
        &[
            "--header-timeout-ms",
            "1000",
            "--body-timeout-ms",
            "1000",
            "--rate-limit-per-key",
            "3",
            "--write-key",
            &format!("{other}=other:s1"),
        ],
    );
    c.wait_for("/readyz", Duration::from_secs(60));

    // Headers that never end: the connection is closed after the header timeout.
    let mut slow = connect(&c);
    slow.write_all(b"POST /v1/track HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "a connection with unfinished headers stayed open"
    );

    // A body that stalls: 408 with the code and what to do.
    let mut stall = connect(&c);
    let auth = basic(WRITE_KEY);
    write!(
        stall,
        "POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"userId\""
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stall.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // Over the rate: 429 with Retry-After for this key; the other key is still served.
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/plain"),
    ];
    let body = br#"{"userId": "u", "event": "E"}"#;
    let answers: Vec<_> = (0..10).map(|_| c.post("/v1/track", &h, body)).collect();
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 3,
        "{statuses:?}"
    );
    let limited = answers
        .iter()
        .find(|r| r.status == 429)
        .unwrap_or_else(|| panic!("no 429 over the rate: {statuses:?}"));
    assert_eq!(limited.json()["code"], "rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let other_auth = basic(other);
    let oh = [
        ("Authorization", other_auth.as_str()),
        ("Content-Type", "text/plain"),
    ];
    assert_eq!(
        c.post("/v1/track", &oh, body).status,
        200,
        "another key is not limited"
    );
}
