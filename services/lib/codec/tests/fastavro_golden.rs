//! Cross-language golden vectors: Rust-encoded records decoded (and re-encoded byte for byte)
//! by Python fastavro, and fastavro-encoded records decoded by Rust.
//!
//! Needs python3. The test creates a venv at `<repo>/.cache/venv` with fastavro from PyPI if it
//! is not there yet, and fails with a clear message if it cannot; it never skips silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_codec::*;

/// Pinned so the check is reproducible; the version ecosystem.md §6 was checked against.
const FASTAVRO: &str = "fastavro==1.13.1";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..")
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{what} failed ({}):\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("{what}: cannot run: {e}")),
    }
}

/// The venv's python, created with fastavro on first use.
fn venv_python() -> PathBuf {
    let venv = repo().join(".cache/venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").arg("--version"), "python3 --version").unwrap_or_else(|e| {
            panic!("the fastavro golden test needs python3 (apt-get install python3 python3-venv): {e}")
        });
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv .cache/venv",
        )
        .unwrap_or_else(|e| panic!("cannot create the venv (apt-get install python3-venv?): {e}"));
    }
    if run(
        Command::new(&python).args(["-c", "import fastavro"]),
        "import fastavro",
    )
    .is_err()
    {
        run(
            Command::new(&python).args(["-m", "pip", "install", "--quiet", FASTAVRO]),
            "pip install fastavro",
        )
        .unwrap_or_else(|e| panic!("cannot install {FASTAVRO} into {}: {e}", venv.display()));
    }
    python
}

#[test]
fn fastavro_reads_rust_and_rust_reads_fastavro() {
    let python = venv_python();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();

    let records: Vec<(&str, Vec<u8>)> = vec![
        ("events.raw", common::message().encode().unwrap()),
        ("events.valid", common::valid().encode().unwrap()),
        ("events.blocked", common::blocked().encode().unwrap()),
        ("events.violations", common::violation().encode().unwrap()),
        ("events.dlq", common::dead_letter().encode().unwrap()),
        ("events.resolved", common::resolved().encode().unwrap()),
        ("profiles.merges", common::merge().encode().unwrap()),
        (
            "audiences.membership",
            common::membership().encode().unwrap(),
        ),
        ("traits.changes", common::trait_change().encode().unwrap()),
        ("definitions", common::definition().encode().unwrap()),
    ];
    assert_eq!(records.len(), TOPICS.len());
    for (topic, bytes) in &records {
        std::fs::write(work.join(format!("{topic}.rust.bin")), bytes).unwrap();
    }
    let input = serde_json::json!({
        "track": common::track_json(),
        "dead_letter": common::dead_letter(),
    });
    std::fs::write(work.join("input.json"), serde_json::to_vec(&input).unwrap()).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fastavro_golden.py");
    let out = run(
        Command::new(&python)
            .arg(&script)
            .arg(repo().join("schemas"))
            .arg(work),
        "tests/fastavro_golden.py",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{out}");

    // Records authored by Python, decoded here.
    let msg = SegmentMessage::decode(&std::fs::read(work.join("message.py.bin")).unwrap()).unwrap();
    let mut want = SegmentMessage::from_segment_json("space-py", common::track_json()).unwrap();
    want.source_id = Some("src-py".into());
    want.received_at_ms = Some(1_700_000_000_999);
    assert_eq!(msg, want);
    assert_eq!(msg.to_segment_json(), common::track_json());

    let dl = DeadLetter::decode(&std::fs::read(work.join("dead_letter.py.bin")).unwrap()).unwrap();
    assert_eq!(
        dl,
        DeadLetter {
            space_id: "space-py".into(),
            service: "python".into(),
            origin_topic: "corral.events.raw".into(),
            origin_partition: i32::MAX,
            origin_offset: i64::MIN,
            key: None,
            value: Some((0..=255).collect()),
            error: "ünïcödé ✓".into(),
            reason: "decode_error".into(),
            failed_at_ms: 1_700_000_000_123,
        }
    );
}
