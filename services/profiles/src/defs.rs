//! The audiences and computed traits in force, per space, followed from the `definitions`
//! topic: what a result key of compute's state is (audience or computed trait), and the set a
//! preview evaluates next to its candidate.

use std::collections::BTreeMap;
use std::sync::RwLock;

use corral_compute::DefinitionSpec;
use corral_ops::audiences::{target_of, DefinitionBody};
use corral_runtime::definitions::DefinitionEvent;

/// Definitions by space, then by key.
#[derive(Default)]
pub struct SpaceDefinitions {
    inner: RwLock<BTreeMap<String, BTreeMap<String, DefinitionSpec>>>,
}

impl SpaceDefinitions {
    /// Applies one record of the `definitions` topic (other kinds are ignored).
    pub fn apply(&self, event: &DefinitionEvent<'_>) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match event {
            DefinitionEvent::Upsert { definition: d, .. } => {
                let Some(target) = target_of(&d.kind) else {
                    return;
                };
                let Ok(body) = DefinitionBody::from_json(&d.body) else {
                    return;
                };
                g.entry(d.space_id.clone()).or_default().insert(
                    d.key.clone(),
                    DefinitionSpec {
                        key: d.key.clone(),
                        name: d.name.clone(),
                        target,
                        kind: body.definition_kind(),
                        version: d.version,
                        query: body.query,
                        include_historical_data: body.include_historical_data,
                    },
                );
            }
            DefinitionEvent::Delete { key } => {
                let mut parts = key.splitn(3, '/');
                if let (Some(space), Some(kind), Some(k)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    if target_of(kind).is_some() {
                        if let Some(m) = g.get_mut(space) {
                            m.remove(k);
                        }
                    }
                }
            }
            DefinitionEvent::Undecodable { .. } => {}
        }
    }

    /// The space's definitions (a copy).
    pub fn of(&self, space: &str) -> BTreeMap<String, DefinitionSpec> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(space)
            .cloned()
            .unwrap_or_default()
    }
}
