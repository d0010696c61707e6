//! Segment's real client libraries (segment-analytics-python from PyPI, @segment/analytics-node
//! from npm) pointed at the collector: every call type arrives in events.raw exactly once with
//! every field intact. `tests/clients/install.sh` installs them on first run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value as Json;

fn clients_dir() -> PathBuf {
    corral_tests::repo_root().join("tests/clients")
}

fn install() {
    let status = Command::new("bash")
        .arg(clients_dir().join("install.sh"))
        .status()
        .expect("running tests/clients/install.sh");
    assert!(status.success(), "tests/clients/install.sh failed");
}

fn run(mut cmd: Command) -> std::process::Child {
    cmd.current_dir(clients_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn expectations(name: &str, out: Output) -> Vec<Json> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} printed {l:?}: {e}")))
        .collect()
}

fn same_instant(a: &str, b: &str) -> bool {
    let p = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    p(a).is_some() && p(a) == p(b)
}

#[test]
fn segment_clients_deliver_every_call_exactly_once_with_fields_intact() {
    install();
    let c = Collector::start("collector-clients", &[]);
    c.wait_for("/readyz", Duration::from_secs(60));
    let run_id = unique("run");
    let venv_python = clients_dir().join(".venv/bin/python");

    let mut py = Command::new(&venv_python);
    py.args([
        "send_python.py",
        &c.host(),
        WRITE_KEY,
        &run_id,
        "--count",
        "250",
    ]);
    let mut py_gz = Command::new(&venv_python);
    py_gz.args([
        "send_python.py",
        &c.host(),
        WRITE_KEY,
        &run_id,
        "--gzip",
        "--count",
        "50",
    ]);
    let mut node = Command::new("node");
    node.args(["send_node.mjs", &c.host(), WRITE_KEY, &run_id, "150"]);
    let children = [
        ("python", run(py)),
        ("python --gzip", run(py_gz)),
        ("node", run(node)),
    ];
    let mut expected = Vec::new();
    for (name, child) in children {
        expected.extend(expectations(name, child.wait_with_output().unwrap()));
    }
    assert_eq!(expected.len(), 3 * 6 + 250 + 50 + 150);

    let records = read_raw(&c.raw_topic, expected.len(), Duration::from_secs(60));
    let mut by_user: HashMap<String, Vec<(Json, &corral_codec::RawEvent, &corral_tests::Record)>> =
        HashMap::new();
    for (rec, ev) in &records {
        let uid = ev
            .user_id
            .clone()
            .expect("every client message has a userId");
        by_user
            .entry(uid)
            .or_default()
            .push((ev.to_segment_json(), ev, rec));
    }
    let mut ids = std::collections::HashSet::new();
    for e in &expected {
        let uid = e["userId"].as_str().unwrap();
        let got = by_user.get(uid).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            got.len(),
            1,
            "{uid}: expected exactly once, got {}",
            got.len()
        );
        let (json, ev, rec) = &got[0];
        assert_eq!(json["type"], e["type"], "{uid}");
        assert_eq!(
            rec.key,
            Some(corral_codec::routing::message_key(ev)),
            "keyed by the routing identifier, else the messageId"
        );
        assert!(
            ids.insert(ev.message_id.clone()),
            "duplicate messageId {}",
            ev.message_id
        );
        assert_eq!(ev.space_id, "s1");
        assert_eq!(ev.source_id.as_deref(), Some("e2e"));
        assert!(ev.received_at.is_some() && ev.received_at_ms.is_some());
        assert!(ev.timestamp.is_some());
        assert_eq!(ev.client_ip.as_deref(), Some("127.0.0.1"));
        assert!(!json.as_object().unwrap().contains_key("writeKey"));
        let lib = &json["context"]["library"]["name"];
        assert!(lib.is_string(), "{uid}: context.library kept: {json}");
        for (field, want) in e["expect"].as_object().unwrap() {
            match field.as_str() {
                // The client's timestamp is kept verbatim as originalTimestamp; `timestamp` is
                // skew-corrected from sentAt.
                "timestamp" => {
                    let orig = ev.original_timestamp.as_deref().unwrap_or_default();
                    assert!(
                        same_instant(orig, want.as_str().unwrap()),
                        "{uid}: originalTimestamp {orig} vs {want}"
                    );
                }
                "context" => {
                    for (k, v) in want.as_object().unwrap() {
                        assert_eq!(&json["context"][k], v, "{uid}: context.{k}");
                    }
                }
                _ => assert_eq!(&json[field], want, "{uid}: {field}"),
            }
        }
    }
    assert_eq!(records.len(), expected.len(), "no extra records");
    // gzip was really used by one client and retries were not needed.
    assert!(
        c.metric(
            "corral_collector_requests_total",
            &["endpoint=\"batch\"", "status=\"200\""]
        ) >= 3.0
    );
    assert_eq!(c.metric("corral_collector_dead_letters_total", &[]), 0.0);
}
