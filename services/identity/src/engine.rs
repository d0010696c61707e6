//! Flat matching (Segment Unify), pure: the identity graph is behind the [`Graph`] trait, so the
//! same code runs on an in-memory map in tests and on the runtime's RocksDB store in the service.
//!
//! For one event's identifiers (blocked values already removed):
//! 1. look up the profile of every identifier;
//! 2. none -> **create** a profile; one -> **add** the new identifiers; several -> **merge**;
//! 3. before writing, in this order:
//!    - **merge protection**: walking the matched profiles from the one the event's
//!      highest-priority identifier belongs to, a profile that carries a `user_id` while an
//!      accepted one already does is refused, and the event's identifiers that point to it are
//!      dropped as untrusted;
//!    - **limits**: if the result would hold more identifiers of a type than its limit (counting
//!      only those first seen within the limit's window) and more than any matched profile
//!      already holds, the lowest-priority identifier of the event is **demoted** (dropped) and
//!      matching starts again (Segment's `abc123`/`abc456` example);
//!    - **caps**: a merge past `max_merges` or a profile past `max_identifiers` changes nothing;
//!      the event resolves to the profile of its highest-priority identifier.
//!
//! **Profile ids are a function of the identifier set**: a profile's id is
//! `profile_id(space, anchor)`, where the anchor is its highest-priority identifier (priority
//! rank, type, value). Creating, adding and merging keep that invariant, so the id does not depend
//! on the order events arrived in, only on the grouping; replays and any number of instances give
//! the same ids. When an add or a merge brings a higher-priority identifier, the profile's id
//! changes: the old id is aliased to the new one (it resolves forever) and a merge record of kind
//! [`MergeKind::Rename`] says so, as for a merge. Renames happen at most once per priority level a
//! profile climbs (anonymous -> email -> user_id), so they are rare.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::ids::Ident;
use crate::rules::Rules;

/// Namespace of Corral profile ids (UUIDv5), fixed forever: changing it changes every id.
const PROFILE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5c0f_7a1e_c0a1_4d1e_9b0e_1d3a_7e11_0001);

/// The deterministic id of the profile anchored at `anchor`: `use_` + 22 base62 characters, the
/// shape of Segment's ids.
pub fn profile_id(space: &str, anchor: &Ident) -> String {
    let mut name = Vec::with_capacity(space.len() + anchor.id_type.len() + anchor.value.len() + 2);
    name.extend_from_slice(space.as_bytes());
    name.push(0);
    name.extend_from_slice(anchor.id_type.as_bytes());
    name.push(0);
    name.extend_from_slice(anchor.value.as_bytes());
    let mut n = uuid::Uuid::new_v5(&PROFILE_NAMESPACE, &name).as_u128();
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut digits = [b'0'; 22];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    let mut id = String::with_capacity(26);
    id.push_str("use_");
    id.extend(digits.iter().map(|&b| b as char));
    id
}

/// An identifier of a profile with the time it was first seen (event time, for windowed limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "t")]
    pub id_type: String,
    #[serde(rename = "v")]
    pub value: String,
    #[serde(rename = "f")]
    pub first_seen_ms: i64,
}

impl Member {
    pub fn ident(&self) -> Ident {
        Ident::new(self.id_type.clone(), self.value.clone())
    }
}

/// A profile as the graph stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    #[serde(rename = "c")]
    pub created_ms: i64,
    /// Merges folded into this profile (renames do not count).
    #[serde(rename = "m")]
    pub merges: u32,
    /// Sorted by (type, value).
    #[serde(rename = "i")]
    pub identifiers: Vec<Member>,
}

impl Profile {
    fn has_type(&self, t: &str) -> bool {
        self.identifiers.iter().any(|m| m.id_type == t)
    }

    pub fn idents(&self) -> impl Iterator<Item = Ident> + '_ {
        self.identifiers.iter().map(Member::ident)
    }
}

/// Storage of the identity graph of one coordinator partition. Keys are scoped by space.
pub trait Graph {
    type Error;
    /// The profile an identifier belongs to (always a live profile id).
    fn mapping(&mut self, space: &str, ident: &Ident) -> Result<Option<String>, Self::Error>;
    fn set_mapping(&mut self, space: &str, ident: &Ident, pid: &str) -> Result<(), Self::Error>;
    fn profile(&mut self, space: &str, pid: &str) -> Result<Option<Profile>, Self::Error>;
    fn set_profile(&mut self, space: &str, profile: &Profile) -> Result<(), Self::Error>;
    fn remove_profile(&mut self, space: &str, pid: &str) -> Result<(), Self::Error>;
    /// Where a retired profile id forwards to.
    fn alias(&mut self, space: &str, pid: &str) -> Result<Option<String>, Self::Error>;
    fn set_alias(&mut self, space: &str, from: &str, into: &str) -> Result<(), Self::Error>;
    fn remove_alias(&mut self, space: &str, pid: &str) -> Result<(), Self::Error>;
}

