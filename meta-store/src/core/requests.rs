//! Client requests in the core: submission, dispatch to the leader (locally or by
//! forwarding), forwarded requests arriving at the leader and their replies, reads,
//! leader transfers, and everything that runs on each tick (deadlines, retries).

use std::time::Duration;

use prost::Message as _;
use raft::prelude::ConfChangeV2;
use raft::{ProgressState, SnapshotStatus, StateRole};

use super::{
    Core, Event, LocalReq, LocalState, Payload, Proposed, ReadBatch, ReadReq, Response, TransferReq,
};
use crate::engine::KvEngine;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::wire::{
    Body, Envelope, Forward, ForwardKind, MembershipRequest, Outcome, ProposalContext, Reply,
    WireError,
};

use super::membership::MemberChange;

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    fn alloc_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        id
    }

    /// Requests held by this node: local ones, reads, transfers and remote proposals it
    /// appended as leader.
    pub fn pending_requests(&self) -> usize {
        self.local.len() + self.reads.len() + self.transfers.len() + self.remote_in_flight
    }

    pub(super) fn done(&mut self, request_id: u64, result: Result<Response, Error>) {
        self.events.push_back(Event::Done { request_id, result });
    }

    fn deadline(&self, timeout: Option<Duration>, default: u64) -> u64 {
        self.now + timeout.map_or(default, |d| self.cfg.ticks(d))
    }

    /// Submits a command; its outcome arrives as [`Event::Done`] with the returned id.
    pub fn propose(&mut self, command: Vec<u8>, timeout: Option<Duration>) -> u64 {
        let rid = self.alloc_id();
        let max = self.cfg.limits.max_command_bytes;
        if let Some(e) = self.admission_error() {
            self.done(rid, Err(e));
        } else if command.len() > max {
            self.done(
                rid,
                Err(Error::TooLarge {
                    what: "command".into(),
                    size: command.len() as u64,
                    max: max as u64,
                }),
            );
        } else {
            let deadline = self.deadline(timeout, self.ticks.propose);
            self.submit(rid, Payload::Command(command), deadline);
        }
        rid
    }

    /// Submits a membership change (several changes enter a joint configuration).
    pub fn change_membership(
        &mut self,
        changes: &[MemberChange],
        timeout: Option<Duration>,
    ) -> u64 {
        let rid = self.alloc_id();
        if let Some(e) = self.admission_error() {
            self.done(rid, Err(e));
            return rid;
        }
        match super::membership::request_from_changes(changes) {
            Ok(req) => {
                let deadline = self.deadline(timeout, self.ticks.admin);
                self.submit(rid, Payload::Membership(req), deadline);
            }
            Err(e) => self.done(rid, Err(e)),
        }
        rid
    }

    /// Starts a linearizable read; with `query`, the state machine answers it once this
    /// node has applied up to the read index.
    pub fn read(&mut self, query: Option<Vec<u8>>, timeout: Option<Duration>) -> u64 {
        let rid = self.alloc_id();
        if let Some(e) = self.admission_error() {
            self.done(rid, Err(e));
            return rid;
        }
        let deadline = self.deadline(timeout, self.ticks.read);
        self.reads.insert(
            rid,
            ReadReq {
                query,
                deadline,
                batch: 0,
            },
        );
        self.unbatched_reads.push(rid);
        rid
    }

    /// Asks the leader to hand leadership to voter `to`; completes when `to` leads.
    pub fn transfer_leader(&mut self, to: u64, timeout: Option<Duration>) -> u64 {
        let rid = self.alloc_id();
        if let Some(e) = self.admission_error() {
            self.done(rid, Err(e));
            return rid;
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        if !cs.voters.contains(&to) {
            self.done(
                rid,
                Err(Error::InvalidMembership(format!(
                    "node {to} is not a voter"
                ))),
            );
            return rid;
        }
        if self.leader == to {
            self.done(rid, Ok(Response::Transferred));
            return rid;
        }
        if let Some(e) = self.inactive_target(to) {
            self.done(rid, Err(e));
            return rid;
        }
        self.raw.transfer_leader(to);
        self.after_raft_input();
        let deadline = self.deadline(timeout, self.ticks.admin);
        self.transfers.insert(
            rid,
            TransferReq {
                to,
                deadline,
                issued: self.now,
            },
        );
        rid
    }

    /// A leader refuses proposals while it transfers its role: a transfer to a voter that
    /// has not answered it within the last election timeout (down, cut off) would only
    /// stall the cluster, so it is refused, and one under way is given up.
    fn inactive_target(&self, to: u64) -> Option<Error> {
        let r = &self.raw.raft;
        if r.state != StateRole::Leader || r.prs().get(to).is_some_and(|p| p.recent_active) {
            return None;
        }
        Some(Error::InvalidMembership(format!(
            "node {to} has not answered the leader lately: it cannot take the leadership"
        )))
    }

    fn admission_error(&self) -> Option<Error> {
        if self.failed.is_some() {
            Some(Error::Stopped)
        } else if self.pending_requests() >= self.cfg.limits.max_pending_requests {
            Some(Error::Busy)
        } else {
            None
        }
    }

    fn submit(&mut self, rid: u64, payload: Payload, deadline: u64) {
        self.local.insert(
            rid,
            LocalReq {
                payload,
                deadline,
                state: LocalState::Parked,
                last_error: None,
                ever_sent: false,
                sent_at: 0,
            },
        );
        self.dispatch(rid);
    }

    /// Every request of this incarnation below this id is answered or abandoned.
    pub(super) fn lowest_unanswered(&self) -> u64 {
        self.local
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_request_id)
    }

    /// Sends a parked request on: proposes it when this node leads, forwards it when
    /// another node does, keeps it parked when no leader is known.
    pub(super) fn dispatch(&mut self, rid: u64) {
        let Some(req) = self.local.get(&rid) else {
            return;
        };
        if req.state != LocalState::Parked {
            return;
        }
        let payload = req.payload.clone();
        let me = self.cfg.id;
        let (inc, lowest) = (self.incarnation, self.lowest_unanswered());
        if self.raw.raft.state == StateRole::Leader {
            match self.propose_here(me, inc, rid, lowest, &payload) {
                Ok(()) => {
                    if let Some(r) = self.local.get_mut(&rid) {
                        r.state = LocalState::Proposed;
                        r.ever_sent = true;
                    }
                }
                Err(e) if e.is_retry_safe() => {
                    if let Some(r) = self.local.get_mut(&rid) {
                        r.last_error = Some(e);
                    }
                }
                Err(e) => {
                    self.local.remove(&rid);
                    self.done(rid, Err(e));
                }
            }
        } else if self.leader != 0 {
            let (kind, data) = match payload {
                Payload::Command(c) => (ForwardKind::Command, c),
                Payload::Membership(m) => (ForwardKind::Membership, m.encode_to_vec()),
            };
            let to = self.leader;
            self.send(
                to,
                Body::Forward(Forward {
                    request_id: rid,
                    kind: kind as i32,
                    data,
                    incarnation: inc,
                    lowest,
                }),
            );
            let now = self.now;
            if let Some(r) = self.local.get_mut(&rid) {
                r.state = LocalState::Forwarded(to);
                r.ever_sent = true;
                r.sent_at = now;
            }
        }
    }

    /// After a leader change, and when answers are late: requests appended by this node as
    /// a leader it no longer is, or forwarded to a leader that is not (or no longer
    /// answering), are sent again to the current leader. Copies that reach the log apply
    /// once (session table).
    pub(super) fn resend_stale(&mut self, only_on_leader_change: bool) {
        let me = self.cfg.id;
        let leading = self.raw.raft.state == StateRole::Leader;
        let (leader, now, retry) = (self.leader, self.now, self.ticks.forward_retry);
        let stale: Vec<u64> = self
            .local
            .iter()
            .filter(|(_, r)| match r.state {
                LocalState::Parked => !only_on_leader_change,
                LocalState::Proposed => !leading && leader != 0 && leader != me,
                LocalState::Forwarded(to) => {
                    (leader != 0 && to != leader)
                        || (!only_on_leader_change && now - r.sent_at >= retry)
                }
                LocalState::WaitLeaveJoint => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for rid in stale {
            self.set_local_state(rid, LocalState::Parked);
            self.dispatch(rid);
        }
    }

    fn set_local_state(&mut self, rid: u64, state: LocalState) {
        if let Some(r) = self.local.get_mut(&rid) {
            r.state = state;
        }
    }

    pub(super) fn send(&mut self, to: u64, body: Body) {
        self.outbox.push(Envelope {
            from: self.cfg.id,
            to,
            body: Some(body),
        });
    }

    /// Appends a request to the log as leader, remembering its index so its outcome can be
    /// reported to `origin`.
    fn propose_here(
        &mut self,
        origin: u64,
        incarnation: u64,
        rid: u64,
        lowest: u64,
        payload: &Payload,
    ) -> Result<(), Error> {
        debug_assert!(!self.in_ready, "proposing between ready() and advance()");
        if self.raw.raft.state != StateRole::Leader {
            return Err(Error::NotLeader {
                leader: (self.leader != 0).then_some(self.leader),
            });
        }
        let mut ctx = ProposalContext {
            origin,
            request_id: rid,
            peers: Vec::new(),
            incarnation,
            lowest,
        };
        let res = match payload {
            Payload::Command(data) => self.raw.propose(ctx.encode_to_vec(), data.clone()),
            Payload::Membership(req) => {
                let (cc, peers) = self.conf_change_for(req)?;
                ctx.peers = peers;
                self.raw.propose_conf_change(ctx.encode_to_vec(), cc)
            }
        };
        self.after_raft_input();
        match res {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                let p = Proposed {
                    origin,
                    incarnation,
                    request_id: rid,
                };
                if let Some(old) = self.proposed.insert(index, p) {
                    // Our own log no longer holds the older entry at this index, so it can
                    // never commit.
                    self.finish_proposed(old, Err(Error::Dropped));
                }
                if origin != self.cfg.id {
                    self.remote_in_flight += 1;
                }
                Ok(())
            }
            Err(raft::Error::ProposalDropped) => Err(Error::Dropped),
            Err(e) => {
                tracing::warn!(error = %e, "proposal refused by raft");
                Err(Error::Dropped)
            }
        }
    }

    /// Reports the outcome of an entry this node proposed to its origin.
    pub(super) fn finish_proposed(&mut self, p: Proposed, result: Result<Response, Error>) {
        if p.origin != self.cfg.id {
            self.remote_in_flight = self.remote_in_flight.saturating_sub(1);
            self.reply(p.origin, p.incarnation, p.request_id, result);
        } else if p.incarnation == self.incarnation {
            match result {
                // Our own entry lost its log position: send the request again, once the
                // Ready being handled is advanced (raft-rs forbids proposing in between).
                Err(e) if e.is_retry_safe() => {
                    if self
                        .local
                        .get(&p.request_id)
                        .is_some_and(|r| r.state == LocalState::Proposed)
                    {
                        self.set_local_state(p.request_id, LocalState::Parked);
                        self.resend_after_ready.push(p.request_id);
                    }
                }
                r => self.complete_local(p.request_id, r),
            }
        }
    }

    pub(super) fn reply(
        &mut self,
        to: u64,
        incarnation: u64,
        request_id: u64,
        result: Result<Response, Error>,
    ) {
        let outcome = match result {
            Ok(Response::Applied(v)) => Outcome::Applied(v),
            Ok(Response::Membership(m)) => Outcome::Membership(m),
            Ok(other) => {
                tracing::error!(?other, "unexpected response kind for a forwarded request");
                return;
            }
            Err(e) => Outcome::Error(WireError::from(&e)),
        };
        self.send(
            to,
            Body::Reply(Reply {
                request_id,
                outcome: Some(outcome),
                incarnation,
            }),
        );
    }

    /// Finishes a local request, except that entering a joint configuration waits for the
    /// configuration to be left.
    pub(super) fn complete_local(&mut self, rid: u64, result: Result<Response, Error>) {
        if let Ok(Response::Membership(m)) = &result
            && m.is_joint()
        {
            self.set_local_state(rid, LocalState::WaitLeaveJoint);
            return;
        }
        if self.local.remove(&rid).is_some() {
            tracing::trace!(
                node = self.cfg.id,
                inc = self.incarnation,
                rid,
                ok = result.is_ok(),
                "request completed"
            );
            self.done(rid, result);
        }
    }

    pub(super) fn on_forward(&mut self, from: u64, f: Forward) {
        let payload = match ForwardKind::try_from(f.kind) {
            Ok(ForwardKind::Command) => Payload::Command(f.data),
            Ok(ForwardKind::Membership) => match MembershipRequest::decode(f.data.as_slice()) {
                Ok(m) => Payload::Membership(m),
                Err(e) => {
                    let err = Error::Malformed(format!("membership request: {e}"));
                    self.reply(from, f.incarnation, f.request_id, Err(err));
                    return;
                }
            },
            Err(_) => {
                let err = Error::Malformed(format!("forward kind {}", f.kind));
                self.reply(from, f.incarnation, f.request_id, Err(err));
                return;
            }
        };
        let max = self.cfg.limits.max_command_bytes;
        let refusal = match &payload {
            Payload::Command(c) if c.len() > max => Some(Error::TooLarge {
                what: "command".into(),
                size: c.len() as u64,
                max: max as u64,
            }),
            _ if self.raw.raft.state != StateRole::Leader => Some(Error::NotLeader {
                leader: (self.leader != 0 && self.leader != self.cfg.id).then_some(self.leader),
            }),
            _ if self.pending_requests() >= self.cfg.limits.max_pending_requests => {
                Some(Error::Busy)
            }
            _ => None,
        };
        let result = match refusal {
            Some(e) => Err(e),
            None => self.propose_here(from, f.incarnation, f.request_id, f.lowest, &payload),
        };
        if let Err(e) = result {
            self.reply(from, f.incarnation, f.request_id, Err(e));
        }
    }

    pub(super) fn on_reply(&mut self, from: u64, r: Reply) {
        if r.incarnation != self.incarnation {
            return;
        }
        let Some(req) = self.local.get(&r.request_id) else {
            return;
        };
        let state = req.state;
        match r.outcome {
            Some(Outcome::Applied(v)) => {
                self.complete_local(r.request_id, Ok(Response::Applied(v)))
            }
            Some(Outcome::Membership(m)) => {
                self.complete_local(r.request_id, Ok(Response::Membership(m)))
            }
            Some(Outcome::Error(w)) => {
                let e = Error::from(&w);
                if state != LocalState::Forwarded(from) {
                    return;
                }
                if e.is_retry_safe() {
                    if let Some(req) = self.local.get_mut(&r.request_id) {
                        req.state = LocalState::Parked;
                        req.last_error = Some(e);
                    }
                    if self.leader != 0 && self.leader != from {
                        self.dispatch(r.request_id);
                    }
                } else {
                    self.complete_local(r.request_id, Err(e));
                }
            }
            None => {}
        }
    }

    /// Issues one ReadIndex for all reads submitted since the last Ready.
    pub(super) fn flush_reads(&mut self) {
        if self.unbatched_reads.is_empty() {
            return;
        }
        let batch = self.alloc_id();
        let rids = std::mem::take(&mut self.unbatched_reads);
        for rid in &rids {
            if let Some(r) = self.reads.get_mut(rid) {
                r.batch = batch;
            }
        }
        self.read_batches.insert(
            batch,
            ReadBatch {
                index: None,
                issued: self.now,
                rids,
            },
        );
        self.issue_read(batch);
    }

    fn issue_read(&mut self, batch: u64) {
        let mut ctx = self.cfg.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.incarnation.to_be_bytes());
        ctx.extend_from_slice(&batch.to_be_bytes());
        self.raw.read_index(ctx);
        self.after_raft_input();
    }

    pub(super) fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        if ctx.len() != 24
            || ctx[..8] != self.cfg.id.to_be_bytes()
            || ctx[8..16] != self.incarnation.to_be_bytes()
        {
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&ctx[16..]);
        if let Some(batch) = self.read_batches.get_mut(&u64::from_be_bytes(b)) {
            batch.index.get_or_insert(index);
        }
    }

    /// Answers the reads whose read index is applied.
    pub(super) fn complete_reads(&mut self) {
        let applied = self.applied_index();
        let ready: Vec<u64> = self
            .read_batches
            .iter()
            .filter(|(_, b)| b.index.is_some_and(|i| i <= applied))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let Some(batch) = self.read_batches.remove(&id) else {
                continue;
            };
            let index = batch.index.unwrap_or(applied);
            for rid in batch.rids {
                if let Some(r) = self.reads.remove(&rid) {
                    let value = r.query.map(|q| self.sm.query(&q));
                    self.done(rid, Ok(Response::Read { index, value }));
                }
            }
        }
    }

    pub(super) fn check_transfers(&mut self) {
        let done: Vec<u64> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.to == self.leader)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.transfers.remove(&id);
            self.done(id, Ok(Response::Transferred));
        }
    }

    /// Deadlines and retries, once per tick.
    pub(super) fn on_tick(&mut self) {
        let now = self.now;
        let expired: Vec<u64> = self
            .local
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(id, _)| *id)
            .collect();
        for rid in expired {
            if let Some(r) = self.local.remove(&rid) {
                let e = match r.state {
                    LocalState::Parked if !r.ever_sent => r.last_error.unwrap_or(Error::NoLeader),
                    _ => Error::Timeout,
                };
                self.done(rid, Err(e));
            }
        }
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(id, _)| *id)
            .collect();
        for rid in expired {
            if let Some(r) = self.reads.remove(&rid) {
                if let Some(b) = self.read_batches.get_mut(&r.batch) {
                    b.rids.retain(|x| *x != rid);
                    if b.rids.is_empty() {
                        self.read_batches.remove(&r.batch);
                    }
                }
                self.unbatched_reads.retain(|x| *x != rid);
                self.done(rid, Err(Error::Timeout));
            }
        }
        let retry: Vec<u64> = self
            .read_batches
            .iter()
            .filter(|(_, b)| b.index.is_none() && now - b.issued >= self.ticks.read_retry)
            .map(|(id, _)| *id)
            .collect();
        for batch in retry {
            if let Some(b) = self.read_batches.get_mut(&batch) {
                b.issued = now;
            }
            self.issue_read(batch);
        }

        self.check_transfers();
        let mut reissue = Vec::new();
        let mut expired = Vec::new();
        let mut gone = Vec::new();
        for (id, t) in self.transfers.iter_mut() {
            if now >= t.deadline {
                expired.push(*id);
            } else if now - t.issued >= self.ticks.transfer_retry {
                if self.raw.raft.state == StateRole::Leader
                    && !self
                        .raw
                        .raft
                        .prs()
                        .get(t.to)
                        .is_some_and(|p| p.recent_active)
                {
                    gone.push((*id, t.to));
                    continue;
                }
                t.issued = now;
                reissue.push(t.to);
            }
        }
        for id in expired {
            self.transfers.remove(&id);
            self.done(id, Err(Error::Timeout));
        }
        for (id, to) in gone {
            self.transfers.remove(&id);
            if self.raw.raft.lead_transferee == Some(to) {
                // Proposals flow again now, not after raft's own election timeout.
                self.raw.raft.abort_leader_transfer();
            }
            let e = self.inactive_target(to).unwrap_or(Error::Timeout);
            self.done(id, Err(e));
        }
        for to in reissue {
            self.raw.transfer_leader(to);
            self.after_raft_input();
        }

        self.resend_stale(false);
        self.leader_duties();
    }

    /// Leader-only upkeep: resend snapshots nobody acknowledged, and leave a joint
    /// configuration that an earlier leader entered.
    fn leader_duties(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.snapshot_since.clear();
            return;
        }
        let in_snapshot: Vec<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_since.retain(|id, _| in_snapshot.contains(id));
        for id in in_snapshot {
            let since = *self.snapshot_since.entry(id).or_insert(self.now);
            if self.now - since >= self.ticks.snapshot_retry {
                tracing::info!(peer = id, "snapshot not acknowledged; sending it again");
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
                self.snapshot_since.remove(&id);
            }
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let joint = !cs.voters_outgoing.is_empty();
        if joint && !self.raw.raft.has_pending_conf() {
            tracing::info!("leaving the joint configuration a previous leader entered");
            if let Err(e) = self
                .raw
                .propose_conf_change(Vec::new(), ConfChangeV2::default())
            {
                tracing::warn!(error = %e, "cannot propose leaving the joint configuration");
            }
        }
        self.after_raft_input();
    }
}
