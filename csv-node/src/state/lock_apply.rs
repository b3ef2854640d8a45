//! The embedded lock table: lock-manager commands applied inside the cluster state
//! machine, persisted record by record (the node and VHD records a command names or
//! reports, and the generation counter).

use std::collections::BTreeSet;

use csv_api::{NodeId, VhdId};
use lock_manager::{Command as LockCommand, Outcome};
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::locks::{LockQuery, LockReply, lock_api_error};
use super::persist;
use super::types::*;

/// Nodes and VHDs whose lock records a command may change.
fn touched(cmd: &LockCommand, out: &Outcome) -> (BTreeSet<NodeId>, BTreeSet<VhdId>) {
    use LockCommand as C;
    let mut nodes = BTreeSet::new();
    let mut vhds = BTreeSet::new();
    match cmd {
        C::Register { node }
        | C::Renew { node, .. }
        | C::ExpireNode { node, .. }
        | C::Leave { node, .. } => {
            nodes.insert(*node);
        }
        C::Acquire { vhd, node, .. }
        | C::Release { vhd, node, .. }
        | C::Reclaim { vhd, node, .. }
        | C::Takeover { vhd, node, .. } => {
            nodes.insert(*node);
            vhds.insert(*vhd);
        }
        C::Transfer { vhd, from, to, .. } => {
            nodes.insert(*from);
            nodes.insert(*to);
            vhds.insert(*vhd);
        }
        // Validation only: nothing to persist.
        C::RequestTransfer { .. } => {}
    }
    match out {
        Outcome::Expired {
            stale_writes,
            dropped_reads,
            ..
        } => {
            vhds.extend(stale_writes.iter().copied());
            vhds.extend(dropped_reads.iter().copied());
        }
        Outcome::Left { released, .. } => vhds.extend(released.iter().copied()),
        Outcome::Granted {
            previous_writer: Some(p),
            ..
        } => {
            nodes.insert(*p);
        }
        _ => {}
    }
    (nodes, vhds)
}

impl ClusterState {
    pub(super) fn answer_locks(&self, q: LockQuery) -> LockReply {
        match q {
            LockQuery::Owners => LockReply::Owners {
                owners: self.locks.owners(),
            },
            LockQuery::Nodes => LockReply::Nodes {
                nodes: self.locks.nodes(),
            },
            LockQuery::HoldsOf { node } => LockReply::Holds {
                holds: self.locks.holds_of(node),
            },
        }
    }

    pub(super) fn lock(
        &mut self,
        index: u64,
        cmd: LockCommand,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let outcome = self.locks.apply(&cmd).map_err(|e| lock_api_error(&e))?;
        let (nodes, vhds) = touched(&cmd, &outcome);
        for n in nodes {
            persist::put_lock_node(w, n, self.locks.node_record(n));
        }
        for v in vhds {
            persist::put_lock_vhd(w, v, self.locks.vhd_record(v));
        }
        persist::put_lock_generation(w, self.locks.next_generation());
        // A node whose epoch moved on (expired or left) gives its reservation back: its
        // unflushed growth is lost anyway (docs/design/040 §3).
        // Its unfinished remote requests will not be answered (040 §6.1).
        match &outcome {
            Outcome::Expired { node, .. } => {
                self.release_reservation(*node);
                self.fail_remote_for(index, *node, "expired (its lease lapsed)", w);
                self.vms_after_expiry(*node, index, w);
            }
            Outcome::Left { node, .. } => {
                self.release_reservation(*node);
                self.fail_remote_for(index, *node, "left the cluster", w);
            }
            _ => {}
        }
        Ok(Reply::Lock { outcome })
    }
}