/// Follows aliases from `pid` to the live profile id (bounded: aliases always point to a newer
/// id and a chain cannot be longer than the merges and renames that made it).
pub fn canonical<G: Graph>(g: &mut G, space: &str, pid: &str) -> Result<String, G::Error> {
    let mut cur = pid.to_string();
    for _ in 0..10_000 {
        match g.alias(space, &cur)? {
            Some(next) if next != cur => cur = next,
            _ => break,
        }
    }
    Ok(cur)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeKind {
    /// Two or more profiles became one.
    Merge,
    /// The profile's id changed because a higher-priority identifier joined it.
    Rename,
}

impl MergeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MergeKind::Merge => "merge",
            MergeKind::Rename => "rename",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeStep {
    pub from: String,
    pub into: String,
    pub kind: MergeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Added,
    Matched,
    Merged,
    /// A cap stopped a merge or an addition; the event resolved to an existing profile.
    Capped(Cap),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Merges,
    Identifiers,
}

/// What resolving one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub profile: Profile,
    pub outcome: Outcome,
    pub merges: Vec<MergeStep>,
    /// Identifiers dropped by priority demotion.
    pub demoted: Vec<Ident>,
    /// Identifiers dropped by merge protection.
    pub untrusted: Vec<Ident>,
}

impl Resolution {
    pub fn profile_id(&self) -> &str {
        &self.profile.id
    }
}

fn sort_members(ms: &mut [Member]) {
    ms.sort_by(|a, b| (&a.id_type, &a.value).cmp(&(&b.id_type, &b.value)));
}

fn anchor<'a>(rules: &Rules, members: &'a [Member]) -> Option<&'a Member> {
    members.iter().min_by(|a, b| {
        rules
            .rank(&a.id_type)
            .cmp(&rules.rank(&b.id_type))
            .then_with(|| a.id_type.cmp(&b.id_type))
            .then_with(|| a.value.cmp(&b.value))
    })
}

fn counts<'m>(members: &'m [Member], rules: &Rules, now: i64) -> BTreeMap<&'m str, u32> {
    let mut c = BTreeMap::new();
    for m in members {
        let in_window = match rules.limit(&m.id_type).window_ms {
            Some(w) => m.first_seen_ms >= now.saturating_sub(w),
            None => true,
        };
        if in_window {
            *c.entry(m.id_type.as_str()).or_insert(0) += 1;
        }
    }
    c
}

/// Whether `candidate` breaks a limit that none of the `existing` profiles already broke.
fn breaks_limit(rules: &Rules, candidate: &[Member], existing: &[&Profile], now: i64) -> bool {
    let baseline: Vec<BTreeMap<&str, u32>> = existing
        .iter()
        .map(|p| counts(&p.identifiers, rules, now))
        .collect();
    counts(candidate, rules, now).into_iter().any(|(t, n)| {
        n > rules.limit(t).max && baseline.iter().all(|b| b.get(t).copied().unwrap_or(0) < n)
    })
}

