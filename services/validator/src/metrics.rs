//! `corral_validator_*` metrics. Every label has a bounded set of values: outcomes and violation
//! types are closed sets, event names are only those a loaded plan lists (others are
//! `(unplanned)`), capped at [`MAX_EVENT_LABELS`].

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub const MAX_EVENT_LABELS: usize = 500;

pub struct Metrics {
    pub messages: IntCounterVec,
    pub events: IntCounterVec,
    pub violations: IntCounterVec,
    pub plan_version: IntGaugeVec,
    pub plans_loaded: IntGauge,
    pub definition_errors: IntCounter,
    event_labels: Mutex<HashSet<String>>,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let messages = IntCounterVec::new(
            Opts::new(
                "validator_messages_total",
                "Messages by outcome: valid, blocked, duplicate, dead_letter.",
            ),
            &["outcome"],
        )?;
        let events = IntCounterVec::new(
            Opts::new(
                "validator_events_total",
                "Messages by event name (planned names only) and outcome.",
            ),
            &["event", "outcome"],
        )?;
        let violations = IntCounterVec::new(
            Opts::new("validator_violations_total", "Violations by type."),
            &["type"],
        )?;
        let plan_version = IntGaugeVec::new(
            Opts::new(
                "validator_plan_version",
                "Version of each tracking plan in use.",
            ),
            &["space", "plan"],
        )?;
        let plans_loaded = IntGauge::new("validator_plans_loaded", "Tracking plans in use.")?;
        let definition_errors = IntCounter::new(
            "validator_definition_errors_total",
            "Definitions that did not decode or compile (the previous version stays in force).",
        )?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(violations.clone()))?;
        registry.register(Box::new(plan_version.clone()))?;
        registry.register(Box::new(plans_loaded.clone()))?;
        registry.register(Box::new(definition_errors.clone()))?;
        Ok(Metrics {
            messages,
            events,
            violations,
            plan_version,
            plans_loaded,
            definition_errors,
            event_labels: Mutex::new(HashSet::new()),
        })
    }

    /// Metrics registered nowhere (tests, benchmarks).
    pub fn unregistered() -> Metrics {
        // Registering into a throwaway registry cannot collide.
        match Metrics::new(&Registry::new()) {
            Ok(m) => m,
            Err(e) => unreachable_metrics(e),
        }
    }

    /// The `event` label: a planned name, or a bounded placeholder.
    pub fn event_label(&self, name: Option<&str>, planned: bool) -> String {
        let Some(name) = name.filter(|_| planned) else {
            return "(unplanned)".to_string();
        };
        let mut set = match self.event_labels.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if set.contains(name) {
            return name.to_string();
        }
        if set.len() >= MAX_EVENT_LABELS {
            return "(other)".to_string();
        }
        set.insert(name.to_string());
        name.to_string()
    }

    /// Sets the plan gauges from the plans now in force.
    pub fn publish_plans(&self, plans: &crate::registry::PlanStore) {
        let snap = plans.snapshot();
        self.plan_version.reset();
        for p in snap.plans() {
            self.plan_version
                .with_label_values(&[p.space_id.as_str(), p.key.as_str()])
                .set(p.version);
        }
        self.plans_loaded.set(snap.len() as i64);
    }
}

#[cold]
fn unreachable_metrics(e: prometheus::Error) -> Metrics {
    // Only a bug in the metric definitions above can get here.
    panic!("validator metric definitions are invalid: {e}")
}
