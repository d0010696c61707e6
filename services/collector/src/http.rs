//! The HTTP edge: routes, body reading and decompression, CORS, responses, metrics.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::Utc;
use corral_codec::{AvroRecord, DeadLetter};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::auth::{self, WriteKeys};
use crate::bundle::AnalyticsJs;
use crate::error::IngestError;
use crate::guard::Guards;
use crate::ingest::{self, Endpoint, Limits, Normalized, Receipt};
use crate::ip::{self, Cidr};
use crate::metrics::Metrics;
use crate::settings::{self, PublicUrl};
use crate::sink::{OutRecord, Sink, Topic};
use crate::suppress::SharedSuppressions;
use corral_codec::MessageType;

/// Everything a request handler needs.
pub struct App<S> {
    pub sink: S,
    pub keys: WriteKeys,
    pub limits: Limits,
    pub trusted_proxies: Vec<Cidr>,
    pub metrics: Metrics,
    pub raw_topic: String,
    pub retry_after_seconds: u64,
    pub guards: Guards,
    /// Where browsers reach the collector (`--public-url`); `None`: each request's Host.
    pub public_url: Option<PublicUrl>,
    /// analytics.js's files (`--analytics-js`); `None`: not served.
    pub analytics_js: Option<AnalyticsJs>,
    /// Identifiers whose events are dropped (privacy regulations, docs/privacy.md).
    pub suppressions: SharedSuppressions,
}

/// Paths and the endpoint each serves (the one-letter forms are analytics.js's).
pub const ROUTES: &[(&str, Endpoint)] = &[
    ("/v1/track", Endpoint::Single(MessageType::Track)),
    ("/v1/t", Endpoint::Single(MessageType::Track)),
    ("/v1/identify", Endpoint::Single(MessageType::Identify)),
    ("/v1/i", Endpoint::Single(MessageType::Identify)),
    ("/v1/page", Endpoint::Single(MessageType::Page)),
    ("/v1/p", Endpoint::Single(MessageType::Page)),
    ("/v1/screen", Endpoint::Single(MessageType::Screen)),
    ("/v1/s", Endpoint::Single(MessageType::Screen)),
    ("/v1/group", Endpoint::Single(MessageType::Group)),
    ("/v1/g", Endpoint::Single(MessageType::Group)),
    ("/v1/alias", Endpoint::Single(MessageType::Alias)),
    ("/v1/a", Endpoint::Single(MessageType::Alias)),
    ("/v1/batch", Endpoint::Batch),
    ("/v1/b", Endpoint::Batch),
    ("/v1/import", Endpoint::Batch),
];

/// The Tracking API router (admin routes are merged in by the caller).
pub fn router<S: Sink>(app: Arc<App<S>>) -> Router {
    let mut r = Router::new();
    for (path, endpoint) in ROUTES {
        let endpoint = *endpoint;
        r = r.route(
            path,
            post(
                move |State(app): State<Arc<App<S>>>, req: Request| async move {
                    handle(app, endpoint, req).await
                },
            ),
        );
    }
    r = r.route(
        SETTINGS_ROUTE,
        get(
            move |State(app): State<Arc<App<S>>>,
                  key: Result<Path<String>, PathRejection>,
                  req: Request| async move { project_settings(&app, key, &req) },
        ),
    );
    r = r
        .route(
            SNIPPET_ROUTE,
            get(
                move |State(app): State<Arc<App<S>>>,
                      key: Result<Path<String>, PathRejection>| async move {
                    analytics_js(&app, AnalyticsJsFile::Snippet(key))
                },
            ),
        )
        .route(
            CHUNK_ROUTE,
            get(
                move |State(app): State<Arc<App<S>>>,
                      file: Result<Path<String>, PathRejection>| async move {
                    analytics_js(&app, AnalyticsJsFile::Chunk(file))
                },
            ),
        );
    let retry_after = app.retry_after_seconds;
    r.with_state(app)
        .fallback(move |req: Request| async move {
            IngestError::NotFound(req.uri().path().to_string()).to_response(retry_after)
        })
        .method_not_allowed_fallback(move |req: Request| async move {
            IngestError::MethodNotAllowed(req.method().to_string()).to_response(retry_after)
        })
        .layer(middleware::from_fn(cors))
}

