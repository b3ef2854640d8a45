//! Membership changes: the public change type, the shape checks any node makes before
//! sending a request on, and the leader's checks against the live configuration before it
//! proposes the `ConfChangeV2` (one change = simple change; several = joint consensus with
//! automatic leave).

use std::collections::BTreeSet;

use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};

use super::Core;
use crate::engine::KvEngine;
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::wire::{ChangeKind, ChangeMsg, Membership, MembershipRequest, PeerEntry};

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a new voter at `addr` (prefer adding a learner and promoting it).
    AddVoter {
        /// Node id.
        id: u64,
        /// Its transport address.
        addr: String,
    },
    /// Add a learner at `addr`: it receives the log but does not vote.
    AddLearner {
        /// Node id.
        id: u64,
        /// Its transport address.
        addr: String,
    },
    /// Make a learner a voter (refused while it lags too far behind).
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove a voter or learner (not the leader: transfer leadership first).
    Remove {
        /// Node id.
        id: u64,
    },
}

impl MemberChange {
    fn id(&self) -> u64 {
        match self {
            MemberChange::AddVoter { id, .. }
            | MemberChange::AddLearner { id, .. }
            | MemberChange::Promote { id }
            | MemberChange::Remove { id } => *id,
        }
    }
}

/// Shape checks and conversion to the wire form.
pub(super) fn request_from_changes(changes: &[MemberChange]) -> Result<MembershipRequest, Error> {
    if changes.is_empty() {
        return Err(Error::InvalidMembership("no change given".into()));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let id = c.id();
        if id == 0 {
            return Err(Error::InvalidMembership("node id 0".into()));
        }
        if !seen.insert(id) {
            return Err(Error::InvalidMembership(format!("node {id} named twice")));
        }
        let (kind, addr) = match c {
            MemberChange::AddVoter { addr, .. } => (ChangeKind::AddVoter, addr.clone()),
            MemberChange::AddLearner { addr, .. } => (ChangeKind::AddLearner, addr.clone()),
            MemberChange::Promote { .. } => (ChangeKind::AddVoter, String::new()),
            MemberChange::Remove { .. } => (ChangeKind::Remove, String::new()),
        };
        if matches!(
            c,
            MemberChange::AddVoter { .. } | MemberChange::AddLearner { .. }
        ) && (addr.is_empty() || addr.len() > 256)
        {
            return Err(Error::InvalidMembership(format!(
                "node {id}: address must have 1 to 256 bytes"
            )));
        }
        out.push(ChangeMsg {
            kind: kind as i32,
            id,
            addr,
        });
    }
    Ok(MembershipRequest { changes: out })
}

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    /// The leader's checks against the live configuration; returns the conf change and the
    /// addresses that enter the address book with it.
    pub(super) fn conf_change_for(
        &self,
        req: &MembershipRequest,
    ) -> Result<(ConfChangeV2, Vec<PeerEntry>), Error> {
        let raft = &self.raw.raft;
        if raft.has_pending_conf() {
            return Err(Error::ConfChangeInProgress);
        }
        let cur = Membership::from_conf_state(&raft.prs().conf().to_conf_state());
        if cur.is_joint() {
            return Err(Error::ConfChangeInProgress);
        }
        if req.changes.is_empty() || req.changes.len() > 16 {
            return Err(Error::InvalidMembership(
                "1 to 16 changes per request".into(),
            ));
        }
        let mut voters: BTreeSet<u64> = cur.voters.iter().copied().collect();
        let mut seen = BTreeSet::new();
        let mut singles = Vec::new();
        let mut peers = Vec::new();
        let last = raft.raft_log.last_index();
        for c in &req.changes {
            let id = c.id;
            if id == 0 || !seen.insert(id) {
                return Err(Error::InvalidMembership(format!(
                    "node {id}: bad or repeated id"
                )));
            }
            let kind = ChangeKind::try_from(c.kind)
                .map_err(|_| Error::InvalidMembership(format!("change kind {}", c.kind)))?;
            let member = cur.is_voter(id) || cur.is_learner(id);
            if kind != ChangeKind::Remove && self.removed.contains(&id) {
                return Err(Error::InvalidMembership(format!(
                    "node {id} was removed; a replacement needs a new id"
                )));
            }
            let ty = match kind {
                ChangeKind::AddVoter => {
                    if cur.is_voter(id) {
                        return Err(Error::InvalidMembership(format!(
                            "node {id} is already a voter"
                        )));
                    }
                    if cur.is_learner(id) {
                        let matched = raft.prs().get(id).map_or(0, |p| p.matched);
                        let lag = last.saturating_sub(matched);
                        let max = self.cfg.limits.max_promote_lag;
                        // A learner that never acknowledged anything is not caught up
                        // however short the log is: promoting it could leave the cluster
                        // without a quorum while it is still unreachable.
                        if matched == 0 || lag > max {
                            return Err(Error::NotCaughtUp { id, lag, max });
                        }
                    } else if c.addr.is_empty() {
                        return Err(Error::InvalidMembership(format!(
                            "node {id} is not a learner and no address was given"
                        )));
                    }
                    voters.insert(id);
                    ConfChangeType::AddNode
                }
                ChangeKind::AddLearner => {
                    if member {
                        return Err(Error::InvalidMembership(format!(
                            "node {id} is already a member"
                        )));
                    }
                    ConfChangeType::AddLearnerNode
                }
                ChangeKind::Remove => {
                    if !member {
                        return Err(Error::InvalidMembership(format!(
                            "node {id} is not a member"
                        )));
                    }
                    if id == self.cfg.id {
                        return Err(Error::InvalidMembership(format!(
                            "node {id} is the leader: transfer leadership first"
                        )));
                    }
                    voters.remove(&id);
                    ConfChangeType::RemoveNode
                }
            };
            if !c.addr.is_empty() && ty != ConfChangeType::RemoveNode {
                peers.push(PeerEntry {
                    id,
                    addr: c.addr.clone(),
                });
            }
            let mut s = ConfChangeSingle::default();
            s.set_change_type(ty);
            s.node_id = id;
            singles.push(s);
        }
        if voters.is_empty() {
            return Err(Error::InvalidMembership(
                "the change would remove the last voter".into(),
            ));
        }
        let mut cc = ConfChangeV2::default();
        // Auto: a single change is applied directly; several enter a joint configuration
        // that raft-rs leaves on its own once the change is applied.
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(singles.into());
        Ok((cc, peers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks() {
        assert!(request_from_changes(&[]).is_err());
        assert!(request_from_changes(&[MemberChange::Promote { id: 0 }]).is_err());
        assert!(
            request_from_changes(&[
                MemberChange::Promote { id: 2 },
                MemberChange::Remove { id: 2 }
            ])
            .is_err()
        );
        assert!(
            request_from_changes(&[MemberChange::AddLearner {
                id: 4,
                addr: String::new()
            }])
            .is_err()
        );
        let r = request_from_changes(&[
            MemberChange::AddLearner {
                id: 4,
                addr: "127.0.0.1:1".into(),
            },
            MemberChange::Remove { id: 3 },
        ])
        .expect("valid");
        assert_eq!(r.changes.len(), 2);
        assert_eq!(r.changes[1].kind, ChangeKind::Remove as i32);
    }
}
