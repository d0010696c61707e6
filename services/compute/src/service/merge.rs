//! The merge hand-over. A `profiles.merges` record reaches the task of the merged-away profile
//! (A); the survivor (B) may live on another task. A's task records where A went
//! (`merged/A -> B` in the backfill store, so A's events read later follow it), deletes A's state
//! and sends it on `compute.merge-state`, keyed by B, to B's task, which follows `merged/` chains,
//! absorbs the state and evaluates every definition on the union. Exits of A are decided there
//! too: A exits only the audiences B does not carry on. The protocol and its crash points are in
//! docs/compute.md, "Merges".

use super::*;
use corral_codec::ProfileMerge;
use serde::{Deserialize, Serialize};

use crate::engine::Absorbed;

/// What travels on the merge-state topic: a merged-away profile's state, or history a
/// backfill read for a merged-away id, for the profile it went into.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MergeState {
    pub(super) into: String,
    /// The merged-away profile the state comes from (absent in records of earlier builds):
    /// the survivor's task emits its exits from audiences the survivor does not carry on.
    #[serde(default)]
    pub(super) from: Option<String>,
    pub(super) state: ProfileState,
    pub(super) trigger: Option<String>,
    pub(super) at_ms: i64,
    /// Times this was forwarded because `into` had itself been merged away.
    #[serde(default)]
    pub(super) hops: u32,
    /// The latest identity time (resolve or merge time) of what `state` holds; a profile deleted
    /// at or after it takes none of it (docs/privacy.md). Absent in records of earlier builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) until_ms: Option<i64>,
}

/// Merge chains longer than this are taken for a loop (identity never makes one).
const MAX_MERGE_HOPS: u32 = 64;

