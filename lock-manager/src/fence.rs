//! `FenceGuard`: the node-side self-fence, a pure state machine fed with the node's own
//! clock readings and the results of its commands (design note 030, §7).
//!
//! The data path asks `check_write(vhd, generation, now)` immediately before every write.
//! The answer is yes only for a VHD held for write at exactly that generation under the
//! node's current epoch, not being handed off, while `now` is before the lease deadline.
//! The deadline is `t_send + node_lease` of the latest renewal confirmed at the same
//! epoch, so the fence closes on its own, and only such a renewal reopens it. A bumped
//! epoch drops every hold and reports it; nothing is ever re-acquired here.
//!
//! Every command the node proposes comes from the guard as a [`Request`] with a ticket,
//! and its applied result goes back through [`FenceGuard::on_result`]: an answer is
//! matched to exactly one request, so a late or duplicated answer (an idempotent grant
//! arriving after the node released the VHD) can never reopen a fence.

use crate::command::{Command, Mode, Outcome};
use crate::error::LockError;
pub use crate::fence_types::{FenceDenied, FenceEvent, GuardStatus, LocalHold, LostHold};
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use crate::time::Time;
use crate::timing::LeaseTiming;
use crate::view::HoldView;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most renewals in flight at once; older unanswered ones are forgotten.
pub const MAX_INFLIGHT_RENEWALS: usize = 8;
/// Most unanswered requests of any kind; the oldest is forgotten beyond it (its answer
/// is then ignored, which can only leave a fence closed).
pub const MAX_TICKETS: usize = 4096;
/// Most VHDs expected to be transferred in at once.
pub const MAX_EXPECTED_TRANSFERS: usize = 1024;

/// A command to propose, and the ticket its applied result must be fed back with
/// ([`FenceGuard::on_result`]). One ticket, one answer: a resend is a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Matches the answer to this request.
    pub ticket: u64,
    /// The command to propose.
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Renew {
        epoch: Epoch,
        sent_at: Time,
    },
    Grant {
        vhd: VhdId,
    },
    Reclaim {
        vhd: VhdId,
        from: Generation,
        recovered: bool,
    },
    Handoff {
        vhd: VhdId,
    },
    Release {
        vhd: VhdId,
    },
}

/// The node-side fence. One per node.
#[derive(Debug, Clone)]
pub struct FenceGuard {
    node: NodeId,
    node_lease: Duration,
    renew_interval: Duration,
    renew_retry: Duration,
    io_timeout: Duration,
    epoch: Option<Epoch>,
    deadline: Option<Time>,
    writes_not_before: Option<Time>,
    lapse_reported: bool,
    next_ticket: u64,
    tickets: BTreeMap<u64, Ticket>,
    last_sent: Option<Time>,
    latest_confirmed: bool,
    holds: BTreeMap<VhdId, LocalHold>,
    /// VHDs with a `Release` proposed and unanswered, with the released generation.
    releasing: BTreeMap<VhdId, Generation>,
    /// VHDs this node expects to receive by transfer, above the given generation.
    expected: BTreeMap<VhdId, Generation>,
}

impl FenceGuard {
    /// A guard for `node`, closed until it registers and a renewal is confirmed.
    pub fn new(node: NodeId, timing: &LeaseTiming) -> FenceGuard {
        FenceGuard {
            node,
            node_lease: timing.node_lease,
            renew_interval: timing.renew_interval,
            renew_retry: timing.renew_retry,
            io_timeout: timing.io_timeout,
            epoch: None,
            deadline: None,
            writes_not_before: None,
            lapse_reported: false,
            next_ticket: 1,
            tickets: BTreeMap::new(),
            last_sent: None,
            latest_confirmed: false,
            holds: BTreeMap::new(),
            releasing: BTreeMap::new(),
            expected: BTreeMap::new(),
        }
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The node's epoch as the guard knows it (`None`: must register).
    pub fn epoch(&self) -> Option<Epoch> {
        self.epoch
    }

    /// Whether the node must `Register` (first start, or it left or was forgotten).
    pub fn needs_register(&self) -> bool {
        self.epoch.is_none()
    }

    /// The local lease deadline, once a renewal was confirmed at this epoch.
    pub fn deadline(&self) -> Option<Time> {
        self.deadline
    }

    /// Whether the lease is valid at local time `now`.
    pub fn lease_valid(&self, now: Time) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }

