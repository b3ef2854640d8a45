//! The cluster state machine replicated by meta-store: cluster identity, node records, the
//! volume record, the VHD catalog, the free-extent allocator with per-node reservations,
//! and the lock manager's `LockState`. Commands and records are in [`types`]; transitions
//! in `nodes.rs`, `catalog.rs`, `locks.rs` and `remote.rs` (attach/detach requests
//! addressed to another node); persistence, loading and the state hash in
//! `persist.rs`. Design: docs/design/050-control-plane.md §3.
//!
//! Deterministic: ordered maps only, no clock, no randomness; a command either changes the
//! state and records every changed key through `KvWrite` (meta-store writes them with the
//! applied index in one batch), or answers an error and changes nothing.

mod catalog;
pub mod locks;
mod nodes;
mod persist;
pub mod remote;
mod resize;
mod restore;
pub mod runs;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::LockState;
use meta_store::{KvRead, KvWrite, StateMachine, StoreError};

use runs::RunSet;
use types::*;

/// Longest cluster, LUN and VHD name (bytes).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest node address (bytes).
pub const MAX_ADDRESS_BYTES: usize = 255;
/// Longest volume description (bytes).
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most node records (removed ones included).
pub const MAX_NODES: usize = 256;
/// Most VHDs in the catalog.
pub const MAX_VHDS: usize = 65_536;
/// Most extent runs one VHD maps.
pub const MAX_RUNS_PER_VHD: usize = 4_096;
/// Most extents one node holds in reservation.
pub const MAX_RESERVED_PER_NODE: u64 = 65_536;
/// Most runs one reservation request takes from the free pool.
pub const MAX_RUNS_PER_RESERVE: usize = 1_024;
/// Largest VHD virtual size (the VHD format's 2040 GiB).
pub const MAX_VIRTUAL_SIZE: u64 = 2040 << 30;
/// Largest list page.
pub const MAX_PAGE: u32 = 1_000;

/// The cluster state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    identity: Option<ClusterIdentity>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    volume: Option<VolumeRecord>,
    vhds: BTreeMap<VhdId, VhdRecord>,
    next_vhd: u64,
    free: RunSet,
    reserved: BTreeMap<NodeId, RunSet>,
    locks: LockState,
    remote: remote::RemoteTable,
    /// Where the LUN checkpoint stands against the catalog.
    checkpoint: CheckpointState,
    // Derived (rebuilt by `load`): name index, children per parent, mapped extents.
    names: BTreeMap<String, VhdId>,
    children: BTreeMap<VhdId, BTreeSet<VhdId>>,
    mapped: u64,
}

pub(crate) fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

impl ClusterState {
    /// An empty state (before `InitCluster`).
    pub fn new() -> Self {
        ClusterState {
            next_vhd: 1,
            ..Default::default()
        }
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
        self.vhds.get(&id)
    }

    /// The lock table.
    pub fn locks(&self) -> &LockState {
        &self.locks
    }

    /// Applies one decoded command (what `StateMachine::apply` does after decoding).
    pub fn execute(&mut self, index: u64, cmd: Command, w: &mut dyn KvWrite) -> ApplyResult {
        // Commands that change the volume or VHD records (the checkpoint's payload);
        // `SetExtents` records its own change (a repeated one changes nothing).
        let catalog = matches!(
            cmd,
            Command::SetVolume { .. }
                | Command::CreateVhd { .. }
                | Command::SetVhdState { .. }
                | Command::DeleteVhd { .. }
                | Command::RestoreCatalog { .. }
                | Command::SetVirtualSize { .. }
        );
        let r = match cmd {
            Command::InitCluster {
                id,
                name,
                created_unix_ms,
                node,
                address,
            } => self.init_cluster(id, name, created_unix_ms, node, address, w),
            Command::AddNode {
                node,
                address,
                role,
            } => self.add_node(node, address, role, w),
            Command::SetNodeRole { node, role } => self.set_node_role(node, role, w),
            Command::RemoveNode { node } => self.remove_node(index, node, w),
            Command::SetVolume { volume } => self.set_volume(volume, w),
            Command::CreateVhd {
                name,
                kind,
                virtual_size,
                parent,
                length,
            } => self.create_vhd(index, name, kind, virtual_size, parent, length, w),
            Command::SetVhdState {
                vhd,
                state,
                node,
                generation,
            } => self.set_vhd_state(vhd, state, node, generation, w),
            Command::DeleteVhd { vhd } => self.delete_vhd(vhd, w),
            Command::ReserveExtents { node, epoch, count } => self.reserve(node, epoch, count),
            Command::SetExtents {
                vhd,
                node,
                generation,
                runs,
                length,
            } => self.set_extents(index, vhd, node, generation, runs, length, w),
            Command::CheckpointWritten { sequence, index: i } => {
                self.checkpoint_written(sequence, i, w)
            }
            Command::Lock { command } => self.lock(index, command, w),
            Command::Remote { command } => self.apply_remote(index, command, w),
            Command::RestoreCatalog { volume, vhds } => self.restore_catalog(volume, vhds, w),
            Command::SetVirtualSize {
                vhd,
                virtual_size,
                node,
                generation,
            } => self.set_virtual_size(vhd, virtual_size, node, generation, w),
        };
        if catalog && r.is_ok() {
            self.catalog_changed(index, w);
        }
        self.flush_runs(w);
        r
    }

