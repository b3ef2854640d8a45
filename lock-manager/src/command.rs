//! Commands (what is proposed to the Raft log) and their outcomes (what `apply` returns).
//!
//! Commands carry no time: the state machine needs none. Node-issued commands carry the
//! epoch the node believes it has, so a node acting on stale beliefs (after a pause or a
//! partition) is refused with `StaleEpoch` instead of being granted anything.

use crate::ids::{Epoch, Generation, NodeId, VhdId};
use serde::{Deserialize, Serialize};

/// How a node holds a VHD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The single writer (reads too).
    Write,
    /// A reader that tolerates a concurrent writer: a migration target pre-opening.
    Read,
    /// A reader that excludes every writer: a differencing parent read by its children.
    ReadDenyWrite,
}

impl Mode {
    /// Whether this is a read mode.
    pub fn is_read(self) -> bool {
        !matches!(self, Mode::Write)
    }
}

/// A state-machine command. Each variant says when it is legal; an illegal command
/// returns a `LockError` and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// A node announces itself (first start or restart). Always legal within the node
    /// limit. Creates the node `Live` at epoch 1, makes a `Left` node `Live` again at its
    /// current epoch, and otherwise only reports the current record.
    Register { node: NodeId },
    /// The node's liveness renewal (one per node, never per VHD). Legal when the node is
    /// registered, has not left, and `epoch` is its current epoch. Makes an `Expired`
    /// node `Live` again (it holds nothing) and counts the renewal.
    Renew {
        node: NodeId,
        /// The epoch the node believes it has.
        epoch: Epoch,
    },
    /// Proposed by the coordinator's liveness tracker only. Legal when the node is
    /// `Live` at `epoch` and has exactly `renewals` renewals (a renewal applied since the
    /// tracker decided makes it fail). Bumps the epoch, marks the node `Expired`, drops
    /// its read holds and leaves its write holds stale (takeover-able).
    ExpireNode {
        node: NodeId,
        /// The epoch the tracker saw.
        epoch: Epoch,
        /// The renewal count the tracker saw, paired with its wait.
        renewals: u64,
    },
    /// Graceful exit, proposed by the node after it closed its fences and drained its
    /// I/O. Legal when the node is `Live` at `epoch`. Drops every hold (write holds too),
    /// bumps the epoch, marks the node `Left`.
    Leave {
        node: NodeId,
        /// The node's current epoch.
        epoch: Epoch,
    },
    /// Take a hold. Legal when the node is `Live` at `epoch` and the mode is compatible:
    /// `Write` needs no writer (a stale one is refused with `OwnerExpired`: use
    /// `Takeover`) and no other node's `ReadDenyWrite`; `Read` needs only that the node
    /// is not the writer; `ReadDenyWrite` needs no writer at all. Idempotent when the
    /// node already holds the VHD in that mode; a read hold is upgraded to `Write`.
    Acquire {
        vhd: VhdId,
        node: NodeId,
        /// The node's current epoch.
        epoch: Epoch,
        /// The requested mode.
        mode: Mode,
    },
    /// Drop the hold granted at `generation`, proposed by the node after it closed its
    /// fence and drained its I/O. Legal when the node is at `epoch` (live or expired) and
    /// holds the VHD at that generation (its own stale write hold included). The
    /// generation keeps a duplicated or late release from dropping a newer hold.
    Release {
        vhd: VhdId,
        node: NodeId,
        /// The node's current epoch.
        epoch: Epoch,
        /// The generation of the hold to drop.
        generation: Generation,
    },
    /// Cooperative hand-off of the write hold, proposed by the source after it closed its
    /// fence and drained its writes. Legal when `from` is the valid writer at
    /// `expected_generation`, and `to` (≠ `from`) is `Live` at `to_epoch`. The target gets
    /// the write hold at a new generation (its read hold, if any, is upgraded).
    Transfer {
        vhd: VhdId,
        /// The current writer (the source).
        from: NodeId,
        /// The source's current epoch.
        from_epoch: Epoch,
        /// The new writer (the target).
        to: NodeId,
        /// The target's current epoch.
        to_epoch: Epoch,
        /// The generation the source holds.
        expected_generation: Generation,
    },
    /// Renumber the caller's own write hold: a new generation for the same writer.
    /// Legal when the node is the valid writer at `expected_generation`. Any command
    /// still in flight that names the old generation (a hand-off whose answer was lost or
    /// refused) can then never apply; this is the only way a node that began a hand-off
    /// reopens its fence.
    Reclaim {
        vhd: VhdId,
        /// The writer.
        node: NodeId,
        /// The writer's current epoch.
        epoch: Epoch,
        /// The generation it holds.
        expected_generation: Generation,
    },
    /// Ask the current writer to hand the VHD to `to` (`csvadm owner move`). Changes
    /// nothing: it only puts the request in the log, where every replica sees it in
    /// order. Legal when `from` is the valid writer at `expected_generation` and `to`
    /// (≠ `from`) is `Live`. The source, seeing it applied, closes its fence and proposes
    /// `Transfer`; the target, seeing it, expects that transfer (design note 030, §6.1).
    RequestTransfer {
        vhd: VhdId,
        /// The writer the requester saw.
        from: NodeId,
        /// The node that should become the writer.
        to: NodeId,
        /// The generation the requester saw.
        expected_generation: Generation,
    },
    /// Take the write hold of an expired writer. Legal when the node is `Live` at
    /// `epoch`, the VHD has a writer whose epoch is no longer its node's current epoch,
    /// and the VHD is at `expected_generation`.
    Takeover {
        vhd: VhdId,
        /// The new writer.
        node: NodeId,
        /// The new writer's current epoch.
        epoch: Epoch,
        /// The generation the caller saw expired.
        expected_generation: Generation,
    },
}

