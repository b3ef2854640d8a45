//! Applying committed entries: commands go through the state machine, configuration
//! changes through raft-rs and the address book; all effects of one group of entries are
//! written in one batch together with the applied position. Then each outcome is routed to
//! whoever waits for it.

use prost::Message as _;
use raft::StateRole;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
};

use super::sessions::Seen;
use super::{Core, LocalState, Response};
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::error::Error;
use crate::keys::{self, Pos};
use crate::state_machine::{SmReader, SmWriter, StateMachine};
use crate::wire::{Membership, ProposalContext, SnapshotPayload};

type Outcome = (
    u64,
    Option<ProposalContext>,
    Option<Result<Response, Error>>,
);

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    pub(super) fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let first_index = first.index;
        let last_pos = Pos::new(last.index, last.term);
        let mut batch = WriteBatch::new();
        let mut conf: Option<ConfState> = None;
        let mut peer_changes: Vec<(u64, Option<String>)> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(entries.len());
        for e in &entries {
            let ctx = if e.context.is_empty() {
                None
            } else {
                ProposalContext::decode(&e.context[..]).ok()
            };
            let seen = match &ctx {
                Some(c) if c.incarnation != 0 => Some(self.sessions.begin(
                    c.origin,
                    c.incarnation,
                    c.request_id,
                    c.lowest,
                    e.index,
                    &mut batch,
                )),
                _ => None,
            };
            let duplicate = matches!(seen, Some(Seen::Duplicate(_)));
            tracing::trace!(
                node = self.cfg.id,
                index = e.index,
                term = e.term,
                ctx = ?ctx.as_ref().map(|c| (c.origin, c.incarnation, c.request_id, c.lowest)),
                ?seen,
                data = %String::from_utf8_lossy(&e.data),
                "apply"
            );
            let result = match e.get_entry_type() {
                EntryType::EntryNormal => match (&ctx, seen) {
                    (None, _) => None,
                    (Some(_), Some(Seen::Duplicate(r))) => r.map(|r| Ok(Response::Applied(r))),
                    (Some(c), _) => {
                        let mut w = SmWriter { batch: &mut batch };
                        let r = self.sm.apply(e.index, &e.data, &mut w);
                        self.sessions
                            .record(c.origin, c.incarnation, c.request_id, &r, &mut batch);
                        Some(Ok(Response::Applied(r)))
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 if duplicate => {
                    // A second copy of an applied change: not applied again.
                    let cs = self.raw.raft.prs().conf().to_conf_state();
                    ctx.as_ref()
                        .map(|_| Ok(Response::Membership(Membership::from_conf_state(&cs))))
                }
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    match protobuf::Message::merge_from_bytes(&mut cc, &e.data) {
                        Ok(()) => self.apply_conf_change(
                            &v1_to_v2(&cc),
                            ctx.as_ref(),
                            &mut batch,
                            &mut conf,
                            &mut peer_changes,
                        ),
                        Err(err) => Some(Err(Error::Malformed(format!("conf change: {err}")))),
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    match protobuf::Message::merge_from_bytes(&mut cc, &e.data) {
                        Ok(()) => self.apply_conf_change(
                            &cc,
                            ctx.as_ref(),
                            &mut batch,
                            &mut conf,
                            &mut peer_changes,
                        ),
                        Err(err) => Some(Err(Error::Malformed(format!("conf change: {err}")))),
                    }
                }
            };
            if let Some(c) = &ctx
                && c.incarnation != 0
                && !duplicate
                && e.get_entry_type() != EntryType::EntryNormal
            {
                self.sessions
                    .record(c.origin, c.incarnation, c.request_id, &[], &mut batch);
            }
            outcomes.push((e.index, ctx, result));
        }
        self.raw
            .store()
            .persist_apply(batch, last_pos, conf.as_ref())?;
        self.stats.applied_entries += entries.len() as u64;

        for (id, addr) in peer_changes {
            self.set_peer(id, addr);
        }
        // Entries this node proposed below the applied range can no longer be matched: the
        // origin sends the request again (the session table applies it at most once).
        let skipped: Vec<u64> = self
            .proposed
            .range(..first_index)
            .map(|(k, _)| *k)
            .collect();
        for k in skipped {
            if let Some(p) = self.proposed.remove(&k) {
                self.finish_proposed(p, Err(Error::Dropped));
            }
        }
        for (index, ctx, result) in outcomes {
            self.resolve(index, ctx, result);
        }
        if let Some(cs) = conf
            && cs.voters_outgoing.is_empty()
        {
            let m = Membership::from_conf_state(&cs);
            let waiting: Vec<u64> = self
                .local
                .iter()
                .filter(|(_, r)| r.state == LocalState::WaitLeaveJoint)
                .map(|(id, _)| *id)
                .collect();
            for rid in waiting {
                self.local.remove(&rid);
                self.done(rid, Ok(Response::Membership(m.clone())));
            }
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
        ctx: Option<&ProposalContext>,
        batch: &mut WriteBatch,
        conf: &mut Option<ConfState>,
        peer_changes: &mut Vec<(u64, Option<String>)>,
    ) -> Option<Result<Response, Error>> {
        // Refused the same way on every replica: the removed set is replicated state as of
        // this log position.
        if let Some(ch) = cc.get_changes().iter().find(|ch| {
            ch.get_change_type() != ConfChangeType::RemoveNode && self.removed.contains(&ch.node_id)
        }) {
            let msg = format!(
                "node {} was removed; a replacement needs a new id",
                ch.node_id
            );
            tracing::warn!(node = self.cfg.id, "{msg}");
            return ctx.map(|_| Err(Error::InvalidMembership(msg)));
        }
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                for ch in cc.get_changes() {
                    if ch.get_change_type() == ConfChangeType::RemoveNode {
                        batch.put(Cf::Peers, keys::peer_key(ch.node_id).to_vec(), Vec::new());
                        peer_changes.push((ch.node_id, None));
                        self.removed.insert(ch.node_id);
                    }
                }
                if let Some(ctx) = ctx {
                    for p in &ctx.peers {
                        let member = cs.voters.contains(&p.id)
                            || cs.learners.contains(&p.id)
                            || cs.voters_outgoing.contains(&p.id)
                            || cs.learners_next.contains(&p.id);
                        if member && p.id != 0 && !p.addr.is_empty() {
                            batch.put(Cf::Peers, keys::peer_key(p.id).to_vec(), p.addr.as_bytes());
                            peer_changes.push((p.id, Some(p.addr.clone())));
                        }
                    }
                }
                let m = Membership::from_conf_state(&cs);
                tracing::info!(node = self.cfg.id, membership = ?m, "configuration applied");
                let me = self.cfg.id;
                if self.raw.raft.state == StateRole::Leader
                    && !cs.voters.contains(&me)
                    && !cs.voters_outgoing.contains(&me)
                {
                    // Removed while leading (the change was proposed under an earlier
                    // leader). raft-rs 0.7 would keep this node in office without its own
                    // progress entry and panic at its next commit; it steps down instead
                    // and the remaining voters elect a leader.
                    tracing::info!(node = me, "removed from the voters: stepping down");
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
                *conf = Some(cs);
                ctx.map(|_| Ok(Response::Membership(m)))
            }
            Err(e) => {
                tracing::warn!(node = self.cfg.id, error = %e, "conf change rejected");
                ctx.map(|_| Err(Error::InvalidMembership(e.to_string())))
            }
        }
    }

    /// Routes the outcome of the entry at `index` to whoever waits for it.
    fn resolve(
        &mut self,
        index: u64,
        ctx: Option<ProposalContext>,
        result: Option<Result<Response, Error>>,
    ) {
        let mine = match (self.proposed.remove(&index), &ctx) {
            (Some(p), Some(c))
                if p.origin == c.origin
                    && p.incarnation == c.incarnation
                    && p.request_id == c.request_id =>
            {
                Some(p)
            }
            (Some(p), _) => {
                // Another entry is committed where ours was: ours can never commit.
                self.finish_proposed(p, Err(Error::Dropped));
                None
            }
            (None, _) => None,
        };
        let (Some(result), Some(ctx)) = (result, ctx) else {
            if let Some(p) = mine
                && p.origin != self.cfg.id
            {
                self.remote_in_flight = self.remote_in_flight.saturating_sub(1);
            }
            return;
        };
        if let Some(p) = mine {
            self.finish_proposed(p, result);
        } else if ctx.origin == self.cfg.id {
            if ctx.incarnation == self.incarnation {
                self.complete_local(ctx.request_id, result);
            }
        } else if self.raw.raft.state == StateRole::Leader {
            // A leader applying an entry an earlier leader appended tells the origin too.
            self.reply(ctx.origin, ctx.incarnation, ctx.request_id, result);
        }
    }

    pub(super) fn on_snapshot_installed(
        &mut self,
        index: u64,
        payload: &SnapshotPayload,
    ) -> Result<(), Error> {
        self.sm.load(&SmReader {
            engine: self.raw.store().engine(),
        })?;
        self.sessions = super::sessions::Sessions::load(self.raw.store().engine())?;
        self.stats.snapshots_installed += 1;
        self.removed = payload
            .peers
            .iter()
            .filter(|p| p.addr.is_empty())
            .map(|p| p.id)
            .collect();
        let mut book: std::collections::BTreeMap<u64, String> = payload
            .peers
            .iter()
            .filter(|p| !p.addr.is_empty())
            .map(|p| (p.id, p.addr.clone()))
            .collect();
        for p in &self.cfg.peers {
            if !self.removed.contains(&p.id) {
                book.entry(p.id).or_insert_with(|| p.addr.clone());
            }
        }
        let gone: Vec<u64> = self
            .peers
            .keys()
            .filter(|id| !book.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.set_peer(id, None);
        }
        for (id, addr) in book {
            self.set_peer(id, Some(addr));
        }
        let stale: Vec<u64> = self.proposed.range(..=index).map(|(k, _)| *k).collect();
        for k in stale {
            if let Some(p) = self.proposed.remove(&k) {
                self.finish_proposed(
                    p,
                    Err(Error::Indeterminate(
                        "log position replaced by a snapshot".into(),
                    )),
                );
            }
        }
        tracing::info!(node = self.cfg.id, index, "snapshot installed");
        Ok(())
    }
}

/// A legacy single conf change as the equivalent `ConfChangeV2` (this store proposes only
/// V2, but a log may hold V1 entries written by other tools).
fn v1_to_v2(cc: &ConfChange) -> ConfChangeV2 {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(cc.get_change_type());
    s.node_id = cc.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![s].into());
    v2.context = cc.context.clone();
    v2
}
