//! Generators of remote-request commands shared by the state machine's tests.

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use lock_manager::Command as LockCommand;
use rand::Rng;
use rand::rngs::StdRng;

use super::remote::*;
use super::types::*;

pub(super) fn attached(generation: u64) -> RemoteOutcome {
    RemoteOutcome::Attached {
        attachment: RemoteAttachment {
            read_only: false,
            generation,
            socket: "/run/csv/nbd.sock".into(),
            uri: "nbd+unix:///a?socket=/run/csv/nbd.sock".into(),
            tcp: String::new(),
        },
    }
}

pub(super) fn register(node: u64) -> Command {
    Command::Lock {
        command: LockCommand::Register { node: NodeId(node) },
    }
}

/// A random remote command for the replica-determinism and simulation tests.
pub(crate) fn random_remote(rng: &mut StdRng, nodes: u64) -> Command {
    let id = if rng.random_bool(0.05) {
        0
    } else {
        rng.random_range(1..10)
    };
    // Mostly the node an id's request is addressed to, so claims and outcomes apply.
    let node = if rng.random_bool(0.8) {
        NodeId(1 + id % nodes)
    } else {
        NodeId(rng.random_range(1..=nodes + 1))
    };
    let command = match rng.random_range(0..9) {
        // Targets need a live lease.
        8 => return register(node.0),
        0 | 1 => RemoteCommand::Request {
            id,
            from: if rng.random_bool(0.9) {
                NodeId(1 + node.0 % nodes)
            } else {
                NodeId(rng.random_range(1..=nodes))
            },
            target: node,
            name: format!("v{}", rng.random_range(0..60)),
            action: if rng.random_bool(0.5) {
                RemoteAction::Attach {
                    read_only: rng.random_bool(0.3),
                }
            } else {
                RemoteAction::Detach
            },
        },
        2 | 3 => RemoteCommand::Claim { id, node },
        4 | 5 => RemoteCommand::Finish {
            id,
            node,
            outcome: match rng.random_range(0..4) {
                0 => attached(rng.random_range(1..9)),
                1 => RemoteOutcome::Detached,
                _ => RemoteOutcome::Failed {
                    error: ApiError::new(ErrorCode::LockConflict, "x"),
                },
            },
        },
        6 => RemoteCommand::Cancel { id },
        _ => RemoteCommand::Forget { id },
    };
    Command::Remote { command }
}
