//! Audience previews: how many profiles an audience would have if it were applied now, and a
//! sample of them, computed from the history without applying anything.
//!
//! It reads `events.resolved` of the space from the beginning to its current end (read_committed)
//! and runs compute's own engine ([`corral_compute::Engine`]) over it, with the space's
//! definitions in force plus the candidate (so references to other definitions evaluate as
//! compute would). Events are attributed to the profile they belong to now (merged-away ids
//! follow identity's aliases in this service's graph replica), every profile that has any event
//! is evaluated once at the end, at the current time. Nothing is written anywhere.
//!
//! What differs from applying: compute sees a profile's events in its partition's order, with
//! merges handed over as they happen; the preview folds a profile's events in the topic's order
//! across partitions and evaluates once. Counts match for audiences whose result does not
//! depend on the order events arrive in (all of Segment's, given event times).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use corral_codec::{history, AvroRecord, MessageType, ResolvedEvent};
use corral_compute::backfill::{current_fingerprint, peek};
use corral_compute::engine::record_traits;
use corral_compute::service::{event_name, event_time_ms};
use corral_compute::{DefinitionSpec, Engine, EngineConfig, InEvent, ProfileState};
use corral_ops::audiences::OneDefinition;
use corral_ops::export::Member;
use corral_runtime::reader::{read_to_end, Flow, Start};
use corral_runtime::RuntimeError;
use rdkafka::message::Message;
use serde_json::{Map, Value};

use crate::store::ProfileStore;

/// Where the history is.
#[derive(Debug, Clone)]
pub struct History {
    pub bootstrap: String,
    pub kafka: std::collections::BTreeMap<String, String>,
    /// `events.resolved`.
    pub topic: String,
    /// Reading the history gives up after this long.
    pub timeout: Duration,
}

/// A preview's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// Members if applied now.
    pub count: usize,
    /// The first members by profile id, with their external ids.
    pub sample: Vec<Member>,
    /// Profiles of the space evaluated.
    pub profiles: usize,
    /// Records of `events.resolved` read (every space).
    pub events_read: u64,
    pub duration_ms: u64,
}

/// Why a preview could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error("{0}")]
    NotPreviewable(String),
    #[error(transparent)]
    Kafka(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Folds one event of the space into the profile states.
pub struct Folder<'a> {
    engine: Engine,
    space: String,
    store: &'a ProfileStore,
    now_ms: i64,
    states: HashMap<String, ProfileState>,
}

