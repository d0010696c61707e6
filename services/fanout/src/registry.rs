//! The destinations fanout currently knows, from a file or the `definitions` topic (kind
//! `destination`), hot-reloaded: a change applies to the next record and the next dispatch.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use corral_codec::Definition;
use tracing::{info, warn};

use crate::destination::{DestinationError, DestinationSpec, DestinationsFile};
use crate::lane::LaneConfig;

/// A loaded destination: its definition, space, version and credential.
#[derive(Debug)]
pub struct Destination {
    pub space_id: String,
    pub version: i64,
    pub spec: DestinationSpec,
    pub lane: LaneConfig,
}

impl Destination {
    pub fn new(
        space_id: &str,
        version: i64,
        spec: DestinationSpec,
    ) -> Result<Self, DestinationError> {
        spec.validate()?;
        let credential = spec.resolve_credential()?;
        let lane = LaneConfig {
            dest_key: spec.key.clone(),
            dest_type: spec.dest_type,
            headers: spec.headers.clone(),
            credential,
            rate_limit: spec.rate_limit(),
            timeout: spec.timeout(),
            concurrency: spec.concurrency(),
        };
        Ok(Self {
            space_id: space_id.to_string(),
            version,
            spec,
            lane,
        })
    }
}

/// Destinations by key.
#[derive(Debug, Default)]
pub struct Destinations {
    pub by_key: BTreeMap<String, Arc<Destination>>,
}

pub type SharedDestinations = Arc<RwLock<Arc<Destinations>>>;

impl Destinations {
    pub fn from_file(file: &DestinationsFile) -> Result<Self, DestinationError> {
        let mut by_key = BTreeMap::new();
        for spec in &file.destinations {
            let d = Destination::new(&file.space_id, 1, spec.clone())?;
            by_key.insert(spec.key.clone(), Arc::new(d));
        }
        Ok(Self { by_key })
    }

    pub fn get(&self, key: &str) -> Option<&Arc<Destination>> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Destination>> {
        self.by_key.values()
    }
}

pub use crate::destination::KIND;

/// Applies one record of the `definitions` topic (copy-on-write: readers keep their snapshot).
pub fn apply_definition(
    shared: &SharedDestinations,
    key: &str,
    def: Option<&Definition>,
) -> Result<(), DestinationError> {
    let Ok(mut guard) = shared.write() else {
        return Ok(());
    };
    let mut next = Destinations {
        by_key: guard.by_key.clone(),
    };
    match def {
        Some(d) if d.kind == KIND => {
            let spec: DestinationSpec = serde_json::from_value(d.body.clone())
                .map_err(|e| DestinationError::Parse(format!("{key}: {e}")))?;
            let dest = Destination::new(&d.space_id, d.version, spec)?;
            info!(destination = %dest.spec.key, version = d.version, "destination loaded");
            next.by_key.insert(dest.spec.key.clone(), Arc::new(dest));
        }
        Some(_) => return Ok(()),
        None => {
            // Tombstone: the key is `{space}/destination/{key}`.
            let mut parts = key.splitn(3, '/');
            if let (Some(_space), Some(KIND), Some(k)) = (parts.next(), parts.next(), parts.next())
            {
                if next.by_key.remove(k).is_some() {
                    warn!(destination = %k, "destination deleted; its pending deliveries go to the dead-letter topic");
                }
            }
        }
    }
    *guard = Arc::new(next);
    Ok(())
}

pub fn snapshot(shared: &SharedDestinations) -> Arc<Destinations> {
    shared.read().map(|g| g.clone()).unwrap_or_default()
}
