//! Tokens for the query interfaces (`corralctl tokens create|list|delete`): a random secret shown
//! once, and in the `definitions` topic only its SHA-256, for one space (see
//! `corral_runtime::auth`, which identity and compute follow and enforce).

use std::collections::BTreeMap;

use corral_runtime::auth::{digest, TokenBody, KIND};
use corral_runtime::definitions::{
    apply_versioned, definition_key, publish, read_all, Applied, Desired, READ_TIMEOUT,
};
use corral_runtime::RuntimeError;

/// A token just created: the secret (shown once) and what was written.
#[derive(Debug, Clone)]
pub struct Created {
    pub token: String,
    pub applied: Applied,
}

/// One token in force (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub space_id: String,
    pub id: String,
    pub version: i64,
    pub updated_at_ms: i64,
    pub updated_by: Option<String>,
}

/// A fresh random token (`crl_` and 40 hex digits from the OS's generator).
pub fn generate() -> String {
    let bytes: [u8; 20] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("crl_{hex}")
}

/// Creates (or replaces: the old secret stops working) token `id` of `space`.
pub fn create(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: &str,
    id: &str,
    updated_by: Option<&str>,
) -> Result<Created, RuntimeError> {
    let token = generate();
    let body = serde_json::to_value(TokenBody {
        sha256: digest(&token),
    })
    .map_err(|e| RuntimeError::Processor(format!("encoding a token: {e}")))?;
    let desired = Desired {
        space_id: space.to_string(),
        kind: KIND.to_string(),
        key: id.to_string(),
        name: None,
        body,
    };
    let mut applied = apply_versioned(
        bootstrap,
        kafka,
        topic,
        std::slice::from_ref(&desired),
        updated_by,
        |_| Ok::<_, RuntimeError>(()),
    )?;
    let applied = applied
        .pop()
        .ok_or_else(|| RuntimeError::Processor("nothing was applied".into()))?;
    Ok(Created { token, applied })
}

/// Every token in force, of `space` or of every space.
pub fn list(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: Option<&str>,
) -> Result<Vec<Listed>, RuntimeError> {
    Ok(read_all(bootstrap, kafka, topic, READ_TIMEOUT)?
        .into_values()
        .filter(|d| d.kind == KIND && space.is_none_or(|s| d.space_id == s))
        .map(|d| Listed {
            space_id: d.space_id,
            id: d.key,
            version: d.version,
            updated_at_ms: d.updated_at_ms,
            updated_by: d.updated_by,
        })
        .collect())
}

/// Deletes token `id` of `space` (it stops working at once everywhere); false when there is none.
pub fn delete(
    bootstrap: &str,
    kafka: &BTreeMap<String, String>,
    topic: &str,
    space: &str,
    id: &str,
) -> Result<bool, RuntimeError> {
    let key = definition_key(space, KIND, id);
    if !read_all(bootstrap, kafka, topic, READ_TIMEOUT)?.contains_key(&key) {
        return Ok(false);
    }
    publish(bootstrap, kafka, topic, &key, None)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_recognisable() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with("crl_") && a.len() == 44, "{a}");
    }
}