/// What analytics.js fetches from its `cdnURL` before it sends anything (see [`settings`]).
pub const SETTINGS_ROUTE: &str = "/v1/projects/{write_key}/settings";

/// `GET /v1/projects/{writeKey}/settings`: the `Segment.io` integration pointed at this
/// collector, for a write key that it accepts; 404 `invalid_write_key` for any other.
fn project_settings<S: Sink>(
    app: &App<S>,
    key: Result<Path<String>, PathRejection>,
    req: &Request,
) -> Response {
    let started = Instant::now();
    let resp = match settings_body(app, key, req) {
        Ok(body) => {
            let mut resp = (StatusCode::OK, axum::Json(body)).into_response();
            // Short: a revoked key or a changed --public-url reaches browsers within a minute.
            resp.headers_mut().insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=60"),
            );
            resp
        }
        Err(e) => {
            tracing::debug!(code = e.code(), error = %e, "settings request rejected");
            let mut resp = e.to_response(app.retry_after_seconds);
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            resp
        }
    };
    app.metrics
        .requests
        .with_label_values(&["settings", resp.status().as_str()])
        .inc();
    app.metrics
        .request_duration
        .with_label_values(&["settings"])
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn settings_body<S: Sink>(
    app: &App<S>,
    key: Result<Path<String>, PathRejection>,
    req: &Request,
) -> Result<serde_json::Value, IngestError> {
    let Path(key) =
        key.map_err(|e| IngestError::InvalidRequest(format!("bad write key in the path: {e}")))?;
    if app.keys.get(&key).is_none() {
        return Err(IngestError::UnknownWriteKey);
    }
    let public = match &app.public_url {
        Some(p) => p.clone(),
        None => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip());
            settings::from_request(req.headers(), peer, &app.trusted_proxies).ok_or_else(|| {
                IngestError::InvalidRequest(
                    "the request has no usable Host header to build the apiHost from; send one, or start the collector with --public-url".into(),
                )
            })?
        }
    };
    Ok(settings::cdn_settings(&key, &public))
}

/// The snippet's script, as Segment's CDN names it (with `--analytics-js`).
pub const SNIPPET_ROUTE: &str = "/analytics.js/v1/{write_key}/analytics.min.js";
/// The chunks analytics.js loads lazily from `{cdn}/analytics-next/bundles/`.
pub const CHUNK_ROUTE: &str = "/analytics-next/bundles/{file}";

enum AnalyticsJsFile {
    Snippet(Result<Path<String>, PathRejection>),
    Chunk(Result<Path<String>, PathRejection>),
}

/// `GET` of analytics.js's own files: the snippet's script for a write key the collector
/// accepts, or one of its chunks; 404 when `--analytics-js` is not set.
fn analytics_js<S: Sink>(app: &App<S>, file: AnalyticsJsFile) -> Response {
    let found = || -> Result<Bytes, IngestError> {
        let files = app.analytics_js.as_ref().ok_or_else(|| {
            IngestError::NotFound(
                "analytics.js (this collector does not serve it; start it with --analytics-js DIR)"
                    .into(),
            )
        })?;
        match &file {
            AnalyticsJsFile::Snippet(key) => {
                let key = match key {
                    Ok(Path(k)) => k,
                    Err(_) => return Err(IngestError::UnknownWriteKey),
                };
                if app.keys.get(key).is_none() {
                    return Err(IngestError::UnknownWriteKey);
                }
                files
                    .standalone()
                    .cloned()
                    .ok_or_else(|| IngestError::NotFound("analytics.min.js".into()))
            }
            AnalyticsJsFile::Chunk(name) => {
                let name = name.as_ref().map(|Path(n)| n.as_str()).unwrap_or_default();
                files
                    .file(name)
                    .cloned()
                    .ok_or_else(|| IngestError::NotFound(format!("/analytics-next/bundles/{name}")))
            }
        }
    };
    let resp = match found() {
        Ok(body) => {
            let mut resp = (StatusCode::OK, body).into_response();
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            );
            h.insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=300"),
            );
            resp
        }
        Err(e) => {
            let mut resp = e.to_response(app.retry_after_seconds);
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            resp
        }
    };
    app.metrics
        .requests
        .with_label_values(&["analytics_js", resp.status().as_str()])
        .inc();
    resp
}

const ALLOW_HEADERS: &str = "Authorization, Content-Type, Content-Encoding, X-Retry-Count";

