//! A node's view of the cluster: role, leader, positions, membership and, on the leader,
//! each member's replication progress.

use raft::{ProgressState, StateRole};

use super::{Core, CoreStats};
use crate::engine::KvEngine;
use crate::state_machine::StateMachine;
use crate::wire::Membership;

/// Raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leads the cluster (the coordinator).
    Leader,
    /// Follows a leader or waits for one.
    Follower,
    /// Campaigning.
    Candidate,
    /// Checking whether a campaign could win.
    PreCandidate,
}

/// Replication state of a member as the leader tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicationState {
    /// Finding where the member's log matches.
    Probe,
    /// Streaming entries.
    Replicate,
    /// Receiving a snapshot.
    Snapshot,
}

/// One member seen from the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node id.
    pub id: u64,
    /// Votes (else learner).
    pub voter: bool,
    /// Highest index known to be in its log.
    pub matched: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication state.
    pub state: ReplicationState,
    /// Entries it lacks compared to the leader's last index.
    pub lag: u64,
    /// Heard from within the last election timeout.
    pub recent_active: bool,
}

/// A node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Live configuration.
    pub membership: Membership,
    /// Progress of every member (leader only; empty elsewhere).
    pub progress: Vec<PeerStatus>,
    /// Requests held by this node.
    pub pending_requests: usize,
    /// Counters.
    pub stats: CoreStats,
}

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    /// The node's current status.
    pub fn status(&self) -> Status {
        let r = &self.raw.raft;
        let role = match r.state {
            StateRole::Leader => Role::Leader,
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
        };
        let cs = r.prs().conf().to_conf_state();
        let membership = Membership::from_conf_state(&cs);
        let last = r.raft_log.last_index();
        let mut progress = Vec::new();
        if role == Role::Leader {
            for (id, pr) in r.prs().iter() {
                progress.push(PeerStatus {
                    id: *id,
                    voter: membership.is_voter(*id),
                    matched: pr.matched,
                    next_index: pr.next_idx,
                    state: match pr.state {
                        ProgressState::Probe => ReplicationState::Probe,
                        ProgressState::Replicate => ReplicationState::Replicate,
                        ProgressState::Snapshot => ReplicationState::Snapshot,
                    },
                    lag: last.saturating_sub(pr.matched),
                    recent_active: pr.recent_active,
                });
            }
            progress.sort_by_key(|p| p.id);
        }
        Status {
            id: self.cfg.id,
            role,
            leader: (self.leader != 0).then_some(self.leader),
            term: r.term,
            commit: r.raft_log.committed,
            applied: self.applied_index(),
            first_index: r.raft_log.first_index(),
            last_index: last,
            membership,
            progress,
            pending_requests: self.pending_requests(),
            stats: self.stats.clone(),
        }
    }
}
