//! analytics.js (`@segment/analytics-next` from npm, its UMD bundle) in Debian's headless
//! Chromium against a real collector and the real broker, installed as a site would: only
//! `cdnURL` points at the collector, so analytics.js first loads
//! `/v1/projects/{writeKey}/settings` and then sends wherever those settings say.
//! `tests/browser/drive.mjs` drives the browser (playwright-core over CDP); this test checks
//! what reached the raw topic against what the page sent. `tests/browser/install.sh` installs
//! the npm packages on first run and fails when Chromium is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value as Json;

fn browser_dir() -> PathBuf {
    corral_tests::repo_root().join("tests/browser")
}

#[test]
fn analytics_js_with_only_cdn_url_changed_delivers_every_call_once() {
    let status = Command::new("bash")
        .arg(browser_dir().join("install.sh"))
        .status()
        .expect("running tests/browser/install.sh");
    assert!(status.success(), "tests/browser/install.sh failed");

    // The collector also serves analytics.js, from the npm package's UMD folder.
    let umd = browser_dir().join("node_modules/@segment/analytics-next/dist/umd");
    let c = Collector::start(
        "collector-browser",
        &["--analytics-js", umd.to_str().unwrap()],
    );
    c.wait_for("/readyz", Duration::from_secs(60));
    let run_id = unique("run");
    let started = Instant::now();
    let out = Command::new("node")
        .current_dir(browser_dir())
        .args([
            "drive.mjs",
            &c.host(),
            WRITE_KEY,
            "not-a-corral-key",
            &run_id,
            "--snippet",
        ])
        .output()
        .expect("running node tests/browser/drive.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "drive.mjs failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("browser run took {:?}", started.elapsed());
    let report: Json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("drive.mjs printed {stdout:?}: {e}"));

    // analytics.js asked the collector for settings and talked to nobody else.
    assert_eq!(
        report["settingsRequests"],
        serde_json::json!([format!("/v1/projects/{WRITE_KEY}/settings")])
    );
    assert_eq!(report["foreign"], serde_json::json!([]), "{report}");

    // The five awaited calls, and the track sent as the page unloaded.
    let mut sent: Vec<(String, String, Option<String>)> = report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["messageId"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
                c["event"].as_str().map(str::to_string),
            )
        })
        .collect();
    assert_eq!(
        sent.iter().map(|s| s.1.as_str()).collect::<Vec<_>>(),
        ["identify", "track", "page", "group", "alias"]
    );
    let unload = report["unload"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["event"] == "Left Page")
        .unwrap_or_else(|| panic!("no request for the unload track: {report}"));
    assert_eq!(unload["path"], "/v1/t");
    assert_eq!(
        report["unloadKeepalive"], "true",
        "the collector's settings make analytics.js send with keepalive"
    );
    sent.push((
        unload["messageId"].as_str().unwrap().to_string(),
        "track".into(),
        Some("Left Page".into()),
    ));

    // Every message in events.raw exactly once, with the browser's context intact.
    let snippet = &report["snippet"];
    let snippet_posts = snippet["posts"].as_array().unwrap();
    let records = read_raw(
        &c.raw_topic,
        sent.len() + snippet_posts.len(),
        Duration::from_secs(60),
    );
    let mut by_id: HashMap<&str, Vec<&corral_codec::RawEvent>> = HashMap::new();
    for (_, ev) in &records {
        by_id.entry(ev.message_id.as_str()).or_default().push(ev);
    }
    let user_agent = report["userAgent"].as_str().unwrap();
    assert!(user_agent.contains("HeadlessChrome"), "{user_agent}");
    let page_url = report["href"].as_str().unwrap();
    assert!(
        page_url.contains(&format!("/shop/cart?key={WRITE_KEY}&cdn=")),
        "{page_url}"
    );
    let user_id = report["userId"].as_str().unwrap();
    let anonymous_id = report["anonymousId"].as_str().unwrap();
    for (id, kind, event) in &sent {
        let got = by_id.get(id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            got.len(),
            1,
            "{kind} {id}: expected once, got {}",
            got.len()
        );
        let ev = got[0];
        let json = ev.to_segment_json();
        assert_eq!(json["type"], kind.as_str(), "{id}");
        assert_eq!(json["event"].as_str(), event.as_deref(), "{id}");
        assert_eq!(json["anonymousId"], anonymous_id, "{id}");
        let ctx = &json["context"];
        assert_eq!(ctx["userAgent"], user_agent, "{id}: context.userAgent");
        assert_eq!(ctx["locale"], "de-DE", "{id}: context.locale");
        assert_eq!(ctx["page"]["url"], page_url, "{id}: context.page.url");
        assert_eq!(ctx["page"]["path"], "/shop/cart", "{id}: context.page.path");
        assert_eq!(
            ctx["page"]["title"], "Corral Shop – Warenkorb",
            "{id}: context.page.title"
        );
        assert_eq!(ctx["library"]["name"], "analytics.js", "{id}");
        assert!(!json.as_object().unwrap().contains_key("writeKey"));
        assert_eq!(ev.space_id, "s1");
        assert_eq!(ev.source_id.as_deref(), Some("e2e"));
        assert!(ev.sent_at.is_some(), "{id}: analytics.js sets sentAt");
        assert!(ev.timestamp.is_some() && ev.received_at.is_some());
        assert_as_posted(id, &json, ev, &report["bodies"][id.as_str()]);
        match kind.as_str() {
            "identify" => {
                assert_eq!(json["userId"], user_id);
                assert_eq!(json["traits"]["name"], "Ädä");
            }
            "track" if event.as_deref() == Some("Checkout Started") => {
                assert_eq!(json["userId"], user_id);
                assert_eq!(json["properties"]["total"], 42.5);
                assert_eq!(json["properties"]["items"][0]["sku"], "ü-1");
            }
            "page" => {
                assert_eq!(json["category"], "Shop");
                assert_eq!(json["name"], "Cart");
                assert_eq!(json["properties"]["path"], "/shop/cart");
            }
            "group" => assert_eq!(json["traits"]["name"], "Ørsted"),
            // analytics-next 1.84 replaces an alias's userId (the new id) with the identified
            // user's id when there is one (EventFactory.addIdentity); previousId is that user.
            "alias" => assert_eq!(json["previousId"], user_id),
            _ => {}
        }
    }

    // The snippet: analytics.min.js and its settings from the collector; the page, identify
    // and track it queued before the script arrived, each once.
    assert_eq!(
        snippet["scripts"],
        serde_json::json!([format!("/analytics.js/v1/{WRITE_KEY}/analytics.min.js")]),
        "{snippet}"
    );
    assert_eq!(
        snippet["settingsRequests"],
        serde_json::json!([format!("/v1/projects/{WRITE_KEY}/settings")])
    );
    assert_eq!(snippet["foreign"], serde_json::json!([]), "{snippet}");
    let mut kinds: Vec<&str> = snippet_posts
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["identify", "page", "track"], "{snippet}");
    for p in snippet_posts {
        let id = p["messageId"].as_str().unwrap();
        let got = by_id.get(id).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            got.len(),
            1,
            "snippet {id}: expected once, got {}",
            got.len()
        );
        let json = got[0].to_segment_json();
        assert_eq!(json["context"]["page"]["path"], "/shop/snippet", "{id}");
        assert_eq!(json["context"]["locale"], "de-DE", "{id}");
        assert_as_posted(id, &json, got[0], &snippet["bodies"][id]);
        if json["type"] == "track" {
            assert_eq!(json["userId"], snippet["userId"], "{id}");
            assert_eq!(json["event"], "Snippet Loaded", "{id}");
        }
    }

    // Nothing else: no duplicates, and nothing from the wrong key.
    assert_eq!(
        records.len(),
        sent.len() + snippet_posts.len(),
        "no extra records"
    );

    let wrong = &report["wrongKey"];
    assert_eq!(wrong["settingsStatus"], 404, "{wrong}");
    assert!(
        wrong["loaded"].as_str().unwrap().starts_with("failed: ")
            && wrong["loaded"]
                .as_str()
                .unwrap()
                .contains("invalid_write_key"),
        "{wrong}"
    );
    assert_eq!(wrong["posts"], 0, "{wrong}");
    assert_eq!(wrong["foreign"], serde_json::json!([]), "{wrong}");
    assert_eq!(
        c.metric(
            "corral_collector_requests_total",
            &["endpoint=\"settings\"", "status=\"404\""]
        ),
        2.0,
        "the wrong key's settings: analytics.js's fetch and the page's own"
    );
}

/// Every field as the browser posted it (its first attempt): `writeKey` removed, `timestamp`
/// kept as `originalTimestamp`, `context` extended only by the collector's `ip`.
fn assert_as_posted(id: &str, json: &Json, ev: &corral_codec::RawEvent, posted: &Json) {
    let posted = posted
        .as_object()
        .unwrap_or_else(|| panic!("{id}: no posted body in the report"));
    assert!(
        posted.contains_key("sentAt"),
        "{id}: analytics.js sets sentAt"
    );
    for (k, v) in posted {
        match k.as_str() {
            "writeKey" => assert!(json.get(k).is_none(), "{id}: writeKey removed"),
            "timestamp" => assert_eq!(
                ev.original_timestamp.as_deref(),
                v.as_str(),
                "{id}: originalTimestamp is the browser's timestamp"
            ),
            "context" => {
                for (ck, cv) in v.as_object().unwrap() {
                    assert_eq!(&json["context"][ck], cv, "{id}: context.{ck}");
                }
                assert_eq!(json["context"]["ip"], "127.0.0.1");
            }
            _ => assert_eq!(&json[k], v, "{id}: {k}"),
        }
    }
}
