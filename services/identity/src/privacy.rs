//! Deletion requests (docs/privacy.md). `corralctl privacy delete` writes a
//! [`DeletionRequest`] to `identity.events-by-space`, keyed by the space, so it reaches the one
//! coordinator task that owns the space's graph, in order with the space's events. In one
//! transaction the task:
//!
//! 1. finds the profiles the request's identifiers belong to ([`plan`]);
//! 2. deletes every identifier of those profiles and the profiles themselves from the `graph`
//!    store (tombstones on `identity.graph-changelog`, which compaction then erases);
//! 3. removes the stitchers' links of those identifiers (link tombstones on
//!    `identity.events-by-id`, which the stitchers turn into deletes on their `links` changelog);
//! 4. tells compute: one `profiles.merges` record per deleted profile, keyed by it, with an
//!    empty `into` (a deletion, not a merge), no identifiers, `trigger_message_id`
//!    `regulation:{id}` and `merged_at_ms` = the request's time. When nothing matched, one record
//!    with an empty `from` says the request was handled (for `corralctl privacy status`).
//!
//! 5. records, per deleted identifier, a mark `x`+space+digest -> the request's time in the graph
//!    store (a UUIDv5 digest of the identifier, not the identifier): an event carrying the
//!    identifier that was received before the request but reaches the coordinator after it (it
//!    was still in flight between a stitcher and here) is dropped
//!    ([`erased`]) instead of re-creating the graph; compute drops such events by their profile's
//!    mark the same way. Events received after the request are a new life of the identifier.
//!
//! 6. finds the profiles merged into (or renamed to) a deleted one earlier ([`aliases_of`]: their
//!    ids were derived from identifiers the profile now holds), deletes their aliases (`a` keys)
//!    and sends compute a deletion record for each of them too, keyed by that id: their events
//!    sit in `events.resolved` under that id, on its partition, and that partition's compute task
//!    erases them (docs/privacy.md, "Erasure").
//!
//! A crash before the commit replays the request; after it, the request finds nothing left.

use corral_codec::ProfileMerge;
use corral_ops::privacy::{deletion_trigger, DeletionRequest};
use corral_runtime::cli::names;
use corral_runtime::{Output, ProcessContext, ProcessError};

use crate::engine::{canonical, profile_id, Graph, Profile};
use crate::ids::Ident;
use crate::stitch;
use crate::store::{alias_key, id_key, key, profile_key, CtxGraph, STORE};

/// Namespace of the digests in deletion marks (fixed forever).
const MARK_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c0f_7a1e_c0a1_4d1e_9b0e_1d3a_7e11_00de);

/// Graph-store key of the deletion mark of `ident` in `space`.
pub fn mark_key(space: &str, ident: &Ident) -> Vec<u8> {
    // Length-prefixed type, so no two identifiers hash the same name.
    let mut name = Vec::with_capacity(ident.id_type.len() + ident.value.len() + 4);
    name.extend_from_slice(&(ident.id_type.len() as u32).to_be_bytes());
    name.extend_from_slice(ident.id_type.as_bytes());
    name.extend_from_slice(ident.value.as_bytes());
    let digest = uuid::Uuid::new_v5(&MARK_NAMESPACE, &name)
        .simple()
        .to_string();
    key(b'x', &[space, &digest])
}

