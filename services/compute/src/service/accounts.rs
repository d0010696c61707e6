//! Accounts on the stream runtime (docs/compute.md, "Accounts").
//!
//! User side (the task of the user's profile): a `group` call records the account in the
//! user's state and sends the group's traits to the account side; every state write then sends
//! what the account side lacks ([`crate::accounts::pending_updates`]): a user's conditions
//! when it joins an account or when they change. A merged-away user leaves its accounts.
//!
//! Account side (the task of `{space}/{groupId}` on `{prefix}compute.accounts`, an input of the
//! same processor, partitioned like `events.resolved`): the `accounts` store holds the account
//! (`a/{space}\0{group}`: traits, counters, results) and one record per user
//! (`m/{space}\0{group}\0{user}`: its external ids and conditions). Each message updates one
//! user or the traits, adjusts the counters and evaluates the account definitions; changes go
//! to `audiences.membership` once for the account and once per user of the account (Segment
//! delivers account audiences per user), inside the same transaction as everything else.

use super::*;
use crate::accounts::{AccountState, MemberState};
use corral_ops::accounts::is_condition;
use serde::{Deserialize, Serialize};

/// Accounts and their users (see the module doc).
pub const ACCOUNTS: Store = Store::named("accounts");

/// What the user side tells the account side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountMessage {
    /// A `group` call: the account's traits (latest event time wins per trait).
    Traits {
        /// Space.
        space: String,
        /// Group id.
        group: String,
        /// Traits of the call.
        traits: Map<String, Value>,
        /// Event time (ms).
        ts: i64,
        /// The group call's messageId.
        trigger: Option<String>,
    },
    /// A user of the account and the conditions it satisfies now.
    Member {
        /// Space.
        space: String,
        /// Group id.
        group: String,
        /// Profile id.
        user: String,
        /// The user's external ids.
        ids: Vec<ExtId>,
        /// Condition keys the user satisfies.
        conditions: BTreeSet<String>,
    },
    /// The user no longer belongs to the account (it was merged into another profile, which
    /// joins in its place).
    Left {
        /// Space.
        space: String,
        /// Group id.
        group: String,
        /// Profile id.
        user: String,
    },
}

impl AccountMessage {
    fn at(&self) -> (&str, &str) {
        match self {
            AccountMessage::Traits { space, group, .. }
            | AccountMessage::Member { space, group, .. }
            | AccountMessage::Left { space, group, .. } => (space, group),
        }
    }
}

/// The Kafka key of an account's messages (also its partition).
pub fn account_topic_key(space: &str, group: &str) -> Vec<u8> {
    format!("{space}/{group}").into_bytes()
}

fn account_key(space: &str, group: &str) -> Vec<u8> {
    format!("a/{space}\0{group}").into_bytes()
}

fn members_prefix(space: &str, group: &str) -> Vec<u8> {
    format!("m/{space}\0{group}\0").into_bytes()
}

/// The profile id an account's own membership records carry.
pub fn account_profile_id(group: &str) -> String {
    format!("account:{group}")
}

/// The external id naming an account.
pub fn group_ext_id(group: &str) -> ExternalId {
    ExternalId {
        id_type: "group_id".into(),
        id: group.to_string(),
        collection: Some("accounts".into()),
    }
}

impl ComputeProcessor {
    fn send_account(
        &self,
        ctx: &mut ProcessContext<'_>,
        msg: &AccountMessage,
    ) -> Result<(), ProcessError> {
        let (space, group) = msg.at();
        let key = account_topic_key(space, group);
        let v = serde_json::to_vec(msg)
            .map_err(|e| ProcessError::Fatal(format!("encoding an account message: {e}")))?;
        ctx.emit(&self.topics.accounts, Some(key), Some(v));
        self.metrics.account_messages.inc();
        Ok(())
    }

