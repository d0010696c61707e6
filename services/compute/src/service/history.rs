//! Backfill slices (`include_historical_data: true`): a task with leaves waiting for history
//! reads its own partition of `events.resolved` up to the cut during its punctuation, a bounded
//! slice per call, and applies it with the registrations' progress in the same transaction. The
//! registrations and the exactly-once argument are in `crate::backfill`.

use super::*;
use std::time::Instant;
use tracing::{debug, info};

use crate::backfill::{HistoryReader, LeafReg};

/// One task's backfill view.
#[derive(Default)]
pub(super) struct TaskBackfill {
    generation: u64,
    regs: BTreeMap<(String, String), LeafReg>,
    pub(super) held: BTreeMap<String, Arc<BTreeSet<String>>>,
    /// Reader of this partition's history (positioned at the lowest pending `applied`).
    reader: Option<HistoryReader>,
    /// This backfill's progress in this process (log and metrics).
    run: Option<Run>,
    /// This task's share of the remaining-events gauge.
    remaining: i64,
}

/// A task's backfill since this process started reading it.
struct Run {
    started: Instant,
    read: u64,
    applied: u64,
}

/// A profile's state while a history slice is applied (loaded once per slice).
struct Slot {
    st: ProfileState,
    old_wake: Option<i64>,
    dirty: bool,
    /// The profile was merged away before its history was read: the history goes to this one.
    merged_into: Option<String>,
    /// The profile was deleted (docs/privacy.md): its history up to this time is skipped.
    deleted_until: Option<i64>,
    /// The latest resolve time of the events applied (for the survivor's deletion check).
    until_ms: i64,
}

/// One history slice's filter and the profiles it changed: which events the pending leaves
/// still want (cheap peek at space and name first, then by offset against each registration's
/// range), applied to profile states loaded once per slice.
struct Slice<'s, 'c, 'a> {
    ctx: &'c ProcessContext<'a>,
    pending: &'s [((String, String), LeafReg)],
    /// Per space: engine and pending leaves.
    spaces: BTreeMap<&'s str, (Arc<Engine>, BTreeSet<String>)>,
    /// Per space: the event names the pending leaves read.
    names: BTreeMap<&'s str, BTreeSet<String>>,
    /// The leaves an offset still goes to change only at registration boundaries.
    bounds: Vec<i64>,
    only_cache: HashMap<(&'s str, usize), Arc<BTreeSet<String>>>,
    fingerprint: Option<[u8; 8]>,
    now: i64,
    cache: HashMap<String, Slot>,
    applied: u64,
    failure: Option<ProcessError>,
}

impl<'s, 'c, 'a> Slice<'s, 'c, 'a> {
    fn new(
        ctx: &'c ProcessContext<'a>,
        pending: &'s [((String, String), LeafReg)],
        engines: &Engines,
        fingerprint: Option<[u8; 8]>,
        now: i64,
    ) -> Self {
        let mut spaces: BTreeMap<&str, (Arc<Engine>, BTreeSet<String>)> = BTreeMap::new();
        for ((space, leaf), _) in pending {
            if let Some(e) = engines.get(space) {
                spaces
                    .entry(space.as_str())
                    .or_insert_with(|| (e.clone(), BTreeSet::new()))
                    .1
                    .insert(leaf.clone());
            }
        }
        let names = spaces
            .iter()
            .map(|(s, (e, leaves))| (*s, e.event_names(leaves)))
            .collect();
        let mut bounds: Vec<i64> = pending
            .iter()
            .flat_map(|(_, r)| [r.applied, r.cut])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        Slice {
            ctx,
            pending,
            spaces,
            names,
            bounds,
            only_cache: HashMap::new(),
            fingerprint,
            now,
            cache: HashMap::new(),
            applied: 0,
            failure: None,
        }
    }

