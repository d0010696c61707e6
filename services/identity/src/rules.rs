//! Identity resolution settings per space (Segment's "Identity Resolution settings"): blocked
//! values, limits per id type (optionally within a time window), priority order, caps, merge
//! protection and custom id keys. Settings arrive as YAML files or as `identity_settings`
//! definitions; [`Rules`] is their compiled form; [`RulesStore`] holds one per space.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// `kind` of the definitions that carry a space's settings (key: the space id).
pub const KIND: &str = "identity_settings";

/// Segment's suggested blocked values plus the values peers learnt to refuse (PostHog's illegal
/// ids after issue #12008). Matched case-insensitively after trimming.
pub const DEFAULT_BLOCKED_EXACT: &[&str] = &[
    "null",
    "undefined",
    "anonymous",
    "[object object]",
    "nan",
    "none",
    "nil",
    "-1",
    "true",
    "false",
    "guest",
    "distinct_id",
    "distinctid",
    "not_authenticated",
    "id",
    "email",
    "\"\"",
    "''",
    "void",
];

/// Segment's suggested regex: empty, zeros and dashes (`0`, `000`, `---`).
pub const DEFAULT_BLOCKED_REGEX: &[&str] = &[r"^[0-]*$"];

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("identity settings are not valid YAML/JSON: {0}")]
    Parse(String),
    #[error("blocked value pattern {pattern:?} is not a valid regex: {source}")]
    Regex {
        pattern: String,
        source: regex::Error,
    },
    #[error("limit for {id_type:?}: {reason}")]
    Limit { id_type: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockedSettings {
    /// Include [`DEFAULT_BLOCKED_EXACT`] and [`DEFAULT_BLOCKED_REGEX`] (default true).
    #[serde(default = "yes")]
    pub use_defaults: bool,
    #[serde(default)]
    pub exact: Vec<String>,
    #[serde(default)]
    pub regex: Vec<String>,
}

fn yes() -> bool {
    true
}

/// `{max: 5, window: 7d}`; no window means "ever".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max: u32,
    #[serde(default)]
    pub window: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomId {
    #[serde(rename = "type")]
    pub id_type: String,
    /// `traits.x`, `context.traits.x`, `properties.x`.
    pub paths: Vec<String>,
}

/// A space's settings as written by people (YAML or the body of a definition).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub space_id: Option<String>,
    #[serde(default)]
    pub blocked_values: Option<BlockedSettings>,
    /// Per id type; types not listed get `default_limit`.
    #[serde(default)]
    pub limits: BTreeMap<String, LimitSettings>,
    #[serde(default)]
    pub default_limit: Option<LimitSettings>,
    /// Highest priority first. Unlisted types follow: `user_id`, `email`, then alphabetical.
    #[serde(default)]
    pub priority: Vec<String>,
    #[serde(default)]
    pub max_merges: Option<u32>,
    #[serde(default)]
    pub max_identifiers: Option<u32>,
    #[serde(default)]
    pub merge_protection: Option<bool>,
    #[serde(default)]
    pub custom_ids: Vec<CustomId>,
}

/// A file of settings for several spaces (`examples/identity.yaml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    /// Settings for spaces with no entry of their own.
    #[serde(default)]
    pub default: Option<Settings>,
    #[serde(default)]
    pub spaces: Vec<Settings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    /// Only identifiers first seen within this many milliseconds count.
    pub window_ms: Option<i64>,
}

/// Compiled settings of one space.
#[derive(Debug, Clone)]
pub struct Rules {
    blocked_exact: Vec<String>,
    blocked_regex: Vec<Regex>,
    limits: HashMap<String, Limit>,
    default_limit: Limit,
    priority: Vec<String>,
    pub max_merges: u32,
    pub max_identifiers: u32,
    pub merge_protection: bool,
    pub custom_ids: Vec<CustomId>,
}

impl Default for Rules {
    fn default() -> Self {
        // The defaults compile by construction (tested below).
        Rules::compile(&Settings::default()).unwrap_or_else(|_| Rules {
            blocked_exact: Vec::new(),
            blocked_regex: Vec::new(),
            limits: HashMap::new(),
            default_limit: Limit {
                max: 5,
                window_ms: None,
            },
            priority: Vec::new(),
            max_merges: 100,
            max_identifiers: 1000,
            merge_protection: true,
            custom_ids: Vec::new(),
        })
    }
}

fn limit(id_type: &str, s: &LimitSettings) -> Result<Limit, RulesError> {
    if s.max == 0 {
        return Err(RulesError::Limit {
            id_type: id_type.into(),
            reason: "max must be at least 1".into(),
        });
    }
    let window_ms = s
        .window
        .as_deref()
        .map(crate::parse_duration_ms)
        .transpose()
        .map_err(|reason| RulesError::Limit {
            id_type: id_type.into(),
            reason,
        })?;
    Ok(Limit {
        max: s.max,
        window_ms,
    })
}