    /// A `group` call on the user side: the user joins the account (told to the account
    /// side when the state is saved) and the account's traits go to the account side.
    pub(super) fn on_group_call(
        &self,
        ctx: &mut ProcessContext<'_>,
        m: &corral_codec::SegmentMessage,
        st: &mut ProfileState,
        ts: i64,
    ) -> Result<(), ProcessError> {
        let Some(group) = m.group_id.as_deref().filter(|g| !g.is_empty()) else {
            return Ok(());
        };
        st.accounts.insert(group.to_string());
        let traits = match &m.traits {
            Some(Value::Object(o)) => o.clone(),
            _ => Map::new(),
        };
        self.send_account(
            ctx,
            &AccountMessage::Traits {
                space: m.space_id.clone(),
                group: group.to_string(),
                traits,
                ts,
                trigger: Some(m.message_id.clone()),
            },
        )
    }

    /// Before a user's state is written: tell its accounts what changed.
    pub(super) fn sync_accounts(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        st: &mut ProfileState,
    ) -> Result<(), ProcessError> {
        let Some((conditions, to)) = crate::accounts::pending_updates(st) else {
            return Ok(());
        };
        for group in to {
            self.send_account(
                ctx,
                &AccountMessage::Member {
                    space: st.space_id.clone(),
                    group,
                    user: profile.to_string(),
                    ids: st.external_ids.clone(),
                    conditions: conditions.clone(),
                },
            )?;
        }
        Ok(())
    }

    /// A merged-away user leaves the accounts it was announced to (the survivor, which holds
    /// its accounts after the merge, joins them).
    pub(super) fn leave_accounts(
        &self,
        ctx: &mut ProcessContext<'_>,
        profile: &str,
        st: &ProfileState,
    ) -> Result<(), ProcessError> {
        for group in &st.accounts_sent {
            self.send_account(
                ctx,
                &AccountMessage::Left {
                    space: st.space_id.clone(),
                    group: group.clone(),
                    user: profile.to_string(),
                },
            )?;
        }
        Ok(())
    }

    fn load_account(
        ctx: &ProcessContext<'_>,
        key: &[u8],
    ) -> Result<Option<AccountState>, ProcessError> {
        match ctx.get(ACCOUNTS, key)? {
            None => Ok(None),
            Some(b) => rmp_serde::from_slice(&b)
                .map(Some)
                .map_err(|e| ProcessError::Fatal(format!("corrupt account state: {e}"))),
        }
    }

    fn load_member(
        ctx: &ProcessContext<'_>,
        key: &[u8],
    ) -> Result<Option<MemberState>, ProcessError> {
        match ctx.get(ACCOUNTS, key)? {
            None => Ok(None),
            Some(b) => rmp_serde::from_slice(&b)
                .map(Some)
                .map_err(|e| ProcessError::Fatal(format!("corrupt account member: {e}"))),
        }
    }

    fn put_msgpack<T: Serialize>(
        ctx: &mut ProcessContext<'_>,
        key: Vec<u8>,
        v: &T,
    ) -> Result<(), ProcessError> {
        let b = rmp_serde::to_vec_named(v)
            .map_err(|e| ProcessError::Fatal(format!("encoding account state: {e}")))?;
        ctx.put(ACCOUNTS, key, b);
        Ok(())
    }