    /// Applies the record at `offset` to its profile if a pending leaf wants it. Undecodable
    /// events were dead-lettered by the live path and are skipped; a store failure stops the
    /// slice (kept in `failure`).
    fn offer(&mut self, offset: i64, bytes: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if let Some(p) = self
            .fingerprint
            .as_ref()
            .and_then(|fp| backfill::peek(bytes, fp))
        {
            let wanted = p
                .name
                .is_some_and(|n| self.names.get(p.space).is_some_and(|set| set.contains(n)));
            if !wanted {
                return;
            }
        }
        let Ok(ev) = ResolvedEvent::decode(bytes) else {
            return;
        };
        let m = &ev.message;
        let Some(name) = event_name(m.message_type, m.event.as_deref()) else {
            return;
        };
        let Some((space_key, (engine, _))) = self.spaces.get_key_value(m.space_id.as_str()) else {
            return;
        };
        if !self.names.get(*space_key).is_some_and(|n| n.contains(name)) || ev.profile_id.is_empty()
        {
            return;
        }
        let b = self.bounds.partition_point(|x| *x <= offset);
        let pending = self.pending;
        let only = self
            .only_cache
            .entry((*space_key, b))
            .or_insert_with(|| {
                Arc::new(
                    pending
                        .iter()
                        .filter(|((s, _), r)| *s == m.space_id && r.wants(offset))
                        .map(|((_, l), _)| l.clone())
                        .collect(),
                )
            })
            .clone();
        if only.is_empty() {
            return;
        }
        let (engine, now) = (engine.clone(), self.now);
        let slot = match self.slot(&ev.profile_id) {
            Ok(slot) => slot,
            Err(e) => {
                self.failure = Some(e);
                return;
            }
        };
        if slot.deleted_until.is_some_and(|t| ev.resolved_at_ms <= t) {
            return;
        }
        let st = &mut slot.st;
        let applies = as_event(m, event_time_ms(m, now), |ev| {
            engine.backfill_event(st, ev, &only, now)
        })
        .unwrap_or(false);
        if !applies {
            return;
        }
        if st.space_id.is_empty() {
            st.space_id = m.space_id.clone();
        }
        // Usually known already (live processing saw every event): skip the sort.
        let known = ev.external_ids.iter().all(|i| {
            st.external_ids
                .iter()
                .any(|e| e.id == i.id && e.id_type == i.id_type && e.collection == i.collection)
        });
        if !known {
            st.add_ids(ext_ids(&ev.external_ids));
        }
        slot.dirty = true;
        slot.until_ms = slot.until_ms.max(ev.resolved_at_ms);
        self.applied += 1;
    }

    /// The profile's state in this slice, loaded on first use. A profile without state is new,
    /// or was merged away (then its history joins the survivor).
    fn slot(&mut self, profile: &str) -> Result<&mut Slot, ProcessError> {
        if !self.cache.contains_key(profile) {
            let (st, merged_into) = match ComputeProcessor::load(self.ctx, profile)? {
                Some(st) => (st, None),
                None => (
                    ProfileState::default(),
                    ComputeProcessor::merged_into(self.ctx, profile)?,
                ),
            };
            let old_wake = st.wake_ms;
            let deleted_until = ComputeProcessor::deleted_until(self.ctx, profile)?;
            self.cache.insert(
                profile.to_string(),
                Slot {
                    st,
                    old_wake,
                    dirty: false,
                    merged_into,
                    deleted_until,
                    until_ms: i64::MIN,
                },
            );
        }
        self.cache
            .get_mut(profile)
            .ok_or_else(|| ProcessError::Fatal("a loaded profile vanished from the slice".into()))
    }
}

impl ComputeProcessor {
    /// Forgets a task's backfill cache (reloaded from the store on next use) and its share of
    /// the pending gauge.
    pub(super) fn drop_task(&mut self, part: i32) {
        if let Some(mut t) = self.tasks.remove(&part) {
            for held in t.held.values() {
                for d in held.iter() {
                    self.metrics.backfill_pending.with_label_values(&[d]).dec();
                }
            }
            if t.run.take().is_some() {
                self.metrics.backfill_tasks_active.dec();
            }
            backfill::close(t.reader.take());
            self.report_remaining(&mut t, 0);
        }
    }

