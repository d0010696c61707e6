//! Per-profile state: what the `profiles` store holds for one profile.

use crate::agg::Agg;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One external id of a profile (Segment's `context.externalIds[]` entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExtId {
    /// `user_id`, `anonymous_id`, `email`, ...
    #[serde(rename = "t")]
    pub id_type: String,
    /// The id.
    #[serde(rename = "i")]
    pub id: String,
    /// `users` / `accounts`.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
}

/// A qualifying event kept for a windowed leaf: its time and the reducer's property value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Event time (ms).
    pub t: i64,
    /// Reducer property (absent for `count`, or when the event lacks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<Value>,
}

/// An event kept whole (projected to the property and context roots the plans read) for a
/// leaf whose filter can change after the event (funnels, trait-dependent filters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Event time (ms).
    pub t: i64,
    /// Projected properties.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub p: Map<String, Value>,
    /// Projected context.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub c: Map<String, Value>,
}

/// The state of one leaf for one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LeafState {
    /// Unwindowed: a running aggregate.
    #[serde(rename = "a")]
    Agg(Agg),
    /// Windowed (`within`, `between`, `expires_after`): qualifying events in the horizon,
    /// ordered by time.
    #[serde(rename = "e")]
    Entries(Vec<Entry>),
    /// Dynamic filter or funnel: the events themselves, ordered by time.
    #[serde(rename = "r")]
    Events(Vec<StoredEvent>),
}

/// A trait set by identify, with the event time that set it (merges keep the latest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitValue {
    /// Value; `null` is a removal kept so that merges honour it.
    pub v: Value,
    /// Event time (ms).
    pub t: i64,
}

/// A definition's last emitted result for this profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResult {
    /// Definition version that computed it.
    pub ver: i64,
    /// `true` for audience members (non-members have no entry); the trait value otherwise.
    pub v: Value,
}

/// Everything compute keeps for one profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileState {
    /// Space the profile belongs to.
    #[serde(rename = "sp", default)]
    pub space_id: String,
    /// External ids, sorted, deduplicated.
    #[serde(rename = "ids", default)]
    pub external_ids: Vec<ExtId>,
    /// Custom traits from identify.
    #[serde(rename = "tr", default)]
    pub traits: BTreeMap<String, TraitValue>,
    /// Leaf states by leaf id (shared by every definition using the leaf).
    #[serde(rename = "lv", default)]
    pub leaves: BTreeMap<String, LeafState>,
    /// Last emitted result per definition key.
    #[serde(rename = "rs", default)]
    pub results: BTreeMap<String, StoredResult>,
    /// When time alone next may change a result (ms); the timer store holds the same.
    #[serde(rename = "wk", default, skip_serializing_if = "Option::is_none")]
    pub wake_ms: Option<i64>,
    /// Latest "now" this state was evaluated at (pruning never goes back).
    #[serde(rename = "nw", default)]
    pub now_ms: i64,
    /// Not stored: definitions the caller holds back (their backfill is in progress on this
    /// partition); evaluation keeps their last result and emits nothing for them.
    #[serde(skip)]
    pub hold: Option<std::sync::Arc<std::collections::BTreeSet<String>>>,
}

impl ProfileState {
    /// Custom traits as the evaluator sees them (removed traits are absent).
    pub fn trait_map(&self) -> Map<String, Value> {
        self.traits
            .iter()
            .filter(|(_, t)| !t.v.is_null())
            .map(|(k, t)| (k.clone(), t.v.clone()))
            .collect()
    }

    /// Adds external ids (sorted, deduplicated).
    pub fn add_ids(&mut self, ids: impl IntoIterator<Item = ExtId>) {
        self.external_ids.extend(ids);
        self.external_ids.sort();
        self.external_ids.dedup();
    }

    /// Serialised size in bytes (the `state bytes` metric and benchmark).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a stored state.
    pub fn decode(bytes: &[u8]) -> Result<ProfileState, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
