//! Suppression at ingest (docs/privacy.md): the identifiers that `suppress` and
//! `suppress_with_delete` regulations name, per space, followed live from the definitions topic
//! by the same reader as the sources. A message of a space that carries a suppressed identifier
//! (`userId`, `anonymousId`, `email` in `traits` or `context.traits`) is answered like any
//! accepted message (Segment answers 200 too) but never written to `events.raw`; it is counted in
//! `corral_collector_suppressed_total`. Nothing about it is logged.

use std::sync::{Arc, RwLock};

use corral_codec::SegmentMessage;
use corral_ops::privacy::{is_regulation_key, regulation_of, Suppressions};
use corral_runtime::definitions::DefinitionEvent;

/// The suppressions in force, shared by the follower (writes) and the request handlers (reads).
#[derive(Debug, Clone, Default)]
pub struct SharedSuppressions(Arc<RwLock<Suppressions>>);

impl SharedSuppressions {
    /// Whether `msg` of `space` is to be dropped. A poisoned lock drops nothing rather than
    /// failing every request (it only happens after a panic in the follower, which stops it).
    pub fn drops(&self, space: &str, msg: &SegmentMessage) -> bool {
        self.0.read().is_ok_and(|s| s.drops(space, msg))
    }

    /// Identifiers suppressed in force over every space.
    pub fn len(&self) -> usize {
        self.0.read().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one record of the definitions topic; true when it was a regulation.
    ///
    /// An unreadable regulation is dropped from the set: for a suppress that means its events
    /// flow (the operator sees the warning and `corralctl privacy status`); keeping a stale
    /// version instead could keep suppressing after an unsuppress that failed to decode.
    pub fn apply(&self, event: &DefinitionEvent<'_>) -> bool {
        let Ok(mut s) = self.0.write() else {
            return false;
        };
        match event {
            DefinitionEvent::Upsert { key, definition } => match regulation_of(definition) {
                None => false,
                Some(Ok(r)) => {
                    tracing::info!(
                        definition = key,
                        regulation = r.regulation_type.as_str(),
                        identifiers = r.subjects.len(),
                        "regulation loaded"
                    );
                    s.upsert(key, &definition.space_id, r);
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(definition = key, error = %e, "unreadable regulation ignored");
                    s.remove(key);
                    true
                }
            },
            DefinitionEvent::Delete { key } | DefinitionEvent::Undecodable { key, .. }
                if is_regulation_key(key) =>
            {
                s.remove(key);
                true
            }
            DefinitionEvent::Delete { .. } | DefinitionEvent::Undecodable { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_codec::Definition;
    use corral_ops::privacy::{Regulation, RegulationType, KIND};
    use serde_json::json;

    fn def(t: RegulationType, at: i64) -> Definition {
        Definition {
            space_id: "acme".into(),
            kind: KIND.into(),
            key: format!("r{at}"),
            version: 1,
            name: None,
            body: Regulation {
                regulation_type: t,
                subjects: vec!["user_id:ada".parse().unwrap()],
                created_at_ms: at,
            }
            .to_json(),
            updated_at_ms: 0,
            updated_by: None,
        }
    }

    #[test]
    fn regulations_in_the_topic_drive_the_drops() {
        let s = SharedSuppressions::default();
        let ada: SegmentMessage = serde_json::from_value(json!({"space_id": "acme",
            "type": "track", "messageId": "m", "userId": "ada"}))
        .unwrap();
        let up = |key, definition| DefinitionEvent::Upsert { key, definition };
        assert!(s.apply(&up("acme/regulation/r1", def(RegulationType::Suppress, 1))));
        assert!(s.drops("acme", &ada));
        assert!(!s.drops("other", &ada));
        assert!(s.apply(&up(
            "acme/regulation/r2",
            def(RegulationType::Unsuppress, 2)
        )));
        assert!(!s.drops("acme", &ada));
        assert!(s.apply(&DefinitionEvent::Delete {
            key: "acme/regulation/r2"
        }));
        assert!(s.drops("acme", &ada), "the unsuppress was deleted");
        // Other kinds are not regulations.
        assert!(!s.apply(&DefinitionEvent::Delete {
            key: "acme/source/web"
        }));
        assert_eq!(s.len(), 1);
    }
}