impl ComputeProcessor {
    /// The merged-away side: records where the profile went (always, even when it has no
    /// state yet, so its events read later follow it), and hands its state to the survivor's
    /// task. No exits here: only the survivor's task knows which memberships it carries on.
    pub(super) fn on_merge(
        &self,
        ctx: &mut ProcessContext<'_>,
        bytes: &[u8],
    ) -> Result<(), ProcessError> {
        let mg = ProfileMerge::decode(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        if mg.into_profile_id.is_empty() {
            // A deletion, not a merge (docs/privacy.md).
            return self.on_delete(ctx, mg);
        }
        if mg.from_profile_id == mg.into_profile_id {
            return Ok(());
        }
        let now = self.clock.now_ms();
        ctx.put(
            BACKFILL,
            backfill::merged_key(&mg.from_profile_id),
            mg.into_profile_id.clone().into_bytes(),
        );
        let Some(st) = Self::load(ctx, &mg.from_profile_id)? else {
            return Ok(());
        };
        if let Some(w) = st.wake_ms {
            ctx.delete(TIMERS, timer_key(w, &mg.from_profile_id));
            self.metrics.timers_pending.dec();
        }
        ctx.delete(PROFILES, mg.from_profile_id.as_bytes().to_vec());
        self.leave_accounts(ctx, &mg.from_profile_id, &st)?;
        self.hand_over(
            ctx,
            MergeState {
                into: mg.into_profile_id,
                from: Some(mg.from_profile_id),
                state: st,
                trigger: mg.trigger_message_id,
                at_ms: now,
                hops: 0,
                until_ms: Some(mg.merged_at_ms),
            },
        )
    }

    /// An event of a profile merged away before compute read the event: recorded, without
    /// evaluation, in a fresh state that goes to the survivor like merged state (so the leaves
    /// it counts for are the ones this task counts live events for, as for any merge).
    pub(super) fn forward(
        &self,
        ctx: &mut ProcessContext<'_>,
        ev: &ResolvedEvent,
        engine: Option<&Engine>,
        into: String,
        now: i64,
    ) -> Result<(), ProcessError> {
        let m = &ev.message;
        let mut st = ProfileState {
            space_id: m.space_id.clone(),
            ..ProfileState::default()
        };
        st.add_ids(ext_ids(&ev.external_ids));
        let ts = event_time_ms(m, now);
        match (m.message_type, engine) {
            (MessageType::Identify, _) => {
                crate::engine::record_traits(&mut st, identify_traits(m), ts);
            }
            // The survivor joins the account (its task tells the account side).
            (MessageType::Group, _) => self.on_group_call(ctx, m, &mut st, ts)?,
            (_, Some(engine)) => {
                as_event(m, ts, |ev| engine.record_event(&mut st, ev, now));
            }
            (_, None) => {}
        }
        self.metrics.merge_forwarded.inc();
        self.hand_over(
            ctx,
            MergeState {
                into,
                from: Some(ev.profile_id.clone()),
                state: st,
                trigger: Some(m.message_id.clone()),
                at_ms: now,
                hops: 0,
                until_ms: Some(ev.resolved_at_ms),
            },
        )
    }

    /// Sends state to the task of the profile it belongs to now.
    pub(super) fn hand_over(
        &self,
        ctx: &mut ProcessContext<'_>,
        ms: MergeState,
    ) -> Result<(), ProcessError> {
        let v = serde_json::to_vec(&ms)
            .map_err(|e| ProcessError::Fatal(format!("encoding merge state: {e}")))?;
        ctx.emit(
            &self.topics.merge_state,
            Some(ms.into.into_bytes()),
            Some(v),
        );
        Ok(())
    }

    /// The profile `profile` was merged into, if it was merged away on this partition.
    pub(super) fn merged_into(
        ctx: &ProcessContext<'_>,
        profile: &str,
    ) -> Result<Option<String>, ProcessError> {
        Ok(ctx
            .get(BACKFILL, &backfill::merged_key(profile))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub(super) fn on_merge_state(
        &self,
        ctx: &mut ProcessContext<'_>,
        bytes: &[u8],
    ) -> Result<(), ProcessError> {
        let mut ms: MergeState = serde_json::from_slice(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        if let Some(next) = Self::merged_into(ctx, &ms.into)? {
            // `into` was itself merged away meanwhile (a chain): follow it.
            if ms.hops >= MAX_MERGE_HOPS {
                return Err(ProcessError::bad_input(
                    "merge_loop",
                    format!("merge state followed {} merges without reaching a live profile; the merges form a loop", ms.hops),
                ));
            }
            ms.into = next;
            ms.hops += 1;
            return self.hand_over(ctx, ms);
        }
        let now = self.clock.now_ms();
        if let Some(t) = Self::deleted_until(ctx, &ms.into)? {
            if ms.until_ms.is_none_or(|u| u <= t) {
                // State from before the survivor's deletion (docs/privacy.md).
                self.metrics.deleted_events.inc();
                return Ok(());
            }
        }
        let loaded = Self::load(ctx, &ms.into)?;
        self.metrics.merges.inc();
        let mut into = loaded.unwrap_or_default();
        let old_wake = into.wake_ms;
        let space = if into.space_id.is_empty() {
            ms.state.space_id.clone()
        } else {
            into.space_id.clone()
        };
        let (engine, _) = self.engine(&space);
        into.hold = self.hold(ctx.partition(), &space);
        // Who the merged-away profile's exits (if any) are addressed to.
        let from = ms.from.as_ref().map(|id| {
            (
                id.clone(),
                ProfileState {
                    space_id: space.clone(),
                    external_ids: ms.state.external_ids.clone(),
                    ..ProfileState::default()
                },
            )
        });
        let absorbed = match engine {
            Some(e) => e.absorb(&mut into, ms.state, now),
            None => {
                into.add_ids(ms.state.external_ids);
                into.space_id = space;
                Absorbed::default()
            }
        };
        if let Some((from_id, from_st)) = from {
            self.emit(
                ctx,
                &from_id,
                &from_st,
                absorbed.from_exits,
                ms.trigger.as_deref(),
                now,
            )?;
        }
        self.emit(
            ctx,
            &ms.into,
            &into,
            absorbed.into,
            ms.trigger.as_deref(),
            now,
        )?;
        self.save(ctx, &ms.into, &mut into, old_wake)
    }
}
