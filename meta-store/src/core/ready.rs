//! The Ready loop, in the order raft-rs 0.7 requires:
//!
//! 1. messages a leader may send before persisting (replication runs in parallel with the
//!    leader's own fsync);
//! 2. snapshot, new entries and hard state persisted in one batch, fsynced when raft says
//!    so (`must_sync`: new entries, snapshot, term or vote);
//! 3. the messages that depend on that persistence (votes, append responses);
//! 4. `advance_append`, then the Ready's committed entries applied, then the LightReady:
//!    commit index, messages, more committed entries applied;
//! 5. `advance_apply`.
//!
//! All inputs queued since the last pass (proposals from many clients, messages from many
//! peers) are stepped into raft before `ready()`, so one fsync covers all of them.

use protobuf::Message as _;
use raft::prelude::Message;

use super::{Core, LocalState};
use crate::engine::KvEngine;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::storage::decode_snapshot_payload;
use crate::wire::Body;

/// Ready passes per `process_ready` call at most (each pass may enable the next).
const MAX_READY_ROUNDS: usize = 16;

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    /// Runs the Ready loop until raft has nothing more to do. Call it after feeding a batch
    /// of inputs (ticks, envelopes, requests), then drain the outbox and the events.
    pub fn process_ready(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.flush_reads();
        let mut rounds = 0;
        while self.raw.has_ready() && rounds < MAX_READY_ROUNDS {
            rounds += 1;
            if let Err(e) = self.one_ready() {
                self.in_ready = false;
                self.fail(e);
                return;
            }
        }
        self.complete_reads();
        self.check_transfers();
        if let Err(e) = self.maybe_compact() {
            self.fail(e);
        }
    }

    fn one_ready(&mut self) -> Result<(), Error> {
        let mut rd = self.raw.ready();
        self.in_ready = true;
        self.stats.readies += 1;
        let mut leader_changed = false;
        if let Some(ss) = rd.ss() {
            if ss.leader_id != self.leader {
                tracing::info!(node = self.cfg.id, leader = ss.leader_id, "leader changed");
                leader_changed = true;
            }
            self.leader = ss.leader_id;
        }
        self.send_raft(rd.take_messages())?;

        let snapshot = if rd.snapshot().is_empty() {
            None
        } else {
            let s = rd.snapshot().clone();
            let p = decode_snapshot_payload(&s, self.cfg.limits.max_snapshot_bytes)?;
            Some((s, p))
        };
        let committed = rd.take_committed_entries();

        let sync = rd.must_sync();
        self.raw.store().persist_ready(
            snapshot.as_ref().map(|(s, p)| (s, p)),
            rd.entries(),
            rd.hs(),
            sync,
        )?;
        if sync {
            self.stats.synced_writes += 1;
        }
        if let Some((s, p)) = &snapshot {
            self.on_snapshot_installed(s.get_metadata().index, p)?;
        }
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        self.send_raft(rd.take_persisted_messages())?;

        // `advance_append` before applying: raft-rs 0.7 records the leader's own
        // persistence in its progress, which a conf change applied in this Ready may have
        // removed (a leader removed by a change proposed under an earlier leader).
        let mut light = self.raw.advance_append(rd);
        self.in_ready = false;
        self.apply_entries(committed)?;
        if let Some(c) = light.commit_index() {
            self.raw.store().persist_commit(c)?;
        }
        self.send_raft(light.take_messages())?;
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.after_raft_input();
        for rid in std::mem::take(&mut self.resend_after_ready) {
            self.dispatch(rid);
        }

        if leader_changed && self.leader != 0 {
            self.resend_stale(true);
            let parked: Vec<u64> = self
                .local
                .iter()
                .filter(|(_, r)| r.state == LocalState::Parked)
                .map(|(id, _)| *id)
                .collect();
            for rid in parked {
                self.dispatch(rid);
            }
        }
        Ok(())
    }

    fn send_raft(&mut self, msgs: Vec<Message>) -> Result<(), Error> {
        for m in msgs {
            let bytes = m
                .write_to_bytes()
                .map_err(|e| Error::Malformed(format!("encode raft message: {e}")))?;
            self.send(m.to, Body::Raft(bytes));
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), Error> {
        let store = self.raw.store();
        let applied = store.applied().index;
        let truncated = store.truncated().index;
        let policy = &self.cfg.log;
        if applied > truncated + policy.compact_threshold {
            let to = applied - policy.keep_entries;
            store.compact(to)?;
            self.stats.compactions += 1;
            tracing::debug!(node = self.cfg.id, to, "log compacted");
        }
        Ok(())
    }
}
