//! `corral-collector`: Segment's HTTP Tracking API → Kafka `events.raw`.
//!
//! Local stack: `corral-collector` with no flags listens on 127.0.0.1:8080, writes to
//! `corral.events.raw` on 127.0.0.1:9092 and accepts the write keys of the sources in
//! `corral.definitions`; `deploy/local/services.sh` adds the demo's `--write-key corral-demo`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use corral_collector::bundle::AnalyticsJs;
use corral_collector::config::{Args, Config};
use corral_collector::guard::{Guards, KeyRateLimiter};
use corral_collector::http::{self, App};
use corral_collector::metrics::Metrics;
use corral_collector::readiness::{self, shutdown_signal};
use corral_collector::sink::KafkaSink;
use corral_telemetry::{admin_router, init_tracing, register_build_info, registry, Health};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = Config::load(args)?;
    init_tracing(cfg.log_json);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.write_keys.is_empty() {
        tracing::warn!("no write keys configured: only the sources in the definitions topic are accepted (`corralctl sources apply`, or --write-key)");
    }
    let reg = registry("collector");
    register_build_info(&reg, env!("CARGO_PKG_VERSION"))?;
    let metrics = Metrics::new(&reg)?;
    let health = Health::new();
    health.set_not_ready("connecting to Kafka");
    let sink = KafkaSink::new(&cfg, health.clone()).context("creating the Kafka producer")?;

    let analytics_js = match &cfg.analytics_js {
        Some(dir) => {
            let files = AnalyticsJs::load(dir)?;
            tracing::info!(dir = %dir.display(), files = files.len(), "serving analytics.js at /analytics.js/v1/{{writeKey}}/analytics.min.js");
            Some(files)
        }
        None => None,
    };
    let app = Arc::new(App {
        sink,
        keys: cfg.write_keys.clone(),
        limits: cfg.limits,
        trusted_proxies: cfg.trusted_proxies.clone(),
        metrics,
        raw_topic: cfg.raw_topic.clone(),
        retry_after_seconds: cfg.retry_after_seconds,
        guards: Guards {
            header_timeout: cfg.header_timeout,
            body_timeout: cfg.body_timeout,
            per_key: cfg.rate_limit_per_key.map(KeyRateLimiter::new),
        },
        public_url: cfg.public_url.clone(),
        analytics_js,
        suppressions: Default::default(),
    });

    // Readiness: probe Kafka until it answers and both topics exist, and again whenever a
    // client error marked it down. Requests are served either way (503 while Kafka is down).
    // The same loop starts following the definitions topic once it exists, and holds readiness
    // until its sources are loaded once (so a rolling restart never answers 401 for a key that
    // the previous instance accepted).
    let probe_app = app.clone();
    let follow_cfg = cfg.clone();
    let follow_metrics = app.metrics.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let probe_stop = stop.clone();
    let probe = std::thread::Builder::new()
        .name("kafka-probe".into())
        .spawn(move || readiness::run(&probe_app, &follow_cfg, &follow_metrics, &probe_stop))
        .context("starting the Kafka probe thread")?;

    let admin = admin_router(reg.clone(), health.clone());
    let api = http::router(app.clone());
    let (api, admin_server) = match cfg.admin_listen {
        Some(addr) => (api, Some((addr, admin))),
        None => (api.merge(admin), None),
    };
    if let Some((addr, admin)) = admin_server {
        tokio::spawn(async move {
            if let Err(e) = corral_telemetry::serve_admin(addr, admin, shutdown_signal()).await {
                tracing::error!(error = %e, "admin endpoint failed");
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (is another process using the port?)",
                cfg.listen
            )
        })?;
    match &cfg.public_url {
        Some(u) => {
            tracing::info!(public_url = %u.url(), "analytics.js settings point browsers at the public URL")
        }
        None => tracing::info!(
            "no --public-url: analytics.js settings point browsers at each request's Host"
        ),
    }
    tracing::info!(listen = %cfg.listen, raw_topic = %cfg.raw_topic, dlq_topic = %cfg.dlq_topic, bootstrap = %cfg.kafka_bootstrap, "collector listening");
    corral_collector::serve::serve(listener, api, cfg.header_timeout, shutdown_signal()).await;
    tracing::info!("shutting down: flushing the producer");
    let flush_app = app.clone();
    tokio::task::spawn_blocking(move || flush_app.sink.flush(Duration::from_secs(10)))
        .await
        .context("flushing")?;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || probe.join()).await;
    Ok(())
}