    /// A message on the account side.
    pub(super) fn on_account(
        &self,
        ctx: &mut ProcessContext<'_>,
        bytes: &[u8],
    ) -> Result<(), ProcessError> {
        let msg: AccountMessage = serde_json::from_slice(bytes)
            .map_err(|e| ProcessError::bad_input("undecodable", e.to_string()))?;
        let now = self.clock.now_ms();
        let (space, group) = msg.at();
        let (space, group) = (space.to_string(), group.to_string());
        let akey = account_key(&space, &group);
        let mut acct = Self::load_account(ctx, &akey)?.unwrap_or_else(|| AccountState {
            group_id: group.clone(),
            profile: ProfileState {
                space_id: space.clone(),
                ..ProfileState::default()
            },
            ..AccountState::default()
        });
        let (engine, _) = self.engine(&space);
        let side = engine.as_deref().and_then(Engine::accounts);
        let before = side.map(|s| acct.audiences(s)).unwrap_or_default();
        // The user whose own membership differs from the other users' (joined or left).
        let mut moved: Option<(String, Vec<ExtId>, bool)> = None;
        let mut trigger = None;
        match msg {
            AccountMessage::Traits {
                traits,
                ts,
                trigger: t,
                ..
            } => {
                crate::engine::record_traits(&mut acct.profile, &traits, ts);
                trigger = t;
            }
            AccountMessage::Member {
                user,
                ids,
                conditions,
                ..
            } => {
                let mkey = [members_prefix(&space, &group), user.clone().into_bytes()].concat();
                let old = Self::load_member(ctx, &mkey)?;
                let new = MemberState { ids, conditions };
                acct.set_member(old.as_ref(), Some(&new));
                if old.is_none() {
                    moved = Some((user, new.ids.clone(), true));
                }
                Self::put_msgpack(ctx, mkey, &new)?;
            }
            AccountMessage::Left { user, .. } => {
                let mkey = [members_prefix(&space, &group), user.clone().into_bytes()].concat();
                if let Some(old) = Self::load_member(ctx, &mkey)? {
                    acct.set_member(Some(&old), None);
                    ctx.delete(ACCOUNTS, mkey);
                    moved = Some((user, old.ids, false));
                }
            }
        }
        let changes = match side {
            Some(s) => {
                self.metrics.evaluations.inc();
                s.evaluate(&mut acct, now)
            }
            None => {
                acct.profile.results.clear();
                Vec::new()
            }
        };
        let after = side.map(|s| acct.audiences(s)).unwrap_or_default();
        self.emit_account(
            ctx,
            &acct,
            changes,
            &before,
            &after,
            moved,
            trigger.as_deref(),
            now,
        )?;
        Self::put_msgpack(ctx, akey, &acct)
    }

    /// Re-evaluates every account of this task (definitions changed).
    pub(super) fn reevaluate_accounts(
        &self,
        ctx: &mut ProcessContext<'_>,
        now: i64,
    ) -> Result<(), ProcessError> {
        for (k, v) in ctx.scan_prefix(ACCOUNTS, b"a/")? {
            let mut acct: AccountState = rmp_serde::from_slice(&v)
                .map_err(|e| ProcessError::Fatal(format!("corrupt account state: {e}")))?;
            let (engine, _) = self.engine(&acct.profile.space_id);
            let side = engine.as_deref().and_then(Engine::accounts);
            let before = side.map(|s| acct.audiences(s)).unwrap_or_default();
            let changes = match side {
                Some(s) => s.evaluate(&mut acct, now),
                None => {
                    // Every account definition of the space is gone: nothing is emitted, as
                    // for deleted USERS definitions.
                    acct.profile.results.clear();
                    Vec::new()
                }
            };
            let after = side.map(|s| acct.audiences(s)).unwrap_or_default();
            self.emit_account(ctx, &acct, changes, &before, &after, None, None, now)?;
            Self::put_msgpack(ctx, k, &acct)?;
        }
        Ok(())
    }

