//! The cluster state: the domains it is made of (identity and node records, the catalog
//! with its derived indexes, the free-extent allocator with per-node reservations, the
//! lock table, remote requests, the checkpoint record). The transitions of each domain
//! are in their own modules (`nodes.rs`, `catalog.rs`, `lock_apply.rs`,
//! `remote_apply.rs`, ...), the dispatch of commands and queries in `apply.rs`, the keys
//! in `persist.rs`.

use std::collections::BTreeMap;

use csv_api::{NodeId, VhdId};
use lock_manager::LockState;

use super::alloc::Allocator;
use super::paths::PathTable;
use super::remote::RemoteTable;
use super::types::*;
use super::vhds::VhdTable;
use super::vms::VmTable;

/// The cluster state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub(super) identity: Option<ClusterIdentity>,
    pub(super) nodes: BTreeMap<NodeId, NodeInfo>,
    pub(super) volume: Option<VolumeRecord>,
    /// The VHD records with their indexes (names, children, mapped extents).
    pub(super) vhds: VhdTable,
    /// The free pool and the nodes' reservations.
    pub(super) alloc: Allocator,
    pub(super) locks: LockState,
    pub(super) remote: RemoteTable,
    /// Where the LUN checkpoint stands against the catalog.
    pub(super) checkpoint: CheckpointState,
    /// The nodes' published path states and their history.
    pub(super) paths: PathTable,
    /// The VMs: definitions, placements, reports.
    pub(super) vms: VmTable,
}

impl ClusterState {
    /// An empty state (before `InitCluster`).
    pub fn new() -> Self {
        ClusterState::default()
    }

    /// The cluster identity, once initialised.
    pub fn identity(&self) -> Option<&ClusterIdentity> {
        self.identity.as_ref()
    }

    /// Node records by id.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    /// One node record.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// The volume record.
    pub fn volume(&self) -> Option<&VolumeRecord> {
        self.volume.as_ref()
    }

    /// A VHD record.
    pub fn vhd(&self, id: VhdId) -> Option<&VhdRecord> {
        self.vhds.get(id)
    }

    /// The lock table.
    pub fn locks(&self) -> &LockState {
        &self.locks
    }

    /// The nodes' path states.
    pub fn paths(&self) -> &PathTable {
        &self.paths
    }

    /// The VM table.
    pub fn vms(&self) -> &VmTable {
        &self.vms
    }
}
