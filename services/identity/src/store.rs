//! The identity graph on a runtime state store (one store, `graph`, partition = coordinator
//! bucket). Keys are length-prefixed so no value can collide with another key:
//!
//! | key | value |
//! |---|---|
//! | `i` space type value | live profile id of the identifier (UTF-8) |
//! | `p` space profile-id | [`Profile`] as compact JSON |
//! | `a` space profile-id | the id a retired profile forwards to (UTF-8) |
//! | `x` space digest | a deleted identifier's deletion time (i64 ms, big-endian; `privacy`) |

use corral_runtime::{ProcessContext, ProcessError, Store};

use crate::engine::{Graph, Profile};
use crate::ids::Ident;

/// The graph store.
pub const STORE: Store = Store::named("graph");
pub const TAG_ID: u8 = corral_codec::routing::IDENTIFIER_TAG;
pub const TAG_PROFILE: u8 = b'p';
pub const TAG_ALIAS: u8 = b'a';

/// A tag and length-prefixed parts (the codec's, so `events.valid`'s routing keys and the
/// graph's identifier keys are the same bytes).
pub use corral_codec::routing::tagged_key as key;

/// Splits a key back into its tag and parts (the view and tools read the changelog with it).
pub fn decode_key(bytes: &[u8]) -> Option<(u8, Vec<String>)> {
    let (&tag, mut rest) = bytes.split_first()?;
    let mut parts = Vec::new();
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let part = rest.get(4..4 + len)?;
        parts.push(String::from_utf8(part.to_vec()).ok()?);
        rest = &rest[4 + len..];
    }
    Some((tag, parts))
}

pub fn id_key(space: &str, i: &Ident) -> Vec<u8> {
    corral_codec::routing::identifier_key(space, &i.id_type, &i.value)
}
pub fn profile_key(space: &str, pid: &str) -> Vec<u8> {
    key(TAG_PROFILE, &[space, pid])
}
pub fn alias_key(space: &str, pid: &str) -> Vec<u8> {
    key(TAG_ALIAS, &[space, pid])
}

pub fn encode_profile(p: &Profile) -> Result<Vec<u8>, ProcessError> {
    serde_json::to_vec(p).map_err(|e| ProcessError::Fatal(format!("encoding a profile: {e}")))
}

pub fn decode_profile(bytes: &[u8]) -> Result<Profile, String> {
    serde_json::from_slice(bytes)
        .map_err(|e| format!("corrupt profile record in the graph store: {e}"))
}

fn text(bytes: Vec<u8>) -> Result<String, ProcessError> {
    String::from_utf8(bytes)
        .map_err(|_| ProcessError::Fatal("corrupt profile id in the graph store".into()))
}

/// The graph of the record's partition, through the runtime's transactional store.
pub struct CtxGraph<'c, 'a> {
    pub ctx: &'c mut ProcessContext<'a>,
}

impl Graph for CtxGraph<'_, '_> {
    type Error = ProcessError;
    fn mapping(&mut self, space: &str, ident: &Ident) -> Result<Option<String>, ProcessError> {
        self.ctx
            .get(STORE, &id_key(space, ident))?
            .map(text)
            .transpose()
    }
    fn set_mapping(&mut self, space: &str, ident: &Ident, pid: &str) -> Result<(), ProcessError> {
        self.ctx
            .put(STORE, id_key(space, ident), pid.as_bytes().to_vec());
        Ok(())
    }
    fn profile(&mut self, space: &str, pid: &str) -> Result<Option<Profile>, ProcessError> {
        match self.ctx.get(STORE, &profile_key(space, pid))? {
            None => Ok(None),
            Some(b) => decode_profile(&b).map(Some).map_err(ProcessError::Fatal),
        }
    }
    fn set_profile(&mut self, space: &str, profile: &Profile) -> Result<(), ProcessError> {
        let v = encode_profile(profile)?;
        self.ctx.put(STORE, profile_key(space, &profile.id), v);
        Ok(())
    }
    fn remove_profile(&mut self, space: &str, pid: &str) -> Result<(), ProcessError> {
        self.ctx.delete(STORE, profile_key(space, pid));
        Ok(())
    }
    fn alias(&mut self, space: &str, pid: &str) -> Result<Option<String>, ProcessError> {
        self.ctx
            .get(STORE, &alias_key(space, pid))?
            .map(text)
            .transpose()
    }
    fn set_alias(&mut self, space: &str, from: &str, into: &str) -> Result<(), ProcessError> {
        self.ctx
            .put(STORE, alias_key(space, from), into.as_bytes().to_vec());
        Ok(())
    }
    fn remove_alias(&mut self, space: &str, pid: &str) -> Result<(), ProcessError> {
        self.ctx.delete(STORE, alias_key(space, pid));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_round_trip_and_never_collide() {
        let k = id_key("s\u{0}1", &Ident::new("email", "a:b"));
        assert_eq!(
            decode_key(&k),
            Some((TAG_ID, vec!["s\u{0}1".into(), "email".into(), "a:b".into()]))
        );
        assert_ne!(
            id_key("s", &Ident::new("ab", "c")),
            id_key("s", &Ident::new("a", "bc"))
        );
        assert_eq!(decode_key(&[TAG_ID, 0, 0, 0, 9, b'x']), None);
    }
}
