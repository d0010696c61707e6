//! The fanout processor on the exactly-once runtime.
//!
//! `process` turns each membership or trait change into deliveries: Kafka destinations are
//! produced inside the transaction (exactly once); HTTP deliveries are written to the `outbox`
//! store (see [`crate::outbox`]) and handed to their destination's lane. `punctuate` (every
//! few milliseconds, per task, inside the transaction) applies the lanes' outcomes (delete on
//! `2xx`, reschedule on a retryable failure, dead-letter on a permanent one or past the
//! horizon), starts due list syncs, and dispatches the next due head of each queue.
//!
//! HTTP calls are side effects outside the transaction, so delivery is at-least-once: a crash
//! between a `2xx` and the commit of the outbox delete sends that delivery again, with the same
//! message id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use corral_codec::{
    AvroRecord, DeadLetter, ExternalId, MembershipChange, MembershipChangeKind, TraitChange,
};
use corral_runtime::{InputRecord, ProcessContext, ProcessError, Processor, Store};
use rand::Rng;
use serde_json::Value as Json;
use tracing::{debug, warn};

use crate::destination::DestinationType;
use crate::lane::{Engine, Job, Outcome};
use crate::metrics::FanoutMetrics;
use crate::outbox::{self, Delivery, Slot};
use crate::payload::{self, Change};
use crate::registry::{snapshot, Destination, SharedDestinations};
use crate::retry::{classify, Class, Decision, RetryPolicy};

/// The single state store: deliveries, their retry state and list memberships.
pub const OUTBOX: Store = Store::named("outbox");

/// Full topic names the processor reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    pub membership: String,
    pub traits: String,
    /// Deliveries re-injected by `corralctl replay deliveries` (Delivery JSON, keyed by profile).
    pub replay: String,
    /// Dead-lettered deliveries (DeadLetter records whose value is the Delivery JSON).
    pub deliveries_dlq: String,
}

/// Per-task (input partition) view of the outbox, mirrored in memory so dispatch does not scan
/// RocksDB. Rebuilt from the store whenever the task (re)appears.
#[derive(Default)]
struct Task {
    queues: BTreeMap<(String, String), BTreeMap<u64, Delivery>>,
    in_flight: HashSet<(String, String)>,
    loaded: bool,
    last_seen_ms: i64,
}

pub struct FanoutProcessor {
    topics: Topics,
    destinations: SharedDestinations,
    engine: Engine,
    tasks: HashMap<i32, Task>,
    outcomes: HashMap<i32, Vec<Outcome>>,
    policy: RetryPolicy,
    metrics: FanoutMetrics,
    punctuate_interval: Duration,
    last_gauges_ms: i64,
}

fn now_ms() -> i64 {
    crate::lane::now_ms()
}

fn store_err(e: serde_json::Error) -> ProcessError {
    ProcessError::Fatal(format!("outbox entry does not encode: {e}"))
}

/// The task's mirror, (re)loaded from the store when the task is new or was away (revoked and
/// assigned again).
fn task_of<'t>(
    tasks: &'t mut HashMap<i32, Task>,
    interval: Duration,
    ctx: &ProcessContext<'_>,
    now: i64,
) -> Result<&'t mut Task, ProcessError> {
    let stale_after = (interval.as_millis() as i64 * 20).max(2000);
    let p = ctx.partition();
    let task = tasks.entry(p).or_default();
    if !task.loaded || now - task.last_seen_ms > stale_after {
        task.queues.clear();
        for (k, v) in ctx.scan_prefix(OUTBOX, outbox::QUEUE_PREFIX)? {
            let (Some(slot), Ok(d)) = (Slot::parse(&k), serde_json::from_slice::<Delivery>(&v))
            else {
                warn!(partition = p, "skipping an unreadable outbox entry");
                continue;
            };
            task.queues
                .entry((slot.dest, slot.queue))
                .or_default()
                .insert(slot.seq, d);
        }
        task.loaded = true;
    }
    task.last_seen_ms = now;
    Ok(task)
}

impl FanoutProcessor {
    pub fn new(
        topics: Topics,
        destinations: SharedDestinations,
        metrics: FanoutMetrics,
        policy: RetryPolicy,
        punctuate_interval: Duration,
        lane_threads: usize,
    ) -> Self {
        Self {
            topics,
            destinations,
            engine: Engine::new(metrics.clone(), lane_threads),
            tasks: HashMap::new(),
            outcomes: HashMap::new(),
            policy,
            metrics,
            punctuate_interval,
            last_gauges_ms: 0,
        }
    }

