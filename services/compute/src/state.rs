//! Per-profile state: what the `profiles` store holds for one profile.

use crate::agg::Agg;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

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
    /// Accounts (group ids) the profile was grouped with by `group` calls.
    #[serde(rename = "ac", default, skip_serializing_if = "BTreeSet::is_empty")]
    pub accounts: BTreeSet<String>,
    /// Accounts whose account side has been told about this user (and its conditions).
    #[serde(rename = "as", default, skip_serializing_if = "BTreeSet::is_empty")]
    pub accounts_sent: BTreeSet<String>,
    /// Account conditions (hidden audiences) true for this user as last told to its accounts.
    #[serde(rename = "at", default, skip_serializing_if = "BTreeSet::is_empty")]
    pub conditions_sent: BTreeSet<String>,
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

    /// The stored form: a format byte, then MessagePack with the fields' short names (a third
    /// smaller than JSON, and integers stay integers). Its length is the `state bytes` metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_MSGPACK];
        // Writing into a Vec cannot fail, and every field type serialises.
        if rmp_serde::encode::write_named(&mut out, self).is_err() {
            out.truncate(1);
        }
        out
    }

    /// Decodes a stored state: MessagePack, or the JSON of earlier versions.
    pub fn decode(bytes: &[u8]) -> Result<ProfileState, StateDecodeError> {
        match bytes.first() {
            Some(&FORMAT_MSGPACK) => Ok(rmp_serde::from_slice(&bytes[1..])?),
            Some(b'{') => Ok(serde_json::from_slice(bytes)?),
            _ => Err(StateDecodeError::UnknownFormat),
        }
    }
}

/// First byte of a MessagePack-encoded state (JSON states start with `{`).
const FORMAT_MSGPACK: u8 = 1;

/// A stored state that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum StateDecodeError {
    /// MessagePack body invalid.
    #[error("profile state does not decode as MessagePack: {0}")]
    MessagePack(#[from] rmp_serde::decode::Error),
    /// Legacy JSON body invalid.
    #[error("profile state does not decode as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Neither format.
    #[error("profile state has an unknown format byte (written by a newer version?)")]
    UnknownFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> ProfileState {
        let mut st = ProfileState {
            space_id: "sp".into(),
            now_ms: 1_736_000_000_000,
            wake_ms: Some(1_736_000_000_001),
            ..Default::default()
        };
        st.add_ids([ExtId {
            id_type: "email".into(),
            id: "a@example.com".into(),
            collection: None,
        }]);
        st.traits.insert(
            "plan".into(),
            TraitValue {
                v: json!("pro"),
                t: 5,
            },
        );
        st.leaves.insert(
            "00ff".into(),
            LeafState::Entries(vec![
                Entry {
                    t: 1,
                    v: Some(json!(2.5)),
                },
                Entry { t: 2, v: None },
            ]),
        );
        st.leaves.insert(
            "01ff".into(),
            LeafState::Events(vec![StoredEvent {
                t: 3,
                p: json!({"product_id": "p1", "n": 7, "f": 1.0, "x": null, "l": [1, "a"]})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                c: Map::new(),
            }]),
        );
        st.results.insert(
            "aud".into(),
            StoredResult {
                ver: 2,
                v: json!(true),
            },
        );
        st.results.insert(
            "avg".into(),
            StoredResult {
                ver: 1,
                v: json!(351.0),
            },
        );
        st
    }

    #[test]
    fn round_trips_and_keeps_integers_apart_from_floats() {
        let st = sample();
        let bytes = st.encode();
        let back = ProfileState::decode(&bytes).unwrap();
        assert_eq!(back, st);
        assert_eq!(back.results["avg"].v, json!(351.0));
        assert!(back.results["avg"].v.is_f64());
        assert!(bytes.len() < serde_json::to_vec(&st).unwrap().len());
    }

    #[test]
    fn reads_states_written_as_json() {
        let st = sample();
        let json = serde_json::to_vec(&st).unwrap();
        assert_eq!(ProfileState::decode(&json).unwrap(), st);
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        let e = ProfileState::decode(b"\x07abc").unwrap_err();
        assert!(e.to_string().contains("unknown format"), "{e}");
        assert!(ProfileState::decode(&[FORMAT_MSGPACK, 0xc1]).is_err());
    }
}