impl<'a> Folder<'a> {
    /// `current`: the space's definitions in force; `def`: the candidate (replacing a current
    /// one with its key).
    pub fn new(
        space: &str,
        current: impl IntoIterator<Item = DefinitionSpec>,
        def: &OneDefinition,
        store: &'a ProfileStore,
        now_ms: i64,
    ) -> Result<Folder<'a>, PreviewError> {
        let mut specs: Vec<DefinitionSpec> =
            current.into_iter().filter(|s| s.key != def.key).collect();
        specs.push(DefinitionSpec {
            key: def.key.clone(),
            name: Some(def.name.clone()),
            target: def.target,
            kind: def.kind,
            version: 0,
            query: def.query.clone(),
            include_historical_data: true,
        });
        let engine = Engine::new(EngineConfig::default(), specs);
        if let Some(e) = engine.rejected().get(&def.key) {
            return Err(PreviewError::NotPreviewable(e.to_string()));
        }
        Ok(Folder {
            engine,
            space: space.to_string(),
            store,
            now_ms,
            states: HashMap::new(),
        })
    }

    /// The profile `pid` belongs to now (not cached: an alias lookup is a bloom-filter miss
    /// for most ids, cheaper than holding a map of every id for the whole preview).
    fn live_id(&mut self, pid: &str) -> Result<String, PreviewError> {
        Ok(self.store.live_id(&self.space, pid)?)
    }

    fn state(&mut self, pid: &str) -> Result<&mut ProfileState, PreviewError> {
        let live = self.live_id(pid)?;
        let space = &self.space;
        Ok(self.states.entry(live).or_insert_with(|| ProfileState {
            space_id: space.clone(),
            ..ProfileState::default()
        }))
    }

    /// Whether a track/page/screen call named `name` can matter (else only its profile does).
    pub fn reads(&self, name: &str) -> bool {
        self.engine.reads_event(name)
    }

    /// Notes that `pid` has an input this preview does not need to look into.
    pub fn touch(&mut self, pid: &str) -> Result<(), PreviewError> {
        self.state(pid).map(|_| ())
    }

    /// When `pid` was deleted, if it was (its records need their resolved time checked).
    pub fn deleted_at(&self, pid: &str) -> Result<Option<i64>, PreviewError> {
        Ok(self.store.deleted_at(&self.space, pid)?)
    }

    /// Folds a decoded event of the space in; an event of a deleted life (resolved at or
    /// before its profile's deletion, docs/privacy.md) is left out.
    pub fn fold(&mut self, ev: &ResolvedEvent) -> Result<(), PreviewError> {
        if self
            .store
            .deleted_at(&self.space, &ev.profile_id)?
            .is_some_and(|t| ev.resolved_at_ms <= t)
        {
            return Ok(());
        }
        let m = &ev.message;
        let ts = event_time_ms(m, ev.resolved_at_ms);
        let now = self.now_ms;
        let empty = Map::new();
        let obj = |v: &Option<Value>| match v {
            Some(Value::Object(o)) => o.clone(),
            _ => empty.clone(),
        };
        let live = self.live_id(&ev.profile_id)?;
        let space = &self.space;
        let st = self.states.entry(live).or_insert_with(|| ProfileState {
            space_id: space.clone(),
            ..ProfileState::default()
        });
        if m.message_type == MessageType::Identify {
            record_traits(st, &obj(&m.traits), ts);
        } else if let Some(name) = event_name(m.message_type, m.event.as_deref()) {
            let (properties, context) = (obj(&m.properties), obj(&m.context));
            self.engine.record_event(
                st,
                &InEvent {
                    name,
                    ts_ms: ts,
                    properties: &properties,
                    context: &context,
                    source_id: m.source_id.as_deref(),
                },
                now,
            );
        }
        Ok(())
    }

    /// Evaluates every profile once; returns the members of `key`, sorted.
    pub fn members(mut self, key: &str) -> (Vec<String>, usize) {
        let profiles = self.states.len();
        let mut out = BTreeSet::new();
        for (pid, st) in self.states.iter_mut() {
            self.engine.evaluate(st, self.now_ms);
            if st
                .results
                .get(key)
                .is_some_and(|r| r.v == Value::Bool(true))
            {
                out.insert(pid.clone());
            }
        }
        (out.into_iter().collect(), profiles)
    }
}

