//! `corral-identity`: identity resolution on the exactly-once runtime. One process runs the router
//! (`events.valid` -> `identity.events-by-space`), the coordinator (graph, `events.resolved`,
//! `profiles.merges`) and, with `--query`, the Profile API read interface. Configuration by flags
//! or `CORRAL_*` variables; topic names default to the prefix + their standard name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use corral_identity::kafka::{ensure_topic_like, spawn_definitions_reader, spawn_view_follower};
use corral_identity::metrics::Metrics;
use corral_identity::processor::{CoordinatorProcessor, RouterProcessor, Topics};
use corral_identity::rules::{parse_file, RulesStore};
use corral_identity::store::STORE;
use corral_identity::view::{self, IdentityView};
use corral_runtime::cli::RuntimeArgs;
use corral_runtime::{StoreSpec, StreamRuntime};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "corral-identity", version, about = "Corral's identity service")]
struct Args {
    // `--admin` and `--fault` apply to the coordinator; the router has `--router-admin`.
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Consumer group, transactional id prefix and changelog prefix of the coordinator; the
    /// router uses `{app}-router`.
    #[arg(long, env = "CORRAL_APPLICATION_ID", default_value = "identity")]
    app: String,
    #[arg(long, env = "CORRAL_TOPIC_VALID")]
    valid_topic: Option<String>,
    /// The coordinator's input (default `{prefix}identity.events-by-space`), created like
    /// `events.valid` when missing.
    #[arg(long, env = "CORRAL_TOPIC_IDENTITY_BY_SPACE")]
    by_space_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_RESOLVED")]
    resolved_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_MERGES")]
    merges_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DLQ")]
    dlq_topic: Option<String>,
    #[arg(long, env = "CORRAL_TOPIC_DEFINITIONS")]
    definitions_topic: Option<String>,
    /// Identity settings file (`examples/identity.yaml`); `identity_settings` definitions override
    /// it per space. Without either, Segment's defaults apply.
    #[arg(long, env = "CORRAL_IDENTITY_RULES")]
    rules: Option<PathBuf>,
    /// `/metrics` etc. of the router runtime (none when absent).
    #[arg(long, env = "CORRAL_ROUTER_ADMIN_ADDR")]
    router_admin: Option<SocketAddr>,
    /// Profile API reads (HTTP JSON); none when absent.
    #[arg(long, env = "CORRAL_IDENTITY_QUERY_ADDR")]
    query: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    corral_telemetry::init_tracing(std::env::var("CORRAL_LOG_JSON").is_ok());
    let args = Args::parse();
    let topic = |given: &Option<String>, name: &str| {
        given
            .clone()
            .unwrap_or_else(|| format!("{}{name}", args.runtime.topic_prefix))
    };
    let topics = Arc::new(Topics {
        valid: topic(&args.valid_topic, "events.valid"),
        by_space: topic(&args.by_space_topic, "identity.events-by-space"),
        resolved: topic(&args.resolved_topic, "events.resolved"),
        merges: topic(&args.merges_topic, "profiles.merges"),
    });
    let dlq = topic(&args.dlq_topic, "events.dlq");
    let definitions = topic(&args.definitions_topic, "definitions");

    let rules = RulesStore::new();
    if let Some(path) = &args.rules {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = parse_file(&text).with_context(|| format!("in {}", path.display()))?;
        rules
            .load_file(&file)
            .with_context(|| format!("in {}", path.display()))?;
    }

    let mut router_cfg = args
        .runtime
        .runtime_config(&format!("{}-router", args.app))?;
    router_cfg.dlq_topic = dlq.clone();
    router_cfg.input_topics = vec![topics.valid.clone()];
    router_cfg.admin_addr = args.router_admin;
    // Crash injection is for the coordinator only.
    router_cfg.fault = None;
    let mut coord_cfg = args.runtime.runtime_config(&args.app)?;
    coord_cfg.dlq_topic = dlq.clone();
    coord_cfg.input_topics = vec![topics.by_space.clone()];
    coord_cfg.stores = vec![StoreSpec { name: STORE.into() }];
    let changelog = coord_cfg.changelog_topic(STORE);
    let kafka_extra = coord_cfg.kafka.clone();

    ensure_topic_like(
        &args.runtime.bootstrap,
        &kafka_extra,
        &topics.by_space,
        &topics.valid,
    )
    .with_context(|| format!("preparing {}", topics.by_space))?;

    let coordinator = StreamRuntime::new(coord_cfg).context("configuring the coordinator")?;
    let router = StreamRuntime::new(router_cfg).context("configuring the router")?;
    let metrics = Arc::new(Metrics::new(coordinator.registry()).context("registering metrics")?);
    let stop_coord = coordinator.shutdown_flag();
    let stop_router = router.shutdown_flag();
    let stop_edges = Arc::new(AtomicBool::new(false));

    let caught_up = Arc::new(AtomicBool::new(false));
    let reader = spawn_definitions_reader(
        args.runtime.bootstrap.clone(),
        kafka_extra.clone(),
        definitions.clone(),
        format!("{}-definitions", args.app),
        rules.clone(),
        metrics.clone(),
        caught_up.clone(),
        stop_edges.clone(),
    )
    .with_context(|| format!("reading identity settings from {definitions}"))?;
    let started = Instant::now();
    let mut said = false;
    while !caught_up.load(Ordering::SeqCst) {
        if stop_coord.load(Ordering::SeqCst) {
            return Ok(());
        }
        if !said && started.elapsed() > Duration::from_secs(10) {
            info!(topic = %definitions, "still loading identity settings");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut edges = Vec::new();
    if let Some(addr) = args.query {
        let view = IdentityView::new();
        edges.push(
            spawn_view_follower(
                args.runtime.bootstrap.clone(),
                kafka_extra.clone(),
                changelog.clone(),
                format!("{}-view-{}", args.app, args.runtime.instance),
                view.clone(),
                stop_edges.clone(),
            )
            .context("starting the identity view")?,
        );
        edges.push(corral_telemetry::serve_in_thread(
            "query",
            addr,
            view::router(view),
            stop_edges.clone(),
        )?);
    }
    if let Some(r) = reader {
        edges.push(r);
    }

    info!(input = %topics.valid, coordinator_input = %topics.by_space, instance = %args.runtime.instance, "resolving identities");
    let router_metrics = metrics.clone();
    let router_topics = topics.clone();
    let (stop_a, stop_b) = (stop_coord.clone(), stop_router.clone());
    let router_thread = std::thread::Builder::new()
        .name("router".into())
        .spawn(move || {
            let r = router
                .run(move || RouterProcessor::new(router_topics.clone(), router_metrics.clone()));
            // Either half stopping stops the process: a router alone would fill a topic no one reads.
            stop_a.store(true, Ordering::SeqCst);
            r
        })
        .context("starting the router")?;
    let coord_rules = rules.clone();
    let result = coordinator.run(move || {
        CoordinatorProcessor::new(topics.clone(), coord_rules.clone(), metrics.clone(), 0)
    });
    stop_b.store(true, Ordering::SeqCst);
    let router_result = router_thread.join().unwrap_or_else(|_| {
        Err(corral_runtime::RuntimeError::Processor(
            "router panicked".into(),
        ))
    });
    stop_edges.store(true, Ordering::SeqCst);
    for e in edges {
        let _ = e.join();
    }
    if let Err(e) = &router_result {
        error!(error = %e, "router stopped");
    }
    result.context("coordinator stopped")?;
    router_result.context("router stopped")
}
