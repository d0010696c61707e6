//! `corral-identity`: identity resolution on the exactly-once runtime. One process runs the stitcher
//! (`events.valid` and the links on `identity.events-by-id`; hits to `events.resolved`, misses to
//! `identity.events-by-space`), the coordinator (graph, `events.resolved`,
//! `profiles.merges`, links) and, with `--query`, the Profile API read interface. Configuration by flags
//! or `CORRAL_*` variables (`--help`); the shared ones are the runtime's.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use corral_codec::ValidEvent;
use corral_identity::kafka::apply_definition;
use corral_identity::metrics::Metrics;
use corral_identity::processor::{CoordinatorProcessor, StitcherProcessor, LINKS};
use corral_identity::rules::{parse_file, RulesStore};
use corral_identity::store::STORE;
use corral_identity::view::{self, IdentityView};
use corral_runtime::cli::names;
use corral_runtime::topics::CleanupPolicy;
use corral_runtime::{RuntimeArgs, Service};

#[derive(Parser, Debug)]
#[command(name = "corral-identity", version, about = "Corral's identity service")]
struct Args {
    // `--admin` and `--fault` apply to the coordinator; the stitcher has `--stitcher-admin` and the
    // application id `{app}-stitcher`.
    #[command(flatten)]
    common: RuntimeArgs,
    /// Identity settings file (`examples/identity.yaml`); `identity_settings` definitions override
    /// it per space. Without either, Segment's defaults apply.
    #[arg(long, env = "CORRAL_IDENTITY_RULES")]
    rules: Option<PathBuf>,
    /// `/metrics` etc. of the stitcher runtime (none when absent).
    #[arg(long, env = "CORRAL_STITCHER_ADMIN_ADDR")]
    stitcher_admin: Option<SocketAddr>,
    /// Profile API reads (HTTP JSON); none when absent.
    #[arg(long, env = "CORRAL_IDENTITY_QUERY_ADDR")]
    query: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut svc = Service::start("identity", args.common)?;
    let rules = RulesStore::new();
    if let Some(path) = &args.rules {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = parse_file(&text).with_context(|| format!("in {}", path.display()))?;
        rules
            .load_file(&file)
            .with_context(|| format!("in {}", path.display()))?;
    }
    let valid = svc.topics().of::<ValidEvent>();
    let by_id = svc.topics().name(names::BY_ID);
    let by_space = svc.topics().name(names::BY_SPACE);
    // Internal topics must exist before the stitcher and the coordinator subscribe to them.
    svc.ensure_topic_like(&by_id, &valid, CleanupPolicy::Delete, None)?;
    svc.ensure_topic_like(&by_space, &valid, CleanupPolicy::Delete, None)?;

    let mut stitcher_cfg = svc.config_for(&format!("{}-stitcher", svc.app()));
    // Co-partitioned: the validator keys events.valid by the identifier whose link the
    // coordinator writes under the same key on the by-id topic (`corral_codec::routing`).
    stitcher_cfg.input_topics = vec![valid, by_id];
    stitcher_cfg.stores = vec![LINKS.into()];
    stitcher_cfg.admin_addr = args.stitcher_admin;
    stitcher_cfg.fault = None; // crash injection is for the coordinator only
    let mut coord_cfg = svc.config();
    coord_cfg.input_topics = vec![by_space];
    coord_cfg.stores = vec![STORE.into()];
    let stitcher = svc
        .runtime(stitcher_cfg)
        .context("configuring the stitcher")?;
    let coordinator = svc
        .runtime(coord_cfg.clone())
        .context("configuring the coordinator")?;
    let metrics = std::sync::Arc::new(Metrics::new(coordinator.registry())?);

    let (r, m) = (rules.clone(), metrics.clone());
    svc.follow_definitions("identity settings", move |ev| {
        if !apply_definition(&r, ev) {
            m.definition_errors.inc();
        }
    })?;
    if args.query.is_some() {
        let view = IdentityView::new();
        let v = view.clone();
        svc.follow_store(&coord_cfg, STORE, view.caught_up_flag(), move |batch| {
            v.apply_records(batch)
        })?;
        svc.serve("query", args.query, view::router(view))?;
    }
    let (r, m) = (rules.clone(), metrics.clone());
    svc.add(stitcher, move || {
        StitcherProcessor::new(r.clone(), m.clone())
    });
    svc.add(coordinator, move || {
        CoordinatorProcessor::new(rules.clone(), metrics.clone())
    });
    svc.run().context("identity stopped")
}