    /// Answers a decoded query.
    pub fn answer(&self, q: Query) -> Result<QueryReply, ApiError> {
        match q {
            Query::Cluster => Ok(QueryReply::Cluster {
                identity: self.identity.clone(),
                nodes: self.nodes.values().cloned().collect(),
            }),
            Query::Volume => Ok(QueryReply::Volume {
                volume: self.volume.clone(),
            }),
            Query::Vhd { vhd } => self
                .vhds
                .get(&vhd)
                .cloned()
                .map(QueryReply::Vhd)
                .ok_or_else(|| err(ErrorCode::NotFound, format!("{vhd} does not exist"))),
            Query::VhdByName { name } => self
                .names
                .get(&name)
                .and_then(|id| self.vhds.get(id))
                .cloned()
                .map(QueryReply::Vhd)
                .ok_or_else(|| err(ErrorCode::NotFound, format!("no VHD named {name:?}"))),
            Query::VhdList { after, limit } => {
                if limit == 0 || limit > MAX_PAGE {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("page size {limit} outside 1..={MAX_PAGE}"),
                    ));
                }
                let vhds: Vec<VhdRecord> = self
                    .vhds
                    .range(VhdId(after.saturating_add(1))..)
                    .take(limit as usize)
                    .map(|(_, v)| v.clone())
                    .collect();
                let next_after = match vhds.last() {
                    Some(l) if self.vhds.range(VhdId(l.id.0 + 1)..).next().is_some() => l.id.0,
                    _ => 0,
                };
                Ok(QueryReply::VhdPage {
                    vhds,
                    next_after,
                    total: self.vhds.len() as u64,
                })
            }
            Query::Space => Ok(QueryReply::Space(SpaceInfo {
                extent_count: self.volume.as_ref().map_or(0, |v| v.extent_count),
                free_extents: self.free.total(),
                free_runs: self.free.len() as u64,
                largest_free_run: self.free.largest(),
                mapped_extents: self.mapped,
                reservations: self
                    .reserved
                    .iter()
                    .map(|(n, s)| (*n, s.runs().collect()))
                    .collect(),
            })),
            Query::Owner { vhd } => Ok(QueryReply::Owner {
                owner: self.locks.owner(vhd),
            }),
            Query::Locks(q) => Ok(QueryReply::Locks(self.answer_locks(q))),
            Query::Remote(q) => Ok(QueryReply::Remote(self.answer_remote(q))),
            Query::Catalog => Ok(QueryReply::Catalog {
                volume: self.volume.clone(),
                vhds: self.vhds.values().cloned().collect(),
                checkpoint: self.checkpoint,
            }),
            Query::Checkpoint => Ok(QueryReply::Checkpoint(self.checkpoint)),
        }
    }
}

impl StateMachine for ClusterState {
    fn apply(&mut self, index: u64, command: &[u8], w: &mut dyn KvWrite) -> Vec<u8> {
        let r = match Command::decode(command) {
            Ok(cmd) => self.execute(index, cmd, w),
            Err(e) => Err(e),
        };
        encode_result(&r)
    }

    fn load(&mut self, reader: &dyn KvRead) -> Result<(), StoreError> {
        *self = persist::load(reader).map_err(StoreError::StateMachine)?;
        Ok(())
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let r = match serde_json::from_slice::<Query>(query) {
            Ok(q) => self.answer(q),
            Err(e) => Err(err(ErrorCode::Malformed, format!("query: {e}"))),
        };
        encode_result(&r)
    }

    fn state_hash(&self) -> Option<u64> {
        Some(self.hash())
    }
}

#[cfg(test)]
mod remote_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