/// Resolves one event's identifiers against the graph, writing the changes. `ids` must have
/// blocked values removed already; `now` is the event's time (deterministic on replay). Returns
/// `None` when there is no identifier.
pub fn resolve<G: Graph>(
    g: &mut G,
    rules: &Rules,
    space: &str,
    ids: &[Ident],
    now: i64,
) -> Result<Option<Resolution>, G::Error> {
    let order = |a: &Ident, b: &Ident| -> Ordering { rules.ident_order(a, b) };
    let mut ev: Vec<Ident> = ids.to_vec();
    ev.sort_by(order);
    ev.dedup();
    // An event never carries more than a profile may hold.
    ev.truncate(rules.max_identifiers as usize);
    let mut demoted = Vec::new();
    let mut untrusted = Vec::new();

    loop {
        let Some(first) = ev.first().cloned() else {
            return Ok(None);
        };
        // Matched profiles in the order of the event's identifiers: the first is the anchor.
        let mut matched: Vec<Profile> = Vec::new();
        let mut owner: HashMap<Ident, String> = HashMap::new();
        let mut new_ids: Vec<Ident> = Vec::new();
        for id in &ev {
            let pid = match g.mapping(space, id)? {
                Some(pid) => canonical(g, space, &pid)?,
                None => {
                    new_ids.push(id.clone());
                    continue;
                }
            };
            if !matched.iter().any(|p| p.id == pid) {
                match g.profile(space, &pid)? {
                    Some(p) => matched.push(p),
                    None => {
                        // A mapping to a profile that no longer exists: treat the id as new.
                        new_ids.push(id.clone());
                        continue;
                    }
                }
            }
            owner.insert(id.clone(), pid);
        }

        if matched.is_empty() {
            let members: Vec<Member> = ev
                .iter()
                .map(|i| Member {
                    id_type: i.id_type.clone(),
                    value: i.value.clone(),
                    first_seen_ms: now,
                })
                .collect();
            if ev.len() > 1 && breaks_limit(rules, &members, &[], now) {
                if let Some(d) = ev.pop() {
                    demoted.push(d);
                }
                continue;
            }
            let mut members = members;
            sort_members(&mut members);
            let pid = profile_id(space, &first);
            let profile = Profile {
                id: pid.clone(),
                created_ms: now,
                merges: 0,
                identifiers: members,
            };
            // Only a rules change can leave a retired id equal to a new profile's id.
            if g.alias(space, &pid)?.is_some() {
                g.remove_alias(space, &pid)?;
            }
            for i in &ev {
                g.set_mapping(space, i, &pid)?;
            }
            g.set_profile(space, &profile)?;
            return Ok(Some(Resolution {
                profile,
                outcome: Outcome::Created,
                merges: Vec::new(),
                demoted,
                untrusted,
            }));
        }

        if matched.len() > 1 && rules.merge_protection {
            let mut has_user = false;
            let mut refused = Vec::new();
            for p in &matched {
                if p.has_type("user_id") {
                    if has_user {
                        refused.push(p.id.clone());
                    }
                    has_user = true;
                }
            }
            if !refused.is_empty() {
                let (keep, drop): (Vec<Ident>, Vec<Ident>) = ev
                    .into_iter()
                    .partition(|i| owner.get(i).is_none_or(|pid| !refused.contains(pid)));
                ev = keep;
                untrusted.extend(drop);
                continue;
            }
        }

        let mut candidate: Vec<Member> = matched
            .iter()
            .flat_map(|p| p.identifiers.iter().cloned())
            .collect();
        candidate.extend(new_ids.iter().map(|i| Member {
            id_type: i.id_type.clone(),
            value: i.value.clone(),
            first_seen_ms: now,
        }));
        let existing: Vec<&Profile> = matched.iter().collect();
        if ev.len() > 1 && breaks_limit(rules, &candidate, &existing, now) {
            if let Some(d) = ev.pop() {
                demoted.push(d);
            }
            continue;
        }

        let anchor_profile = matched[0].clone();
        let capped = |cap| Resolution {
            profile: anchor_profile.clone(),
            outcome: Outcome::Capped(cap),
            merges: Vec::new(),
            demoted: demoted.clone(),
            untrusted: untrusted.clone(),
        };
        let merges: u32 =
            matched.iter().map(|p| p.merges).sum::<u32>() + (matched.len() as u32 - 1);
        if matched.len() > 1 && merges > rules.max_merges {
            return Ok(Some(capped(Cap::Merges)));
        }
        if new_ids.is_empty() && matched.len() == 1 {
            return Ok(Some(Resolution {
                profile: anchor_profile,
                outcome: Outcome::Matched,
                merges: Vec::new(),
                demoted,
                untrusted,
            }));
        }
        if candidate.len() > rules.max_identifiers as usize {
            return Ok(Some(capped(Cap::Identifiers)));
        }

        // Apply: the result is anchored at its highest-priority identifier.
        let new_anchor = match anchor(rules, &candidate) {
            Some(a) => a.ident(),
            None => first.clone(),
        };
        let new_pid = profile_id(space, &new_anchor);
        // The matched profile with the highest-priority anchor keeps its history; it is renamed
        // if the id changes. The others are merged into it.
        let survivor = matched
            .iter()
            .filter_map(|p| anchor(rules, &p.identifiers).map(|a| (a.ident(), &p.id)))
            .min_by(|a, b| order(&a.0, &b.0))
            .map(|(_, id)| id.clone())
            .unwrap_or_else(|| anchor_profile.id.clone());
        let mut steps = Vec::new();
        if g.alias(space, &new_pid)?.is_some() {
            g.remove_alias(space, &new_pid)?;
        }
        for p in &matched {
            if p.id == new_pid {
                continue;
            }
            g.set_alias(space, &p.id, &new_pid)?;
            g.remove_profile(space, &p.id)?;
            steps.push(MergeStep {
                from: p.id.clone(),
                into: new_pid.clone(),
                kind: if p.id == survivor {
                    MergeKind::Rename
                } else {
                    MergeKind::Merge
                },
            });
        }
        for m in &candidate {
            let stays = matched.iter().any(|p| {
                p.id == new_pid
                    && p.identifiers
                        .iter()
                        .any(|x| x.id_type == m.id_type && x.value == m.value)
            });
            if !stays {
                g.set_mapping(space, &m.ident(), &new_pid)?;
            }
        }
        sort_members(&mut candidate);
        candidate.dedup_by(|a, b| a.id_type == b.id_type && a.value == b.value);
        let profile = Profile {
            id: new_pid,
            created_ms: matched.iter().map(|p| p.created_ms).min().unwrap_or(now),
            merges,
            identifiers: candidate,
        };
        g.set_profile(space, &profile)?;
        let outcome = if matched.len() > 1 {
            Outcome::Merged
        } else {
            Outcome::Added
        };
        // Merges first, the survivor's rename last: consumers fold the others in before the id moves.
        steps.sort_by_key(|s| s.kind == MergeKind::Rename);
        return Ok(Some(Resolution {
            profile,
            outcome,
            merges: steps,
            demoted,
            untrusted,
        }));
    }
}

