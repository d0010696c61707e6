//! The local broker's secured listener (deploy/local/kafka.sh): SASL_SSL with SCRAM-SHA-512 and
//! the local test CA, ACLs enforced. Users and ACLs are made with `kafka.sh` as the super user.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed setup stops the test loudly

use std::collections::BTreeMap;
use std::process::Command;

use crate::{bootstrap, repo_root};

/// `kafka.sh env` as a map: `KAFKA_SECURE_BOOTSTRAP` (the SASL_SSL listener), `KAFKA_CA`, ….
pub fn broker_env() -> BTreeMap<String, String> {
    bootstrap();
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/local/kafka.sh"))
        .arg("env")
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `kafka.sh ARGS` (e.g. `user NAME PASSWORD`, `acl --add …`); panics with its output when
/// it fails.
pub fn kafka_sh<S: AsRef<std::ffi::OsStr>>(args: &[S]) {
    let out = Command::new("bash")
        .arg(repo_root().join("deploy/local/kafka.sh"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka.sh {:?} failed:\n{}{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The client properties of `user` on the secured listener.
pub fn sasl_ssl(
    env: &BTreeMap<String, String>,
    user: &str,
    password: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("security.protocol".into(), "SASL_SSL".into()),
        ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
        ("sasl.username".into(), user.into()),
        ("sasl.password".into(), password.into()),
        ("ssl.ca.location".into(), env["KAFKA_CA"].clone()),
    ])
}

/// `properties` as the variables a deployment sets (`CORRAL_KAFKA_PROP_SASL_PASSWORD=…`).
pub fn as_env(properties: &BTreeMap<String, String>) -> Vec<(String, String)> {
    properties
        .iter()
        .map(|(k, v)| {
            (
                format!("CORRAL_KAFKA_PROP_{}", k.to_uppercase().replace('.', "_")),
                v.clone(),
            )
        })
        .collect()
}
