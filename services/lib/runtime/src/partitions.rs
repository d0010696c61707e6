//! Partition counts of output topics, for records placed on the partition of another key than
//! their own ([`crate::ProcessContext::emit_record_partitioned`]): `events.resolved` is keyed per
//! event but partitioned by profile id (docs/privacy.md, "Erasure").
//!
//! A count is read once per topic and process from the cluster's metadata, with the connection
//! of the first runtime the process built, and cached: Corral never changes a partition count
//! (co-partitioning depends on it; `corralctl topics apply` refuses to).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};

use crate::error::RuntimeError;
use crate::topics::TopicAdmin;

static CLUSTER: OnceLock<(String, BTreeMap<String, String>)> = OnceLock::new();
static COUNTS: OnceLock<Mutex<HashMap<String, i32>>> = OnceLock::new();

fn counts() -> &'static Mutex<HashMap<String, i32>> {
    COUNTS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Where counts are read from (the first call wins: one process talks to one cluster).
pub(crate) fn register(bootstrap: &str, kafka: &BTreeMap<String, String>) {
    let _ = CLUSTER.set((bootstrap.to_string(), kafka.clone()));
}

/// Records `topic`'s count without asking the cluster (tests without Kafka).
pub fn set(topic: &str, partitions: i32) {
    if let Ok(mut c) = counts().lock() {
        c.insert(topic.to_string(), partitions);
    }
}

/// The partition count of `topic`, from the cache or the cluster's metadata.
pub fn count(topic: &str) -> Result<i32, RuntimeError> {
    if let Some(n) = counts().lock().ok().and_then(|c| c.get(topic).copied()) {
        return Ok(n);
    }
    let (bootstrap, kafka) = CLUSTER.get().ok_or_else(|| {
        RuntimeError::Config(format!(
            "the partition count of {topic} is needed but no runtime was configured in this process"
        ))
    })?;
    let n = TopicAdmin::connect(bootstrap, kafka)?
        .partitions(topic)?
        .ok_or_else(|| {
            RuntimeError::Admin(format!(
                "output topic {topic} does not exist; create it first (`corralctl topics apply`)"
            ))
        })?;
    set(topic, n);
    Ok(n)
}