/// CORS for analytics.js: preflights are answered here; every response carries
/// `Access-Control-Allow-Origin` (the request's Origin). Never `Allow-Credentials`: a page's
/// cookies have no business at the collector, and the write key travels in the request itself.
async fn cors(req: Request, next: Next) -> Response {
    let origin = req.headers().get("origin").cloned();
    if req.method() == Method::OPTIONS {
        let requested = req
            .headers()
            .get("access-control-request-headers")
            .cloned()
            .unwrap_or(HeaderValue::from_static(ALLOW_HEADERS));
        let mut resp = StatusCode::OK.into_response();
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert("access-control-allow-headers", requested);
        h.insert("access-control-max-age", HeaderValue::from_static("86400"));
        set_origin(h, origin);
        return resp;
    }
    let mut resp = next.run(req).await;
    set_origin(resp.headers_mut(), origin);
    resp
}

fn set_origin(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    match origin {
        Some(o) => {
            h.insert("access-control-allow-origin", o);
            h.append("vary", HeaderValue::from_static("Origin"));
        }
        None => {
            h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        }
    }
}

fn success() -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"success": true})),
    )
        .into_response()
}

async fn handle<S: Sink>(app: Arc<App<S>>, endpoint: Endpoint, req: Request) -> Response {
    let started = Instant::now();
    let label = endpoint.label();
    let (parts, body) = req.into_parts();
    let retried = parts
        .headers
        .get("x-retry-count")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if retried > 0 {
        app.metrics.client_retries.inc();
    }
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let resp = match ingest_request(&app, endpoint, &parts.headers, peer, body).await {
        Ok(()) => success(),
        Err(e) => {
            if e.status().is_server_error() || e.retryable() {
                tracing::warn!(endpoint = label, code = e.code(), error = %e, "request not accepted");
            } else {
                tracing::debug!(endpoint = label, code = e.code(), error = %e, "request rejected");
            }
            e.to_response(app.retry_after_seconds)
        }
    };
    app.metrics
        .requests
        .with_label_values(&[label, resp.status().as_str()])
        .inc();
    app.metrics
        .request_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn ingest_request<S: Sink>(
    app: &App<S>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: Body,
) -> Result<(), IngestError> {
    // A bad Basic key is rejected before the body is read.
    let header_cred =
        auth::header_credential(headers.get("authorization").and_then(|v| v.to_str().ok()))?;
    let header_source = match &header_cred {
        auth::HeaderCredential::WriteKey(k) => {
            Some(app.keys.get(k).ok_or(IngestError::InvalidWriteKey)?)
        }
        auth::HeaderCredential::None => None,
    };
    let limit = app.limits.max_request_bytes;
    let timeout = app.guards.body_timeout;
    let raw = tokio::time::timeout(timeout, read_body(body, headers, limit))
        .await
        .map_err(|_| IngestError::BodyTimeout(timeout))??;
    app.metrics.request_size.observe(raw.len() as f64);
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase());
    let decoded = decode_body(encoding.as_deref(), raw, limit)?;
    let json = ingest::parse_body(&decoded)?;
    drop(decoded);
    let mut envelope = ingest::split(endpoint, json, &app.limits)?;
    // The header's key was resolved above (one hash per request); else the body's.
    let source = match header_source {
        Some(s) => s,
        None => auth::resolve(&app.keys, &header_cred, envelope.write_key.as_deref())?,
    };
    if let Some(limiter) = &app.guards.per_key {
        limiter
            .check(&source.key_id)
            .map_err(|wait| IngestError::KeyRateLimited {
                retry_after_seconds: wait.as_secs_f64().ceil() as u64,
            })?;
    }

    let client_ip = peer.map(|p| {
        let xff = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        ip::client_ip(p, xff, &app.trusted_proxies).to_string()
    });
    let rcpt = Receipt {
        received_at: Utc::now(),
        space_id: &source.space_id,
        source_id: &source.source_id,
        key_id: &source.key_id,
        client_ip,
    };

    let mut records = Vec::with_capacity(envelope.items.len());
    let mut counted: Vec<(&'static str, &'static str)> = Vec::with_capacity(envelope.items.len());
    // Taken, not cloned: each item is moved into its record (a batch clone was the biggest
    // cost under load, see docs/benchmarks/collector.md).
    let items = std::mem::take(&mut envelope.items);
    for item in items {
        match ingest::normalize(item, &envelope, &rcpt, || uuid::Uuid::new_v4().to_string()) {
            Normalized::Accepted(msg) => {
                if app.suppressions.drops(&source.space_id, &msg) {
                    // Answered like an accepted message, never written (docs/privacy.md).
                    app.metrics.suppressed.inc();
                    app.metrics
                        .messages
                        .with_label_values(&[msg.message_type.as_str(), "suppressed"])
                        .inc();
                    continue;
                }
                let value = msg.encode().map_err(|e| {
                    IngestError::InvalidRequest(format!(
                        "message {} could not be encoded: {e}",
                        msg.message_id
                    ))
                })?;
                counted.push((msg.message_type.as_str(), "accepted"));
                records.push(OutRecord {
                    topic: Topic::Raw,
                    // On the partition of the identity stitcher and the validator's memory of
                    // this message (`corral_codec::routing`).
                    key: Some(corral_codec::routing::message_key(&msg)),
                    value,
                });
            }
            Normalized::Dead(d) => {
                let dl = DeadLetter {
                    space_id: source.space_id.clone(),
                    service: "collector".into(),
                    origin_topic: app.raw_topic.clone(),
                    origin_partition: -1,
                    origin_offset: -1,
                    key: d.message_id.as_ref().map(|m| m.clone().into_bytes()),
                    value: Some(d.payload.clone()),
                    error: d.error.clone(),
                    reason: d.reason.as_str().into(),
                    failed_at_ms: rcpt.received_at.timestamp_millis(),
                };
                let value = dl.encode().map_err(|e| {
                    IngestError::InvalidRequest(format!("dead letter could not be encoded: {e}"))
                })?;
                app.metrics
                    .dead_letters
                    .with_label_values(&[d.reason.as_str()])
                    .inc();
                counted.push((
                    d.message_type.map(|t| t.as_str()).unwrap_or("unknown"),
                    "dead_lettered",
                ));
                records.push(OutRecord {
                    topic: Topic::Dlq,
                    key: None,
                    value,
                });
            }
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    let write_started = Instant::now();
    match app.sink.write(records).await {
        Ok(()) => {
            app.metrics
                .kafka_write_duration
                .observe(write_started.elapsed().as_secs_f64());
            for (t, outcome) in counted {
                app.metrics.messages.with_label_values(&[t, outcome]).inc();
            }
            Ok(())
        }
        Err(e) => {
            app.metrics
                .produce_errors
                .with_label_values(&[e.label()])
                .inc();
            for (t, _) in counted {
                app.metrics
                    .messages
                    .with_label_values(&[t, "rejected"])
                    .inc();
            }
            Err(e.into())
        }
    }
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is `request_too_large`.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, IngestError> {
    if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(IngestError::RequestTooLarge {
                what: "the request body",
                size: len,
                limit,
            });
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(IngestError::RequestTooLarge {
                what: "the request body",
                size: limit + 1,
                limit,
            })
        }
        Err(e) => Err(IngestError::InvalidRequest(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

/// Decompresses per `Content-Encoding`, capping the decompressed size at `limit`.
pub fn decode_body(encoding: Option<&str>, raw: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    let mut out = Vec::new();
    let enc = encoding.unwrap_or("identity");
    let result = match enc {
        "" | "identity" => return Ok(raw),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(&raw[..])
            .take(limit as u64 + 1)
            .read_to_end(&mut out),
        other => return Err(IngestError::UnsupportedEncoding(other.to_string())),
    };
    match result {
        Ok(_) if out.len() > limit => Err(IngestError::RequestTooLarge {
            what: "the decompressed request body",
            size: out.len(),
            limit,
        }),
        Ok(_) => Ok(Bytes::from(out)),
        Err(e) => Err(IngestError::InvalidEncoding {
            encoding: enc.to_string(),
            detail: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::auth::Source;
    use crate::error::SinkError;
    use crate::sink::MemorySink;
    use base64::Engine;
    use corral_codec::RawEvent;
    use std::io::Write;
    use tower::ServiceExt;

    fn app() -> Arc<App<MemorySink>> {
        let registry = prometheus::Registry::new();
        Arc::new(App {
            sink: MemorySink::default(),
            keys: WriteKeys::new([(
                "wk".to_string(),
                Source {
                    source_id: "demo".into(),
                    space_id: "default".into(),
                    key_id: "demo".into(),
                },
            )]),
            limits: Limits {
                max_message_bytes: 1024,
                max_request_bytes: 4096,
                max_batch_messages: 5,
            },
            trusted_proxies: vec![],
            metrics: Metrics::new(&registry).unwrap(),
            raw_topic: "t.events.raw".into(),
            retry_after_seconds: 2,
            guards: Guards::default(),
            public_url: None,
            analytics_js: None,
            suppressions: Default::default(),
        })
    }

    #[tokio::test]
    async fn suppressed_identifiers_get_200_and_are_never_written() {
        use corral_ops::privacy::{Regulation, RegulationType, KIND};
        let app = app();
        let definition = corral_codec::Definition {
            space_id: "default".into(),
            kind: KIND.into(),
            key: "r1".into(),
            version: 1,
            name: None,
            body: Regulation {
                regulation_type: RegulationType::SuppressWithDelete,
                subjects: vec!["email:gone@example.com".parse().unwrap()],
                created_at_ms: 1,
            }
            .to_json(),
            updated_at_ms: 0,
            updated_by: None,
        };
        assert!(app
            .suppressions
            .apply(&corral_runtime::definitions::DefinitionEvent::Upsert {
                key: "default/regulation/r1",
                definition,
            }));
        let req = post("/v1/batch")
            .header("authorization", basic())
            .body(Body::from(
                r#"{"batch":[{"type":"track","userId":"u1","event":"E","context":{"traits":{"email":"gone@example.com"}}},
                             {"type":"identify","userId":"u2","traits":{"email":"kept@example.com"}}]}"#,
            ))
            .unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"success": true}));
        let recs = app.sink.records.lock().unwrap().clone();
        assert_eq!(recs.len(), 1, "only u2's identify is written");
        let ev = RawEvent::decode(&recs[0].value).unwrap();
        assert_eq!(ev.user_id.as_deref(), Some("u2"));
        assert_eq!(app.metrics.suppressed.get(), 1);
        assert_eq!(
            app.metrics
                .messages
                .with_label_values(&["track", "suppressed"])
                .get(),
            1
        );
    }

    fn basic() -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("wk:")
        )
    }

    async fn call(
        app: &Arc<App<MemorySink>>,
        req: axum::http::Request<Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let resp = router(app.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        (status, headers, json)
    }

    fn post(path: &str) -> axum::http::request::Builder {
        axum::http::Request::post(path)
    }

    #[tokio::test]
    async fn track_is_written_with_200_and_small_body() {
        let app = app();
        let req = post("/v1/t")
            .header("authorization", basic())
            .header("content-type", "text/plain")
            .body(Body::from(
                r#"{"userId":"u","event":"E","properties":{"n":1}}"#,
            ))
            .unwrap();
        let (status, _, body) = call(&app, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"success": true}));
        let recs = app.sink.records.lock().unwrap().clone();
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].topic, Topic::Raw);
        let ev = RawEvent::decode(&recs[0].value).unwrap();
        assert_eq!(
            recs[0].key,
            Some(corral_codec::routing::message_key(&ev)),
            "keyed for the stitcher and the validator's memory"
        );
        assert_eq!(ev.event.as_deref(), Some("E"));
        assert_eq!(ev.source_id.as_deref(), Some("demo"));
    }

    #[tokio::test]
    async fn errors_are_json_with_code_and_message() {
        let app = app();
        let cases: Vec<(axum::http::Request<Body>, StatusCode, &str)> = vec![
            (
                post("/v1/batch").body(Body::from("{nope")).unwrap(),
                StatusCode::BAD_REQUEST,
                "invalid_json",
            ),
            (
                post("/v1/batch")
                    .body(Body::from(r#"{"batch":[]}"#))
                    .unwrap(),
                StatusCode::UNAUTHORIZED,
                "missing_write_key",
            ),
            (
                post("/v1/batch")
                    .body(Body::from(r#"{"batch":[],"writeKey":"x"}"#))
                    .unwrap(),
                StatusCode::UNAUTHORIZED,
                "invalid_write_key",
            ),
            (
                post("/v1/batch")
                    .header("authorization", basic())
                    .body(Body::from(vec![b' '; 5000]))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "request_too_large",
            ),
            (
                post("/v1/batch")
                    .header("authorization", basic())
                    .header("content-encoding", "br")
                    .body(Body::from("{}"))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "unsupported_encoding",
            ),
            (
                post("/v1/batch")
                    .header("authorization", basic())
                    .header("content-encoding", "gzip")
                    .body(Body::from("not gzip"))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
                "invalid_encoding",
            ),
            (
                post("/v2/nothing").body(Body::empty()).unwrap(),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                axum::http::Request::get("/v1/track")
                    .body(Body::empty())
                    .unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
        ];
        for (req, status, code) in cases {
            let (s, _, body) = call(&app, req).await;
            assert_eq!(
                (s, body["code"].as_str().unwrap()),
                (status, code),
                "{body}"
            );
            assert!(body["message"].as_str().unwrap().len() > 5);
        }
    }

    #[tokio::test]
    async fn gzip_bodies_and_decompressed_cap() {
        let app = app();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"{"batch":[{"type":"identify","userId":"u"}],"writeKey":"wk"}"#)
            .unwrap();
        let req = post("/v1/batch")
            .header("content-encoding", "gzip")
            .body(Body::from(gz.finish().unwrap()))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::OK);
        // 100 KB of spaces compress to ~100 bytes: the cap applies after decompression.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&vec![b' '; 100_000]).unwrap();
        let req = post("/v1/batch")
            .header("authorization", basic())
            .header("content-encoding", "gzip")
            .body(Body::from(gz.finish().unwrap()))
            .unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(
            (s, body["code"].as_str().unwrap()),
            (StatusCode::BAD_REQUEST, "request_too_large")
        );
        assert!(body["message"].as_str().unwrap().contains("decompressed"));
    }

    #[tokio::test]
    async fn sink_failures_are_503_or_429_with_retry_after() {
        let app = app();
        for (err, status) in [
            (
                SinkError::Unavailable("down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (SinkError::QueueFull, StatusCode::TOO_MANY_REQUESTS),
        ] {
            *app.sink.fail.lock().unwrap() = Some(err);
            let req = post("/v1/identify")
                .header("authorization", basic())
                .body(Body::from(r#"{"userId":"u"}"#))
                .unwrap();
            let (s, headers, body) = call(&app, req).await;
            assert_eq!(s, status);
            assert_eq!(headers.get("retry-after").unwrap(), "2");
            assert!(body["code"].is_string() && body["message"].is_string());
        }
    }

    #[tokio::test]
    async fn unusable_messages_get_200_and_a_dead_letter() {
        let app = app();
        let req = post("/v1/batch")
            .header("authorization", basic())
            .body(Body::from(
                r#"{"batch":[{"type":"track","userId":"u"},{"type":"identify","userId":"u"}]}"#,
            ))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::OK);
        let recs = app.sink.records.lock().unwrap().clone();
        assert_eq!(
            recs.iter().map(|r| r.topic).collect::<Vec<_>>(),
            [Topic::Dlq, Topic::Raw]
        );
        let dl = DeadLetter::decode(&recs[0].value).unwrap();
        assert_eq!(dl.reason, "missing_event");
        assert_eq!(dl.service, "collector");
        assert_eq!(
            app.metrics
                .dead_letters
                .with_label_values(&["missing_event"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn cors_preflight_and_origin() {
        let app = app();
        let req = axum::http::Request::builder()
            .method("OPTIONS")
            .uri("/v1/t")
            .header("origin", "https://shop.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap();
        let (s, h, _) = call(&app, req).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            h.get("access-control-allow-origin").unwrap(),
            "https://shop.example"
        );
        assert_eq!(
            h.get("access-control-allow-headers").unwrap(),
            "authorization,content-type"
        );
        assert!(h
            .get("access-control-allow-methods")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("POST"));
        let req = post("/v1/t")
            .header("origin", "https://shop.example")
            .body(Body::from("{"))
            .unwrap();
        let (_, h, _) = call(&app, req).await;
        assert_eq!(
            h.get("access-control-allow-origin").unwrap(),
            "https://shop.example"
        );
    }

    fn get(path: &str) -> axum::http::request::Builder {
        axum::http::Request::get(path)
    }

    #[tokio::test]
    async fn settings_point_analytics_js_at_the_request_host() {
        let app = app();
        let req = get("/v1/projects/wk/settings")
            .header("host", "127.0.0.1:8080")
            .header("origin", "https://shop.example")
            .body(Body::empty())
            .unwrap();
        let (s, h, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let io = &body["integrations"]["Segment.io"];
        assert_eq!(io["apiKey"], "wk");
        assert_eq!(io["apiHost"], "127.0.0.1:8080/v1");
        assert_eq!(io["protocol"], "http");
        assert_eq!(body["integrations"].as_object().unwrap().len(), 1);
        assert_eq!(body["plan"], serde_json::json!({}));
        assert_eq!(body["middlewareSettings"], serde_json::json!({}));
        assert_eq!(body["enabledMiddleware"], serde_json::json!({}));
        assert_eq!(
            h.get("access-control-allow-origin").unwrap(),
            "https://shop.example"
        );
        assert!(h
            .get("cache-control")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("max-age"));
        assert_eq!(
            app.metrics
                .requests
                .with_label_values(&["settings", "200"])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn settings_for_an_unknown_key_are_404_json() {
        let app = app();
        let req = get("/v1/projects/nope/settings")
            .header("host", "127.0.0.1:8080")
            .body(Body::empty())
            .unwrap();
        let (s, h, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "invalid_write_key");
        assert!(body["message"].as_str().unwrap().contains("write key"));
        assert_eq!(h.get("cache-control").unwrap(), "no-store");
        // POST to the settings path is not the Tracking API.
        let req = post("/v1/projects/wk/settings")
            .body(Body::empty())
            .unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(
            (s, body["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
    }

    #[tokio::test]
    async fn settings_use_the_public_url_when_configured() {
        let mut inner = Arc::try_unwrap(app()).ok().unwrap();
        inner.public_url = Some("https://collect.example.com/corral/".parse().unwrap());
        let app = Arc::new(inner);
        let req = get("/v1/projects/wk/settings")
            .header("host", "10.0.0.7:8080")
            .body(Body::empty())
            .unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::OK);
        let io = &body["integrations"]["Segment.io"];
        assert_eq!(io["apiHost"], "collect.example.com/corral/v1");
        assert_eq!(io["protocol"], "https");
        // Without a public URL, a request without Host gets a clear 400.
        let app = self::app();
        let req = get("/v1/projects/wk/settings").body(Body::empty()).unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(
            body["message"].as_str().unwrap().contains("--public-url"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn analytics_js_is_served_for_known_keys_when_configured() {
        // Not configured: a clear 404.
        let app = app();
        let req = get("/analytics.js/v1/wk/analytics.min.js")
            .body(Body::empty())
            .unwrap();
        let (s, _, body) = call(&app, req).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body["message"].as_str().unwrap().contains("--analytics-js"));

        let dir = std::env::temp_dir().join(format!("corral-http-bundle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("standalone.js"), "/* standalone */").unwrap();
        std::fs::write(dir.join("407.bundle.abc.js"), "/* chunk */").unwrap();
        let mut inner = Arc::try_unwrap(app).ok().unwrap();
        inner.analytics_js = Some(AnalyticsJs::load(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        let app = Arc::new(inner);
        let fetch = |path: &str| {
            let app = app.clone();
            let req = get(path).body(Body::empty()).unwrap();
            async move {
                let resp = router(app).oneshot(req).await.unwrap();
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, headers, body)
            }
        };
        let (s, h, body) = fetch("/analytics.js/v1/wk/analytics.min.js").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(&body[..], b"/* standalone */");
        assert!(h
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let (s, _, body) = fetch("/analytics-next/bundles/407.bundle.abc.js").await;
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"/* chunk */"[..]));
        let (s, _, body) = fetch("/analytics.js/v1/nope/analytics.min.js").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&body).contains("invalid_write_key"));
        for missing in [
            "/analytics-next/bundles/other.js",
            "/analytics-next/bundles/..%2Fstandalone.js",
            "/analytics-next/bundles/standalone.js.map",
        ] {
            let (s, _, _) = fetch(missing).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{missing}");
        }
        assert_eq!(
            app.metrics
                .requests
                .with_label_values(&["analytics_js", "200"])
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn retries_are_counted() {
        let app = app();
        let req = post("/v1/batch")
            .header("authorization", basic())
            .header("x-retry-count", "3")
            .body(Body::from(r#"{"batch":[]}"#))
            .unwrap();
        assert_eq!(call(&app, req).await.0, StatusCode::OK);
        assert_eq!(app.metrics.client_retries.get(), 1);
    }
}
