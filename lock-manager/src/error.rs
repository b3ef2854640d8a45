//! `LockError`: why the state machine refused a command, with stable codes.
//!
//! Errors are data: they are replicated results (every replica computes the same one),
//! travel back to the proposing node, and are shown by `csvadm`. Hence `Serialize`.

use crate::ids::{Epoch, Generation, NodeId, VhdId};
use serde::{Deserialize, Serialize};

/// A refused command. The state is unchanged when `apply` returns an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum LockError {
    /// The node never registered.
    #[error("{node} is not registered")]
    UnknownNode {
        /// The node named by the command.
        node: NodeId,
    },
    /// The command's epoch is not the node's current one: every hold of the older epoch
    /// is lost (or, for a future epoch, the command is bogus).
    #[error("{node} is at epoch {current}, the command says {given}")]
    StaleEpoch {
        /// The node named by the command.
        node: NodeId,
        /// The epoch the command carried.
        given: Epoch,
        /// The node's current epoch.
        current: Epoch,
    },
    /// The node is expired or has left: it must renew at its current epoch (expired) or
    /// register (left) before it may hold anything.
    #[error("{node} is not live")]
    NodeNotLive {
        /// The node named by the command.
        node: NodeId,
    },
    /// `ExpireNode` refused: the node renewed after the tracker made its decision.
    #[error("{node} renewed since the expiry was decided ({seen} seen, {current} now)")]
    RenewedSince {
        /// The node named by the command.
        node: NodeId,
        /// The renewal count the command carried.
        seen: u64,
        /// The node's renewal count.
        current: u64,
    },
    /// The node does not hold the VHD the way the command says.
    #[error("{node} holds no matching hold on {vhd}")]
    NotHeld {
        /// The VHD named by the command.
        vhd: VhdId,
        /// The node named by the command.
        node: NodeId,
    },
    /// The command expected another generation (the caller's view is outdated).
    #[error("{vhd} is at generation {actual}, expected {expected}")]
    GenerationMismatch {
        /// The VHD named by the command.
        vhd: VhdId,
        /// The generation the command carried.
        expected: Generation,
        /// The VHD's generation.
        actual: Generation,
    },
    /// Incompatible with a current hold of another node.
    #[error("{vhd} is held by {holder}: {reason}")]
    Conflict {
        /// The VHD named by the command.
        vhd: VhdId,
        /// A node whose hold is in the way.
        holder: NodeId,
        /// Which rule refused it.
        reason: ConflictReason,
    },
    /// Takeover refused: the writer's epoch is still current.
    #[error("{vhd} is owned by {owner}, which is still live")]
    OwnerAlive {
        /// The VHD named by the command.
        vhd: VhdId,
        /// The valid writer.
        owner: NodeId,
    },
    /// Acquire refused: the writer expired; take the VHD over with its generation.
    #[error("{vhd} has an expired owner {owner} at generation {generation}: use takeover")]
    OwnerExpired {
        /// The VHD named by the command.
        vhd: VhdId,
        /// The stale writer.
        owner: NodeId,
        /// Its generation, to pass to `Takeover`.
        generation: Generation,
    },
    /// Takeover refused: the VHD has no writer to take over.
    #[error("{vhd} has no writer")]
    NoWriter {
        /// The VHD named by the command.
        vhd: VhdId,
    },
    /// The command is malformed (for example a transfer to the source itself).
    #[error("invalid command: {reason}")]
    Invalid {
        /// What is wrong with it.
        reason: String,
    },
    /// A configured limit would be exceeded.
    #[error("limit reached: {what} (max {max})")]
    Limit {
        /// Which limit.
        what: String,
        /// The limit.
        max: u64,
    },
    /// A snapshot could not be restored.
    #[error("bad snapshot: {reason}")]
    BadSnapshot {
        /// What is wrong with it.
        reason: String,
    },
}

/// Why an acquire or transfer conflicts with another node's hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictReason {
    /// Another node is the valid writer.
    Writer,
    /// Another node (or the caller itself) is the writer: a writer does not also read.
    AlreadyWriter,
    /// A reader denies writers (a differencing parent) or a writer exists and the
    /// requested read denies writers.
    DenyWrite,
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictReason::Writer => "another node writes it",
            ConflictReason::AlreadyWriter => "the node is its writer",
            ConflictReason::DenyWrite => "a read-only hold excludes writers",
        })
    }
}

impl LockError {
    /// A stable machine-readable code (also the `code` field of the JSON form).
    pub fn code(&self) -> &'static str {
        match self {
            LockError::UnknownNode { .. } => "unknown_node",
            LockError::StaleEpoch { .. } => "stale_epoch",
            LockError::NodeNotLive { .. } => "node_not_live",
            LockError::RenewedSince { .. } => "renewed_since",
            LockError::NotHeld { .. } => "not_held",
            LockError::GenerationMismatch { .. } => "generation_mismatch",
            LockError::Conflict { .. } => "conflict",
            LockError::OwnerAlive { .. } => "owner_alive",
            LockError::OwnerExpired { .. } => "owner_expired",
            LockError::NoWriter { .. } => "no_writer",
            LockError::Invalid { .. } => "invalid",
            LockError::Limit { .. } => "limit",
            LockError::BadSnapshot { .. } => "bad_snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_code_matches_code() {
        let errs = [
            LockError::UnknownNode { node: NodeId(1) },
            LockError::StaleEpoch {
                node: NodeId(1),
                given: Epoch(1),
                current: Epoch(2),
            },
            LockError::NodeNotLive { node: NodeId(1) },
            LockError::RenewedSince {
                node: NodeId(1),
                seen: 1,
                current: 2,
            },
            LockError::NotHeld {
                vhd: VhdId(1),
                node: NodeId(1),
            },
            LockError::GenerationMismatch {
                vhd: VhdId(1),
                expected: Generation(1),
                actual: Generation(2),
            },
            LockError::Conflict {
                vhd: VhdId(1),
                holder: NodeId(2),
                reason: ConflictReason::Writer,
            },
            LockError::OwnerAlive {
                vhd: VhdId(1),
                owner: NodeId(2),
            },
            LockError::OwnerExpired {
                vhd: VhdId(1),
                owner: NodeId(2),
                generation: Generation(3),
            },
            LockError::NoWriter { vhd: VhdId(1) },
            LockError::Invalid { reason: "x".into() },
            LockError::Limit {
                what: "nodes".into(),
                max: 3,
            },
            LockError::BadSnapshot { reason: "x".into() },
        ];
        for e in errs {
            let v = serde_json::to_value(&e).expect("serializes");
            assert_eq!(v["code"], e.code(), "{v}");
            let back: LockError = serde_json::from_value(v).expect("round trip");
            assert_eq!(back, e);
        }
    }
}