/// The identity graph in memory: tests, the property test's system under test, benchmarks.
#[derive(Debug, Default, Clone)]
pub struct MemGraph {
    pub mappings: HashMap<(String, Ident), String>,
    pub profiles: HashMap<(String, String), Profile>,
    pub aliases: HashMap<(String, String), String>,
}

impl Graph for MemGraph {
    type Error = std::convert::Infallible;
    fn mapping(&mut self, space: &str, ident: &Ident) -> Result<Option<String>, Self::Error> {
        Ok(self
            .mappings
            .get(&(space.to_string(), ident.clone()))
            .cloned())
    }
    fn set_mapping(&mut self, space: &str, ident: &Ident, pid: &str) -> Result<(), Self::Error> {
        self.mappings
            .insert((space.to_string(), ident.clone()), pid.to_string());
        Ok(())
    }
    fn profile(&mut self, space: &str, pid: &str) -> Result<Option<Profile>, Self::Error> {
        Ok(self
            .profiles
            .get(&(space.to_string(), pid.to_string()))
            .cloned())
    }
    fn set_profile(&mut self, space: &str, profile: &Profile) -> Result<(), Self::Error> {
        self.profiles
            .insert((space.to_string(), profile.id.clone()), profile.clone());
        Ok(())
    }
    fn remove_profile(&mut self, space: &str, pid: &str) -> Result<(), Self::Error> {
        self.profiles.remove(&(space.to_string(), pid.to_string()));
        Ok(())
    }
    fn alias(&mut self, space: &str, pid: &str) -> Result<Option<String>, Self::Error> {
        Ok(self
            .aliases
            .get(&(space.to_string(), pid.to_string()))
            .cloned())
    }
    fn set_alias(&mut self, space: &str, from: &str, into: &str) -> Result<(), Self::Error> {
        self.aliases
            .insert((space.to_string(), from.to_string()), into.to_string());
        Ok(())
    }
    fn remove_alias(&mut self, space: &str, pid: &str) -> Result<(), Self::Error> {
        self.aliases.remove(&(space.to_string(), pid.to_string()));
        Ok(())
    }
}

impl MemGraph {
    /// Resolves with an infallible graph.
    pub fn resolve(
        &mut self,
        rules: &Rules,
        space: &str,
        ids: &[Ident],
        now: i64,
    ) -> Option<Resolution> {
        match resolve(self, rules, space, ids, now) {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }

    /// The live profile id of an identifier.
    pub fn profile_of(&self, space: &str, ident: &Ident) -> Option<String> {
        self.mappings
            .get(&(space.to_string(), ident.clone()))
            .cloned()
    }

    /// The live profile a (possibly retired) profile id resolves to.
    pub fn follow(&mut self, space: &str, pid: &str) -> String {
        match canonical(self, space, pid) {
            Ok(p) => p,
            Err(never) => match never {},
        }
    }
}
