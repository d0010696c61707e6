//! Corral against the local broker's secured listener: SASL_SSL with SCRAM-SHA-512, TLS from the
//! local test CA, ACLs enforced by KRaft's StandardAuthorizer (deploy/local/kafka.sh). A service
//! (the runtime's minimal example, built on the same scaffold as every service) runs there with a
//! principal of its own and only the ACLs docs/security.md lists; with a wrong password it stays
//! up, not ready, saying why; a plaintext client is refused; a principal without write on
//! `definitions` cannot change a definition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use corral_runtime::topics::{CleanupPolicy, TopicAdmin};
use corral_tests::secure::{as_env, broker_env, kafka_sh, sasl_ssl};
use corral_tests::{create_topic, produce, read_committed, repo_root, unique, Service};

fn allow(principal: &str, operations: &[&str], resource: &[&str]) {
    let mut args = vec!["acl", "--add", "--allow-principal"];
    let p = format!("User:{principal}");
    args.push(&p);
    for op in operations {
        args.extend(["--operation", op]);
    }
    args.extend(resource);
    kafka_sh(&args);
}

fn example() -> String {
    repo_root()
        .join("target/debug/examples/minimal")
        .display()
        .to_string()
}

#[test]
fn a_service_runs_over_sasl_ssl_with_least_privilege_and_bad_credentials_are_refused_clearly() {
    let env = broker_env();
    let secure = env["KAFKA_SECURE_BOOTSTRAP"].clone();
    let prefix = format!("{}.", unique("sec"));
    let app = unique("sec-app");
    let (user, password) = (unique("svc"), "a-long-test-password");
    let input = format!("{prefix}events.valid");
    let output = format!("{prefix}example.counts");
    create_topic(&input, 2, CleanupPolicy::Delete);
    create_topic(&format!("{prefix}events.dlq"), 1, CleanupPolicy::Delete);
    kafka_sh(&["user", &user, password]);
    // The service's topics (read its input, create and write its output and changelog), its
    // consumer group and its transactional ids: nothing else.
    allow(&user, &["Read", "Describe"], &["--topic", &input]);
    let changelogs = format!("{prefix}{app}.");
    for t in [output.as_str(), &format!("{prefix}events.dlq")] {
        allow(&user, &["Create", "Write", "Describe"], &["--topic", t]);
    }
    allow(
        &user,
        &["Create", "Read", "Write", "Describe"],
        &[
            "--topic",
            &changelogs,
            "--resource-pattern-type",
            "prefixed",
        ],
    );
    // The runtime's group, and the names of its readers outside the group (restore, replicas).
    allow(
        &user,
        &["Read"],
        &["--group", &app, "--resource-pattern-type", "prefixed"],
    );
    allow(
        &user,
        &["Write", "Describe"],
        &[
            "--transactional-id",
            &app,
            "--resource-pattern-type",
            "prefixed",
        ],
    );

    produce(
        &input,
        (0..30).map(|i| (format!("k{}", i % 3).into_bytes(), b"event".to_vec())),
    );
    let state = tempfile::tempdir().unwrap();
    // The service's client settings as a deployment gives them: secrets in CORRAL_KAFKA_PROP_*.
    let command = |password: &str, state: &std::path::Path| {
        let mut cmd = Command::new(example());
        cmd.args(["--app", &app, "--topic-prefix", &prefix, "--state-dir"])
            .arg(state)
            .env("CORRAL_KAFKA_BOOTSTRAP", &secure)
            .env("RUST_LOG", "warn");
        cmd.envs(as_env(&sasl_ssl(&env, &user, password)));
        cmd
    };

    // The right password: counts 1..=10 per key, exactly once, over TLS and SCRAM.
    let svc = Service {
        child: command(password, state.path()).spawn().unwrap(),
        name: "minimal-sasl".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while corral_tests::admin().partitions(&output).unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the service never created {output}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let records = read_committed(&output, 30, Duration::from_secs(90));
    let mut per_key: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for r in records {
        per_key
            .entry(r.key.unwrap())
            .or_default()
            .push(String::from_utf8(r.value.unwrap()).unwrap());
    }
    assert_eq!(per_key.len(), 3);
    for counts in per_key.values() {
        let mut n: Vec<u64> = counts.iter().map(|c| c.parse().unwrap()).collect();
        n.sort_unstable();
        assert_eq!(n, (1..=10).collect::<Vec<u64>>());
    }
    assert!(svc.terminate().success());

    // A wrong password: the service stays up, not ready, and its /readyz and log say that
    // authentication failed; it tries again with a growing pause instead of crash-looping.
    let other_state = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", corral_tests::http::free_port())
        .parse()
        .unwrap();
    let mut wrong = Service {
        child: command("not-the-password", other_state.path())
            .args(["--admin", &admin.to_string()])
            .spawn()
            .unwrap(),
        name: "minimal-wrong-password".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let why = loop {
        match corral_tests::http::http_get(admin, "/readyz") {
            Some((503, body)) if body.to_lowercase().contains("authentication") => break body,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(300)),
            other => panic!("/readyz should say authentication failed: {other:?}"),
        }
    };
    assert!(why.contains("SASL"), "{why}");
    assert!(
        wrong.is_running(),
        "a wrong password must not stop (and crash-loop) the service"
    );
    assert!(matches!(
        corral_tests::http::http_get(admin, "/healthz"),
        Some((200, _))
    ));
    assert!(
        wrong.terminate().success(),
        "SIGTERM while waiting for Kafka is a clean stop"
    );

    // A plaintext client on the secured port is refused with an error, not a hang.
    let plain = BTreeMap::from([("socket.timeout.ms".to_string(), "5000".to_string())]);
    let refused = TopicAdmin::connect(&secure, &plain).and_then(|a| a.partitions(&input));
    assert!(
        refused.is_err(),
        "a plaintext client reached the secured listener"
    );

    // Read on definitions but no write: publishing a definition is refused.
    let reader = unique("reader");
    kafka_sh(&["user", &reader, password]);
    let definitions = format!("{prefix}definitions");
    create_topic(&definitions, 1, CleanupPolicy::Compact);
    allow(&reader, &["Read", "Describe"], &["--topic", &definitions]);
    let err = corral_runtime::definitions::publish(
        &secure,
        &sasl_ssl(&env, &reader, password),
        &definitions,
        "s/audience/a",
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("authoriz"),
        "publishing without write on definitions must fail as unauthorized: {err}"
    );
}
