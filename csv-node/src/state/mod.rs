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

mod alloc;
mod apply;
mod catalog;
mod cluster;
pub mod event;
mod keys;
mod lock_apply;
pub mod locks;
mod nodes;
mod path_apply;
pub mod paths;
mod persist;
pub mod remote;
mod remote_apply;
mod resize;
mod restore;
pub mod runs;
pub mod types;
pub mod vhds;
mod vm_apply;
mod vm_failover;
mod vm_migrate;
pub mod vms;

use csv_api::ErrorCode;
use csv_api::error::ApiError;

pub use cluster::ClusterState;
pub use event::{Applied, StateEvent};
pub use vm_apply::MAX_VM_NAME_BYTES;

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

pub(crate) fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

#[cfg(test)]
mod remote_gen;
#[cfg(test)]
mod remote_tests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod test_kv;
#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vm_ops_tests;
#[cfg(test)]
mod vm_tests;
