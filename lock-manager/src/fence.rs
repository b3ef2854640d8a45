//! `FenceGuard`: the node-side self-fence, a pure state machine fed with the node's own
//! clock readings and the results of its commands (design note 030, §7).
//!
//! The data path asks `check_write(vhd, generation, now)` immediately before every write.
//! The answer is yes only for a VHD held for write at exactly that generation under the
//! node's current epoch, not being handed off, while `now` is before the lease deadline.
//! The deadline is `t_send + node_lease` of the latest renewal confirmed at the same
//! epoch, so the fence closes on its own, and only such a renewal reopens it. A bumped
//! epoch drops every hold and reports it; nothing is ever re-acquired here.

use crate::command::{Command, Mode, Outcome};
use crate::error::LockError;
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use crate::time::Time;
use crate::timing::LeaseTiming;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Most renewals in flight at once; older unanswered ones are forgotten.
pub const MAX_INFLIGHT_RENEWALS: usize = 8;

/// A renewal the node is about to send. Read the clock, get the ticket, then send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalTicket {
    /// Matches the answer to this send.
    pub id: u64,
    /// The epoch renewed.
    pub epoch: Epoch,
    /// The node's clock just before sending: the lease counts from here.
    pub sent_at: Time,
}

/// A VHD held by this node, as the guard knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LocalHold {
    /// How it is held.
    pub mode: Mode,
    /// The hold's generation.
    pub generation: Generation,
    /// The epoch it was granted under.
    pub epoch: Epoch,
    /// Closed for writing because a transfer is being proposed.
    pub handing_off: bool,
}

/// Why the fence refused an I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum FenceDenied {
    /// This node does not hold the VHD.
    #[error("the VHD is not held by this node")]
    NotHeld,
    /// Held for reading only.
    #[error("the VHD is held read-only")]
    ReadOnly,
    /// Held for write at another generation (the caller's generation is stale).
    #[error("held at generation {held}, not {asked}")]
    WrongGeneration {
        /// The generation held.
        held: Generation,
        /// The generation asked for.
        asked: Generation,
    },
    /// A hand-off of the VHD is in progress.
    #[error("the VHD is being handed off")]
    HandingOff,
    /// No renewal has been confirmed at the current epoch yet.
    #[error("no lease at the current epoch")]
    NoLease,
    /// The lease deadline has passed (self-fenced until a renewal at the same epoch).
    #[error("lease lapsed at {deadline}")]
    Lapsed {
        /// The local deadline that passed.
        deadline: Time,
    },
}

/// A hold lost with the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LostHold {
    /// The VHD.
    pub vhd: VhdId,
    /// How it was held.
    pub mode: Mode,
    /// Its generation.
    pub generation: Generation,
}

/// Something the node's upper layers must hear about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FenceEvent {
    /// The lease deadline passed without a confirmed renewal: every fence is closed.
    Lapsed {
        /// The local deadline.
        deadline: Time,
    },
    /// A renewal confirmed at the same epoch reopened the fences after a lapse.
    Reopened {
        /// The new local deadline.
        deadline: Time,
    },
    /// The node's epoch moved on (expired by the coordinator, or left/unknown): every
    /// hold is gone. Re-acquiring is up to the upper layer, explicitly.
    OwnershipLost {
        /// The epoch the holds were granted under.
        old_epoch: Option<Epoch>,
        /// The node's epoch now (`None`: it must register again).
        new_epoch: Option<Epoch>,
        /// The holds lost.
        holds: Vec<LostHold>,
    },
    /// One hold was dropped because the replicated state says so (a hand-off completed,
    /// or the state disagrees with this node).
    HoldDropped {
        /// The VHD.
        vhd: VhdId,
        /// Its generation.
        generation: Generation,
    },
}

/// What the guard looks like now (for `csvadm` and logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuardStatus {
    /// This node.
    pub node: NodeId,
    /// Its epoch, once registered.
    pub epoch: Option<Epoch>,
    /// Whether the lease is valid now.
    pub lease_valid: bool,
    /// Time left on the lease.
    pub remaining_ms: u64,
    /// Held VHDs.
    pub holds: BTreeMap<VhdId, LocalHold>,
}

/// The node-side fence. One per node.
#[derive(Debug, Clone)]
pub struct FenceGuard {
    node: NodeId,
    node_lease: Duration,
    renew_interval: Duration,
    renew_retry: Duration,
    epoch: Option<Epoch>,
    deadline: Option<Time>,
    lapse_reported: bool,
    next_ticket: u64,
    inflight: VecDeque<RenewalTicket>,
    last_sent: Option<Time>,
    latest_confirmed: bool,
    holds: BTreeMap<VhdId, LocalHold>,
}

