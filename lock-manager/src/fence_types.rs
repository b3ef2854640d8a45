//! Types the fence guard hands out: holds as the node knows them, refusals, events and
//! status. Split from `fence.rs`, which owns the guard's logic.

use crate::command::Mode;
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use crate::time::Time;
use serde::Serialize;
use std::collections::BTreeMap;

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
    /// Recovering after a restart: the previous incarnation's writes may still be in
    /// flight until this local time.
    #[error("recovering until {until}")]
    Recovering {
        /// When writes may start.
        until: Time,
    },
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
        vhd: VhdId,
        /// Its generation.
        generation: Generation,
    },
    /// A hand-off was refused: the fence stays closed until a [`FenceGuard::reclaim`](crate::FenceGuard::reclaim)
    /// commits (a duplicate of the transfer may still be in flight).
    HandoffFailed { vhd: VhdId },
    /// A grant arrived that the guard did not install (its request was cancelled by a
    /// release, or it is for another epoch): the state may show this node as holder,
    /// so the upper layer should release it.
    GrantRefused {
        vhd: VhdId,
        /// The refused grant's epoch.
        epoch: Epoch,
        /// The refused grant's generation.
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
    /// VHDs whose release is being proposed.
    pub releasing: Vec<VhdId>,
}
