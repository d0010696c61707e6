//! The Profile API reads (`--query`) end to end against the real broker: events that create,
//! rename and merge profiles go through identity; the query interface must then name, for every
//! external id, its live profile and that profile's exact external ids; a merged-away profile id
//! must forward to its survivor; unknown ids are 404 and malformed ones 400, both with a JSON
//! error. After SIGKILL and a restart the replica is rebuilt from the graph changelog and must
//! give the same answers as soon as it says it is ready, and keep following new merges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corral_codec::{AvroRecord, MessageType, ProtocolsAnnotation, SegmentMessage, ValidEvent};
use corral_identity::client::{ClientError, QueryClient};
use corral_identity::view::{ExternalIdView, ExternalIdsView, ProfileView};
use corral_identity::{profile_id, Ident};
use corral_runtime::topics::CleanupPolicy;
use corral_tests::http::{free_port, http_get};
use corral_tests::{bootstrap, create_topic, produce, unique, Service};
use serde_json::json;

const T: i64 = 1_700_000_000_000;
const Q: &str = "space-q";
const R: &str = "space-r";

fn event(
    space: &str,
    n: i64,
    user: Option<&str>,
    anon: &str,
    email: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    let kind = if user.is_some() {
        MessageType::Identify
    } else {
        MessageType::Track
    };
    let mut m = SegmentMessage::new(space.to_string(), kind, format!("q-{n}"));
    m.anonymous_id = Some(anon.into());
    m.user_id = user.map(str::to_string);
    if let Some(e) = email {
        m.traits = Some(json!({ "email": e }));
    }
    if user.is_none() {
        m.event = Some("Page Viewed".into());
    }
    m.received_at_ms = Some(T + n);
    let v = ValidEvent {
        message: m,
        protocols: ProtocolsAnnotation::default(),
    };
    (format!("q-{n}").into_bytes(), v.encode().unwrap())
}

fn pid(space: &str, t: &str, v: &str) -> String {
    profile_id(space, &Ident::new(t, v))
}

fn ext(t: &str, v: &str, first_seen: i64) -> ExternalIdView {
    ExternalIdView {
        id_type: t.into(),
        id: v.into(),
        collection: "users".into(),
        first_seen_ms: T + first_seen,
    }
}

fn profile(id: String, created: i64, merges: u32, ids: Vec<ExternalIdView>) -> ProfileView {
    ProfileView {
        profile_id: id,
        created_at_ms: T + created,
        merges,
        external_ids: ids,
    }
}

struct Identity {
    args: Vec<String>,
    query: SocketAddr,
}

impl Identity {
    fn spawn(&self) -> Service {
        Service::spawn(
            "identity-query",
            env!("CARGO_BIN_EXE_corral-identity"),
            &self.args,
            &[],
        )
    }
}