impl FenceGuard {
    /// A guard for `node`, closed until it registers and a renewal is confirmed.
    pub fn new(node: NodeId, timing: &LeaseTiming) -> FenceGuard {
        FenceGuard {
            node,
            node_lease: timing.node_lease,
            renew_interval: timing.renew_interval,
            renew_retry: timing.renew_retry,
            epoch: None,
            deadline: None,
            lapse_reported: false,
            next_ticket: 1,
            inflight: VecDeque::new(),
            last_sent: None,
            latest_confirmed: false,
            holds: BTreeMap::new(),
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

    /// The result of `Register` for this node.
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
    /// one is fresh, or with too many unanswered). Take it just before sending.
    pub fn poll_renewal(&mut self, now: Time) -> Option<RenewalTicket> {
        let epoch = self.epoch?;
        // An answer to a send older than the node lease could not extend the deadline.
        while self
            .inflight
            .front()
            .is_some_and(|t| t.sent_at.saturating_add(self.node_lease) <= now)
        {
            self.inflight.pop_front();
        }
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
        if self.inflight.len() >= MAX_INFLIGHT_RENEWALS {
            self.inflight.pop_front();
        }
        let ticket = RenewalTicket {
            id: self.next_ticket,
            epoch,
            sent_at: now,
        };
        self.next_ticket += 1;
        self.inflight.push_back(ticket);
        self.last_sent = Some(now);
        self.latest_confirmed = false;
        Some(ticket)
    }

    /// The command to propose for `ticket`.
    pub fn renew_command(&self, ticket: &RenewalTicket) -> Command {
        Command::Renew {
            node: self.node,
            epoch: ticket.epoch,
        }
    }

    /// The answer to the renewal `ticket_id` (the applied result of its `Renew`).
    pub fn on_renewal_result(
        &mut self,
        ticket_id: u64,
        result: &Result<Outcome, LockError>,
        now: Time,
    ) -> Vec<FenceEvent> {
        let Some(pos) = self.inflight.iter().position(|t| t.id == ticket_id) else {
            return Vec::new();
        };
        let ticket = self.inflight[pos];
        self.inflight.remove(pos);
        match result {
            Ok(Outcome::Renewed { node, epoch, .. })
                if *node == self.node && Some(*epoch) == self.epoch && *epoch == ticket.epoch =>
            {
                if self.last_sent == Some(ticket.sent_at) {
                    self.latest_confirmed = true;
                }
                let new_deadline = ticket.sent_at.saturating_add(self.node_lease);
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
            // Renewing at the current epoch is refused only for a node that left.
            Err(LockError::NodeNotLive { node }) if *node == self.node => self.lose(None),
            Err(e) => self.on_error(e),
            Ok(_) => Vec::new(),
        }
    }

    /// Feed any error answered to a command this node proposed: a stale epoch or an
    /// unknown node means every hold is lost.
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

    /// Whether the node must `Register` (first start, or it left or was forgotten).
    pub fn needs_register(&self) -> bool {
        self.epoch.is_none()
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
        self.inflight.clear();
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

    /// A committed grant for this node (`Acquire`, `Transfer` to it, `Takeover`), or a
    /// hold re-adopted after a restart from `LockState::holds_of`. Returns false (and
    /// installs nothing) if it is not for this node's current epoch.
    pub fn on_granted(
        &mut self,
        vhd: VhdId,
        mode: Mode,
        epoch: Epoch,
        generation: Generation,
    ) -> bool {
        if self.epoch != Some(epoch) {
            return false;
        }
        if let Some(h) = self.holds.get(&vhd)
            && h.epoch == epoch
            && (h.generation > generation || (h.generation == generation && h.handing_off))
        {
            // A late answer to an older grant must not replace a newer hold, and a late
            // duplicate of the current grant must not reopen a hand-off.
            return false;
        }
        self.holds.insert(
            vhd,
            LocalHold {
                mode,
                generation,
                epoch,
                handing_off: false,
            },
        );
        true
    }

    /// Closes the fence for `vhd` and returns the `Release` to propose once in-flight
    /// I/O on it has drained.
    pub fn begin_release(&mut self, vhd: VhdId) -> Option<Command> {
        let h = self.holds.remove(&vhd)?;
        Some(Command::Release {
            vhd,
            node: self.node,
            epoch: h.epoch,
            generation: h.generation,
        })
    }

    /// Closes the fence for writing `vhd` and returns the `Transfer` to propose once the
    /// in-flight writes have drained.
    pub fn begin_handoff(
        &mut self,
        vhd: VhdId,
        to: NodeId,
        to_epoch: Epoch,
    ) -> Result<Command, FenceDenied> {
        let h = self.holds.get_mut(&vhd).ok_or(FenceDenied::NotHeld)?;
        if h.mode != Mode::Write {
            return Err(FenceDenied::ReadOnly);
        }
        h.handing_off = true;
        Ok(Command::Transfer {
            vhd,
            from: self.node,
            from_epoch: h.epoch,
            to,
            to_epoch,
            expected_generation: h.generation,
        })
    }

    /// The applied result of the `Transfer` this node proposed for `vhd`. Success drops
    /// the hold; a stale epoch loses everything. Any other refusal leaves the fence
    /// closed: a duplicate of the transfer could still be in flight, so the node reopens
    /// only through a committed `Reclaim` (see [`FenceGuard::reclaim_command`]), which
    /// it also proposes when no answer comes at all.
    pub fn on_handoff_result(
        &mut self,
        vhd: VhdId,
        result: &Result<Outcome, LockError>,
    ) -> Vec<FenceEvent> {
        let Some(h) = self.holds.get(&vhd).copied() else {
            return Vec::new();
        };
        match result {
            Ok(_) => {
                self.holds.remove(&vhd);
                vec![FenceEvent::HoldDropped {
                    vhd,
                    generation: h.generation,
                }]
            }
            Err(e) => self.on_error(e),
        }
    }

    /// The `Reclaim` that ends a hand-off that did not (or may not have) happened: once
    /// committed, no command naming the old generation can apply, and its `Granted`
    /// (fed to [`FenceGuard::on_granted`]) reopens the fence at the new generation. If it
    /// is refused with `NotHeld` or `GenerationMismatch`, the hand-off did happen:
    /// [`FenceGuard::forget`] the VHD.
    pub fn reclaim_command(&self, vhd: VhdId) -> Option<Command> {
        let h = self.holds.get(&vhd).filter(|h| h.mode == Mode::Write)?;
        Some(Command::Reclaim {
            vhd,
            node: self.node,
            epoch: h.epoch,
            expected_generation: h.generation,
        })
    }

    /// Drops a hold without a command (the replicated state shows it is gone).
    pub fn forget(&mut self, vhd: VhdId) -> Option<LocalHold> {
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
        }
    }
}
