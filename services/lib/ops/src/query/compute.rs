//! Compute's query interface (`corral_compute::query::router`): its answer types and a client,
//! for `corralctl profile show` and the tests. Errors are mapped to compute's.

use corral_telemetry::http_client::encode_segment;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One external id of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalIdAnswer {
    #[serde(rename = "type")]
    pub id_type: String,
    pub id: String,
    pub collection: String,
}

/// `GET /v1/spaces/{space}/profiles/{profile_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileAnswer {
    pub profile_id: String,
    pub space: String,
    /// Every id seen on `events.resolved` for the profile (and profiles merged into it).
    pub external_ids: Vec<ExternalIdAnswer>,
    /// Custom traits from identify (removed ones are absent).
    pub traits: Map<String, Value>,
    /// Computed trait key → current value, for the computed traits in force.
    pub computed_traits: BTreeMap<String, Value>,
    /// Keys of the audiences in force the profile is a member of, sorted.
    pub audiences: Vec<String>,
}

/// Where `deploy/local/services.sh` serves compute's query interface.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9114";

pub use super::ClientError;

/// The compute query interface.
#[derive(Debug, Clone)]
pub struct Compute;

impl super::Interface for Compute {
    const SERVICE: &'static str = "compute";
}

/// A client of one compute instance's query interface.
pub type QueryClient = super::QueryClient<Compute>;

impl QueryClient {
    /// The profile as compute holds it.
    pub fn profile(&self, space: &str, profile_id: &str) -> Result<ProfileAnswer, ClientError> {
        self.get_json(&format!(
            "/v1/spaces/{}/profiles/{}",
            encode_segment(space),
            encode_segment(profile_id)
        ))
    }
}