    /// The hold on `vhd`, if any.
    pub fn hold(&self, vhd: VhdId) -> Option<&LocalHold> {
        self.holds.get(&vhd)
    }

    /// Every hold.
    pub fn holds(&self) -> &BTreeMap<VhdId, LocalHold> {
        &self.holds
    }

    /// Ask before every write of `vhd` carrying `generation`, with a fresh clock reading.
    pub fn check_write(
        &self,
        vhd: VhdId,
        generation: Generation,
        now: Time,
    ) -> Result<(), FenceDenied> {
        let h = self.holds.get(&vhd).ok_or(FenceDenied::NotHeld)?;
        if h.mode != Mode::Write {
            return Err(FenceDenied::ReadOnly);
        }
        if h.generation != generation {
            return Err(FenceDenied::WrongGeneration {
                held: h.generation,
                asked: generation,
            });
        }
        if h.handing_off {
            return Err(FenceDenied::HandingOff);
        }
        if let Some(until) = self.writes_not_before.filter(|u| now < *u) {
            return Err(FenceDenied::Recovering { until });
        }
        self.check_lease(h.epoch, now)
    }

    /// `check_write(..).is_ok()`.
    pub fn may_write(&self, vhd: VhdId, generation: Generation, now: Time) -> bool {
        self.check_write(vhd, generation, now).is_ok()
    }

    /// Ask before every read of `vhd` (any hold; a read hold also needs a valid lease,
    /// since a deny-write hold is what keeps writers away).
    pub fn check_read(&self, vhd: VhdId, now: Time) -> Result<(), FenceDenied> {
        let h = self.holds.get(&vhd).ok_or(FenceDenied::NotHeld)?;
        self.check_lease(h.epoch, now)
    }

    fn check_lease(&self, hold_epoch: Epoch, now: Time) -> Result<(), FenceDenied> {
        if self.epoch != Some(hold_epoch) {
            return Err(FenceDenied::NoLease);
        }
        match self.deadline {
            None => Err(FenceDenied::NoLease),
            Some(deadline) if now >= deadline => Err(FenceDenied::Lapsed { deadline }),
            Some(_) => Ok(()),
        }
    }

    /// Reports a lapse once, when the deadline has passed. Call it from the renewal loop.
    pub fn poll(&mut self, now: Time) -> Vec<FenceEvent> {
        match self.deadline {
            Some(deadline) if now >= deadline && !self.lapse_reported => {
                self.lapse_reported = true;
                vec![FenceEvent::Lapsed { deadline }]
            }
            _ => Vec::new(),
        }
    }

    /// When the renewal loop should next call `poll_renewal`/`poll`.
    pub fn next_wakeup(&self) -> Option<Time> {
        let last = self.last_sent?;
        let gap = if self.latest_confirmed {
            self.renew_interval
        } else {
            self.renew_retry
        };
        let renew = last.saturating_add(gap);
        Some(match self.deadline {
            Some(d) if !self.lapse_reported => renew.min(d),
            _ => renew,
        })
    }

    fn ticket(&mut self, kind: Ticket, command: Command) -> Request {
        while self.tickets.len() >= MAX_TICKETS {
            self.tickets.pop_first();
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, kind);
        Request { ticket, command }
    }

    /// The `Register` to propose; feed its result to [`FenceGuard::on_registered`].
    pub fn register_command(&self) -> Command {
        Command::Register { node: self.node }
    }

    /// The applied result of `Register` for this node.
    pub fn on_registered(&mut self, outcome: &Outcome) -> Vec<FenceEvent> {
        match outcome {
            Outcome::Registered { node, epoch, .. } if *node == self.node => {
                if self.epoch == Some(*epoch) {
                    Vec::new()
                } else {
                    self.lose(Some(*epoch))
                }
            }
            _ => Vec::new(),
        }
    }