    fn next_seq(ctx: &mut ProcessContext<'_>) -> Result<u64, ProcessError> {
        let n = ctx
            .get(OUTBOX, outbox::SEQ_KEY)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);
        ctx.put(
            OUTBOX,
            outbox::SEQ_KEY.to_vec(),
            (n + 1).to_be_bytes().to_vec(),
        );
        Ok(n)
    }

    /// Writes a delivery to the outbox and, when its queue is idle, sends it at once.
    fn enqueue(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        dest: &Destination,
        queue: String,
        d: Delivery,
    ) -> Result<(), ProcessError> {
        let seq = Self::next_seq(ctx)?;
        let slot = Slot {
            dest: dest.spec.key.clone(),
            queue,
            seq,
        };
        ctx.put(
            OUTBOX,
            slot.key(),
            serde_json::to_vec(&d).map_err(store_err)?,
        );
        let now = now_ms();
        let partition = ctx.partition();
        let task = task_of(&mut self.tasks, self.punctuate_interval, ctx, now)?;
        let qk = (slot.dest.clone(), slot.queue.clone());
        let q = task.queues.entry(qk.clone()).or_default();
        q.insert(seq, d.clone());
        let idle = !task.in_flight.contains(&qk) && q.len() == 1;
        if idle {
            task.in_flight.insert(qk);
            self.engine.submit(
                &dest.lane,
                Job {
                    partition,
                    slot,
                    delivery: d,
                },
            );
        }
        Ok(())
    }

    fn dead_letter(
        &self,
        ctx: &mut ProcessContext<'_>,
        d: &Delivery,
        reason: &'static str,
        error: String,
    ) -> Result<(), ProcessError> {
        self.metrics
            .deliveries
            .with_label_values(&[&d.dest, "dead_lettered"])
            .inc();
        if d.deletion {
            self.metrics
                .user_deletions
                .with_label_values(&[&d.dest, "dead_lettered"])
                .inc();
        }
        warn!(destination = %d.dest, reason, attempts = d.attempts, "delivery dead-lettered");
        let letter = DeadLetter {
            space_id: d.space_id.clone(),
            service: "fanout".into(),
            origin_topic: d.origin_topic.clone(),
            origin_partition: d.origin_partition,
            origin_offset: d.origin_offset,
            key: Some(d.profile_id.as_bytes().to_vec()),
            value: Some(serde_json::to_vec(d).map_err(store_err)?),
            error,
            reason: reason.into(),
            failed_at_ms: now_ms(),
        };
        ctx.emit_record_to(
            &self.topics.deliveries_dlq,
            d.profile_id.as_bytes(),
            &letter,
        )
    }

    /// `regulation`: the change is a deleted profile's exit (trigger `regulation:{id}`).
    fn on_change(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
        change: &Change,
        regulation: Option<&str>,
    ) -> Result<(), ProcessError> {
        let dests = snapshot(&self.destinations);
        for dest in dests.iter() {
            if dest.space_id != change.space_id {
                continue;
            }
            // A destination with a user-deletion API gets the deletion instead of the exits
            // (an exit sent after it would create the user again), whatever it is connected to.
            if let Some(reg) = regulation {
                if payload::supports_deletion(dest.spec.dest_type) {
                    self.forward_deletion(ctx, record, dest, change, reg)?;
                    continue;
                }
            }
            let mode = if change.is_audience() {
                dest.spec.audience_mode(&change.key)
            } else {
                dest.spec.trait_mode(&change.key)
            };
            let Some(mode) = mode else { continue };
            if dest.spec.dest_type.is_list() {
                continue;
            }
            let calls = payload::calls(&dest.spec, change, mode);
            if calls.is_empty() {
                self.metrics
                    .deliveries
                    .with_label_values(&[&dest.spec.key, "no_identifier"])
                    .inc();
                continue;
            }
            for call in calls {
                if dest.spec.dest_type == DestinationType::Kafka {
                    let topic = dest.spec.topic.as_deref().unwrap_or_default();
                    let value = serde_json::to_vec(&call.to_segment_json()).map_err(store_err)?;
                    ctx.emit(
                        topic,
                        Some(change.profile_id.as_bytes().to_vec()),
                        Some(value),
                    );
                    self.metrics
                        .deliveries
                        .with_label_values(&[&dest.spec.key, "produced"])
                        .inc();
                    continue;
                }
                let Some(req) = payload::request_for(&dest.spec, &call, change.changed_at_ms)
                else {
                    self.metrics
                        .deliveries
                        .with_label_values(&[&dest.spec.key, "no_identifier"])
                        .inc();
                    continue;
                };
                let d = Delivery {
                    dest: dest.spec.key.clone(),
                    space_id: change.space_id.clone(),
                    profile_id: change.profile_id.clone(),
                    message_id: call.message_id.clone(),
                    url: req.url,
                    body: req.body,
                    source_ms: change.changed_at_ms,
                    attempts: 0,
                    first_attempt_ms: None,
                    next_attempt_ms: 0,
                    last_error: None,
                    origin_topic: record.topic.to_string(),
                    origin_partition: record.partition,
                    origin_offset: record.offset,
                    method: None,
                    deletion: false,
                };
                self.enqueue(ctx, dest, change.profile_id.clone(), d)?;
            }
        }
        Ok(())
    }

    /// Queues the user-deletion requests of `dest` for the deleted profile of `change`, once per
    /// profile, destination and regulation (a deleted profile exits every audience it was in:
    /// the first exit queues, the mark written with it makes the others skip). Written in the
    /// transaction that consumes the exit, on the profile's queue, so the request follows every
    /// earlier delivery of the profile to that destination, with the outbox's retries and
    /// dead letters.
    fn forward_deletion(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
        dest: &Destination,
        change: &Change,
        regulation: &str,
    ) -> Result<(), ProcessError> {
        let mark = outbox::deletion_mark(&dest.spec.key, &change.profile_id, regulation);
        if ctx.get(OUTBOX, &mark)?.is_some() {
            return Ok(());
        }
        ctx.put(OUTBOX, mark, Vec::new());
        let calls = payload::deletion_calls(
            &dest.spec,
            &change.space_id,
            &change.profile_id,
            regulation,
            &change.external_ids,
        );
        let counter = self.metrics.user_deletions.clone();
        let count = |outcome: &str| counter.with_label_values(&[&dest.spec.key, outcome]).inc();
        if calls.is_empty() {
            count("no_identifier");
            return Ok(());
        }
        for call in calls {
            count("queued");
            let d = Delivery {
                dest: dest.spec.key.clone(),
                space_id: change.space_id.clone(),
                profile_id: change.profile_id.clone(),
                message_id: call.message_id,
                url: call.url,
                body: call.body,
                source_ms: change.changed_at_ms,
                attempts: 0,
                first_attempt_ms: None,
                next_attempt_ms: 0,
                last_error: None,
                origin_topic: record.topic.to_string(),
                origin_partition: record.partition,
                origin_offset: record.offset,
                method: (call.method != "POST").then(|| call.method.to_string()),
                deletion: true,
            };
            self.enqueue(ctx, dest, change.profile_id.clone(), d)?;
        }
        Ok(())
    }

    /// Keeps the current members of every audience, for list syncs (a list connected later
    /// still gets the whole audience on its first sync).
    fn track_membership(
        ctx: &mut ProcessContext<'_>,
        m: &MembershipChange,
    ) -> Result<(), ProcessError> {
        // Lists hold users: an account audience's list is its accounts' users, whose own
        // changes compute emits; the account's record is not a member.
        if payload::is_account_record(&m.external_ids) {
            return Ok(());
        }
        let aud = format!("{}/{}", m.space_id, m.audience_key);
        let key = outbox::member_key(&aud, &m.profile_id);
        match m.change {
            MembershipChangeKind::Entered => {
                ctx.put(
                    OUTBOX,
                    key,
                    serde_json::to_vec(&m.external_ids).map_err(store_err)?,
                );
            }
            MembershipChangeKind::Exited => ctx.delete(OUTBOX, key),
        }
        Ok(())
    }

    fn apply_outcome(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        o: Outcome,
        now: i64,
    ) -> Result<(), ProcessError> {
        let task = task_of(&mut self.tasks, self.punctuate_interval, ctx, now)?;
        let qk = (o.slot.dest.clone(), o.slot.queue.clone());
        task.in_flight.remove(&qk);
        let Some(d) = task
            .queues
            .get_mut(&qk)
            .and_then(|q| q.get_mut(&o.slot.seq))
        else {
            return Ok(());
        };
        let horizon = snapshot(&self.destinations)
            .get(&o.slot.dest)
            .map_or(Duration::from_secs(4 * 3600), |x| x.spec.retry_horizon());
        d.attempts += 1;
        let first = *d.first_attempt_ms.get_or_insert(o.sent_ms);
        // A user-deletion request answered 404: the user is not there, which is what was asked.
        let status = if d.deletion && o.status == Some(404) {
            Some(200)
        } else {
            o.status
        };
        if d.deletion {
            let outcome = match (classify(status), o.status) {
                (Class::Delivered, Some(404)) => Some("not_found"),
                (Class::Delivered, _) => Some("delivered"),
                _ => None,
            };
            if let Some(outcome) = outcome {
                self.metrics
                    .user_deletions
                    .with_label_values(&[&o.slot.dest, outcome])
                    .inc();
            }
        }
        let done = match classify(status) {
            Class::Delivered => {
                self.metrics
                    .deliveries
                    .with_label_values(&[&o.slot.dest, "delivered"])
                    .inc();
                None
            }
            Class::Permanent => Some((
                "permanent_http_status",
                format!("HTTP {}: {}", o.status.unwrap_or(0), o.detail),
            )),
            Class::Retryable => {
                let error = match o.status {
                    Some(s) => format!("HTTP {s}: {}", o.detail),
                    None => o.detail.clone(),
                };
                let jitter: f64 = rand::rng().random();
                match self
                    .policy
                    .decide(now, first, d.attempts, o.retry_after, horizon, jitter)
                {
                    Decision::RetryAt(at) => {
                        self.metrics
                            .deliveries
                            .with_label_values(&[&o.slot.dest, "retried"])
                            .inc();
                        debug!(destination = %o.slot.dest, attempts = d.attempts, in_ms = at - now, "delivery will be retried");
                        d.next_attempt_ms = at;
                        d.last_error = Some(error);
                        let bytes = serde_json::to_vec(&*d).map_err(store_err)?;
                        ctx.put(OUTBOX, o.slot.key(), bytes);
                        return Ok(());
                    }
                    Decision::GiveUp => Some(("retry_horizon_exceeded", error)),
                }
            }
        };
        let d = d.clone();
        if let Some(q) = task.queues.get_mut(&qk) {
            q.remove(&o.slot.seq);
            if q.is_empty() {
                task.queues.remove(&qk);
            }
        }
        ctx.delete(OUTBOX, o.slot.key());
        if let Some((reason, error)) = done {
            self.dead_letter(ctx, &d, reason, error)?;
        }
        Ok(())
    }

    /// Starts the list syncs that are due on this task.
    fn list_syncs(&mut self, ctx: &mut ProcessContext<'_>, now: i64) -> Result<(), ProcessError> {
        let dests = snapshot(&self.destinations);
        for dest in dests.iter().filter(|d| d.spec.dest_type.is_list()) {
            for aud_key in dest
                .spec
                .connections
                .iter()
                .filter_map(|c| c.audience.as_deref())
            {
                let aud = format!("{}/{}", dest.space_id, aud_key);
                let tkey = outbox::sync_time_key(&dest.spec.key, &aud);
                let last = ctx
                    .get(OUTBOX, &tkey)?
                    .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                    .map(i64::from_be_bytes);
                if last.is_some_and(|l| now - l < dest.spec.sync_interval().as_millis() as i64) {
                    continue;
                }
                ctx.put(OUTBOX, tkey, now.to_be_bytes().to_vec());
                self.metrics
                    .list_syncs
                    .with_label_values(&[&dest.spec.key])
                    .inc();
                let read = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> BTreeMap<String, Json> {
                    entries
                        .into_iter()
                        .map(|(k, v)| {
                            (
                                outbox::last_part(&k),
                                serde_json::from_slice(&v).unwrap_or(Json::Null),
                            )
                        })
                        .collect()
                };
                let members = read(ctx.scan_prefix(OUTBOX, &outbox::members_prefix(&aud))?);
                let synced =
                    read(ctx.scan_prefix(OUTBOX, &outbox::synced_prefix(&dest.spec.key, &aud))?);
                let (adds, removes) = outbox::list_diff(&members, &synced);
                if adds.is_empty() && removes.is_empty() {
                    continue;
                }
                let member = |p: &str, ids: &Json| {
                    let ids: Vec<ExternalId> =
                        serde_json::from_value(ids.clone()).unwrap_or_default();
                    payload::list_member(p, &ids, dest.spec.hash_emails)
                };
                let add_json: Vec<Json> = adds.iter().map(|(p, ids)| member(p, ids)).collect();
                let remove_json: Vec<Json> =
                    removes.iter().map(|(p, ids)| member(p, ids)).collect();
                for (p, ids) in &adds {
                    ctx.put(
                        OUTBOX,
                        outbox::synced_key(&dest.spec.key, &aud, p),
                        serde_json::to_vec(ids).map_err(store_err)?,
                    );
                }
                for (p, _) in &removes {
                    ctx.delete(OUTBOX, outbox::synced_key(&dest.spec.key, &aud, p));
                }
                let sync_id = format!("{}/{}/{}/{}", dest.spec.key, aud, ctx.partition(), now);
                let size = dest.spec.batch_size();
                let batches = add_json
                    .len()
                    .div_ceil(size)
                    .max(remove_json.len().div_ceil(size));
                for i in 0..batches {
                    let chunk = |v: &[Json]| {
                        v.iter()
                            .skip(i * size)
                            .take(size)
                            .cloned()
                            .collect::<Vec<_>>()
                    };
                    let body = payload::list_batch(
                        &dest.spec.key,
                        aud_key,
                        &sync_id,
                        chunk(&add_json),
                        chunk(&remove_json),
                    );
                    let message_id = uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_OID,
                        format!("{sync_id}/{i}").as_bytes(),
                    )
                    .to_string();
                    let d = Delivery {
                        dest: dest.spec.key.clone(),
                        space_id: dest.space_id.clone(),
                        profile_id: String::new(),
                        message_id,
                        url: dest.spec.url.clone().unwrap_or_default(),
                        body,
                        source_ms: now,
                        attempts: 0,
                        first_attempt_ms: None,
                        next_attempt_ms: 0,
                        last_error: None,
                        origin_topic: self.topics.membership.clone(),
                        origin_partition: ctx.partition(),
                        origin_offset: -1,
                        method: None,
                        deletion: false,
                    };
                    self.enqueue(ctx, dest, format!("list:{aud}"), d)?;
                }
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, ctx: &mut ProcessContext<'_>, now: i64) -> Result<(), ProcessError> {
        let dests = snapshot(&self.destinations);
        let partition = ctx.partition();
        let task = task_of(&mut self.tasks, self.punctuate_interval, ctx, now)?;
        let mut jobs = Vec::new();
        let mut orphans = Vec::new();
        for (qk, q) in &task.queues {
            if task.in_flight.contains(qk) {
                continue;
            }
            let Some((seq, d)) = q.iter().next() else {
                continue;
            };
            if d.next_attempt_ms > now {
                continue;
            }
            let slot = Slot {
                dest: qk.0.clone(),
                queue: qk.1.clone(),
                seq: *seq,
            };
            match dests.get(&qk.0) {
                Some(dest) => jobs.push((dest.clone(), qk.clone(), slot, d.clone())),
                None => orphans.push((slot, d.clone())),
            }
        }
        for (dest, qk, slot, d) in jobs {
            task.in_flight.insert(qk);
            self.engine.submit(
                &dest.lane,
                Job {
                    partition,
                    slot,
                    delivery: d,
                },
            );
        }
        for (slot, _) in &orphans {
            if let Some(q) = task
                .queues
                .get_mut(&(slot.dest.clone(), slot.queue.clone()))
            {
                q.remove(&slot.seq);
            }
        }
        for (slot, d) in orphans {
            ctx.delete(OUTBOX, slot.key());
            self.dead_letter(
                ctx,
                &d,
                "destination_removed",
                format!("destination {} no longer exists", slot.dest),
            )?;
        }
        if let Some(task) = self.tasks.get_mut(&partition) {
            task.queues.retain(|_, q| !q.is_empty());
        }
        Ok(())
    }

    fn update_gauges(&mut self, now: i64) {
        if now - self.last_gauges_ms < 1000 {
            return;
        }
        self.last_gauges_ms = now;
        let mut depth: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for task in self.tasks.values() {
            for ((dest, _), q) in &task.queues {
                let e = depth.entry(dest.as_str()).or_insert((0, 0));
                for d in q.values().filter(|d| d.attempts > 0) {
                    e.0 += 1;
                    if let Some(f) = d.first_attempt_ms {
                        e.1 = e.1.max((now - f) / 1000);
                    }
                }
            }
        }
        for dest in snapshot(&self.destinations).iter() {
            let (n, age) = depth.get(dest.spec.key.as_str()).copied().unwrap_or((0, 0));
            self.metrics
                .retry_queue_depth
                .with_label_values(&[&dest.spec.key])
                .set(n);
            self.metrics
                .retry_queue_oldest_age
                .with_label_values(&[&dest.spec.key])
                .set(age);
        }
    }
}

