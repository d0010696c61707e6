//! Topic manifest apply against the real broker: idempotent, and drift is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use corral_runtime::topics::{CleanupPolicy, Drift, Manifest};
use corral_tests::{admin, create_topic, repo_root, unique};

#[test]
fn apply_is_idempotent_and_reports_drift() {
    let text = std::fs::read_to_string(repo_root().join("deploy/topics.yaml")).unwrap();
    let manifest = Manifest::from_yaml(&text).unwrap();
    let prefix = format!("{}.", unique("manifest"));
    let desired = manifest.desired(Some(&prefix)).unwrap();
    let admin = admin();

    let first = admin.apply(&desired).unwrap();
    assert_eq!(first.created.len(), desired.len(), "{first}");
    assert!(first.drift.is_empty(), "{first}");

    let second = admin.apply(&desired).unwrap();
    assert!(
        second.created.is_empty(),
        "second apply must create nothing: {second}"
    );
    assert_eq!(second.unchanged.len(), desired.len());
    assert!(second.drift.is_empty(), "{second}");

    // A topic created by hand with the wrong shape is reported, not changed.
    let mut drifted = desired.clone();
    let wrong = format!("{prefix}hand.made");
    create_topic(&wrong, 2, CleanupPolicy::Delete);
    drifted.push(corral_runtime::topics::DesiredTopic {
        name: wrong.clone(),
        partitions: 3,
        replication_factor: 1,
        cleanup_policy: CleanupPolicy::Compact,
        retention_ms: None,
        configs: Default::default(),
    });
    let third = admin.apply(&drifted).unwrap();
    assert!(
        third.drift.contains(&Drift::Partitions {
            topic: wrong.clone(),
            want: 3,
            have: 2
        }),
        "{third}"
    );
    assert!(
        third.drift.contains(&Drift::CleanupPolicy {
            topic: wrong.clone(),
            want: "compact".into(),
            have: "delete".into()
        }),
        "{third}"
    );
    assert_eq!(
        admin.partitions(&wrong).unwrap(),
        Some(2),
        "drift is never fixed silently"
    );

    let names: Vec<String> = drifted.iter().map(|t| t.name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    admin.delete(&refs).unwrap();
}
