//! Identity's query interface (`corral_identity::view::router`): its answer types and a client,
//! for `corralctl identity`, `corralctl profile` and the tests. Errors are mapped to identity's.

use corral_telemetry::http_client::encode_segment;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdView {
    #[serde(rename = "type")]
    pub id_type: String,
    pub id: String,
    pub collection: String,
    pub first_seen_ms: i64,
}

/// `GET .../profiles/{id}`: the live profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileView {
    pub profile_id: String,
    pub created_at_ms: i64,
    pub merges: u32,
    pub external_ids: Vec<ExternalIdView>,
}

/// `GET .../profiles/{id}/external_ids`, in the shape of Segment's Profile API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdsView {
    /// The live profile (a retired id asked for forwards to its survivor).
    pub profile_id: String,
    pub data: Vec<ExternalIdView>,
}

impl From<ProfileView> for ExternalIdsView {
    fn from(p: ProfileView) -> Self {
        ExternalIdsView {
            profile_id: p.profile_id,
            data: p.external_ids,
        }
    }
}

/// Where `deploy/local/services.sh` serves identity's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9113";

pub use super::ClientError;

/// The identity query interface.
#[derive(Debug, Clone)]
pub struct Identity;

impl super::Interface for Identity {
    const SERVICE: &'static str = "identity";
}

/// A client of one identity instance's query interface.
pub type QueryClient = super::QueryClient<Identity>;

impl QueryClient {
    /// The live profile of `id` (`type:value`, or a profile id: a retired one forwards).
    pub fn profile(&self, space: &str, id: &str) -> Result<ProfileView, ClientError> {
        self.get_json(&profile_path(space, id, false))
    }

    /// The external ids of the profile `id` names, with its live profile id.
    pub fn external_ids(&self, space: &str, id: &str) -> Result<ExternalIdsView, ClientError> {
        self.get_json(&profile_path(space, id, true))
    }
}

/// `/v1/spaces/{space}/collections/users/profiles/{id}[/external_ids]`, segments percent-encoded.
pub fn profile_path(space: &str, id: &str, external_ids: bool) -> String {
    format!(
        "/v1/spaces/{}/collections/users/profiles/{}{}",
        encode_segment(space),
        encode_segment(id),
        if external_ids { "/external_ids" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_encode_what_a_segment_cannot_hold() {
        assert_eq!(
            profile_path("space 1", "email:jane+x@example.com", false),
            "/v1/spaces/space%201/collections/users/profiles/email:jane%2Bx@example.com"
        );
        assert_eq!(
            profile_path("s", "custom:a/b?c#d%", true),
            "/v1/spaces/s/collections/users/profiles/custom:a%2Fb%3Fc%23d%25/external_ids"
        );
    }
}