impl Processor for FanoutProcessor {
    fn process(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        record: &InputRecord<'_>,
    ) -> Result<(), ProcessError> {
        let Some(value) = record.value else {
            return Err(ProcessError::bad_input("empty", "record has no value"));
        };
        if record.topic == self.topics.membership {
            let m = MembershipChange::decode(value)
                .map_err(|e| ProcessError::bad_input("decode", e.to_string()))?;
            self.metrics
                .changes
                .with_label_values(&["membership"])
                .inc();
            Self::track_membership(ctx, &m)?;
            // A deleted profile's exits (docs/privacy.md); an account's own change is never
            // a person's deletion.
            let regulation = m
                .trigger_message_id
                .as_deref()
                .and_then(corral_ops::privacy::regulation_of_trigger)
                .filter(|_| m.change == MembershipChangeKind::Exited)
                .filter(|_| !payload::is_account_record(&m.external_ids));
            self.on_change(ctx, record, &Change::from_membership(&m), regulation)
        } else if record.topic == self.topics.traits {
            let t = TraitChange::decode(value)
                .map_err(|e| ProcessError::bad_input("decode", e.to_string()))?;
            self.metrics.changes.with_label_values(&["trait"]).inc();
            self.on_change(ctx, record, &Change::from_trait(&t), None)
        } else if record.topic == self.topics.replay {
            let mut d: Delivery = serde_json::from_slice(value)
                .map_err(|e| ProcessError::bad_input("decode", e.to_string()))?;
            self.metrics.changes.with_label_values(&["replay"]).inc();
            let dests = snapshot(&self.destinations);
            let Some(dest) = dests.get(&d.dest).cloned() else {
                return Err(ProcessError::bad_input(
                    "unknown_destination",
                    format!("destination {} does not exist", d.dest),
                ));
            };
            d.attempts = 0;
            d.first_attempt_ms = None;
            d.next_attempt_ms = 0;
            d.last_error = None;
            let queue = if d.profile_id.is_empty() {
                format!("replay:{}", d.message_id)
            } else {
                d.profile_id.clone()
            };
            self.enqueue(ctx, &dest, queue, d)
        } else {
            Err(ProcessError::bad_input(
                "unknown_topic",
                format!("unexpected topic {}", record.topic),
            ))
        }
    }

    fn punctuate(&mut self, ctx: &mut ProcessContext<'_>, now_ms: i64) -> Result<(), ProcessError> {
        let partition = ctx.partition();
        task_of(&mut self.tasks, self.punctuate_interval, ctx, now_ms)?;
        for o in self.engine.drain() {
            self.outcomes.entry(o.partition).or_default().push(o);
        }
        for o in self.outcomes.remove(&partition).unwrap_or_default() {
            self.apply_outcome(ctx, o, now_ms)?;
        }
        self.list_syncs(ctx, now_ms)?;
        self.dispatch(ctx, now_ms)?;
        // Tasks not punctuated for a while were revoked: forget them (and their outcomes; the
        // new owner re-sends from the store).
        let stale_after = (self.punctuate_interval.as_millis() as i64 * 20).max(2000);
        let gone: Vec<i32> = self
            .tasks
            .iter()
            .filter(|(_, t)| now_ms - t.last_seen_ms > stale_after)
            .map(|(p, _)| *p)
            .collect();
        for p in gone {
            self.tasks.remove(&p);
            self.outcomes.remove(&p);
        }
        self.update_gauges(now_ms);
        Ok(())
    }
}
