//! Compute's query interface (`corral_compute::query::router`): its answer types and a client,
//! for `corralctl profile show` and the tests. Errors are mapped to compute's.

use std::time::Duration;

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

/// A client of one compute instance's query interface.
#[derive(Debug, Clone)]
pub struct QueryClient(super::QueryClient);

impl QueryClient {
    /// `addr` is `host:port`; a leading `http://` and a trailing `/` are accepted.
    pub fn new(addr: &str) -> QueryClient {
        QueryClient(super::QueryClient::new("compute", addr))
    }

    pub fn with_timeout(self, timeout: Duration) -> QueryClient {
        QueryClient(self.0.with_timeout(timeout))
    }

    /// Sends `token` with every request.
    pub fn with_token(self, token: Option<String>) -> QueryClient {
        QueryClient(self.0.with_token(token))
    }

    pub fn addr(&self) -> &str {
        self.0.addr()
    }

    /// The profile as compute holds it.
    pub fn profile(&self, space: &str, profile_id: &str) -> Result<ProfileAnswer, ClientError> {
        self.0.get_json(&format!(
            "/v1/spaces/{}/profiles/{}",
            encode_segment(space),
            encode_segment(profile_id)
        ))
    }

    /// Whether the instance has loaded its profiles (its `/readyz`).
    pub fn ready(&self) -> Result<bool, ClientError> {
        self.0.ready()
    }
}
