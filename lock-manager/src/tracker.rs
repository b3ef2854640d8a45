//! `LivenessTracker`: the coordinator's volatile view of node renewals (leader only).
//!
//! It pairs each node's renewal count with a reading of the coordinator's own clock
//! taken no earlier than when it saw that count applied, and proposes
//! `ExpireNode{node, epoch, renewals}` once `expiry_wait` has passed since. A new leader
//! starts every live node at its election time (design note 030, §4.2). Safety never
//! depends on this tracker being complete: a missed renewal only makes its
//! `ExpireNode` fail with `RenewedSince`.

use crate::command::{Command, NodeStatus, Outcome};
use crate::error::LockError;
use crate::ids::{Epoch, NodeId};
use crate::state::LockState;
use crate::time::Time;
use crate::timing::LeaseTiming;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Track {
    epoch: Epoch,
    renewals: u64,
    /// Local reading taken no earlier than when `renewals` was seen applied.
    base: Time,
    /// When an `ExpireNode` was handed out for this track, if one is in flight.
    proposed_at: Option<Time>,
}

/// One node's liveness as the coordinator sees it (`csvadm node liveness`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LivenessReport {
    pub node: NodeId,
    /// The epoch being tracked.
    pub epoch: Epoch,
    /// Renewal count last seen.
    pub renewals: u64,
    /// Time since the last renewal was seen (or since this coordinator took over).
    pub since_renewal_ms: u64,
    /// Time left before the coordinator may expire the node (0: due).
    pub expires_in_ms: u64,
}

/// The coordinator-side expiry timer. Feed it every applied result while leader.
#[derive(Debug, Clone)]
pub struct LivenessTracker {
    expiry_wait: Duration,
    /// How long a handed-out `ExpireNode` may stay unanswered before it is re-issued.
    reissue_after: Duration,
    leader: bool,
    tracks: BTreeMap<NodeId, Track>,
}

impl LivenessTracker {
    /// A tracker that is not leader yet.
    pub fn new(timing: &LeaseTiming) -> LivenessTracker {
        LivenessTracker {
            expiry_wait: timing.expiry_wait,
            reissue_after: timing.renew_interval,
            leader: false,
            tracks: BTreeMap::new(),
        }
    }

    /// Whether `on_leadership` was called and not undone.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// This replica became the Raft leader at local time `now`; `state` is its applied
    /// state. Every live node gets the full grace from `now`: renewals granted by the
    /// previous leader were sent before this instant.
    pub fn on_leadership(&mut self, state: &LockState, now: Time) {
        self.leader = true;
        self.tracks.clear();
        for v in state.nodes() {
            if v.status == NodeStatus::Live {
                self.tracks.insert(
                    v.node,
                    Track {
                        epoch: v.epoch,
                        renewals: v.renewals,
                        base: now,
                        proposed_at: None,
                    },
                );
            }
        }
    }

    /// This replica is no longer leader: forget everything.
    pub fn on_leadership_lost(&mut self) {
        self.leader = false;
        self.tracks.clear();
    }

    /// Feed the result of every command applied while leader, in log order, with a
    /// clock reading taken after the apply.
    pub fn observe(&mut self, cmd: &Command, result: &Result<Outcome, LockError>, now: Time) {
        if !self.leader {
            return;
        }
        match result {
            Ok(Outcome::Registered {
                node,
                epoch,
                status: NodeStatus::Live,
                renewals,
                ..
            }) => {
                // A (re)starting node gets a fresh grace: it costs nothing and the count
                // it is paired with was applied before `now`.
                self.tracks.insert(
                    *node,
                    Track {
                        epoch: *epoch,
                        renewals: *renewals,
                        base: now,
                        proposed_at: None,
                    },
                );
            }
            Ok(Outcome::Renewed {
                node,
                epoch,
                renewals,
            }) => {
                let t = self.tracks.entry(*node).or_insert(Track {
                    epoch: *epoch,
                    renewals: *renewals,
                    base: now,
                    proposed_at: None,
                });
                if *epoch != t.epoch || *renewals >= t.renewals {
                    *t = Track {
                        epoch: *epoch,
                        renewals: *renewals,
                        base: now,
                        proposed_at: None,
                    };
                }
            }
            Ok(Outcome::Expired { node, .. }) | Ok(Outcome::Left { node, .. }) => {
                self.tracks.remove(node);
            }
            Err(_) => {
                // A failed expiry (renewed since, or already gone) frees the track to be
                // re-evaluated; the renewal that beat it was observed before it.
                if let Command::ExpireNode { node, .. } = cmd
                    && let Some(t) = self.tracks.get_mut(node)
                {
                    t.proposed_at = None;
                }
            }
            Ok(_) => {}
        }
    }

    /// The `ExpireNode` commands to propose now (each handed out once, re-issued only if
    /// unanswered for a renewal interval, e.g. a proposal lost in a leader change).
    pub fn due(&mut self, now: Time) -> Vec<Command> {
        if !self.leader {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (&node, t) in self.tracks.iter_mut() {
            if now.saturating_since(t.base) < self.expiry_wait {
                continue;
            }
            if let Some(p) = t.proposed_at
                && now.saturating_since(p) < self.reissue_after
            {
                continue;
            }
            t.proposed_at = Some(now);
            out.push(Command::ExpireNode {
                node,
                epoch: t.epoch,
                renewals: t.renewals,
            });
        }
        out
    }

    /// The earliest local time at which `due` may return something new.
    pub fn next_wakeup(&self) -> Option<Time> {
        self.tracks
            .values()
            .map(|t| match t.proposed_at {
                Some(p) => p.saturating_add(self.reissue_after),
                None => t.base.saturating_add(self.expiry_wait),
            })
            .min()
    }

    /// Every tracked node's age and remaining time.
    pub fn report(&self, now: Time) -> Vec<LivenessReport> {
        self.tracks
            .iter()
            .map(|(&node, t)| {
                let since = now.saturating_since(t.base);
                LivenessReport {
                    node,
                    epoch: t.epoch,
                    renewals: t.renewals,
                    since_renewal_ms: millis(since),
                    expires_in_ms: millis(self.expiry_wait.saturating_sub(since)),
                }
            })
            .collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
