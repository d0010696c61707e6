//! `corral_compute_*` metrics (the registry adds the `corral_` prefix). Labels are bounded:
//! audience keys are the active definitions, change is entered/exited.

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Compute's metrics.
pub struct Metrics {
    /// Events processed.
    pub events: IntCounter,
    /// Profile evaluations (event, identify, timer, definitions change).
    pub evaluations: IntCounter,
    /// Membership changes by audience and change.
    pub membership_changes: IntCounterVec,
    /// Computed trait changes.
    pub trait_changes: IntCounter,
    /// Merges absorbed.
    pub merges: IntCounter,
    /// Events of merged-away profiles read after their merge, sent on to the survivor.
    pub merge_forwarded: IntCounter,
    /// Profiles deleted by privacy requests (docs/privacy.md).
    pub deletions: IntCounter,
    /// Events and merge state of deleted profiles ignored (received before the deletion).
    pub deleted_events: IntCounter,
    /// Tombstones written to `events.resolved` for records of deleted profiles.
    pub erased_records: IntCounter,
    /// Records of `events.resolved` read by erasure scans.
    pub erase_scanned: IntCounter,
    /// Timers scheduled and not fired (this instance's view since start).
    pub timers_pending: IntGauge,
    /// Timers fired.
    pub timers_fired: IntCounter,
    /// Serialised state per profile at each write.
    pub state_bytes: Histogram,
    /// Active definitions.
    pub definitions_active: IntGauge,
    /// Rejected definitions.
    pub definitions_rejected: IntGauge,
    /// Historical events applied to backfilling leaves.
    pub backfill_applied: IntCounter,
    /// History records read from `events.resolved` by backfilling tasks.
    pub backfill_read: IntCounter,
    /// Offsets backfilling tasks still have to read (up to their cuts).
    pub backfill_remaining: IntGauge,
    /// Tasks of this instance reading history.
    pub backfill_tasks_active: IntGauge,
    /// First history read after the latest definitions change that needed one (Unix seconds).
    pub backfill_started: Gauge,
    /// When a task of this instance last completed its backfill (Unix seconds).
    pub backfill_completed: Gauge,
    /// Messages sent from the user side to the account side (`compute.accounts`).
    pub account_messages: IntCounter,
    /// Per definition: this instance's partitions where its backfill is not done.
    pub backfill_pending: IntGaugeVec,
}

impl Metrics {
    /// Registers the metrics.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            events: IntCounter::new("compute_events_total", "Events processed.")?,
            evaluations: IntCounter::new(
                "compute_evaluations_total",
                "Profile evaluations (events, identifies, timers, definition changes).",
            )?,
            membership_changes: IntCounterVec::new(
                Opts::new(
                    "compute_membership_changes_total",
                    "Audience membership changes by audience and change (entered/exited).",
                ),
                &["audience", "change"],
            )?,
            trait_changes: IntCounter::new(
                "compute_trait_changes_total",
                "Computed trait value changes.",
            )?,
            merges: IntCounter::new("compute_merges_total", "Profile merges absorbed.")?,
            merge_forwarded: IntCounter::new(
                "compute_merge_forwarded_events_total",
                "Events of merged-away profiles read after their merge and sent on to the survivor.",
            )?,
            deletions: IntCounter::new(
                "compute_deletions_total",
                "Profiles deleted by privacy deletion requests.",
            )?,
            deleted_events: IntCounter::new(
                "compute_deleted_events_total",
                "Events and merge state of deleted profiles ignored, live or in a backfill (received before the deletion).",
            )?,
            erased_records: IntCounter::new(
                "compute_erased_records_total",
                "Tombstones written to events.resolved for records of deleted profiles (erasure scans and live).",
            )?,
            erase_scanned: IntCounter::new(
                "compute_erase_scanned_total",
                "Records of events.resolved read by erasure scans.",
            )?,
            timers_pending: IntGauge::new(
                "compute_timers_pending",
                "Timers scheduled minus timers fired or cancelled by this instance.",
            )?,
            timers_fired: IntCounter::new("compute_timers_fired_total", "Timers fired.")?,
            state_bytes: Histogram::with_opts(
                HistogramOpts::new(
                    "compute_state_bytes",
                    "Serialised per-profile state size at each write, in bytes.",
                )
                .buckets(vec![
                    64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
                ]),
            )?,
            definitions_active: IntGauge::new(
                "compute_definitions_active",
                "Audiences and computed traits in force.",
            )?,
            definitions_rejected: IntGauge::new(
                "compute_definitions_rejected",
                "Definitions not in force (invalid, entity, account-wide event streams).",
            )?,
            backfill_applied: IntCounter::new(
                "compute_backfill_applied_total",
                "Historical events applied to leaves being backfilled.",
            )?,
            backfill_read: IntCounter::new(
                "compute_backfill_read_total",
                "History records read from events.resolved by backfilling tasks.",
            )?,
            backfill_remaining: IntGauge::new(
                "compute_backfill_remaining_events",
                "Offsets of events.resolved backfilling tasks still have to read.",
            )?,
            backfill_tasks_active: IntGauge::new(
                "compute_backfill_tasks_active",
                "Tasks (partitions) of this instance reading history.",
            )?,
            backfill_started: Gauge::new(
                "compute_backfill_started_timestamp_seconds",
                "First history read after the latest definitions change that needed history (Unix time).",
            )?,
            backfill_completed: Gauge::new(
                "compute_backfill_completed_timestamp_seconds",
                "When a task of this instance last completed its backfill (Unix time).",
            )?,
            account_messages: IntCounter::new(
                "compute_account_messages_total",
                "Messages from the user side to the account side (group traits, a user's conditions, a user leaving).",
            )?,
            backfill_pending: IntGaugeVec::new(
                Opts::new(
                    "compute_backfill_pending_partitions",
                    "Partitions (of this instance) where the definition's backfill is not done; it emits nothing there until then.",
                ),
                &["definition"],
            )?,
        };
        registry.register(Box::new(m.backfill_applied.clone()))?;
        registry.register(Box::new(m.backfill_read.clone()))?;
        registry.register(Box::new(m.backfill_remaining.clone()))?;
        registry.register(Box::new(m.backfill_pending.clone()))?;
        registry.register(Box::new(m.backfill_tasks_active.clone()))?;
        registry.register(Box::new(m.backfill_started.clone()))?;
        registry.register(Box::new(m.backfill_completed.clone()))?;
        registry.register(Box::new(m.account_messages.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.evaluations.clone()))?;
        registry.register(Box::new(m.membership_changes.clone()))?;
        registry.register(Box::new(m.trait_changes.clone()))?;
        registry.register(Box::new(m.merges.clone()))?;
        registry.register(Box::new(m.merge_forwarded.clone()))?;
        registry.register(Box::new(m.deletions.clone()))?;
        registry.register(Box::new(m.deleted_events.clone()))?;
        registry.register(Box::new(m.erased_records.clone()))?;
        registry.register(Box::new(m.erase_scanned.clone()))?;
        registry.register(Box::new(m.timers_pending.clone()))?;
        registry.register(Box::new(m.timers_fired.clone()))?;
        registry.register(Box::new(m.state_bytes.clone()))?;
        registry.register(Box::new(m.definitions_active.clone()))?;
        registry.register(Box::new(m.definitions_rejected.clone()))?;
        Ok(m)
    }
}
