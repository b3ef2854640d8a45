//! Faults (crashes, pauses, partitions, restarts), the calm phase with its liveness
//! checks, and the safety checks run after every event.

use super::*;

impl World {
    pub(super) fn fault(&mut self) {
        if self.calm {
            return;
        }
        let next = self.now + self.rng.random_range(500 * MS..4 * SEC);
        self.at(next, Ev::Fault);
        let i = self.rng.random_range(0..NODES);
        match self.rng.random_range(0..10) {
            0 | 1 if self.nodes[i].alive && self.nodes[i].paused.is_none() => {
                let until = self.now + self.rng.random_range(500 * MS..15 * SEC);
                self.nodes[i].paused = Some(until);
                self.at(until, Ev::Resume(i, until));
            }
            2 if self.nodes[i].alive => {
                self.crash_node(i);
                let back = self.now + self.rng.random_range(2 * SEC..15 * SEC);
                self.at(back, Ev::Restart(i));
            }
            3..=5 => {
                let until = self.now + self.rng.random_range(SEC..20 * SEC);
                let link = if self.rng.random_bool(0.5) {
                    Link::Drop
                } else {
                    Link::Delay(self.rng.random_range(2 * SEC..MAX_DELAY))
                };
                self.nodes[i].link = (link, until);
                self.at(until, Ev::Heal(i, until));
            }
            7 | 8 if self.nodes[i].alive => self.cut_path(i),
            6 if self.leader.is_some() => {
                self.crash_leader();
                let f = self.rng.random_range(300 * MS..8 * SEC);
                self.at(self.now + f, Ev::Elect);
            }
            _ => {}
        }
    }

    pub(super) fn crash_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.paused = None;
        n.inbox.clear();
        n.pending.clear();
        n.draining = None;
        self.dp_crash(i);
    }

    pub(super) fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.alive {
            return;
        }
        n.alive = true;
        n.inc += 1;
        n.guard = FenceGuard::new(n.id, &self.timing);
        n.register_sent = false;
        n.landing.clear();
    }

    /// A paused process resumes with its old beliefs: its I/O thread tries to write
    /// before anything else runs. A VHD taken over meanwhile must find its fence closed.
    pub(super) fn resume(&mut self, i: usize) -> Check {
        self.nodes[i].paused = None;
        let now_l = self.local(i);
        let id = self.nodes[i].id;
        let holds: Vec<_> = self.nodes[i]
            .guard
            .holds()
            .iter()
            .map(|(v, h)| (*v, *h))
            .collect();
        for (vhd, h) in holds {
            if h.mode != Mode::Write {
                continue;
            }
            let still_owner = self.state.valid_writer(vhd) == Some((id, h.epoch, h.generation));
            if !still_owner && self.state.valid_writer(vhd).is_some() {
                self.stats.resumed_after_takeover += 1;
                if self.nodes[i].guard.may_write(vhd, h.generation, now_l) {
                    return Err(format!(
                        "node {} resumed with an open fence on {vhd} taken over",
                        i + 1
                    ));
                }
            }
        }
        self.try_writes(i, now_l);
        self.drain_inbox(i)
    }

    pub(super) fn calm(&mut self) {
        self.calm = true;
        for i in 0..NODES {
            self.nodes[i].link = (Link::Up, 0);
            self.nodes[i].path.ok = true;
            if self.nodes[i].paused.is_some() {
                self.nodes[i].paused = Some(self.now);
                self.at(self.now, Ev::Resume(i, self.now));
            }
            if !self.nodes[i].alive {
                self.at(self.now, Ev::Restart(i));
            }
        }
        self.at(self.now, Ev::Elect);
        // Messages delayed by the chaos phase arrive for up to 30 s more. They are safe
        // (stale requests are refused, late renewals only move the coordinator's base
        // later), but a late renewal of the victim would postpone its expiry: the budget
        // assumes bounded delays, so the liveness checks start once they have drained.
        self.at(self.now + MAX_DELAY + 2 * SEC, Ev::CrashLeader);
        self.at(self.now + MAX_DELAY + 11 * SEC, Ev::KillOwner);
    }

    pub(super) fn kill_owner(&mut self) -> Check {
        self.ride_through_from = None;
        // Make sure some node owns something: node 1 acquires a dedicated VHD if free.
        let owner = self
            .state
            .owners()
            .into_iter()
            .find(|o| o.owner_valid)
            .and_then(|o| o.owner)
            .map(|n| usize::try_from(n.0 - 1).expect("index"));
        let Some(victim) = owner else {
            let req = self.nodes[0]
                .guard
                .request_acquire(CALM_VHD, Mode::Write)
                .map_err(|e| format!("node 1 cannot acquire in the calm phase: {e}"))?;
            self.send_req(0, Some(CALM_VHD), req);
            self.at(self.now + SEC, Ev::KillOwner);
            return Ok(());
        };
        let vhds: BTreeSet<VhdId> = self
            .state
            .holds_of(NodeId(victim as u64 + 1))
            .into_iter()
            .filter(|h| h.valid && h.mode == Mode::Write)
            .map(|h| h.vhd)
            .collect();
        self.crash_node(victim);
        self.killed = Some((victim, self.now, vhds));
        let budget = u64::try_from(self.timing.outage_budget.as_nanos()).expect("fits");
        self.at(self.now + budget + SEC, Ev::End);
        Ok(())
    }

    pub(super) fn end_checks(&mut self) -> Check {
        if self.stats.ride_through_lapses > 0 {
            return Err(
                "a healthy node's fence lapsed during a coordinator failover within tolerance"
                    .into(),
            );
        }
        let (victim, _, left) = self.killed.as_ref().ok_or("no owner was killed")?;
        if !left.is_empty() {
            return Err(format!(
                "VHDs {left:?} of killed node {} not taken over within the budget",
                victim + 1
            ));
        }
        if self.stats.calm_takeover_ms_max
            > u64::try_from(self.timing.outage_budget.as_millis()).expect("fits")
        {
            return Err(format!(
                "takeover took {} ms",
                self.stats.calm_takeover_ms_max
            ));
        }
        Ok(())
    }

    /// No two nodes have an open write fence for one VHD right now.
    pub(super) fn check_fences(&self) -> Check {
        let mut open: BTreeMap<VhdId, usize> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            let now_l = n.clock.read(self.now);
            for (vhd, h) in n.guard.holds() {
                if h.mode == Mode::Write
                    && n.guard.may_write(*vhd, h.generation, now_l)
                    && let Some(j) = open.insert(*vhd, i)
                {
                    {
                        return Err(format!(
                            "nodes {} and {} both have an open write fence on {vhd} at {} ns",
                            j + 1,
                            i + 1,
                            self.now
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
