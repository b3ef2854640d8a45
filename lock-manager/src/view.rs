//! JSON-able query results for `csvadm owner list|show` and `csvadm node liveness`.

use crate::command::{Mode, NodeStatus};
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use serde::{Deserialize, Serialize};

/// One VHD's ownership (`csvadm owner show VHD --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerView {
    pub vhd: VhdId,
    /// The writer, valid or expired; `null` when nobody writes it.
    pub owner: Option<NodeId>,
    /// The epoch the writer was granted under.
    pub owner_epoch: Option<Epoch>,
    /// Whether the writer is still valid (false: expired, takeover-able).
    pub owner_valid: bool,
    /// The generation of the latest write grant (the fencing token).
    pub generation: Generation,
    /// Read holds, ascending by node.
    pub readers: Vec<ReaderView>,
}

/// One read hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderView {
    /// The reader.
    pub node: NodeId,
    /// The epoch it was granted under.
    pub epoch: Epoch,
    /// `read` or `read_deny_write`.
    pub mode: Mode,
    /// The hold's grant number.
    pub generation: Generation,
}

/// One node's replicated liveness record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: NodeId,
    /// Its current epoch.
    pub epoch: Epoch,
    /// Live, expired or left.
    pub status: NodeStatus,
    /// Successful renewals so far.
    pub renewals: u64,
}

/// One hold of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub vhd: VhdId,
    /// How it is held.
    pub mode: Mode,
    /// The epoch it was granted under.
    pub epoch: Epoch,
    /// The hold's generation.
    pub generation: Generation,
    /// Whether the epoch is the node's current one.
    pub valid: bool,
}
