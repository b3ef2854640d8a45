//! The simulated nodes' side of the world: ticks, the writes each node tries, its
//! decisions to acquire, hand off or release, and the replies and fence events it
//! handles.

use super::*;

impl World {
    pub(super) fn local(&self, i: usize) -> Time {
        self.nodes[i].clock.read(self.now)
    }

    pub(super) fn node_tick(&mut self, i: usize) -> Check {
        self.at(self.now + NODE_TICK, Ev::NodeTick(i));
        if !self.nodes[i].alive || self.nodes[i].paused.is_some() {
            return Ok(());
        }
        let now_l = self.local(i);
        let events = self.nodes[i].guard.poll(now_l);
        self.note_events(i, &events);
        let now = self.now;
        self.nodes[i]
            .pending
            .retain(|_, (_, sent)| now - *sent < REQUEST_TIMEOUT);
        if self.nodes[i].guard.needs_register() {
            if !self.nodes[i].register_sent || self.nodes[i].pending.is_empty() {
                self.nodes[i].register_sent = true;
                let cmd = self.nodes[i].guard.register_command();
                self.send(i, Pending::Register, cmd);
            }
            return Ok(());
        }
        if let Some(req) = self.nodes[i].guard.poll_renewal(now_l) {
            self.send_req(i, None, req);
        }
        self.try_writes(i, now_l);
        self.dp_tick(i);
        self.progress_drain(i);
        self.decide(i);
        Ok(())
    }

    pub(super) fn try_writes(&mut self, i: usize, now_l: Time) {
        let holds: Vec<_> = self.nodes[i]
            .guard
            .holds()
            .iter()
            .map(|(v, h)| (*v, *h))
            .collect();
        for (vhd, h) in holds {
            if h.mode != Mode::Write || !self.rng.random_bool(0.5) {
                continue;
            }
            if self.nodes[i].guard.may_write(vhd, h.generation, now_l) {
                // A client's write or read, down the node's data path (`datapath.rs`): a
                // checked write lands within io_timeout on a working path (A3), late or
                // never on a cut one, or through a peer.
                self.client_op(i, vhd, h.generation);
            }
        }
    }

    pub(super) fn progress_drain(&mut self, i: usize) {
        if let Some((vhd, req, ready)) = self.nodes[i].draining.clone()
            && self.now >= ready
        {
            self.nodes[i].draining = None;
            self.send_req(i, Some(vhd), req);
        }
    }

    /// What a node's upper layer decides to do this tick (the replicated state is read
    /// directly, as a query through the coordinator would return it).
    pub(super) fn decide(&mut self, i: usize) {
        if self.nodes[i].guard.epoch().is_none() {
            return;
        }
        let eager = self.calm;
        // Take over VHDs of expired writers.
        let stale: Vec<(VhdId, Generation)> = self
            .state
            .owners()
            .into_iter()
            .filter(|o| o.owner.is_some() && !o.owner_valid)
            .map(|o| (o.vhd, o.generation))
            .collect();
        for (vhd, g) in stale {
            if self.rng.random_bool(if eager { 0.5 } else { 0.05 })
                && let Ok(req) = self.nodes[i].guard.request_takeover(vhd, g)
            {
                self.send_req(i, Some(vhd), req);
            }
        }
        self.settle(i);
        if self.calm {
            return;
        }
        let vhd = VhdId(self.rng.random_range(1..=VHDS));
        let held = self.nodes[i].guard.hold(vhd).copied();
        let roll = self.rng.random_range(0..1000);
        let draining = self.nodes[i].draining.is_some();
        match (held, roll) {
            (None, 0..=14) => {
                let mode = if roll < 10 { Mode::Write } else { Mode::Read };
                if let Ok(req) = self.nodes[i].guard.request_acquire(vhd, mode) {
                    self.send_req(i, Some(vhd), req);
                }
            }
            (Some(h), 20..=23) if h.mode == Mode::Write && !h.handing_off && !draining => {
                let to = self.rng.random_range(0..NODES);
                let Some(to_rec) = self.state.node_record(NodeId(to as u64 + 1)).copied() else {
                    return;
                };
                if to == i {
                    return;
                }
                // The migration protocol tells the target first (if it is running).
                if self.nodes[to].alive && self.nodes[to].paused.is_none() {
                    self.nodes[to].guard.expect_transfer(vhd, h.generation);
                }
                let to_id = NodeId(to as u64 + 1);
                if let Ok(req) = self.nodes[i].guard.begin_handoff(vhd, to_id, to_rec.epoch) {
                    let ready = self.nodes[i].landing.get(&vhd).copied().unwrap_or(0);
                    self.nodes[i].draining = Some((vhd, req, ready));
                }
            }
            (Some(h), 30..=31) if !h.handing_off && !draining => {
                if let Some(req) = self.nodes[i].guard.begin_release(vhd) {
                    let ready = self.nodes[i].landing.get(&vhd).copied().unwrap_or(0);
                    self.nodes[i].draining = Some((vhd, req, ready));
                }
            }
            _ => {}
        }
    }

