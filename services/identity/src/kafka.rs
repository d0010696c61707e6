//! The `identity_settings` definitions applied to the rules (hot reload); the scaffold in
//! `corral_runtime::service` follows the topic.

use corral_runtime::definitions::DefinitionEvent;
use tracing::{info, warn};

use crate::rules::{Rules, RulesStore, Settings, KIND};

/// Applies one `definitions` record to the rules; returns false when it was an invalid
/// `identity_settings` definition (the previous settings stay).
pub fn apply_definition(rules: &RulesStore, event: DefinitionEvent<'_>) -> bool {
    let def = match event {
        DefinitionEvent::Upsert { definition, .. } => definition,
        DefinitionEvent::Delete { key } => {
            // Definition keys are `{space}/{kind}/{key}`.
            let mut parts = key.splitn(3, '/');
            if let (Some(space), Some(KIND)) = (parts.next(), parts.next()) {
                rules.remove_space(space);
            }
            return true;
        }
        // Not ours to judge; other services own other kinds.
        DefinitionEvent::Undecodable { .. } => return true,
    };
    if def.kind != KIND {
        return true;
    }
    let compiled = serde_json::from_value::<Settings>(def.body.clone())
        .map_err(|e| e.to_string())
        .and_then(|s| Rules::compile(&s).map_err(|e| e.to_string()));
    match compiled {
        Ok(r) => {
            info!(space = %def.space_id, version = def.version, "identity settings loaded");
            rules.set_space(&def.space_id, r);
            true
        }
        Err(e) => {
            warn!(space = %def.space_id, version = def.version, error = %e, "invalid identity settings ignored");
            false
        }
    }
}