impl Rules {
    pub fn compile(s: &Settings) -> Result<Rules, RulesError> {
        let blocked = s.blocked_values.clone().unwrap_or(BlockedSettings {
            use_defaults: true,
            ..Default::default()
        });
        let mut exact: Vec<String> = blocked
            .exact
            .iter()
            .map(|v| v.trim().to_lowercase())
            .collect();
        let mut patterns = blocked.regex.clone();
        if blocked.use_defaults {
            exact.extend(DEFAULT_BLOCKED_EXACT.iter().map(|s| s.to_string()));
            patterns.extend(DEFAULT_BLOCKED_REGEX.iter().map(|s| s.to_string()));
        }
        exact.sort();
        exact.dedup();
        let blocked_regex = patterns
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|source| RulesError::Regex {
                    pattern: p.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut limits = HashMap::from([(
            "user_id".to_string(),
            Limit {
                max: 1,
                window_ms: None,
            },
        )]);
        for (t, l) in &s.limits {
            limits.insert(t.clone(), limit(t, l)?);
        }
        let default_limit = match &s.default_limit {
            Some(l) => limit("(default)", l)?,
            None => Limit {
                max: 5,
                window_ms: None,
            },
        };
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = s.priority.iter().find(|t| !seen.insert(t.as_str())) {
            return Err(RulesError::Invalid(format!("priority lists {dup:?} twice")));
        }
        for c in &s.custom_ids {
            if c.id_type.is_empty() || c.id_type != c.id_type.to_ascii_lowercase() {
                return Err(RulesError::Invalid(format!(
                    "custom id type {:?} must be non-empty and lower-case",
                    c.id_type
                )));
            }
        }
        Ok(Rules {
            blocked_exact: exact,
            blocked_regex,
            limits,
            default_limit,
            priority: s.priority.clone(),
            max_merges: s.max_merges.unwrap_or(100),
            max_identifiers: s.max_identifiers.unwrap_or(1000).max(1),
            merge_protection: s.merge_protection.unwrap_or(true),
            custom_ids: s.custom_ids.clone(),
        })
    }

    pub fn from_yaml(text: &str) -> Result<Rules, RulesError> {
        let s: Settings =
            serde_yaml_ng::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))?;
        Rules::compile(&s)
    }

    /// Whether a value is never promoted to an identifier. Empty and whitespace-only values are
    /// always blocked.
    pub fn is_blocked(&self, value: &str) -> bool {
        let v = value.trim();
        if v.is_empty() {
            return true;
        }
        let lower = v.to_lowercase();
        self.blocked_exact.binary_search(&lower).is_ok()
            || self.blocked_regex.iter().any(|r| r.is_match(v))
    }

    pub fn limit(&self, id_type: &str) -> Limit {
        self.limits
            .get(id_type)
            .copied()
            .unwrap_or(self.default_limit)
    }

    /// Sort key: lower is higher priority. Listed types first in list order, then `user_id`,
    /// `email`, then every other type alphabetically (Segment's default order).
    pub fn rank(&self, id_type: &str) -> usize {
        if let Some(i) = self.priority.iter().position(|t| t == id_type) {
            return i;
        }
        let base = self.priority.len();
        match id_type {
            "user_id" => base,
            "email" => base + 1,
            _ => base + 2,
        }
    }

    /// Total priority order over identifiers: rank, then type, then value.
    pub fn ident_order(&self, a: &crate::ids::Ident, b: &crate::ids::Ident) -> std::cmp::Ordering {
        self.rank(&a.id_type)
            .cmp(&self.rank(&b.id_type))
            .then_with(|| a.id_type.cmp(&b.id_type))
            .then_with(|| a.value.cmp(&b.value))
    }
}

/// The compiled rules of every space, swapped atomically when a definition changes.
#[derive(Default)]
pub struct RulesStore {
    inner: RwLock<RulesSet>,
}

#[derive(Default, Clone)]
struct RulesSet {
    default: Arc<Rules>,
    spaces: HashMap<String, Arc<Rules>>,
}

impl RulesStore {
    pub fn new() -> Arc<RulesStore> {
        Arc::new(RulesStore::default())
    }