/// The liveness status of a node in the replicated state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Renewing; its holds at its epoch are valid.
    Live,
    /// Declared expired by the coordinator; holds nothing valid until it renews at its
    /// new epoch.
    Expired,
    /// Left gracefully; must register again.
    Left,
}

/// What a successful command did. Every replica computes the same outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// `Register`: the node's record after the command.
    Registered {
        node: NodeId,
        /// Its current epoch.
        epoch: Epoch,
        /// Its status.
        status: NodeStatus,
        /// Its renewal count.
        renewals: u64,
        /// Whether the record was created by this command.
        created: bool,
    },
    /// `Renew`: the renewal is confirmed at `epoch`.
    Renewed {
        node: NodeId,
        /// The epoch it is confirmed at.
        epoch: Epoch,
        /// The node's renewal count after this renewal.
        renewals: u64,
    },
    /// `ExpireNode`: the node's epoch moved on.
    Expired {
        node: NodeId,
        /// Its new epoch.
        epoch: Epoch,
        /// VHDs whose write hold became stale (takeover-able), ascending.
        stale_writes: Vec<VhdId>,
        /// VHDs whose read hold was dropped, ascending.
        dropped_reads: Vec<VhdId>,
    },
    /// `Leave`: the node left and holds nothing.
    Left {
        node: NodeId,
        /// Its new epoch.
        epoch: Epoch,
        /// VHDs whose holds were released, ascending.
        released: Vec<VhdId>,
    },
    /// `Acquire`, `Transfer` (for the target), `Reclaim` or `Takeover`: a hold granted.
    Granted {
        vhd: VhdId,
        /// The holder.
        node: NodeId,
        /// The epoch it is granted under.
        epoch: Epoch,
        mode: Mode,
        /// The hold's generation (for `Write`, the fencing token).
        generation: Generation,
        /// The writer this grant replaced (transfer source, expired owner, or the node
        /// itself for `Reclaim`), if any.
        previous_writer: Option<NodeId>,
    },
    /// `RequestTransfer`: the request is legal now; nothing changed.
    TransferRequested {
        vhd: VhdId,
        /// The writer asked to hand it off.
        from: NodeId,
        /// The writer's epoch.
        from_epoch: Epoch,
        /// The node that should become the writer.
        to: NodeId,
        /// The target's epoch.
        to_epoch: Epoch,
        /// The generation the hand-off must name.
        generation: Generation,
    },
    /// `Release`: the hold is gone.
    Released {
        vhd: VhdId,
        /// The former holder.
        node: NodeId,
        /// The released hold's generation.
        generation: Generation,
    },
}
