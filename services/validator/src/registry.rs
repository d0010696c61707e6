//! The compiled plans every stream thread validates with: an immutable [`PlanSet`] snapshot behind
//! an `RwLock<Arc<..>>`, replaced whole when a definition changes (readers clone the `Arc` and
//! never wait on a compile).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use corral_runtime::definitions::DefinitionEvent;
use tracing::{error, info, warn};

use crate::plan::{CompiledPlan, PlanFile, ANY_SOURCE, KIND};

/// The Kafka key of a plan in `definitions`: `{space_id}/tracking_plan/{key}`.
pub fn definition_key(space_id: &str, key: &str) -> String {
    corral_runtime::definitions::definition_key(space_id, KIND, key)
}

/// Plans by definition key, indexed by (space, source).
#[derive(Debug, Default)]
pub struct PlanSet {
    plans: BTreeMap<String, Arc<CompiledPlan>>,
    by_source: HashMap<(String, String), Arc<CompiledPlan>>,
}

impl PlanSet {
    /// A set of the given plans (tests, `check-event`).
    pub fn of(plans: impl IntoIterator<Item = Arc<CompiledPlan>>) -> PlanSet {
        let mut s = PlanSet::default();
        for p in plans {
            s.plans.insert(definition_key(&p.space_id, &p.key), p);
        }
        s.reindex();
        s
    }

    /// The plan connected to the message's source, else the space's `*` plan.
    pub fn for_source(
        &self,
        space_id: &str,
        source_id: Option<&str>,
    ) -> Option<&Arc<CompiledPlan>> {
        let space = space_id.to_string();
        source_id
            .and_then(|s| self.by_source.get(&(space.clone(), s.to_string())))
            .or_else(|| self.by_source.get(&(space, ANY_SOURCE.to_string())))
    }

    pub fn plans(&self) -> impl Iterator<Item = &Arc<CompiledPlan>> {
        self.plans.values()
    }

    pub fn get(&self, definition_key: &str) -> Option<&Arc<CompiledPlan>> {
        self.plans.get(definition_key)
    }

    pub fn len(&self) -> usize {
        self.plans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// One plan per source: when two claim a source, the first by definition key keeps it.
    fn reindex(&mut self) {
        self.by_source.clear();
        for (dkey, p) in &self.plans {
            for s in &p.sources {
                let k = (p.space_id.clone(), s.clone());
                if let Some(other) = self.by_source.get(&k) {
                    warn!(source = %s, plan = %dkey, kept = %other.key, "source is connected to two plans; the first keeps it");
                    continue;
                }
                self.by_source.insert(k, p.clone());
            }
        }
    }
}

/// What applying one `definitions` record did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Loaded {
        key: String,
        version: i64,
    },
    Removed {
        key: String,
    },
    /// Another kind of definition, or a stale version.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("definition {key}: cannot decode: {error}")]
    Decode { key: String, error: String },
    #[error("tracking plan {key} v{version}: {message}")]
    Invalid {
        key: String,
        version: i64,
        message: String,
    },
}

/// The shared, swappable plan set.
#[derive(Debug, Default)]
pub struct PlanStore {
    current: RwLock<Arc<PlanSet>>,
}

impl PlanStore {
    pub fn new() -> Arc<PlanStore> {
        Arc::new(PlanStore::default())
    }

    pub fn with(set: PlanSet) -> Arc<PlanStore> {
        Arc::new(PlanStore {
            current: RwLock::new(Arc::new(set)),
        })
    }

    /// The current snapshot (a cheap `Arc` clone).
    pub fn snapshot(&self) -> Arc<PlanSet> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, f: impl FnOnce(&PlanSet) -> PlanSet) {
        let mut g = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let next = f(&g);
        *g = Arc::new(next);
    }

    /// Applies one record of `definitions`, as [`corral_runtime::definitions::follow`] hands it
    /// over. A plan that does not compile leaves the previous version in force.
    pub fn apply_event(&self, event: DefinitionEvent<'_>) -> Result<Applied, DefinitionError> {
        let def = match event {
            DefinitionEvent::Upsert { definition, .. } => definition,
            DefinitionEvent::Undecodable { key, error } => {
                return Err(DefinitionError::Decode {
                    key: key.to_string(),
                    error,
                })
            }
            DefinitionEvent::Delete { key } => return Ok(self.remove(key)),
        };
        if def.kind != KIND {
            return Ok(Applied::Ignored);
        }
        let invalid = |message: String| DefinitionError::Invalid {
            key: def.key.clone(),
            version: def.version,
            message,
        };
        let file = PlanFile::from_json(def.body.clone()).map_err(|e| invalid(e.to_string()))?;
        let compiled = file.compile(def.version).map_err(|errs| {
            invalid(
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let dkey = definition_key(&def.space_id, &def.key);
        if let Some(cur) = self.snapshot().get(&dkey) {
            if cur.version > def.version {
                return Ok(Applied::Ignored);
            }
        }
        let compiled = Arc::new(compiled);
        self.replace(|cur| {
            let mut plans = cur.plans.clone();
            plans.insert(dkey.clone(), compiled);
            let mut s = PlanSet {
                plans,
                by_source: HashMap::new(),
            };
            s.reindex();
            s
        });
        info!(plan = %dkey, version = def.version, "tracking plan loaded");
        Ok(Applied::Loaded {
            key: dkey,
            version: def.version,
        })
    }

    /// A tombstone: removes the plan under `key` (other kinds are ignored).
    fn remove(&self, key: &str) -> Applied {
        if !key.contains(&format!("/{KIND}/")) {
            return Applied::Ignored;
        }
        let mut removed = false;
        self.replace(|cur| {
            let mut plans = cur.plans.clone();
            removed = plans.remove(key).is_some();
            let mut s = PlanSet {
                plans,
                by_source: HashMap::new(),
            };
            s.reindex();
            s
        });
        if removed {
            info!(plan = %key, "tracking plan deleted");
        }
        Applied::Removed {
            key: key.to_string(),
        }
    }

    /// As [`PlanStore::apply_event`], logging instead of returning errors.
    pub fn apply_logged(&self, event: DefinitionEvent<'_>) -> Option<Applied> {
        match self.apply_event(event) {
            Ok(a) => Some(a),
            Err(e) => {
                error!(error = %e, "definition not applied; the previous version stays in force");
                None
            }
        }
    }
}
