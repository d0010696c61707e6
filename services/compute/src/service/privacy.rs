//! Deletion of a profile (docs/privacy.md). Identity deletes a profile from its graph and sends a
//! `profiles.merges` record with an empty `into`, keyed by the profile, so it reaches the task
//! that holds the profile's state. In one transaction that task:
//!
//! - emits `exited` for every audience the profile was a member of (with its external ids, so
//!   destinations can act on them, as for any exit), and tells its accounts it left;
//! - deletes its state and its timer (tombstones on `compute.profiles-changelog` and
//!   `compute.timers-changelog`, which compaction then erases);
//! - records `deleted/{profile}` = the request's time in the `backfill` store.
//!
//! The marker is what keeps the profile deleted: profile ids are derived from identifiers, so the
//! same person coming back gets the same id. Every event of the profile received up to the
//! request's time is ignored, live (events still in flight) and when a backfill reads
//! `events.resolved` again; merge state arriving for a deleted profile is dropped when everything
//! in it was resolved or merged at or before that time (its `until_ms`). Events received after
//! the request are a new life of the profile. The marker holds the profile id and a time, nothing
//! else.
//!
//! The retained history is erased as well: the deletion also records `erase/todo/{profile}`, and
//! the task's next erasure scan (`crate::erase`, `erase`) tombstones the profile's records in its
//! partition of `events.resolved`; events read live after the deletion are tombstoned as they are
//! dropped. docs/privacy.md says what that guarantees and when compaction removes them.

use super::*;
use corral_codec::ProfileMerge;

/// Backfill-store key of a deleted profile; the value is the request's time (ms, big-endian).
pub(super) fn deleted_key(profile: &str) -> Vec<u8> {
    format!("deleted/{profile}").into_bytes()
}

impl ComputeProcessor {
    /// The request time of the profile's deletion, if it was deleted on this partition.
    pub(super) fn deleted_until(
        ctx: &ProcessContext<'_>,
        profile: &str,
    ) -> Result<Option<i64>, ProcessError> {
        Ok(ctx.get(BACKFILL, &deleted_key(profile))?.map(|v| {
            v.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MAX)
        }))
    }

    /// Whether an event of `profile` resolved at `resolved_at_ms` belongs to a deleted life of it.
    pub(super) fn erased(
        &self,
        ctx: &ProcessContext<'_>,
        profile: &str,
        resolved_at_ms: i64,
    ) -> Result<bool, ProcessError> {
        let gone = Self::deleted_until(ctx, profile)?.is_some_and(|t| resolved_at_ms <= t);
        if gone {
            self.metrics.deleted_events.inc();
        }
        Ok(gone)
    }

    /// A deletion record from identity (a `profiles.merges` record with an empty `into`).
    pub(super) fn on_delete(
        &self,
        ctx: &mut ProcessContext<'_>,
        mg: ProfileMerge,
    ) -> Result<(), ProcessError> {
        let profile = mg.from_profile_id.as_str();
        if profile.is_empty() {
            // Identity found nothing to delete: nothing here either.
            return Ok(());
        }
        self.metrics.deletions.inc();
        ctx.put(
            BACKFILL,
            deleted_key(profile),
            mg.merged_at_ms.to_be_bytes().to_vec(),
        );
        // The partition's history of the profile is erased by the next scan (`crate::erase`).
        ctx.put(
            BACKFILL,
            crate::erase::todo_key(profile),
            mg.merged_at_ms.to_be_bytes().to_vec(),
        );
        let Some(st) = Self::load(ctx, profile)? else {
            return Ok(());
        };
        if let Some(w) = st.wake_ms {
            ctx.delete(TIMERS, timer_key(w, profile));
            self.metrics.timers_pending.dec();
        }
        ctx.delete(PROFILES, profile.as_bytes().to_vec());
        self.leave_accounts(ctx, profile, &st)?;
        let (engine, _) = self.engine(&st.space_id);
        let exits: Vec<Change> = match engine {
            None => Vec::new(),
            Some(e) => st
                .results
                .iter()
                .filter(|(k, r)| r.v == Value::Bool(true) && e.is_audience_key(k))
                .map(|(k, r)| Change {
                    key: k.clone(),
                    version: r.ver,
                    kind: ChangeKind::Exited,
                })
                .collect(),
        };
        let now = self.clock.now_ms();
        self.emit(
            ctx,
            profile,
            &st,
            exits,
            mg.trigger_message_id.as_deref(),
            now,
        )
    }
}
