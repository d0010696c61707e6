//! `corral_identity_*` metrics. Labels are closed sets; id types outside the built-in and
//! configured ones are counted as `other`.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

pub struct Metrics {
    pub events: IntCounterVec,
    pub profiles_created: IntCounter,
    pub merges: IntCounterVec,
    pub demotions: IntCounterVec,
    pub blocked_values: IntCounterVec,
    pub merge_protection_refusals: IntCounter,
    pub caps: IntCounterVec,
    pub definition_errors: IntCounter,
    /// Stitcher lookups by result: `hit` (resolved from a link), `miss` (sent to the coordinator).
    pub lookups: IntCounterVec,
    /// Link updates the coordinator sent to the stitchers, by kind (`link`, `unlink`).
    pub links: IntCounterVec,
    /// Deletion requests carried out (docs/privacy.md).
    pub deletions: IntCounter,
    /// Profiles deleted by them.
    pub deleted_profiles: IntCounter,
}

const KNOWN_TYPES: &[&str] = &[
    "user_id",
    "anonymous_id",
    "email",
    "android.id",
    "ios.id",
    "android.idfa",
    "ios.idfa",
    "android.push_token",
    "ios.push_token",
    "ga_client_id",
];

/// A bounded `id_type` label.
pub fn type_label(t: &str) -> &str {
    if KNOWN_TYPES.contains(&t) {
        t
    } else {
        "other"
    }
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "identity_events_total",
                "Events by outcome: created, added, matched, merged, capped, no_identifiers, dead_letter, erased (received before a deletion of one of its identifiers).",
            ),
            &["outcome"],
        )?;
        let profiles_created =
            IntCounter::new("identity_profiles_created_total", "Profiles created.")?;
        let merges = IntCounterVec::new(
            Opts::new(
                "identity_merges_total",
                "Merge records written, by kind: merge (profiles joined) or rename (id moved to a higher-priority identifier).",
            ),
            &["kind"],
        )?;
        let demotions = IntCounterVec::new(
            Opts::new(
                "identity_demotions_total",
                "Identifiers dropped from an event by priority demotion, by id type.",
            ),
            &["id_type"],
        )?;
        let blocked_values = IntCounterVec::new(
            Opts::new(
                "identity_blocked_values_total",
                "Identifier values matching a blocked value, by id type.",
            ),
            &["id_type"],
        )?;
        let merge_protection_refusals = IntCounter::new(
            "identity_merge_protection_refusals_total",
            "Identifiers refused as untrusted because they would join two profiles with different user_ids.",
        )?;
        let caps = IntCounterVec::new(
            Opts::new(
                "identity_cap_hits_total",
                "Events whose merge or addition a cap stopped, by cap: merges, identifiers.",
            ),
            &["cap"],
        )?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "identity_lookups_total",
                "Stitcher lookups: hit = resolved from a link, miss = sent to the space's coordinator.",
            ),
            &["result"],
        )?;
        let links = IntCounterVec::new(
            Opts::new(
                "identity_links_total",
                "Link updates the coordinator sent to the stitchers (link, or unlink for profiles too large to link).",
            ),
            &["kind"],
        )?;
        let deletions = IntCounter::new(
            "identity_deletions_total",
            "Privacy deletion requests the coordinator carried out.",
        )?;
        let deleted_profiles = IntCounter::new(
            "identity_deleted_profiles_total",
            "Profiles deleted from the graph by privacy deletion requests.",
        )?;
        let definition_errors = IntCounter::new(
            "identity_definition_errors_total",
            "identity_settings definitions that did not decode or compile (the previous settings stay in force).",
        )?;
        for c in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(profiles_created.clone()),
            Box::new(deletions.clone()),
            Box::new(deleted_profiles.clone()),
            Box::new(merges.clone()),
            Box::new(demotions.clone()),
            Box::new(blocked_values.clone()),
            Box::new(merge_protection_refusals.clone()),
            Box::new(caps.clone()),
            Box::new(definition_errors.clone()),
            Box::new(lookups.clone()),
            Box::new(links.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            events,
            profiles_created,
            merges,
            demotions,
            blocked_values,
            merge_protection_refusals,
            caps,
            deletions,
            deleted_profiles,
            definition_errors,
            lookups,
            links,
        })
    }

    /// Metrics registered nowhere (tests, benchmarks).
    pub fn unregistered() -> Result<Metrics, prometheus::Error> {
        Metrics::new(&Registry::new())
    }
}
