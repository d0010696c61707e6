//! Timers: each profile with a time-dependent result (a window that expires, a session that
//! ends) has one key in the `timers` store, `minute bucket (8 bytes BE) | wake ms (8 bytes BE) |
//! profile id`. Punctuation scans the buckets up to now, re-evaluates the due profiles and
//! schedules them again, inside the runtime's transaction. When definitions change (or a task is
//! first punctuated) every profile of the task is re-evaluated once.

use super::*;

pub(super) const BUCKET_MS: i64 = 60_000;

pub(super) fn timer_key(wake: i64, profile: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + profile.len());
    k.extend_from_slice(&((wake.max(0) / BUCKET_MS) as u64).to_be_bytes());
    k.extend_from_slice(&(wake.max(0) as u64).to_be_bytes());
    k.extend_from_slice(profile.as_bytes());
    k
}

impl ComputeProcessor {
    /// Re-evaluates every profile when definitions changed since this task's last punctuation,
    /// then fires the timers due at `now`.
    pub(super) fn run_timers(
        &mut self,
        ctx: &mut ProcessContext<'_>,
        now: i64,
    ) -> Result<(), ProcessError> {
        let part = ctx.partition();
        let generation = self.snap.1;
        let now_bucket = (now.max(0) / BUCKET_MS) as u64;
        let cursor = self.cursors.get(&part).copied();
        // Definitions changed (or first punctuation of this task): evaluate every profile, so
        // new audiences emit their members and edits their differences. Idempotent: results
        // already emitted are stored with the profile.
        if cursor.is_none_or(|(_, g)| g != generation) {
            let all = ctx.scan_prefix(PROFILES, &[])?;
            for (k, v) in all {
                let profile = String::from_utf8_lossy(&k).into_owned();
                let st = ProfileState::decode(&v)
                    .map_err(|e| ProcessError::Fatal(format!("corrupt state: {e}")))?;
                self.reevaluate(ctx, &profile, st, now)?;
            }
            // After the users, whose condition changes reach the accounts through the topic.
            self.reevaluate_accounts(ctx, now)?;
            // Everything was just evaluated at `now`; stale timer keys are skipped below.
        }
        let timers: Vec<(Vec<u8>, Vec<u8>)> = match cursor {
            // Far behind (clock jump, long pause): one scan beats a scan per minute bucket.
            Some((from, _)) if now_bucket.saturating_sub(from) > 1000 => {
                ctx.scan_prefix(TIMERS, &[])?
            }
            Some((from, _)) => {
                let mut out = Vec::new();
                for b in from..=now_bucket {
                    out.extend(ctx.scan_prefix(TIMERS, &b.to_be_bytes())?);
                }
                out
            }
            None => ctx.scan_prefix(TIMERS, &[])?,
        };
        for (k, _) in timers {
            if k.len() < 16 {
                ctx.delete(TIMERS, k);
                continue;
            }
            let mut w = [0u8; 8];
            w.copy_from_slice(&k[8..16]);
            let wake = u64::from_be_bytes(w) as i64;
            if wake > now {
                // Sorted by time within the scanned buckets, but buckets are scanned whole.
                continue;
            }
            let profile = String::from_utf8_lossy(&k[16..]).into_owned();
            ctx.delete(TIMERS, k);
            self.metrics.timers_pending.dec();
            self.metrics.timers_fired.inc();
            let Some(mut st) = Self::load(ctx, &profile)? else {
                continue;
            };
            if st.wake_ms != Some(wake) {
                continue;
            }
            // The key is gone already; make `save` schedule afresh.
            st.wake_ms = None;
            let old = None;
            let (engine, _) = self.engine(&st.space_id);
            st.hold = self.hold(part, &st.space_id);
            let changes = match engine {
                Some(e) => {
                    self.metrics.evaluations.inc();
                    e.tick(&mut st, now)
                }
                None => Vec::new(),
            };
            self.emit(ctx, &profile, &st, changes, None, now)?;
            self.save(ctx, &profile, &mut st, old)?;
        }
        self.cursors.insert(part, (now_bucket, generation));
        Ok(())
    }
}
