//! `corral-profiles`: the Profile API and the audience admin API (see the crate doc). Flags or
//! `CORRAL_*` variables (`--help`); the shared ones are the runtime's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Parser};
use corral_codec::{ProfileMerge, ResolvedEvent};
use corral_profiles::admin::{self, AdminState, PrivacyTopics, PREVIEW_TIMEOUT};
use corral_profiles::api::{self, ApiState, Readiness};
use corral_profiles::defs::SpaceDefinitions;
use corral_profiles::metrics::Metrics;
use corral_profiles::preview::History;
use corral_profiles::store::{ProfileStore, StoreError};
use corral_runtime::auth::ApiTokens;
use corral_runtime::cli::{names, QueryAuth};
use corral_runtime::follow::{follow_topic, ChangelogRecord};
use corral_runtime::{RuntimeArgs, Service};
use tracing::{error, info, warn};

#[derive(Parser, Debug)]
#[command(
    name = "corral-profiles",
    version,
    about = "Corral's Profile API and audience admin API"
)]
struct Args {
    #[command(flatten)]
    common: RuntimeArgs,
    /// Address of the Profile API and the admin API.
    #[arg(long, env = "CORRAL_PROFILES_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Events kept per profile (and per account) for `/events`, newest first.
    #[arg(
        long,
        env = "CORRAL_PROFILES_EVENTS_PER_PROFILE",
        default_value_t = 100
    )]
    events_per_profile: usize,
    /// Application id of the identity service whose graph changelog is replicated.
    #[arg(long, env = "CORRAL_PROFILES_IDENTITY_APP", default_value = "identity")]
    identity_app: String,
    /// Application id of the compute service whose profiles changelog is replicated.
    #[arg(long, env = "CORRAL_PROFILES_COMPUTE_APP", default_value = "compute")]
    compute_app: String,
    /// Serve the admin API (audience and computed-trait writes, previews, exports).
    #[arg(long, env = "CORRAL_PROFILES_ADMIN_API", default_value_t = true, action = ArgAction::Set)]
    admin_api: bool,
}