    /// The account's own changes, then each user's: every user of the account follows the
    /// account's audience changes, except a user that just joined (it enters the audiences the
    /// account is in after this update) or left (it exits those it was in before).
    #[allow(clippy::too_many_arguments)]
    fn emit_account(
        &self,
        ctx: &mut ProcessContext<'_>,
        acct: &AccountState,
        changes: Vec<Change>,
        before: &BTreeSet<String>,
        after: &BTreeSet<String>,
        moved: Option<(String, Vec<ExtId>, bool)>,
        trigger: Option<&str>,
        now: i64,
    ) -> Result<(), ProcessError> {
        let space = acct.profile.space_id.as_str();
        let group = acct.group_id.as_str();
        let account_id = account_profile_id(group);
        let version_of = |key: &str| -> i64 {
            changes
                .iter()
                .find(|c| c.key == key)
                .map(|c| c.version)
                .or_else(|| acct.profile.results.get(key).map(|r| r.ver))
                .unwrap_or(0)
        };
        let mut audience_changes: Vec<(String, i64, bool)> = Vec::new();
        for ch in &changes {
            match &ch.kind {
                ChangeKind::Entered | ChangeKind::Exited => {
                    let entered = ch.kind == ChangeKind::Entered;
                    audience_changes.push((ch.key.clone(), ch.version, entered));
                    self.metrics
                        .membership_changes
                        .with_label_values(&[
                            ch.key.as_str(),
                            if entered { "entered" } else { "exited" },
                        ])
                        .inc();
                    self.push_membership(
                        ctx,
                        space,
                        &account_id,
                        &ch.key,
                        ch.version,
                        entered,
                        vec![group_ext_id(group)],
                        trigger,
                        now,
                    )?;
                }
                ChangeKind::Trait { value, previous } => {
                    self.metrics.trait_changes.inc();
                    let v = TraitChange {
                        space_id: space.to_string(),
                        profile_id: account_id.clone(),
                        trait_key: ch.key.clone(),
                        value: value.clone(),
                        previous_value: previous.clone(),
                        definition_version: Some(ch.version),
                        external_ids: vec![group_ext_id(group)],
                        changed_at_ms: now,
                    }
                    .encode()
                    .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
                    ctx.emit(
                        &self.topics.traits,
                        Some(account_id.clone().into_bytes()),
                        Some(v),
                    );
                }
            }
        }
        let moved_user = moved.as_ref().map(|(u, _, _)| u.as_str());
        if !audience_changes.is_empty() {
            // Delivery is per user: this is the one place whose work grows with the account.
            for (k, v) in ctx.scan_prefix(ACCOUNTS, &members_prefix(space, group))? {
                let Some(user) = k
                    .get(members_prefix(space, group).len()..)
                    .map(|u| String::from_utf8_lossy(u).into_owned())
                else {
                    continue;
                };
                if Some(user.as_str()) == moved_user {
                    continue;
                }
                let m: MemberState = rmp_serde::from_slice(&v)
                    .map_err(|e| ProcessError::Fatal(format!("corrupt account member: {e}")))?;
                for (key, version, entered) in &audience_changes {
                    self.push_membership(
                        ctx,
                        space,
                        &user,
                        key,
                        *version,
                        *entered,
                        member_ids(&m.ids, group),
                        trigger,
                        now,
                    )?;
                }
            }
        }
        if let Some((user, ids, joined)) = moved {
            let set = if joined { after } else { before };
            for key in set {
                self.push_membership(
                    ctx,
                    space,
                    &user,
                    key,
                    version_of(key),
                    joined,
                    member_ids(&ids, group),
                    trigger,
                    now,
                )?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn push_membership(
        &self,
        ctx: &mut ProcessContext<'_>,
        space: &str,
        profile: &str,
        key: &str,
        version: i64,
        entered: bool,
        external_ids: Vec<ExternalId>,
        trigger: Option<&str>,
        now: i64,
    ) -> Result<(), ProcessError> {
        debug_assert!(!is_condition(key));
        let v = MembershipChange {
            space_id: space.to_string(),
            profile_id: profile.to_string(),
            audience_key: key.to_string(),
            audience_version: version,
            change: if entered {
                MembershipChangeKind::Entered
            } else {
                MembershipChangeKind::Exited
            },
            external_ids,
            trigger_message_id: trigger.map(String::from),
            changed_at_ms: now,
        }
        .encode()
        .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
        ctx.emit(
            &self.topics.membership,
            Some(profile.as_bytes().to_vec()),
            Some(v),
        );
        Ok(())
    }
}

/// A user's ids for an account audience record: its own, then the account's group id.
fn member_ids(ids: &[ExtId], group: &str) -> Vec<ExternalId> {
    let mut out = codec_ids(ids);
    out.push(group_ext_id(group));
    out
}