/// Previews `def` over the whole history (see the module doc).
pub fn preview(
    history: &History,
    store: &ProfileStore,
    space: &str,
    current: impl IntoIterator<Item = DefinitionSpec>,
    def: &OneDefinition,
    sample: usize,
) -> Result<Preview, PreviewError> {
    let started = Instant::now();
    let mut folder = Folder::new(space, current, def, store, corral_ops::now_ms())?;
    let fp = current_fingerprint();
    let mut read = 0u64;
    let mut failure: Option<PreviewError> = None;
    read_to_end::<RuntimeError>(
        &history.bootstrap,
        &history.kafka,
        "corral-profiles-preview",
        &history.topic,
        Start::Beginning,
        history.timeout,
        |m| {
            read += 1;
            let Some(bytes) = m.payload() else {
                return Ok(Flow::Continue);
            };
            let step = (|| -> Result<(), PreviewError> {
                // Most records are told apart without decoding them: another space, or an event
                // no leaf reads (its profile still counts: `count() = 0` audiences hold for it).
                if let (Some(fp), Some(key)) = (&fp, m.key()) {
                    if let Some(pk) = peek(bytes, fp) {
                        if pk.space != space {
                            return Ok(());
                        }
                        // The key is the profile id (older records) or the history key
                        // (profile id, messageId, resolve time).
                        let hk = history::parse_key(key);
                        if let (true, Ok(pid)) = (
                            pk.name.is_some_and(|n| !folder.reads(n)),
                            std::str::from_utf8(hk.profile_id),
                        ) {
                            // A deleted profile's record belongs to the deleted life when it was
                            // resolved at or before the deletion; without a time in the key,
                            // the value tells.
                            match (folder.deleted_at(pid)?, hk.resolved_at_ms) {
                                (None, _) => return folder.touch(pid),
                                (Some(t), Some(r)) if r <= t => return Ok(()),
                                (Some(_), Some(_)) => return folder.touch(pid),
                                (Some(_), None) => {}
                            }
                        }
                    }
                }
                match ResolvedEvent::decode(bytes) {
                    Ok(ev) if ev.message.space_id == space => folder.fold(&ev),
                    _ => Ok(()),
                }
            })();
            match step {
                Ok(()) => Ok(Flow::Continue),
                Err(e) => {
                    failure = Some(e);
                    Ok(Flow::Stop)
                }
            }
        },
    )?;
    if let Some(e) = failure {
        return Err(e);
    }
    let (members, profiles) = folder.members(&def.key);
    let mut sample_members = Vec::new();
    for pid in members.iter().take(sample) {
        let external_ids = store
            .profile(space, pid)?
            .map(|p| {
                p.identifiers
                    .into_iter()
                    .map(|m| (m.id_type, m.value))
                    .collect()
            })
            .unwrap_or_default();
        sample_members.push(Member {
            profile_id: pid.clone(),
            external_ids,
        });
    }
    Ok(Preview {
        count: members.len(),
        sample: sample_members,
        profiles,
        events_read: read,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_ops::audiences::{DefinitionKind, Target};

    fn event(pid: &str, mid: &str, resolved: i64) -> ResolvedEvent {
        let mut m = corral_codec::SegmentMessage::new("s", MessageType::Track, mid);
        m.event = Some("Order Completed".into());
        m.timestamp = Some(crate::store::iso(resolved));
        ResolvedEvent {
            message: m,
            profile_id: pid.into(),
            external_ids: vec![],
            resolved_at_ms: resolved,
        }
    }

    #[test]
    fn a_deleted_life_is_left_out_of_a_preview() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open_fresh(&dir.path().join("db"), 10).unwrap();
        let deletion = corral_codec::ProfileMerge {
            space_id: "s".into(),
            from_profile_id: "gone".into(),
            into_profile_id: String::new(),
            trigger_message_id: Some("regulation:reg-1".into()),
            trigger_ids: vec![],
            merged_at_ms: 2_000,
        };
        store.apply_merges(&[deletion.encode().unwrap()]).unwrap();
        let def = OneDefinition {
            target: Target::Audience,
            key: "buyers".into(),
            name: "buyers".into(),
            kind: DefinitionKind::Users,
            include_historical_data: true,
            query: "event('Order Completed').count() >= 1".into(),
        };
        let folded = |events: &[ResolvedEvent]| {
            let mut folder = Folder::new("s", [], &def, &store, 10_000).unwrap();
            for e in events {
                folder.fold(e).unwrap();
            }
            assert_eq!(folder.deleted_at("gone").unwrap(), Some(2_000));
            assert_eq!(folder.deleted_at("kept").unwrap(), None);
            folder.members("buyers")
        };
        let old = [event("gone", "old", 1_000), event("kept", "k", 1_000)];
        let (members, profiles) = folded(&old);
        assert_eq!(members, ["kept"]);
        assert_eq!(profiles, 1, "the deleted life is not even evaluated");
        // The person comes back: the new life counts.
        let (members, _) = folded(&[old[0].clone(), old[1].clone(), event("gone", "new", 3_000)]);
        assert_eq!(members, ["gone", "kept"]);
    }
}
