//! Erasure scans in the punctuation (the protocol is in `crate::erase`): a bounded slice per
//! call, its tombstones and the scan's new position in the same transaction.

use super::*;
use std::time::Instant;
use tracing::{debug, info};

use crate::erase::{self, erases, Scan};

fn time_of(v: &[u8]) -> i64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(i64::MAX)
}

impl ComputeProcessor {
    /// Forgets a task's erasure reader (reopened from the committed scan on next use).
    pub(super) fn drop_eraser(&mut self, part: i32) {
        if let Some(r) = self.erasers.remove(&part) {
            r.close_in_background();
        }
    }

    /// A tombstone on this task's partition of `events.resolved` for `key`.
    pub(super) fn tombstone(&self, ctx: &mut ProcessContext<'_>, key: &[u8]) {
        ctx.emit_to(corral_runtime::Output {
            topic: self.topics.resolved.clone(),
            key: Some(key.to_vec()),
            value: None,
            partition: Some(ctx.partition()),
            headers: Vec::new(),
        });
        self.metrics.erased_records.inc();
    }

    /// The task's running scan, or a new one over every pending deletion; `None` when there is
    /// nothing to erase.
    fn current_scan(&self, ctx: &mut ProcessContext<'_>) -> Result<Option<Scan>, ProcessError> {
        if let Some(v) = ctx.get(BACKFILL, erase::SCAN_KEY)? {
            return serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| ProcessError::Fatal(format!("corrupt erasure scan: {e}")));
        }
        let todo = ctx.scan_prefix(BACKFILL, erase::TODO_PREFIX.as_bytes())?;
        if todo.is_empty() {
            return Ok(None);
        }
        let mut profiles = BTreeMap::new();
        for (k, v) in todo {
            let Some(p) = k
                .strip_prefix(erase::TODO_PREFIX.as_bytes())
                .and_then(|p| std::str::from_utf8(p).ok())
            else {
                return Err(ProcessError::Fatal("corrupt erasure todo key".into()));
            };
            profiles.insert(p.to_string(), time_of(&v));
            ctx.delete(BACKFILL, k);
        }
        let end = match ctx.get(BACKFILL, backfill::POS_KEY)? {
            Some(b) => time_of(&b).max(0),
            None => 0,
        };
        info!(
            partition = ctx.partition(),
            profiles = profiles.len(),
            end,
            "erasure scan started"
        );
        Ok(Some(Scan {
            at: 0,
            end,
            profiles,
        }))
    }

    /// Runs a slice of this task's erasure scan (see `crate::erase`).
    pub(super) fn run_erasure(&mut self, ctx: &mut ProcessContext<'_>) -> Result<(), ProcessError> {
        let part = ctx.partition();
        let Some(src) = self.history.clone() else {
            return Ok(());
        };
        let Some(mut scan) = self.current_scan(ctx)? else {
            self.drop_eraser(part);
            return Ok(());
        };
        if !scan.done() {
            if self.erasers.get(&part).is_none_or(|r| r.at != scan.at) {
                self.drop_eraser(part);
                match erase::open_reader(
                    &src.bootstrap,
                    &src.kafka,
                    &src.topic,
                    part,
                    scan.at,
                    scan.end,
                ) {
                    Ok(r) => {
                        self.erasers.insert(part, r);
                    }
                    Err(e) => {
                        warn!(partition = part, error = %e, "cannot open the erasure reader; retrying at the next punctuation");
                        return Ok(());
                    }
                }
            }
            let busy = self.erasers.len().max(1) as u32;
            let Some(reader) = self.erasers.get_mut(&part) else {
                return Ok(());
            };
            reader.end = scan.end;
            let started = Instant::now();
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            let deadline = started + src.budget / busy;
            let read = reader.read_keyed(deadline, src.max_records, |_, key, v| {
                if let Some(k) = key {
                    if erases(&scan.profiles, k, || erase::value_time(v)) {
                        doomed.push(k.to_vec());
                    }
                }
            });
            let at = reader.at;
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    // What was delivered is tombstoned and recorded below; the rest is read
                    // again by a new reader from the recorded position.
                    warn!(partition = part, error = %e, "erasure read failed; reopening at the next punctuation");
                    self.drop_eraser(part);
                    0
                }
            };
            for k in &doomed {
                self.tombstone(ctx, k);
            }
            self.metrics.erase_scanned.inc_by(n as u64);
            debug!(
                partition = part,
                records = n,
                tombstones = doomed.len(),
                at,
                end = scan.end,
                "erasure slice"
            );
            scan.at = at.max(scan.at);
        }
        if scan.done() {
            for (p, until) in &scan.profiles {
                ctx.put(BACKFILL, erase::erased_key(p), until.to_be_bytes().to_vec());
            }
            ctx.delete(BACKFILL, erase::SCAN_KEY.to_vec());
            self.drop_eraser(part);
            info!(
                partition = part,
                profiles = scan.profiles.len(),
                end = scan.end,
                "erasure scan complete"
            );
        } else {
            let v = serde_json::to_vec(&scan)
                .map_err(|e| ProcessError::Fatal(format!("encoding: {e}")))?;
            ctx.put(BACKFILL, erase::SCAN_KEY.to_vec(), v);
            ctx.punctuate_again_when_idle();
        }
        Ok(())
    }
}