/// Whether an event of `space` with identifiers `ids`, received at `received_ms`, belongs to a
/// deleted life of one of them (received before that identifier's deletion request).
pub fn erased(
    ctx: &ProcessContext<'_>,
    space: &str,
    ids: &[Ident],
    received_ms: i64,
) -> Result<bool, ProcessError> {
    for i in ids {
        if let Some(v) = ctx.get(STORE, &mark_key(space, i))? {
            let until = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MAX);
            if received_ms <= until {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The live profiles that `subjects` of `space` belong to, each once, in the order found.
pub fn plan<G: Graph>(
    g: &mut G,
    space: &str,
    subjects: &[Ident],
) -> Result<Vec<Profile>, G::Error> {
    let mut out: Vec<Profile> = Vec::new();
    for s in subjects {
        let Some(pid) = g.mapping(space, s)? else {
            continue;
        };
        let pid = canonical(g, space, &pid)?;
        if out.iter().any(|p| p.id == pid) {
            continue;
        }
        if let Some(p) = g.profile(space, &pid)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// The retired ids that resolve to `p` (profiles merged into it or renamed to it). A profile's id
/// is derived from its anchor identifier, and every identifier of a merged or renamed profile
/// moved into the survivor, so each retired id is the id of one of `p`'s identifiers.
pub fn aliases_of<G: Graph>(g: &mut G, space: &str, p: &Profile) -> Result<Vec<String>, G::Error> {
    let mut out: Vec<String> = Vec::new();
    for ident in p.idents() {
        let id = profile_id(space, &ident);
        if id == p.id || out.contains(&id) || g.alias(space, &id)?.is_none() {
            continue;
        }
        if canonical(g, space, &id)? == p.id {
            out.push(id);
        }
    }
    Ok(out)
}

/// What the coordinator did for one request (counted by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub profiles: usize,
    pub identifiers: usize,
}

/// Carries out `req` on the coordinator's task (see the module doc).
pub fn on_request(
    ctx: &mut ProcessContext<'_>,
    req: &DeletionRequest,
) -> Result<Deleted, ProcessError> {
    let space = req.space_id.as_str();
    let subjects: Vec<Ident> = req
        .subjects
        .iter()
        .map(|s| Ident::new(s.id_type.clone(), s.value.clone()))
        .collect();
    let profiles = plan(&mut CtxGraph { ctx }, space, &subjects)?;
    let mut retired = Vec::with_capacity(profiles.len());
    for p in &profiles {
        retired.push(aliases_of(&mut CtxGraph { ctx }, space, p)?);
    }
    let by_id = ctx.topic(names::BY_ID);
    let trigger = deletion_trigger(&req.regulation_id);
    let mut identifiers = 0;
    for p in &profiles {
        for ident in p.idents() {
            ctx.delete(STORE, id_key(space, &ident));
            ctx.put(
                STORE,
                mark_key(space, &ident),
                req.requested_at_ms.to_be_bytes().to_vec(),
            );
            ctx.emit_to(Output {
                topic: by_id.clone(),
                key: Some(stitch::link_key(space, &ident)),
                value: Some(stitch::encode_update(None)),
                partition: None,
                headers: Vec::new(),
            });
            identifiers += 1;
        }
        ctx.delete(STORE, profile_key(space, &p.id));
        ctx.emit_record(p.id.as_bytes(), &deletion(space, &p.id, &trigger, req))?;
    }
    for old in retired.iter().flatten() {
        ctx.delete(STORE, alias_key(space, old));
        ctx.emit_record(old.as_bytes(), &deletion(space, old, &trigger, req))?;
    }
    if profiles.is_empty() {
        ctx.emit_record(space.as_bytes(), &deletion(space, "", &trigger, req))?;
    }
    Ok(Deleted {
        profiles: profiles.len(),
        identifiers,
    })
}

fn deletion(space: &str, pid: &str, trigger: &str, req: &DeletionRequest) -> ProfileMerge {
    ProfileMerge {
        space_id: space.to_string(),
        from_profile_id: pid.to_string(),
        into_profile_id: String::new(),
        trigger_message_id: Some(trigger.to_string()),
        trigger_ids: Vec::new(),
        merged_at_ms: req.requested_at_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::engine::{resolve, MemGraph};
    use crate::rules::Rules;

    #[test]
    fn marks_hold_a_digest_not_the_identifier() {
        let k = mark_key("s", &Ident::new("email", "ada@x.io"));
        assert!(!k.windows(8).any(|w| w == b"ada@x.io"));
        assert_ne!(k, mark_key("s", &Ident::new("email", "bob@x.io")));
        assert_ne!(k, mark_key("t", &Ident::new("email", "ada@x.io")));
        assert_ne!(
            mark_key("s", &Ident::new("a", "b\u{0}c")),
            mark_key("s", &Ident::new("a\u{0}b", "c"))
        );
    }

    #[test]
    fn the_plan_finds_each_profile_of_the_identifiers_once() {
        let mut g = MemGraph::default();
        let rules = Rules::default();
        let ada = [
            Ident::new("user_id", "ada"),
            Ident::new("email", "ada@x.io"),
        ];
        let bob = [Ident::new("user_id", "bob")];
        resolve(&mut g, &rules, "s", &ada, 1).unwrap();
        resolve(&mut g, &rules, "s", &bob, 2).unwrap();
        // An anonymous id merged into ada's profile later.
        resolve(
            &mut g,
            &rules,
            "s",
            &[Ident::new("anonymous_id", "a1"), ada[0].clone()],
            3,
        )
        .unwrap();
        let found = plan(
            &mut g,
            "s",
            &[
                Ident::new("email", "ada@x.io"),
                Ident::new("anonymous_id", "a1"),
                Ident::new("user_id", "nobody"),
            ],
        )
        .unwrap();
        assert_eq!(found.len(), 1);
        let ids: Vec<Ident> = found[0].idents().collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        assert!(ids.contains(&Ident::new("anonymous_id", "a1")));
        assert!(plan(&mut g, "other", &ada).unwrap().is_empty());
        assert!(plan(&mut g, "s", &[]).unwrap().is_empty());
    }

    #[test]
    fn the_retired_ids_of_a_profile_are_found() {
        let mut g = MemGraph::default();
        let rules = Rules::default();
        let ada = Ident::new("user_id", "ada");
        let a1 = Ident::new("anonymous_id", "a1");
        let a2 = Ident::new("anonymous_id", "a2");
        // Two anonymous profiles, then both merged into ada's.
        resolve(&mut g, &rules, "s", std::slice::from_ref(&a1), 1).unwrap();
        resolve(&mut g, &rules, "s", std::slice::from_ref(&a2), 2).unwrap();
        resolve(&mut g, &rules, "s", &[ada.clone(), a1.clone()], 3).unwrap();
        resolve(&mut g, &rules, "s", &[ada.clone(), a2.clone()], 4).unwrap();
        resolve(&mut g, &rules, "s", &[Ident::new("user_id", "bob")], 5).unwrap();
        let p = plan(&mut g, "s", std::slice::from_ref(&ada))
            .unwrap()
            .remove(0);
        let mut got = aliases_of(&mut g, "s", &p).unwrap();
        got.sort();
        let mut want = vec![profile_id("s", &a1), profile_id("s", &a2)];
        want.sort();
        assert_eq!(got, want);
        assert!(!got.contains(&p.id));
        let bob = plan(&mut g, "s", &[Ident::new("user_id", "bob")])
            .unwrap()
            .remove(0);
        assert!(aliases_of(&mut g, "s", &bob).unwrap().is_empty());
    }
}
