//! Readiness and shutdown of the collector: the loop that probes Kafka, starts following the
//! sources in the definitions topic once it exists and sets `/readyz`, and the signal future the
//! HTTP servers stop on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::definitions::{self, Follower};
use crate::http::App;
use crate::metrics::Metrics;
use crate::sink::KafkaSink;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Probes Kafka, starts the definitions follower when its topic exists, and sets readiness:
/// ready = Kafka answers, both topics exist, and (when the definitions topic exists) its
/// sources were loaded once.
pub fn run(app: &App<KafkaSink>, cfg: &Config, metrics: &Metrics, stop: &AtomicBool) {
    let health = app.sink.health().clone();
    let gate = app.sink.ready_gate().clone();
    let mut follower: Option<Follower> = None;
    let mut announced_absent = false;
    while !stop.load(Ordering::SeqCst) {
        if let (Some(topic), None) = (&cfg.definitions_topic, &follower) {
            match app.sink.topic_exists(topic, Duration::from_secs(2)) {
                Ok(true) => {
                    gate.store(false, Ordering::SeqCst);
                    health.set_not_ready(format!("loading sources from {topic}"));
                    match definitions::start(
                        &cfg.kafka_bootstrap,
                        &cfg.kafka_properties,
                        topic,
                        app.keys.clone(),
                        app.suppressions.clone(),
                        metrics.clone(),
                    ) {
                        Ok(f) => {
                            tracing::info!(topic, "following sources in the definitions topic");
                            follower = Some(f);
                        }
                        Err(e) => {
                            tracing::warn!(topic, error = %e, "cannot follow the definitions topic yet");
                            gate.store(true, Ordering::SeqCst);
                        }
                    }
                }
                Ok(false) if !announced_absent => {
                    announced_absent = true;
                    tracing::warn!(topic, "definitions topic absent: accepting configured write keys only until it exists");
                }
                Ok(false) | Err(_) => {}
            }
        }
        let loading = match &follower {
            Some(f) if f.caught_up() => {
                if !gate.swap(true, Ordering::SeqCst) {
                    metrics.definitions_loaded.set(1);
                }
                false
            }
            Some(_) => true,
            None => false,
        };
        if !health.is_ready() && !loading {
            match app.sink.probe(Duration::from_secs(2)) {
                Ok(()) => {
                    tracing::info!("Kafka reachable, topics present, sources loaded: ready");
                    health.set_ready();
                }
                Err(why) => health.set_not_ready(why),
            }
        }
        // Short sleeps while not ready, so readiness follows promptly.
        let pause = if health.is_ready() { 1000 } else { 100 };
        std::thread::sleep(Duration::from_millis(pause));
    }
    if let Some(f) = follower {
        f.stop();
    }
}