    /// Registers leaves this task has not seen yet (cut = next live offset) and forgets
    /// removed ones, once per definitions generation; recomputes held definitions.
    pub(super) fn sync_backfill(
        &mut self,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let part = ctx.partition();
        let generation = self.snap.1;
        if self
            .tasks
            .get(&part)
            .is_some_and(|t| t.generation == generation)
        {
            return Ok(());
        }
        let mut task = match self.tasks.remove(&part) {
            Some(t) => t,
            None => {
                let mut t = TaskBackfill::default();
                for (k, v) in ctx.scan_prefix(BACKFILL, b"leaf/")? {
                    let (Some(id), Ok(reg)) = (
                        backfill::parse_reg_key(&k),
                        serde_json::from_slice::<LeafReg>(&v),
                    ) else {
                        return Err(ProcessError::Fatal("corrupt backfill registration".into()));
                    };
                    t.regs.insert(id, reg);
                }
                t
            }
        };
        let pos = match ctx.get(BACKFILL, backfill::POS_KEY)? {
            Some(b) if b.len() == 8 => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&b);
                i64::from_be_bytes(a)
            }
            _ => 0,
        };
        let mut wanted: BTreeMap<(String, String), bool> = BTreeMap::new();
        for (space, engine) in self.snap.0.iter() {
            for (leaf, hist) in engine.leaves_with_history() {
                wanted.insert((space.clone(), leaf), hist);
            }
        }
        let gone: Vec<(String, String)> = task
            .regs
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            task.regs.remove(&k);
            ctx.delete(BACKFILL, backfill::reg_key(&k.0, &k.1));
        }
        for (k, hist) in wanted {
            if task.regs.contains_key(&k) {
                continue;
            }
            // pos 0: this task has processed nothing yet, so live processing covers history.
            let hist = hist && pos > 0;
            let reg = LeafReg {
                cut: pos,
                hist,
                done: !hist,
                applied: 0,
            };
            let v = serde_json::to_vec(&reg)
                .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
            ctx.put(BACKFILL, backfill::reg_key(&k.0, &k.1), v);
            task.regs.insert(k, reg);
        }
        self.set_held(&mut task);
        task.generation = generation;
        self.tasks.insert(part, task);
        Ok(())
    }

    /// Held definitions per space from the pending leaves; returns whether any was released.
    pub(super) fn set_held(&self, task: &mut TaskBackfill) -> bool {
        let mut pending: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for ((space, leaf), reg) in &task.regs {
            if reg.pending() {
                pending.entry(space).or_default().insert(leaf.clone());
            }
        }
        let mut held = BTreeMap::new();
        for (space, leaves) in pending {
            if let Some(e) = self.snap.0.get(space) {
                held.insert(space.to_string(), Arc::new(e.held_by(&leaves)));
            }
        }
        let mut released = false;
        for (space, old) in &task.held {
            let new = held.get(space);
            for d in old.iter() {
                if !new.is_some_and(|n| n.contains(d)) {
                    self.metrics.backfill_pending.with_label_values(&[d]).dec();
                    released = true;
                }
            }
        }
        for (space, new) in &held {
            let old = task.held.get(space);
            for d in new.iter() {
                if !old.is_some_and(|o| o.contains(d)) {
                    self.metrics.backfill_pending.with_label_values(&[d]).inc();
                }
            }
        }
        task.held = held;
        released
    }

    /// Reads and applies a slice of this task's history (bounded by the source's budget,
    /// shared by the tasks with history pending, and its record cap), writing the states it
    /// changed and every pending registration's progress in the open transaction. Returns
    /// whether definitions were released (every profile must then be re-evaluated).
    ///
    /// The reader's position is in memory only: it always equals the lowest pending `applied`
    /// of the committed-or-open state, because this call either writes all its effects or
    /// returns a fatal error (the runtime aborts, `on_abort` drops the reader, and the next
    /// call reopens it from the restored registrations).
    pub(super) fn run_history(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        now: i64,
    ) -> Result<bool, ProcessError> {
        let part = ctx.partition();
        let Some(src) = self.history.clone() else {
            return Ok(false);
        };
        let busy = self
            .tasks
            .values()
            .filter(|t| t.regs.values().any(LeafReg::pending))
            .count()
            .max(1);
        let Some(mut task) = self.tasks.remove(&part) else {
            return Ok(false);
        };
        if task.run.is_none()
            && self.wave != self.snap.1
            && task.regs.values().any(LeafReg::pending)
        {
            // The first history read since the definitions last changed (tasks run one after
            // the other on this thread, so "no task active" would restart the clock per task).
            self.wave = self.snap.1;
            self.metrics
                .backfill_started
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        let r = self.history_slice(ctx, &mut task, &src, busy, now);
        self.tasks.insert(part, task);
        r
    }

    fn history_slice(
        &self,
        ctx: &mut ProcessContext<'_>,
        task: &mut TaskBackfill,
        src: &HistorySource,
        busy: usize,
        now: i64,
    ) -> Result<bool, ProcessError> {
        let part = ctx.partition();
        let pending: Vec<((String, String), LeafReg)> = task
            .regs
            .iter()
            .filter(|(_, r)| r.pending())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        if pending.is_empty() {
            backfill::close(task.reader.take());
            self.report_remaining(task, 0);
            return Ok(false);
        }
        let from = pending.iter().map(|(_, r)| r.applied).min().unwrap_or(0);
        let end = pending.iter().map(|(_, r)| r.cut).max().unwrap_or(0);
        if task.reader.as_ref().is_none_or(|r| r.at != from) {
            backfill::close(task.reader.take());
            match src.open(part, from, end) {
                Ok(r) => task.reader = Some(r),
                Err(e) => {
                    warn!(partition = part, error = %e, "cannot open the backfill reader; retrying at the next punctuation");
                    return Ok(false);
                }
            }
        }
        let Some(reader) = task.reader.as_mut() else {
            return Ok(false);
        };
        reader.end = end;
        if task.run.is_none() {
            self.metrics.backfill_tasks_active.inc();
            info!(
                partition = part,
                from,
                end,
                leaves = pending.len(),
                "backfill started"
            );
            task.run = Some(Run {
                started: Instant::now(),
                read: 0,
                applied: 0,
            });
        }

        let mut slice = Slice::new(ctx, &pending, &self.snap.0, self.fingerprint, now);
        let deadline = Instant::now() + src.budget / busy as u32;
        let slice_start = Instant::now();
        let mut first_record_ms = None;
        let read = reader.read(deadline, src.max_records, |offset, bytes| {
            first_record_ms.get_or_insert_with(|| slice_start.elapsed().as_millis());
            slice.offer(offset, bytes);
        });
        let Slice {
            cache,
            applied,
            failure,
            ..
        } = slice;
        if let Some(e) = failure {
            return Err(e);
        }
        let (n, reader_failed) = match read {
            Ok(n) => (n, false),
            Err(e) => {
                // What was delivered before the error is applied and recorded below; the rest
                // is read again by a new reader from the recorded progress.
                warn!(partition = part, error = %e, "backfill read failed; reopening at the next punctuation");
                (0, true)
            }
        };
        let at = reader.at;
        let reader_end = reader.end;
        if reader_failed {
            backfill::close(task.reader.take());
        }
        let read_ms = slice_start.elapsed().as_millis();
        let profiles_in_slice = cache.len();
        for (profile, slot) in cache {
            if !slot.dirty {
                continue;
            }
            match slot.merged_into {
                // Only the pending leaves' history: the survivor's task adds it to its state.
                Some(into) => self.hand_over(
                    ctx,
                    MergeState {
                        into,
                        from: Some(profile),
                        state: slot.st,
                        trigger: None,
                        at_ms: now,
                        hops: 0,
                        until_ms: Some(slot.until_ms),
                    },
                )?,
                None => {
                    let mut st = slot.st;
                    self.save(ctx, &profile, &mut st, slot.old_wake)?
                }
            }
        }
        debug!(
            partition = part,
            records = n,
            applied,
            profiles = profiles_in_slice,
            first_record_ms,
            read_ms,
            total_ms = slice_start.elapsed().as_millis(),
            "backfill slice"
        );
        let mut completed = false;
        for ((space, leaf), reg) in task.regs.iter_mut() {
            if !reg.pending() {
                continue;
            }
            let before = reg.clone();
            completed |= reg.advance(at);
            if *reg != before {
                let v = serde_json::to_vec(&*reg)
                    .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
                ctx.put(BACKFILL, backfill::reg_key(space, leaf), v);
            }
        }
        if !reader_failed && task.regs.values().any(LeafReg::pending) {
            // More history: read the next slice as soon as live input leaves time for it.
            ctx.punctuate_again_when_idle();
        }
        self.metrics.backfill_read.inc_by(n as u64);
        self.metrics.backfill_applied.inc_by(applied);
        self.report_remaining(task, (reader_end - at).max(0));
        if let Some(run) = task.run.as_mut() {
            run.read += n as u64;
            run.applied += applied;
        }
        if !completed {
            return Ok(false);
        }
        let released = self.set_held(task);
        if !task.regs.values().any(LeafReg::pending) {
            backfill::close(task.reader.take());
            if let Some(run) = task.run.take() {
                let secs = run.started.elapsed().as_secs_f64();
                self.metrics.backfill_tasks_active.dec();
                self.metrics
                    .backfill_completed
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
                info!(
                    partition = part,
                    read = run.read,
                    applied = run.applied,
                    seconds = secs,
                    events_per_s = (run.read as f64 / secs.max(1e-9)) as u64,
                    "backfill complete"
                );
            }
        }
        Ok(released)
    }

    /// Sets this task's share of the remaining-events gauge.
    pub(super) fn report_remaining(&self, task: &mut TaskBackfill, left: i64) {
        self.metrics.backfill_remaining.add(left - task.remaining);
        task.remaining = left;
    }
}
