//! The stitcher tier, pure: lookups of known identifier combinations, spread over partitions by
//! identifier, so a space's common case (a returning user's event) does not wait for the space's
//! single coordinator.
//!
//! An event is routed by its **routing identifier**, its `user_id`, else its `anonymous_id`: the
//! validator keys `events.valid` by it, and the stitcher reads `events.valid` together with the
//! links on `identity.events-by-id` (co-partitioned). The stitcher partition of that identifier keeps
//! a [`Link`]: the profile the identifier belonged to at the coordinator's last change of it, with
//! that profile's identifiers. If every identifier of the event is in the link, the event adds
//! nothing to the graph: the stitcher resolves it to the linked profile (a *hit*). Anything else
//! (an unknown identifier, a new combination, a would-be merge) goes to the coordinator (a *miss*),
//! which resolves it exactly as before and sends fresh links for the profile it touched.
//!
//! **Why a hit is right even when it races a merge.** An identifier never leaves a profile except
//! when the whole profile is merged into another or renamed, and then the old id is aliased to the
//! new one forever. So if a link (possibly stale) says all of the event's identifiers are in
//! profile `X`, they are all in the live profile `X` forwards to, and the coordinator would have
//! answered *matched* on that profile with no change to the graph. A hit on a stale link carries
//! `X` (and `X`'s identifiers as the link knew them); consumers follow `X`'s merge record as they
//! do for any event resolved just before a merge (compute sends it on to the survivor).

use serde::{Deserialize, Serialize};

use crate::engine::Profile;
use crate::ids::Ident;
use crate::store;

/// Profiles with more identifiers than this get no links: a change would rewrite every
/// identifier's link with the whole list (quadratic). Their identifiers' events go to the
/// coordinator (bounded work; profiles that large are rare, usually shared devices or bots).
pub const LINK_MAX_IDS: usize = 32;

/// First byte of a link record on the stitcher's input topic; events there are Avro single-object
/// encoded and start with `C3`.
const LINK_TAG: u8 = b'L';

/// What the stitcher knows about one identifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The profile the identifier belonged to when the coordinator wrote this link.
    #[serde(rename = "p")]
    pub profile_id: String,
    /// That profile's identifiers at that moment, sorted by (type, value).
    #[serde(rename = "i")]
    pub ids: Vec<Ident>,
}

/// A record of the stitcher's input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StitchInput<'a> {
    /// A link update for the record's key; `None` removes the link (the profile is too large).
    Link(Option<Link>),
    /// A valid event (the bytes of `events.valid`, unchanged).
    Event(&'a [u8]),
}

#[derive(Debug, Serialize, Deserialize)]
struct LinkUpdate {
    #[serde(rename = "l")]
    link: Option<Link>,
}

/// The key of an identifier's link, on the stitcher's topic and in its store (the graph's
/// identifier key, so the two never disagree on what an identifier is).
pub fn link_key(space: &str, ident: &Ident) -> Vec<u8> {
    store::id_key(space, ident)
}

/// The identifier an event's link is looked up by: its `user_id`, else its `anonymous_id`, the
/// identifier the validator keys `events.valid` by (`corral_codec::routing`), so the link is in
/// the stitcher partition the event arrives on. Any other identifier (when both are blocked) is
/// looked up too, and most likely misses: a miss is always safe.
pub fn routing_ident(ids: &[Ident]) -> Option<&Ident> {
    ["user_id", "anonymous_id"]
        .iter()
        .find_map(|t| ids.iter().find(|i| i.id_type == *t))
        .or_else(|| ids.first())
}

/// Whether the event can be resolved from `link` without the coordinator: every identifier of the
/// event is already in the linked profile.
pub fn hit(link: &Link, ids: &[Ident]) -> bool {
    !ids.is_empty() && ids.iter().all(|i| link.ids.binary_search(i).is_ok())
}

pub fn encode_update(link: Option<&Link>) -> Vec<u8> {
    let mut out = vec![LINK_TAG];
    // Serialising strings and vectors cannot fail.
    let body = serde_json::to_vec(&LinkUpdate {
        link: link.cloned(),
    })
    .unwrap_or_default();
    out.extend_from_slice(&body);
    out
}

/// Sorts a record of the stitcher's input into a link update or an event.
pub fn classify(value: &[u8]) -> Result<StitchInput<'_>, String> {
    match value.split_first() {
        Some((&LINK_TAG, body)) => serde_json::from_slice::<LinkUpdate>(body)
            .map(|u| StitchInput::Link(u.link))
            .map_err(|e| format!("undecodable link record: {e}")),
        _ => Ok(StitchInput::Event(value)),
    }
}

pub fn encode_link(link: &Link) -> Vec<u8> {
    serde_json::to_vec(link).unwrap_or_default()
}

pub fn decode_link(bytes: &[u8]) -> Result<Link, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("corrupt link in the stitcher store: {e}"))
}