/// Waits until the query interface says it has loaded the graph.
fn wait_ready(client: &QueryClient) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !matches!(client.ready(), Ok(true)) {
        assert!(Instant::now() < deadline, "query interface never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The answers for `ids` (space, id) through both endpoints; the external-ids answer must agree
/// with the profile answer. The two are separate requests while the view may still move, so
/// they are compared only when the profile answer did not change around the second request.
fn answers(client: &QueryClient, ids: &[(&str, &str)]) -> Vec<Option<ProfileView>> {
    ids.iter()
        .map(|(space, id)| loop {
            match client.profile(space, id) {
                Ok(p) => {
                    let e = client.external_ids(space, id).unwrap();
                    if client.profile(space, id).ok().as_ref() != Some(&p) {
                        continue;
                    }
                    assert_eq!(e, ExternalIdsView::from(p.clone()), "{space} {id}");
                    break Some(p);
                }
                Err(ClientError::NotFound(_)) => break None,
                Err(e) => panic!("{space} {id}: {e}"),
            }
        })
        .collect()
}

/// Polls until the view shows `expected` (the replica follows the changelog asynchronously),
/// then asserts it exactly.
fn eventually(client: &QueryClient, ids: &[(&str, &str)], expected: &[Option<ProfileView>]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = answers(client, ids);
        if got == expected || Instant::now() > deadline {
            for ((who, g), e) in ids.iter().zip(&got).zip(expected) {
                assert_eq!(g, e, "answer for {who:?}");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_and_error(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = http_get(addr, path).expect("the query interface answers");
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: body {body:?} is not JSON: {e}"));
    let error = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{path}: no error field in {body}"))
        .to_string();
    (status, error)
}

#[test]
fn profile_reads_follow_creates_renames_merges_and_survive_sigkill() {
    // One input partition: the stream's order is the order below (merge protection depends on
    // it); three coordinator partitions, so the replica follows a multi-partition changelog.
    let prefix = format!("{}.", unique("id-query"));
    let input = format!("{prefix}events.valid");
    create_topic(&input, 1, CleanupPolicy::Delete);
    for (t, n) in [
        ("identity.events-by-space", 3),
        ("events.resolved", 3),
        ("profiles.merges", 3),
        ("events.dlq", 1),
    ] {
        create_topic(&format!("{prefix}{t}"), n, CleanupPolicy::Delete);
    }
    let state = tempfile::tempdir().unwrap();
    let query: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let identity = Identity {
        args: [
            "--bootstrap",
            &bootstrap(),
            "--app",
            &unique("identity-q"),
            "--instance",
            "0",
            "--topic-prefix",
            &prefix,
            "--state-dir",
            &state.path().display().to_string(),
            "--session-timeout-ms",
            "6000",
            "--query",
            &query.to_string(),
            // Tokens are compute's query test's subject; this one reads several spaces.
            "--query-auth",
            "off",
        ]
        .map(String::from)
        .to_vec(),
        query,
    };
    let client = QueryClient::new(&identity.query.to_string());
    let svc = identity.spawn();
    wait_ready(&client);

    produce(
        &input,
        [
            // Two anonymous visitors.
            event(Q, 1, None, "a1", None),
            event(Q, 2, None, "a2", None),
            // a1 identifies: its profile gains a user id and an email, so its id moves to the
            // user id's (a rename; the anonymous profile id becomes an alias).
            event(Q, 3, Some("u1"), "a1", Some("jane@example.com")),
            // a2 turns out to be the same person: a2's profile is merged into u1's.
            event(Q, 4, Some("u1"), "a2", None),
            // Someone else.
            event(Q, 5, None, "b1", None),
            // A second user on a1's device: user_id's limit (1) demotes a1, u2 gets its own
            // profile and a1 stays with u1.
            event(Q, 6, Some("u2"), "a1", None),
            // The same anonymous id in another space is another person.
            event(R, 7, None, "a1", None),
        ],
    );

    let u1 = pid(Q, "user_id", "u1");
    let u1_profile = |merges, extra: Vec<ExternalIdView>| {
        let mut ids = vec![ext("anonymous_id", "a1", 1), ext("anonymous_id", "a2", 2)];
        ids.extend(extra);
        ids.extend([ext("email", "jane@example.com", 3), ext("user_id", "u1", 3)]);
        profile(u1.clone(), 1, merges, ids)
    };
    let anon_a1 = pid(Q, "anonymous_id", "a1");
    let anon_a2 = pid(Q, "anonymous_id", "a2");
    let anon_b1 = pid(Q, "anonymous_id", "b1");
    let ids: Vec<(&str, &str)> = vec![
        (Q, "user_id:u1"),
        (Q, "anonymous_id:a1"),
        (Q, "anonymous_id:a2"),
        (Q, "email:jane@example.com"),
        // Types are case-insensitive (all stored types are lower-case).
        (Q, "Email:jane@example.com"),
        // Retired ids forward to the survivor; the survivor's own id answers too.
        (Q, &anon_a1),
        (Q, &anon_a2),
        (Q, &u1),
        (Q, "anonymous_id:b1"),
        (Q, "user_id:u2"),
        (R, "anonymous_id:a1"),
        // Unknown: an id nobody sent, a value of another case, a space nobody uses.
        (Q, "user_id:nobody"),
        (Q, "user_id:U1"),
        ("space-none", "user_id:u1"),
    ];
    let b1 = profile(anon_b1.clone(), 5, 0, vec![ext("anonymous_id", "b1", 5)]);
    let expected = vec![
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(u1_profile(1, vec![])),
        Some(b1.clone()),
        Some(profile(
            pid(Q, "user_id", "u2"),
            6,
            0,
            vec![ext("user_id", "u2", 6)],
        )),
        Some(profile(
            pid(R, "anonymous_id", "a1"),
            7,
            0,
            vec![ext("anonymous_id", "a1", 7)],
        )),
        None,
        None,
        None,
    ];
    eventually(&client, &ids, &expected);

    // Errors are JSON and say what was wrong.
    let path =
        |space: &str, id: &str| format!("/v1/spaces/{space}/collections/users/profiles/{id}");
    let (status, error) = status_and_error(query, &path(Q, "user_id:nobody"));
    assert_eq!(status, 404);
    assert_eq!(error, "no profile for user_id:nobody in space space-q");
    let (status, error) = status_and_error(query, &format!("{}/external_ids", path(Q, "use_0000")));
    assert_eq!(
        (status, error.as_str()),
        (404, "no profile for use_0000 in space space-q")
    );
    let (status, error) = status_and_error(query, &path(Q, "abc123"));
    assert_eq!(status, 400);
    assert!(error.contains("neither type:value"), "{error}");
    let (status, error) = status_and_error(query, &path(Q, "user_id:"));
    assert_eq!(status, 400);
    assert!(error.contains("no value after ':'"), "{error}");
    let (status, error) = status_and_error(query, &path(Q, "%FF%FE"));
    assert_eq!(status, 400, "{error}");
    let (status, error) = status_and_error(query, "/v1/spaces/space-q/collections/accounts");
    assert_eq!(status, 404);
    assert!(error.contains("no endpoint"), "{error}");
    match client.profile(Q, ":x") {
        Err(ClientError::BadRequest(e)) => assert!(e.contains("no id type"), "{e}"),
        other => panic!("{other:?}"),
    }

    // SIGKILL and restart on the same state: once ready, the replica rebuilt from the changelog
    // gives the same answers at once (no polling).
    svc.kill9();
    assert!(
        http_get(query, "/readyz").is_none(),
        "the killed process no longer answers"
    );
    let svc = identity.spawn();
    wait_ready(&client);
    assert_eq!(answers(&client, &ids), expected);

    // And it keeps following: b1 identifies as u1, b1's profile is merged into u1's.
    produce(&input, [event(Q, 8, Some("u1"), "b1", None)]);
    let mut expected = expected;
    let merged = u1_profile(2, vec![ext("anonymous_id", "b1", 5)]);
    for (i, (_, id)) in ids.iter().enumerate() {
        if expected[i].as_ref().is_some_and(|p| p.profile_id == u1) || *id == "anonymous_id:b1" {
            expected[i] = Some(merged.clone());
        }
    }
    assert_ne!(expected[8], Some(b1));
    let mut ids = ids;
    ids.push((Q, &anon_b1));
    expected.push(Some(merged));
    eventually(&client, &ids, &expected);
    svc.terminate();
}
