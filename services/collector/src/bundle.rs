//! analytics.js itself, served by the collector so a site needs no third-party script host
//! (`--analytics-js DIR`). DIR is the `dist/umd` folder of the `@segment/analytics-next` npm
//! package, shipped with the deployment: `standalone.js` is what Segment's CDN serves as
//! `/analytics.js/v1/{writeKey}/analytics.min.js` (the snippet's script), and the
//! `*.bundle.*.js` chunks it loads lazily from `{cdn}/analytics-next/bundles/`.
//!
//! Every `.js` file of DIR is read once at start (about 300 KB for analytics-next 1.84): no
//! request ever touches the file system, so no path can escape DIR.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;

use crate::error::ConfigError;

/// The file analytics.min.js is served from.
pub const STANDALONE: &str = "standalone.js";

/// The bundle's files by name.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsJs {
    files: HashMap<String, Bytes>,
}

impl AnalyticsJs {
    /// Reads every `*.js` file of `dir`; `standalone.js` must be one of them.
    pub fn load(dir: &Path) -> Result<AnalyticsJs, ConfigError> {
        let shown = dir.display().to_string();
        let read_err = |source: std::io::Error| ConfigError::Read {
            path: shown.clone(),
            source,
        };
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let entry = entry.map_err(read_err)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_bundle_name(&name) || !entry.file_type().map_err(read_err)?.is_file() {
                continue;
            }
            let data = std::fs::read(entry.path()).map_err(|source| ConfigError::Read {
                path: entry.path().display().to_string(),
                source,
            })?;
            files.insert(name, Bytes::from(data));
        }
        if !files.contains_key(STANDALONE) {
            return Err(ConfigError::Invalid(format!(
                "--analytics-js {shown} has no {STANDALONE}: give the dist/umd folder of the @segment/analytics-next npm package"
            )));
        }
        Ok(AnalyticsJs { files })
    }

    /// The snippet's script.
    pub fn standalone(&self) -> Option<&Bytes> {
        self.files.get(STANDALONE)
    }

    /// A file by name (`standalone.js`, `index.js`, `*.bundle.*.js`).
    pub fn file(&self, name: &str) -> Option<&Bytes> {
        if is_bundle_name(name) {
            self.files.get(name)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// `name.js` with letters, digits, `.`, `-`, `_` only, not starting with a dot.
fn is_bundle_name(name: &str) -> bool {
    name.ends_with(".js")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn loads_the_js_files_and_needs_standalone() {
        let dir = std::env::temp_dir().join(format!("corral-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.js"), "x").unwrap();
        std::fs::write(dir.join("407.bundle.abc.js"), "chunk").unwrap();
        std::fs::write(dir.join("index.js.map"), "{}").unwrap();
        let e = AnalyticsJs::load(&dir).unwrap_err();
        assert!(e.to_string().contains("standalone.js"), "{e}");
        std::fs::write(dir.join("standalone.js"), "s").unwrap();
        let b = AnalyticsJs::load(&dir).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b.standalone().unwrap().as_ref(), b"s");
        assert_eq!(b.file("407.bundle.abc.js").unwrap().as_ref(), b"chunk");
        assert!(b.file("index.js.map").is_none());
        assert!(b.file("../standalone.js").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(AnalyticsJs::load(&dir).is_err());
    }
}