/// The link updates the coordinator sends after resolving an event (which missed) to `profile`:
/// links for the event's identifiers that the profile holds (the routing one is among them, so the
/// next event of this combination hits), and when the profile's id changed (`moved`: a merge or a
/// rename) for every identifier of the profile, so no link keeps naming a retired id. Links of the
/// profile's other identifiers keep an older, smaller list: still right (identifiers never leave a
/// profile), only less likely to hit. A profile past [`LINK_MAX_IDS`] gets removals for the event's
/// identifiers instead, so their events keep going to the coordinator.
pub fn links_after(
    space: &str,
    profile: &Profile,
    event_ids: &[Ident],
    moved: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    if profile.identifiers.len() > LINK_MAX_IDS {
        return event_ids
            .iter()
            .map(|i| (link_key(space, i), encode_update(None)))
            .collect();
    }
    let mut ids: Vec<Ident> = profile.idents().collect();
    ids.sort();
    let link = Link {
        profile_id: profile.id.clone(),
        ids,
    };
    let update = encode_update(Some(&link));
    link.ids
        .iter()
        .filter(|i| moved || event_ids.contains(i))
        .map(|i| (link_key(space, i), update.clone()))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::engine::Member;

    fn profile(id: &str, ids: &[(&str, &str)]) -> Profile {
        Profile {
            id: id.into(),
            created_ms: 1,
            merges: 0,
            identifiers: ids
                .iter()
                .map(|(t, v)| Member {
                    id_type: (*t).into(),
                    value: (*v).into(),
                    first_seen_ms: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn a_hit_needs_every_identifier_of_the_event_in_the_link() {
        let link = Link {
            profile_id: "use_x".into(),
            ids: vec![
                Ident::new("anonymous_id", "a1"),
                Ident::new("user_id", "u1"),
            ],
        };
        assert!(hit(&link, &[Ident::new("user_id", "u1")]));
        assert!(hit(
            &link,
            &[
                Ident::new("user_id", "u1"),
                Ident::new("anonymous_id", "a1")
            ]
        ));
        assert!(!hit(
            &link,
            &[
                Ident::new("user_id", "u1"),
                Ident::new("anonymous_id", "a2")
            ]
        ));
        assert!(!hit(&link, &[]));
    }

    #[test]
    fn events_route_by_user_id_then_anonymous_id_as_the_validator_keys_them() {
        let ids = vec![
            Ident::new("anonymous_id", "a1"),
            Ident::new("email", "e@x"),
            Ident::new("user_id", "u1"),
        ];
        assert_eq!(routing_ident(&ids).unwrap().id_type, "user_id");
        assert_eq!(
            routing_ident(&ids[..2]).unwrap(),
            &Ident::new("anonymous_id", "a1")
        );
        assert_eq!(
            routing_ident(&ids[1..2]).unwrap(),
            &Ident::new("email", "e@x")
        );
        assert!(routing_ident(&[]).is_none());
        // The stitcher looks the link up under the key the validator gave the event.
        let mut m = corral_codec::SegmentMessage::new("s", corral_codec::MessageType::Track, "m");
        m.user_id = Some("u1".into());
        m.anonymous_id = Some("a1".into());
        assert_eq!(
            corral_codec::routing::routing_key(&m),
            Some(link_key("s", &Ident::new("user_id", "u1")))
        );
    }

    #[test]
    fn links_carry_the_sorted_profile_and_never_name_an_identifier_it_lacks() {
        let p = profile("use_p", &[("user_id", "u1"), ("anonymous_id", "a1")]);
        // A merge or rename relinks every identifier; otherwise only the event's.
        let event = [
            Ident::new("user_id", "u1"),
            Ident::new("email", "demoted@x"),
        ];
        assert_eq!(links_after("s", &p, &event, false).len(), 1);
        let out = links_after("s", &p, &event, true);
        assert_eq!(out.len(), 2);
        for (key, value) in &out {
            let StitchInput::Link(Some(link)) = classify(value).unwrap() else {
                panic!("expected a link");
            };
            assert_eq!(link.profile_id, "use_p");
            assert_eq!(
                link.ids,
                vec![
                    Ident::new("anonymous_id", "a1"),
                    Ident::new("user_id", "u1")
                ]
            );
            assert!(link.ids.iter().any(|i| &link_key("s", i) == key));
        }
    }

    #[test]
    fn large_profiles_remove_the_links_of_the_event_instead() {
        let many: Vec<(String, String)> = (0..=LINK_MAX_IDS)
            .map(|k| ("anonymous_id".to_string(), format!("a{k}")))
            .collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(t, v)| (t.as_str(), v.as_str())).collect();
        let p = profile("use_big", &refs);
        let ev = [Ident::new("anonymous_id", "a3")];
        let out = links_after("s", &p, &ev, true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, link_key("s", &ev[0]));
        assert_eq!(classify(&out[0].1).unwrap(), StitchInput::Link(None));
    }

    #[test]
    fn events_and_links_are_told_apart_and_bad_links_are_errors() {
        assert_eq!(
            classify(&[0xC3, 0x01, 9]).unwrap(),
            StitchInput::Event(&[0xC3, 0x01, 9][..])
        );
        assert!(classify(b"L{not json").is_err());
        let link = Link {
            profile_id: "use_p".into(),
            ids: vec![Ident::new("user_id", "u")],
        };
        assert_eq!(decode_link(&encode_link(&link)).unwrap(), link);
        assert!(decode_link(b"nope").is_err());
    }
}