    /// A renewal to send now, if one is due (`None` before registration, while the last
    /// one is fresh). Call it with a clock reading taken just before sending: the lease
    /// counts from this reading.
    pub fn poll_renewal(&mut self, now: Time) -> Option<Request> {
        let epoch = self.epoch?;
        let node_lease = self.node_lease;
        // An answer to a send older than the node lease could not extend the deadline.
        self.tickets.retain(|_, t| match t {
            Ticket::Renew { sent_at, .. } => sent_at.saturating_add(node_lease) > now,
            _ => true,
        });
        if let Some(last) = self.last_sent {
            let gap = if self.latest_confirmed {
                self.renew_interval
            } else {
                self.renew_retry
            };
            if now.saturating_since(last) < gap {
                return None;
            }
        }
        let renewals: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| matches!(t, Ticket::Renew { .. }))
            .map(|(id, _)| *id)
            .collect();
        if renewals.len() >= MAX_INFLIGHT_RENEWALS {
            self.tickets.remove(&renewals[0]);
        }
        self.last_sent = Some(now);
        self.latest_confirmed = false;
        Some(self.ticket(
            Ticket::Renew {
                epoch,
                sent_at: now,
            },
            Command::Renew {
                node: self.node,
                epoch,
            },
        ))
    }

    /// An `Acquire` to propose (refused while the VHD is being released or handed off).
    pub fn request_acquire(&mut self, vhd: VhdId, mode: Mode) -> Result<Request, FenceDenied> {
        let epoch = self.busy_check(vhd)?;
        let cmd = Command::Acquire {
            vhd,
            node: self.node,
            epoch,
            mode,
        };
        Ok(self.ticket(Ticket::Grant { vhd }, cmd))
    }

    /// A `Takeover` of an expired writer's VHD seen at `expected_generation`.
    pub fn request_takeover(
        &mut self,
        vhd: VhdId,
        expected_generation: Generation,
    ) -> Result<Request, FenceDenied> {
        let epoch = self.busy_check(vhd)?;
        let cmd = Command::Takeover {
            vhd,
            node: self.node,
            epoch,
            expected_generation,
        };
        Ok(self.ticket(Ticket::Grant { vhd }, cmd))
    }

    fn busy_check(&self, vhd: VhdId) -> Result<Epoch, FenceDenied> {
        let epoch = self.epoch.ok_or(FenceDenied::NoLease)?;
        if self.releasing.contains_key(&vhd) {
            return Err(FenceDenied::NotHeld);
        }
        if self.holds.get(&vhd).is_some_and(|h| h.handing_off) {
            return Err(FenceDenied::HandingOff);
        }
        // A recovery reclaim in flight: an idempotent grant of the old generation would
        // bring back exactly what the reclaim is there to void.
        if self
            .tickets
            .values()
            .any(|t| matches!(t, Ticket::Reclaim { vhd: v, recovered: true, .. } if *v == vhd))
        {
            return Err(FenceDenied::HandingOff);
        }
        Ok(epoch)
    }

    /// Closes the fence for `vhd` at once and returns the `Release` to propose once the
    /// in-flight I/O on it has drained. Answers to earlier acquire requests for the VHD
    /// are ignored from now on.
    pub fn begin_release(&mut self, vhd: VhdId) -> Option<Request> {
        let h = self.holds.remove(&vhd)?;
        self.tickets
            .retain(|_, t| !matches!(t, Ticket::Grant { vhd: v } if *v == vhd));
        self.releasing.insert(vhd, h.generation);
        let cmd = Command::Release {
            vhd,
            node: self.node,
            epoch: h.epoch,
            generation: h.generation,
        };
        Some(self.ticket(Ticket::Release { vhd }, cmd))
    }

    /// Re-sends a `Release` whose answer never came (a duplicate is harmless: it is
    /// refused with `not_held` or `generation_mismatch`).
    pub fn retry_release(&mut self, vhd: VhdId) -> Option<Request> {
        let generation = *self.releasing.get(&vhd)?;
        let epoch = self.epoch?;
        let cmd = Command::Release {
            vhd,
            node: self.node,
            epoch,
            generation,
        };
        Some(self.ticket(Ticket::Release { vhd }, cmd))
    }

    /// Closes the fence for writing `vhd` and returns the `Transfer` to propose once the
    /// in-flight writes have drained.
    pub fn begin_handoff(
        &mut self,
        vhd: VhdId,
        to: NodeId,
        to_epoch: Epoch,
    ) -> Result<Request, FenceDenied> {
        let node = self.node;
        let h = self.holds.get_mut(&vhd).ok_or(FenceDenied::NotHeld)?;
        if h.mode != Mode::Write {
            return Err(FenceDenied::ReadOnly);
        }
        if h.handing_off {
            return Err(FenceDenied::HandingOff);
        }
        h.handing_off = true;
        let (from_epoch, expected_generation) = (h.epoch, h.generation);
        // Answers to earlier acquire requests must not reopen it.
        self.tickets
            .retain(|_, t| !matches!(t, Ticket::Grant { vhd: v } if *v == vhd));
        let cmd = Command::Transfer {
            vhd,
            from: node,
            from_epoch,
            to,
            to_epoch,
            expected_generation,
        };
        Ok(self.ticket(Ticket::Handoff { vhd }, cmd))
    }

    /// The `Reclaim` that ends a hand-off that was refused or got no answer: once
    /// committed, no command naming the old generation can apply, and its grant reopens
    /// the fence at the new generation. Refused with `not_held`/`generation_mismatch`,
    /// it means the hand-off did happen; the hold is then dropped.
    pub fn reclaim(&mut self, vhd: VhdId) -> Option<Request> {
        let h = *self
            .holds
            .get(&vhd)
            .filter(|h| h.mode == Mode::Write && h.handing_off)?;
        let cmd = Command::Reclaim {
            vhd,
            node: self.node,
            epoch: h.epoch,
            expected_generation: h.generation,
        };
        Some(self.ticket(
            Ticket::Reclaim {
                vhd,
                from: h.generation,
                recovered: false,
            },
            cmd,
        ))
    }

    /// The migration target announces it expects `vhd` by transfer, at a generation
    /// above `after` (the source's current one). Only then does
    /// [`FenceGuard::on_transfer_in`] accept the committed transfer, once.
    pub fn expect_transfer(&mut self, vhd: VhdId, after: Generation) -> bool {
        if self.expected.len() >= MAX_EXPECTED_TRANSFERS && !self.expected.contains_key(&vhd) {
            return false;
        }
        self.expected.insert(vhd, after);
        true
    }

    /// The committed `Transfer` to this node (its `Granted` outcome), seen by the target.
    /// Installs the write hold if it was expected, above the expected generation.
    pub fn on_transfer_in(&mut self, outcome: &Outcome) -> Vec<FenceEvent> {
        let Outcome::Granted {
            vhd,
            node,
            epoch,
            mode: Mode::Write,
            generation,
            ..
        } = *outcome
        else {
            return Vec::new();
        };
        if node != self.node {
            return Vec::new();
        }
        if self
            .holds
            .get(&vhd)
            .is_some_and(|h| h.generation >= generation)
        {
            // Already known: re-adopted after a restart, or a duplicate.
            return Vec::new();
        }
        match self.expected.get(&vhd) {
            Some(after) if generation > *after && Some(epoch) == self.epoch => {
                self.expected.remove(&vhd);
                self.install(vhd, Mode::Write, epoch, generation);
                Vec::new()
            }
            _ => vec![FenceEvent::GrantRefused {
                vhd,
                epoch,
                generation,
            }],
        }
    }

    /// The `Release` for a grant reported by [`FenceEvent::GrantRefused`], unless the
    /// guard holds that VHD at that generation or later after all. The fence stays closed
    /// for it and no acquire of it is issued until the answer comes.
    pub fn release_unwanted(
        &mut self,
        vhd: VhdId,
        epoch: Epoch,
        generation: Generation,
    ) -> Option<Request> {
        if self.epoch != Some(epoch)
            || self
                .holds
                .get(&vhd)
                .is_some_and(|h| h.generation >= generation)
            || self.releasing.contains_key(&vhd)
        {
            return None;
        }
        self.tickets
            .retain(|_, t| !matches!(t, Ticket::Grant { vhd: v } if *v == vhd));
        self.releasing.insert(vhd, generation);
        let cmd = Command::Release {
            vhd,
            node: self.node,
            epoch,
            generation,
        };
        Some(self.ticket(Ticket::Release { vhd }, cmd))
    }

    /// After a restart: what to do with the holds the replicated state still shows for
    /// this node at its epoch (`LockState::holds_of`, read after this node's `Register`
    /// committed). Commands of the previous incarnation may still be in flight (a
    /// transfer, a release), so nothing is adopted as is: each write hold is reclaimed
    /// (a new generation voids those commands; its grant installs the hold) and each
    /// read hold is released (the upper layer re-acquires what it needs). Writes also
    /// wait `io_timeout` from `now`, so that the previous incarnation's last writes have
    /// landed before the first new one.
    pub fn recover(&mut self, holds: &[HoldView], now: Time) -> Vec<Request> {
        let Some(epoch) = self.epoch else {
            return Vec::new();
        };
        self.writes_not_before = Some(now.saturating_add(self.io_timeout));
        let mut out = Vec::new();
        for h in holds.iter().filter(|h| h.valid && h.epoch == epoch) {
            if self.holds.contains_key(&h.vhd) || self.releasing.contains_key(&h.vhd) {
                continue;
            }
            if h.mode == Mode::Write {
                let cmd = Command::Reclaim {
                    vhd: h.vhd,
                    node: self.node,
                    epoch,
                    expected_generation: h.generation,
                };
                let kind = Ticket::Reclaim {
                    vhd: h.vhd,
                    from: h.generation,
                    recovered: true,
                };
                out.push(self.ticket(kind, cmd));
            } else {
                self.releasing.insert(h.vhd, h.generation);
                let cmd = Command::Release {
                    vhd: h.vhd,
                    node: self.node,
                    epoch,
                    generation: h.generation,
                };
                out.push(self.ticket(Ticket::Release { vhd: h.vhd }, cmd));
            }
        }
        out
    }

    fn install(&mut self, vhd: VhdId, mode: Mode, epoch: Epoch, generation: Generation) {
        // Holding it by any path ends an expectation: a transfer notice that arrives later
        // is stale and must not install an older generation after the hold is gone.
        self.expected.remove(&vhd);
        self.holds.insert(
            vhd,
            LocalHold {
                mode,
                generation,
                epoch,
                handing_off: false,
            },
        );
    }

    /// Feed the applied result of every request, with its ticket and a fresh clock
    /// reading. Unknown tickets (answered before, or forgotten) are ignored.
    pub fn on_result(
        &mut self,
        ticket: u64,
        result: &Result<Outcome, LockError>,
        now: Time,
    ) -> Vec<FenceEvent> {
        let Some(kind) = self.tickets.remove(&ticket) else {
            return Vec::new();
        };
        match (kind, result) {
            (Ticket::Renew { epoch, sent_at }, Ok(Outcome::Renewed { node, epoch: e, .. }))
                if *node == self.node && *e == epoch && Some(epoch) == self.epoch =>
            {
                self.renewed(sent_at, now)
            }
            // Renewing at the current epoch is refused only for a node that left.
            (Ticket::Renew { .. }, Err(LockError::NodeNotLive { node })) if *node == self.node => {
                self.lose(None)
            }
            (
                Ticket::Grant { vhd },
                Ok(Outcome::Granted {
                    vhd: v,
                    node,
                    epoch,
                    mode,
                    generation,
                    ..
                }),
            ) if *v == vhd && *node == self.node => {
                let newer = self
                    .holds
                    .get(&vhd)
                    .is_none_or(|h| !h.handing_off && *generation >= h.generation);
                if Some(*epoch) == self.epoch && newer && !self.releasing.contains_key(&vhd) {
                    self.install(vhd, *mode, *epoch, *generation);
                    Vec::new()
                } else {
                    vec![FenceEvent::GrantRefused {
                        vhd,
                        epoch: *epoch,
                        generation: *generation,
                    }]
                }
            }
            (
                Ticket::Reclaim {
                    vhd,
                    from,
                    recovered,
                },
                Ok(Outcome::Granted {
                    vhd: v,
                    epoch,
                    generation,
                    ..
                }),
            ) if *v == vhd => {
                let ours = match self.holds.get(&vhd) {
                    Some(h) => h.handing_off && h.generation == from,
                    None => recovered && !self.releasing.contains_key(&vhd),
                };
                if ours && Some(*epoch) == self.epoch {
                    self.install(vhd, Mode::Write, *epoch, *generation);
                    Vec::new()
                } else {
                    vec![FenceEvent::GrantRefused {
                        vhd,
                        epoch: *epoch,
                        generation: *generation,
                    }]
                }
            }
            (
                Ticket::Reclaim { vhd, from, .. },
                Err(LockError::NotHeld { .. } | LockError::GenerationMismatch { .. }),
            ) => self.drop_if(vhd, from),
            (Ticket::Handoff { vhd }, Ok(_)) => {
                let g = self.holds.get(&vhd).map(|h| h.generation);
                g.map(|g| self.drop_if(vhd, g)).unwrap_or_default()
            }
            (Ticket::Handoff { vhd }, Err(e)) => {
                let lost = self.on_error(e);
                if lost.is_empty() && self.holds.contains_key(&vhd) {
                    vec![FenceEvent::HandoffFailed { vhd }]
                } else {
                    lost
                }
            }
            (Ticket::Release { vhd }, Ok(_))
            | (
                Ticket::Release { vhd },
                Err(LockError::NotHeld { .. } | LockError::GenerationMismatch { .. }),
            ) => {
                self.releasing.remove(&vhd);
                Vec::new()
            }
            (_, Err(e)) => self.on_error(e),
            (_, Ok(_)) => Vec::new(),
        }
    }

    fn drop_if(&mut self, vhd: VhdId, generation: Generation) -> Vec<FenceEvent> {
        if self
            .holds
            .get(&vhd)
            .is_some_and(|h| h.generation == generation)
        {
            self.holds.remove(&vhd);
            return vec![FenceEvent::HoldDropped { vhd, generation }];
        }
        Vec::new()
    }

    fn renewed(&mut self, sent_at: Time, now: Time) -> Vec<FenceEvent> {
        if self.last_sent == Some(sent_at) {
            self.latest_confirmed = true;
        }
        let new_deadline = sent_at.saturating_add(self.node_lease);
        let was_open = self.lease_valid(now);
        if self.deadline.is_none_or(|d| new_deadline > d) {
            self.deadline = Some(new_deadline);
        }
        let mut events = Vec::new();
        if !was_open && self.lease_valid(now) {
            if self.lapse_reported {
                events.push(FenceEvent::Reopened {
                    deadline: new_deadline,
                });
            }
            self.lapse_reported = false;
        }
        events
    }

    /// Feed an error answered to a command of this node that has no ticket: a stale
    /// epoch or an unknown node means every hold is lost.
    pub fn on_error(&mut self, err: &LockError) -> Vec<FenceEvent> {
        match err {
            LockError::StaleEpoch { node, current, .. }
                if *node == self.node && self.epoch.is_none_or(|e| *current > e) =>
            {
                self.lose(Some(*current))
            }
            LockError::UnknownNode { node } if *node == self.node => self.lose(None),
            _ => Vec::new(),
        }
    }

    fn lose(&mut self, new_epoch: Option<Epoch>) -> Vec<FenceEvent> {
        let old_epoch = self.epoch;
        let holds: Vec<LostHold> = std::mem::take(&mut self.holds)
            .into_iter()
            .map(|(vhd, h)| LostHold {
                vhd,
                mode: h.mode,
                generation: h.generation,
            })
            .collect();
        self.epoch = new_epoch;
        self.deadline = None;
        self.lapse_reported = false;
        self.tickets.clear();
        self.releasing.clear();
        self.expected.clear();
        self.last_sent = None;
        self.latest_confirmed = false;
        if old_epoch.is_none() && holds.is_empty() {
            return Vec::new();
        }
        vec![FenceEvent::OwnershipLost {
            old_epoch,
            new_epoch,
            holds,
        }]
    }

    /// Drops a hold without a command (for a hold the upper layer knows is gone).
    pub fn forget(&mut self, vhd: VhdId) -> Option<LocalHold> {
        self.tickets.retain(|_, t| !matches!(t, Ticket::Grant { vhd: v } | Ticket::Reclaim { vhd: v, .. } if *v == vhd));
        self.holds.remove(&vhd)
    }

    /// A snapshot for status output.
    pub fn status(&self, now: Time) -> GuardStatus {
        let remaining = self
            .deadline
            .map_or(Duration::ZERO, |d| d.saturating_since(now));
        GuardStatus {
            node: self.node,
            epoch: self.epoch,
            lease_valid: self.lease_valid(now),
            remaining_ms: u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX),
            holds: self.holds.clone(),
            releasing: self.releasing.keys().copied().collect(),
        }
    }
}