    /// Loads a settings file: its `default` and its spaces.
    pub fn load_file(&self, file: &SettingsFile) -> Result<(), RulesError> {
        let default = match &file.default {
            Some(s) => Arc::new(Rules::compile(s)?),
            None => Arc::new(Rules::default()),
        };
        let mut spaces = HashMap::new();
        for s in &file.spaces {
            let space = s.space_id.clone().ok_or_else(|| {
                RulesError::Invalid("every entry of `spaces` needs a space_id".into())
            })?;
            spaces.insert(space, Arc::new(Rules::compile(s)?));
        }
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.default = default;
        g.spaces.extend(spaces);
        Ok(())
    }

    pub fn set_space(&self, space: &str, rules: Rules) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.spaces.insert(space.to_string(), Arc::new(rules));
    }

    pub fn remove_space(&self, space: &str) {
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.spaces.remove(space);
    }

    pub fn for_space(&self, space: &str) -> Arc<Rules> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.spaces.get(space).unwrap_or(&g.default).clone()
    }
}

pub fn parse_file(text: &str) -> Result<SettingsFile, RulesError> {
    serde_yaml_ng::from_str(text).map_err(|e| RulesError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn segment_suggested_blocked_values() {
        let r = Rules::default();
        for v in [
            "null",
            "NULL",
            "anonymous",
            "-1",
            "0",
            "000",
            "---",
            "",
            "  ",
            "undefined",
            "[object Object]",
        ] {
            assert!(r.is_blocked(v), "{v:?} should be blocked");
        }
        for v in ["u1", "jane@example.com", "10", "a-0"] {
            assert!(!r.is_blocked(v), "{v:?} should not be blocked");
        }
    }

    #[test]
    fn custom_blocked_values_and_no_defaults() {
        let r = Rules::from_yaml(
            "blocked_values: {use_defaults: false, exact: [Test@Example.com], regex: ['^qa-']}",
        )
        .unwrap();
        assert!(r.is_blocked("test@example.com"));
        assert!(r.is_blocked("qa-123"));
        assert!(!r.is_blocked("null"));
        assert!(r.is_blocked(""), "empty is always blocked");
        assert!(matches!(
            Rules::from_yaml("blocked_values: {regex: ['(']}"),
            Err(RulesError::Regex { .. })
        ));
    }

    #[test]
    fn limits_default_to_segment_and_parse_windows() {
        let r = Rules::default();
        assert_eq!(r.limit("user_id").max, 1);
        assert_eq!(r.limit("anonymous_id").max, 5);
        let r = Rules::from_yaml("limits: {anonymous_id: {max: 5, window: 7d}}").unwrap();
        assert_eq!(r.limit("anonymous_id").window_ms, Some(7 * 86_400_000));
        assert!(Rules::from_yaml("limits: {email: {max: 0}}").is_err());
        assert!(Rules::from_yaml("limits: {email: {max: 2, window: soon}}").is_err());
        assert!(Rules::from_yaml("unknown_setting: 1").is_err());
    }

    #[test]
    fn priority_defaults_then_alphabetical() {
        use crate::ids::Ident;
        let r = Rules::default();
        let mut ids = [
            Ident::new("phone", "1"),
            Ident::new("anonymous_id", "a"),
            Ident::new("email", "e"),
            Ident::new("user_id", "u"),
        ];
        ids.sort_by(|a, b| r.ident_order(a, b));
        let types: Vec<_> = ids.iter().map(|i| i.id_type.as_str()).collect();
        assert_eq!(types, ["user_id", "email", "anonymous_id", "phone"]);
        let r = Rules::from_yaml("priority: [phone, user_id]").unwrap();
        ids.sort_by(|a, b| r.ident_order(a, b));
        let types: Vec<_> = ids.iter().map(|i| i.id_type.as_str()).collect();
        assert_eq!(types, ["phone", "user_id", "email", "anonymous_id"]);
        assert!(Rules::from_yaml("priority: [email, email]").is_err());
    }

    #[test]
    fn store_falls_back_to_default() {
        let store = RulesStore::new();
        let file =
            parse_file("default: {max_merges: 7}\nspaces:\n  - {space_id: s1, max_merges: 3}\n")
                .unwrap();
        store.load_file(&file).unwrap();
        assert_eq!(store.for_space("s1").max_merges, 3);
        assert_eq!(store.for_space("other").max_merges, 7);
    }
}

#[cfg(test)]
mod example_file {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_example_settings_file_loads() {
        let text = include_str!("../../../examples/identity.yaml");
        let file = super::parse_file(text).unwrap();
        let store = super::RulesStore::new();
        store.load_file(&file).unwrap();
        let demo = store.for_space("demo");
        assert!(demo.is_blocked("qa-7"));
        assert_eq!(demo.limit("phone").max, 2);
        assert_eq!(
            store.for_space("other").limit("anonymous_id").window_ms,
            Some(7 * 86_400_000)
        );
    }
}
