//! The lock table's wire types inside the cluster state machine: its queries and
//! replies, and refused lock commands as API errors with their typed detail. Applying
//! lock commands is in `lock_apply.rs`.

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use lock_manager::{HoldView, LockError, NodeView, OwnerView};
use serde::{Deserialize, Serialize};

use super::err;

/// Separates the human message of a refused lock command from its typed detail.
pub const LOCK_DETAIL_MARKER: &str = " | detail: ";

/// A refused lock command as the proposer receives it: the stable code, the human
/// message, and the typed `LockError` as JSON after [`LOCK_DETAIL_MARKER`] (the node's
/// fence guard needs its fields, e.g. the current epoch of `stale_epoch`).
pub fn lock_api_error(e: &LockError) -> ApiError {
    let detail = serde_json::to_string(e).unwrap_or_default();
    err(
        ErrorCode::from_lock_manager(e.code()),
        format!("{e}{LOCK_DETAIL_MARKER}{detail}"),
    )
}

/// The typed `LockError` inside an error made by [`lock_api_error`], if it is one.
pub fn lock_error_of(e: &ApiError) -> Option<LockError> {
    let (_, detail) = e.message.rsplit_once(LOCK_DETAIL_MARKER)?;
    serde_json::from_str(detail).ok()
}

/// Lock-table queries (`csvadm owner ...`, the node's lease task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lq", rename_all = "snake_case")]
pub enum LockQuery {
    /// Every ownership record.
    Owners,
    /// Every node's liveness record.
    Nodes,
    /// The holds of one node.
    HoldsOf { node: NodeId },
}

/// Answers to [`LockQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lr", rename_all = "snake_case")]
pub enum LockReply {
    /// `Owners`.
    Owners {
        /// Ascending by VHD.
        owners: Vec<OwnerView>,
    },
    /// `Nodes`.
    Nodes {
        /// Ascending by node.
        nodes: Vec<NodeView>,
    },
    /// `HoldsOf`.
    Holds {
        /// Ascending by VHD.
        holds: Vec<HoldView>,
    },
}