/// Follows `topic` into the store with `apply`; a store failure stops the service.
fn follow(
    svc: &Service,
    topic: &str,
    group: String,
    caught_up: Arc<AtomicBool>,
    mut apply: impl FnMut(Vec<ChangelogRecord>) -> Result<(), StoreError> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let shutdown = svc.shutdown_flag();
    let stop = shutdown.clone();
    let t = topic.to_string();
    // librdkafka prefetches up to 64 MiB per reader by default; four readers would hold a
    // quarter of a GiB for nothing while RocksDB is the bottleneck (unless set with --kafka).
    let mut kafka = svc.kafka().clone();
    kafka
        .entry("queued.max.messages.kbytes".into())
        .or_insert_with(|| "8192".into());
    Ok(follow_topic(
        svc.bootstrap(),
        &kafka,
        topic,
        &group,
        caught_up,
        shutdown,
        move |batch| {
            if let Err(e) = apply(batch) {
                error!(topic = t, error = %e, "cannot write the profile store; stopping");
                stop.store(true, Ordering::SeqCst);
            }
        },
    )?)
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    // This service serves its own admin endpoint: it has no stream runtime to do it.
    let admin_addr = args.common.admin.take();
    let query_auth = args.common.query_auth;
    let state_dir = args.common.state_dir.clone();
    let instance = args.common.instance.clone();
    let mut svc = Service::start("profiles", args.common)?;
    let registry = corral_telemetry::registry(svc.app());
    let health = corral_telemetry::Health::new();
    health.set_not_ready("starting: loading the replicas");
    let mut threads = Vec::new();
    if let Some(addr) = admin_addr {
        threads.push(corral_telemetry::serve_in_thread(
            "admin",
            addr,
            corral_telemetry::admin_router(registry.clone(), health.clone()),
            svc.shutdown_flag(),
        )?);
    }
    let metrics = Arc::new(Metrics::new(&registry).context("registering metrics")?);
    let store_path = state_dir.join(format!("profiles-{instance}"));
    let store = Arc::new(
        ProfileStore::open_fresh(&store_path, args.events_per_profile)
            .with_context(|| format!("opening the profile store in {}", store_path.display()))?,
    );

    let tokens = ApiTokens::new();
    let defs = Arc::new(SpaceDefinitions::default());
    let (t, d) = (tokens.clone(), defs.clone());
    svc.follow_definitions("audiences, computed traits and tokens", move |ev| {
        t.apply(&ev);
        d.apply(&ev);
    })?;

    let ready = Arc::new(Readiness::default());
    let graph_topic = svc.config_for(&args.identity_app).changelog_topic("graph");
    let compute_topic = svc
        .config_for(&args.compute_app)
        .changelog_topic("profiles");
    let resolved_topic = svc.topics().of::<ResolvedEvent>();
    let app = svc.app().to_string();
    let (s, m) = (store.clone(), metrics.clone());
    threads.push(follow(
        &svc,
        &graph_topic,
        format!("{app}-graph-{instance}"),
        ready.graph.clone(),
        move |b| {
            m.applied
                .with_label_values(&["graph"])
                .inc_by(b.len() as u64);
            s.apply_graph(b)
        },
    )?);
    let (s, m) = (store.clone(), metrics.clone());
    threads.push(follow(
        &svc,
        &compute_topic,
        format!("{app}-compute-{instance}"),
        ready.compute.clone(),
        move |b| {
            m.applied
                .with_label_values(&["compute"])
                .inc_by(b.len() as u64);
            s.apply_compute(b)
        },
    )?);
    let (s, m) = (store.clone(), metrics.clone());
    threads.push(follow(
        &svc,
        &resolved_topic,
        format!("{app}-events-{instance}"),
        ready.events.clone(),
        move |b| {
            m.applied
                .with_label_values(&["events"])
                .inc_by(b.len() as u64);
            // Deletions come through profiles.merges; tombstones here are skipped.
            let applied = s.apply_event_records(b)?;
            m.undecodable.inc_by(applied.undecodable as u64);
            m.erased_events.inc_by(applied.erased as u64);
            Ok(())
        },
    )?);
    // Deletions (docs/privacy.md) and the merges they extend to; read to its end before ready,
    // so a restarted service never shows a deleted life's events.
    let merges_topic = svc.topics().of::<ProfileMerge>();
    let (s, m) = (store.clone(), metrics.clone());
    threads.push(follow(
        &svc,
        &merges_topic,
        format!("{app}-merges-{instance}"),
        ready.merges.clone(),
        move |b| {
            m.applied
                .with_label_values(&["merges"])
                .inc_by(b.len() as u64);
            let values: Vec<Vec<u8>> = b.into_iter().filter_map(|r| r.value).collect();
            let applied = s.apply_merges(&values)?;
            m.deletions.inc_by(applied.deletions as u64);
            m.erased_events.inc_by(applied.erased_events as u64);
            if applied.deletions > 0 {
                info!(
                    deletions = applied.deletions,
                    erased_events = applied.erased_events,
                    "deleted profiles erased from the events index"
                );
            }
            Ok(())
        },
    )?);

    // Compute's accounts changelog exists once a compute with account support ran. It is
    // always followed (from when it appears); readiness waits for it only if it exists now.
    let accounts_topic = svc
        .config_for(&args.compute_app)
        .changelog_topic("accounts");
    let accounts_exist = corral_runtime::topics::TopicAdmin::connect(svc.bootstrap(), svc.kafka())
        .and_then(|a| a.partitions(&accounts_topic))
        .map(|p| p.is_some())
        .unwrap_or(false);
    if !accounts_exist {
        warn!(topic = accounts_topic, "no accounts changelog yet: account profiles show ACCOUNTS results once compute creates it");
    }
    let accounts_caught_up = Arc::new(AtomicBool::new(false));
    let (s, m) = (store.clone(), metrics.clone());
    threads.push(follow(
        &svc,
        &accounts_topic,
        format!("{app}-accounts-{instance}"),
        if accounts_exist {
            ready.accounts.clone()
        } else {
            ready.accounts.store(true, Ordering::SeqCst);
            accounts_caught_up
        },
        move |b| {
            m.applied
                .with_label_values(&["accounts"])
                .inc_by(b.len() as u64);
            s.apply_compute_accounts(b)
        },
    )?);

    let mut router = api::router(ApiState {
        store: store.clone(),
        defs: defs.clone(),
        ready: ready.clone(),
    });
    if args.admin_api {
        router = router.merge(admin::router(AdminState {
            bootstrap: svc.bootstrap().to_string(),
            kafka: svc.kafka().clone(),
            definitions_topic: svc.topics().name(names::DEFINITIONS),
            history: History {
                bootstrap: svc.bootstrap().to_string(),
                kafka: svc.kafka().clone(),
                topic: resolved_topic.clone(),
                timeout: PREVIEW_TIMEOUT,
            },
            store: store.clone(),
            defs,
            privacy: PrivacyTopics {
                request: corral_ops::privacy::RequestTopics {
                    definitions: svc.topics().name(names::DEFINITIONS),
                    by_space: svc.topics().name(names::BY_SPACE),
                },
                progress: corral_ops::privacy::ProgressTopics {
                    merges: merges_topic.clone(),
                    compute_changelog: svc
                        .config_for(&args.compute_app)
                        .changelog_topic("backfill"),
                },
            },
        }));
    }
    let router = match query_auth {
        QueryAuth::Required => corral_profiles::auth::protect(router, tokens),
        QueryAuth::Off => {
            warn!(addr = %args.listen, "Profile API without tokens (--query-auth off): anyone can read any space");
            router
        }
    };
    threads.push(corral_telemetry::serve_in_thread(
        "profile-api",
        args.listen,
        router,
        svc.shutdown_flag(),
    )?);
    info!(listen = %args.listen, graph = graph_topic, compute = compute_topic, events = resolved_topic, "serving the Profile API");

    // Readiness follows the replicas; the process lives until SIGTERM or a failed write.
    let shutdown = svc.shutdown_flag();
    let mut was_ready = false;
    while !shutdown.load(Ordering::SeqCst) {
        match ready.waiting_for() {
            None => {
                if !was_ready {
                    info!("every replica loaded: ready");
                    was_ready = true;
                }
                health.set_ready();
            }
            Some(what) => health.set_not_ready(format!("loading {what}")),
        }
        metrics.store_bytes.set(store.estimated_bytes() as i64);
        std::thread::sleep(Duration::from_millis(200));
    }
    let result = svc.run();
    for t in threads {
        let _ = t.join();
    }
    result.context("profiles stopped")
}
