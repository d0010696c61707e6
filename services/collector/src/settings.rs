//! What analytics.js (`@segment/analytics-next`) loads before it sends anything:
//! `GET {cdnURL}/v1/projects/{writeKey}/settings`. Segment's CDN answers with the source's
//! destinations, tracking plan and middleware; the collector answers with only the `Segment.io`
//! integration pointed at itself, so a site that sets `cdnURL` to the collector (or loads the
//! bundle the collector serves) sends every event here and nowhere else.
//!
//! The fields analytics-next 1.84 reads, and what the collector puts there:
//! - `integrations["Segment.io"]`: `apiKey` (the write key, sent back as `writeKey` in each
//!   event), `apiHost` (`host[:port][/path]/v1`, no scheme: the plugin posts to
//!   `{protocol}://{apiHost}/{t,i,p,g,a,s}`), `protocol` (`http` or `https`; analytics.js assumes
//!   https when it is absent), and `deliveryStrategy` (`standard`, `keepalive: true`, so an event
//!   sent as the page unloads is not cancelled by the navigation). A page's own
//!   `integrations: {"Segment.io": {...}}` load option overrides any of these.
//! - `integrations` has no other key: more than one would make analytics.js load "device mode"
//!   destination bundles from Segment's CDN.
//! - `plan: {}`, `middlewareSettings: {}`, `enabledMiddleware: {}`, `remotePlugins: []`,
//!   `legacyVideoPluginsEnabled: false`: no tracking-plan filter, no routing rules, no remote
//!   middleware or plugins (each would fetch code from Segment's CDN).
//! - `metrics.sampleRate: 0`: analytics.js sends no usage metrics (they would go to
//!   api.segment.io).

use std::net::IpAddr;

use axum::http::HeaderMap;
use serde_json::{json, Value};

use crate::error::ConfigError;
use crate::ip::Cidr;

/// Where browsers reach the collector: `--public-url`, e.g. `https://collect.example.com` or
/// `https://example.com/corral` behind a path-routing proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `http` or `https`.
    pub protocol: String,
    /// Host, optional port and optional path prefix, without a trailing slash.
    pub host_path: String,
}

impl PublicUrl {
    /// The `apiHost` analytics.js wants: no scheme, ends with `/v1`.
    pub fn api_host(&self) -> String {
        format!("{}/v1", self.host_path)
    }

    /// The URL itself, e.g. for logs and docs: `https://collect.example.com`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.protocol, self.host_path)
    }
}

impl std::str::FromStr for PublicUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ConfigError::PublicUrl {
            value: s.to_string(),
            why: why.to_string(),
        };
        let t = s.trim();
        let (protocol, rest) = t
            .split_once("://")
            .ok_or_else(|| bad("it needs a scheme, http:// or https://"))?;
        let protocol = protocol.to_ascii_lowercase();
        if protocol != "http" && protocol != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("it cannot have a query or fragment"));
        }
        let host_path = rest.trim_end_matches('/');
        let host = host_path.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return Err(bad("it has no host"));
        }
        if host_path.contains('@') || !host_path.chars().all(is_url_char) {
            return Err(bad(
                "the host and path may only use URL characters, without user info",
            ));
        }
        Ok(PublicUrl {
            protocol,
            host_path: host_path.to_string(),
        })
    }
}

/// Host and path characters accepted from configuration or a Host header: letters, digits and
/// `- . _ ~ : [ ] / %` (IPv6 literals, ports, percent-escapes). Nothing that could break out of
/// a URL.
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | ':' | '[' | ']' | '/' | '%')
}

/// The public URL for one request when none is configured: the `Host` header and `http` (the
/// collector itself speaks plain HTTP). From a trusted proxy, `X-Forwarded-Host` and
/// `X-Forwarded-Proto` win, so a TLS-terminating proxy yields `https://` its own host. `None`
/// when the request names no usable host.
pub fn from_request(
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    trusted: &[Cidr],
) -> Option<PublicUrl> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            // A proxy chain appends; the first value is what the browser asked for.
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let from_proxy = peer.is_some_and(|p| trusted.iter().any(|c| c.contains(p)));
    let forwarded_host = if from_proxy {
        header("x-forwarded-host")
    } else {
        None
    };
    let host = forwarded_host.or_else(|| header("host"))?;
    if host.contains('/') || host.contains('@') || !host.chars().all(is_url_char) {
        return None;
    }
    let protocol = match (from_proxy, header("x-forwarded-proto")) {
        (true, Some(p)) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    Some(PublicUrl {
        protocol: protocol.to_string(),
        host_path: host.to_string(),
    })
}

/// The settings document for `write_key`, with the collector at `public`.
pub fn cdn_settings(write_key: &str, public: &PublicUrl) -> Value {
    json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": public.api_host(),
                "protocol": public.protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": false,
                "deliveryStrategy": {
                    "strategy": "standard",
                    "config": { "keepalive": true }
                }
            }
        },
        "plan": {},
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "remotePlugins": [],
        "legacyVideoPluginsEnabled": false,
        "metrics": { "sampleRate": 0 },
        "analyticsNextEnabled": true
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn public_urls_parse_into_api_hosts() {
        let u: PublicUrl = "https://collect.example.com/".parse().unwrap();
        assert_eq!(u.protocol, "https");
        assert_eq!(u.api_host(), "collect.example.com/v1");
        assert_eq!(u.url(), "https://collect.example.com");
        let u: PublicUrl = "HTTP://127.0.0.1:8080/corral".parse().unwrap();
        assert_eq!(
            (u.protocol.as_str(), u.api_host().as_str()),
            ("http", "127.0.0.1:8080/corral/v1")
        );
        let u: PublicUrl = "http://[::1]:8080".parse().unwrap();
        assert_eq!(u.api_host(), "[::1]:8080/v1");
        for bad in [
            "collect.example.com",
            "ftp://x",
            "https://",
            "https:///path",
            "https://x/?q=1",
            "https://user@x",
            "https://x y",
            "https://x\"/",
        ] {
            assert!(bad.parse::<PublicUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_request_names_the_host_and_a_trusted_proxy_the_scheme() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("collect.example.com"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let u = from_request(&h, Some(peer), &[]).unwrap();
        assert_eq!(
            u.url(),
            "http://127.0.0.1:8080",
            "untrusted peer: its headers are ignored"
        );
        let trusted = ["10.0.0.0/8".parse::<Cidr>().unwrap()];
        let u = from_request(&h, Some(peer), &trusted).unwrap();
        assert_eq!(u.url(), "https://collect.example.com");
        h.insert("host", HeaderValue::from_static("evil.example/x"));
        assert_eq!(from_request(&h, None, &[]), None);
        assert_eq!(from_request(&HeaderMap::new(), None, &[]), None);
    }

    #[test]
    fn settings_point_only_at_the_collector() {
        let s = cdn_settings("wk", &"https://c.example".parse().unwrap());
        let io = &s["integrations"]["Segment.io"];
        assert_eq!(io["apiKey"], "wk");
        assert_eq!(io["apiHost"], "c.example/v1");
        assert_eq!(io["protocol"], "https");
        assert_eq!(s["integrations"].as_object().unwrap().len(), 1);
        assert_eq!(s["plan"], json!({}));
        assert_eq!(s["remotePlugins"], json!([]));
        assert_eq!(s["metrics"]["sampleRate"], 0);
    }
}