    /// Hand-offs refused or unanswered are settled by a reclaim, releases unanswered are
    /// re-sent (never settled by reading the state: a duplicate may still be in flight).
    pub(super) fn settle(&mut self, i: usize) {
        let busy = |n: &SimNode, v: VhdId| {
            n.draining.as_ref().is_some_and(|d| d.0 == v)
                || n.pending
                    .values()
                    .any(|(p, _)| matches!(p, Pending::Guard(_, Some(x)) if *x == v))
        };
        let n = &self.nodes[i];
        let handing: Vec<VhdId> = n
            .guard
            .holds()
            .iter()
            .filter(|(v, h)| h.handing_off && !busy(n, **v))
            .map(|(v, _)| *v)
            .collect();
        let releasing: Vec<VhdId> = n
            .guard
            .status(Time::ZERO)
            .releasing
            .into_iter()
            .filter(|v| !busy(n, *v))
            .collect();
        for v in handing {
            if let Some(req) = self.nodes[i].guard.reclaim(v) {
                self.send_req(i, Some(v), req);
            }
        }
        for v in releasing {
            if let Some(req) = self.nodes[i].guard.retry_release(v) {
                self.send_req(i, Some(v), req);
            }
        }
    }

    pub(super) fn drain_inbox(&mut self, i: usize) -> Check {
        let inbox = std::mem::take(&mut self.nodes[i].inbox);
        for (req, res) in inbox {
            let now_l = self.local(i);
            let kind = match req {
                Some(r) => match self.nodes[i].pending.remove(&r) {
                    Some((k, _)) => Some(k),
                    None => continue,
                },
                None => None,
            };
            let mut recover = Vec::new();
            let events = {
                let g = &mut self.nodes[i].guard;
                match (kind, &res) {
                    (Some(Pending::Register), Ok(o)) => {
                        let ev = g.on_registered(o);
                        // A restarted node recovers the holds the state still shows.
                        let holds = self.state.holds_of(g.node());
                        recover = g.recover(&holds, now_l);
                        ev
                    }
                    (Some(Pending::Guard(ticket, _)), r) => g.on_result(ticket, r, now_l),
                    // A transfer to this node, announced by the coordinator.
                    (None, Ok(o)) => g.on_transfer_in(o),
                    (_, Err(e)) => g.on_error(e),
                }
            };
            self.note_events(i, &events);
            for req in recover {
                let vhd = match req.command {
                    Command::Reclaim { vhd, .. } | Command::Release { vhd, .. } => Some(vhd),
                    _ => None,
                };
                self.send_req(i, vhd, req);
            }
        }
        Ok(())
    }

    pub(super) fn note_events(&mut self, i: usize, events: &[FenceEvent]) {
        for e in events {
            match e {
                FenceEvent::Lapsed { .. } => {
                    self.stats.lapses += 1;
                    if let Some(from) = self.ride_through_from
                        && self.nodes[i].link.1 <= from
                        && self.killed.as_ref().is_none_or(|k| k.0 != i)
                    {
                        self.stats.ride_through_lapses += 1;
                    }
                }
                FenceEvent::Reopened { .. } => self.stats.reopened += 1,
                FenceEvent::OwnershipLost { .. } => self.stats.ownership_lost += 1,
                FenceEvent::GrantRefused {
                    vhd,
                    epoch,
                    generation,
                } => {
                    if let Some(req) =
                        self.nodes[i]
                            .guard
                            .release_unwanted(*vhd, *epoch, *generation)
                    {
                        self.send_req(i, Some(*vhd), req);
                    }
                }
                FenceEvent::HoldDropped { .. } | FenceEvent::HandoffFailed { .. } => {}
            }
        }
    }
}
