//! Telemetry shared by every Corral service: one Prometheus registry per process (every metric
//! prefixed `corral_`, labelled with the service name), the admin HTTP endpoints (`/metrics`,
//! `/healthz`, `/readyz`) and `tracing` initialisation.
//!
//! Metric names follow Prometheus conventions: base units, `_total` on counters, bounded labels
//! (never a user, profile or message id).
//!
//! [`http_client`] is the matching side: a std-only blocking GET client for the services' internal
//! query interfaces.

pub mod http_client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};

/// Errors from telemetry setup.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not register metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("could not bind the admin endpoint on {addr}: {source} (is another process using the port? set a different admin address)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin server failed: {0}")]
    Serve(std::io::Error),
}

/// Creates the process registry: every metric registered in it is named `corral_<name>` and carries
/// the `service` label.
pub fn registry(service: &str) -> Registry {
    let labels = HashMap::from([("service".to_string(), service.to_string())]);
    // Registry::new_custom only fails on an invalid prefix; "corral" is valid, but fall back anyway
    // rather than panic.
    Registry::new_custom(Some("corral".to_string()), Some(labels)).unwrap_or_default()
}

/// Registers `corral_build_info{version}` = 1.
pub fn register_build_info(registry: &Registry, version: &str) -> Result<(), TelemetryError> {
    let gauge = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("build_info", "Build information; always 1."),
        &["version"],
    )?;
    gauge.with_label_values(&[version]).set(1);
    registry.register(Box::new(gauge))?;
    Ok(())
}

/// Liveness and readiness, shared between the data path and the admin endpoints.
#[derive(Debug, Default)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
    /// Why the service is not ready, shown by `/readyz`.
    reason: Mutex<String>,
    /// Parts (stream threads) not ready yet, with why: the service is ready only when none is.
    waiting_parts: Mutex<std::collections::BTreeMap<String, String>>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            reason: Mutex::new("starting".to_string()),
            waiting_parts: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    /// Part `part` (a stream thread) is not ready: neither is the service, until every part is.
    pub fn set_part_not_ready(&self, part: &str, why: impl Into<String>) {
        let why = why.into();
        if let Ok(mut parts) = self.waiting_parts.lock() {
            parts.insert(part.to_string(), why.clone());
        }
        self.set_not_ready(format!("{part}: {why}"));
    }

    /// Part `part` is ready; the service is when no other part is still waiting.
    pub fn set_part_ready(&self, part: &str) {
        let still_waiting = match self.waiting_parts.lock() {
            Ok(mut parts) => {
                parts.remove(part);
                parts.iter().next().map(|(p, why)| format!("{p}: {why}"))
            }
            Err(_) => None,
        };
        match still_waiting {
            Some(why) => self.set_not_ready(why),
            None => self.set_ready(),
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        if let Ok(mut reason) = self.reason.lock() {
            reason.clear();
        }
    }

    pub fn set_not_ready(&self, why: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        if let Ok(mut reason) = self.reason.lock() {
            *reason = why.into();
        }
    }

    pub fn set_dead(&self, why: impl Into<String>) {
        self.alive.store(false, Ordering::SeqCst);
        self.set_not_ready(why);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn reason(&self) -> String {
        self.reason.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    health: Arc<Health>,
}

/// The admin router: `/metrics`, `/healthz`, `/readyz`. Services may merge their own routes.
pub fn admin_router(registry: Registry, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, health })
}

/// Binds and serves the admin router until `shutdown` resolves.
pub async fn serve_admin(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), TelemetryError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    tracing::info!(%addr, "admin endpoint listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(TelemetryError::Serve)
}

/// Serves `router` on `addr` from a thread of its own with a single-threaded tokio runtime, until
/// `stop` turns true: for a stream-thread service's small HTTP interfaces (Profile API reads).
/// Binding happens before the thread starts, so a taken port is an error here, not a log line.
pub fn serve_in_thread(
    name: &str,
    addr: SocketAddr,
    router: Router,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, TelemetryError> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| TelemetryError::Bind { addr, source })?;
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(server = %thread_name, error = %e, "cannot start the HTTP runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(server = %thread_name, error = %e, "HTTP listener");
                        return;
                    }
                };
                tracing::info!(server = %thread_name, %addr, "serving HTTP");
                let stopped = async move {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                };
                if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(stopped).await {
                    tracing::error!(server = %thread_name, error = %e, "HTTP server failed");
                }
            });
        })
        .map_err(TelemetryError::Serve)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let families = state.registry.gather();
    match TextEncoder::new().encode(&families, &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            buf,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}"),
        )
            .into_response(),
    }
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("dead: {}\n", state.health.reason()),
        )
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.health.reason()),
        )
    }
}

/// Initialises `tracing`: `RUST_LOG` filters (default `info`); `json` selects JSON lines, which
/// production deployments use.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests) is harmless; ignore it.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_and_labelled() {
        let registry = registry("validator");
        register_build_info(&registry, "0.1.0").unwrap();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        // The registry's constant labels follow the metric's own; their order is not part of the contract.
        let line = text
            .lines()
            .find(|l| l.starts_with("corral_build_info{"))
            .unwrap_or_else(|| panic!("no corral_build_info sample in:\n{text}"));
        assert!(line.contains("service=\"validator\""), "{line}");
        assert!(line.contains("version=\"0.1.0\""), "{line}");
        assert!(line.ends_with("} 1"), "{line}");
    }

    #[test]
    fn readiness_carries_a_reason() {
        let health = Health::new();
        assert!(!health.is_ready());
        health.set_not_ready("restoring store counts partition 3");
        assert_eq!(health.reason(), "restoring store counts partition 3");
        health.set_ready();
        assert!(health.is_ready());
        assert!(health.is_alive());
        // Two stream threads: ready only once both are.
        health.set_part_not_ready("stream-0", "starting");
        health.set_part_not_ready("stream-1", "restoring store s partition 1");
        health.set_part_ready("stream-0");
        assert!(!health.is_ready());
        assert_eq!(health.reason(), "stream-1: restoring store s partition 1");
        health.set_part_ready("stream-1");
        assert!(health.is_ready());
    }
}
