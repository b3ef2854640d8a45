//! Attach and detach requests addressed to another node (`vhd attach NAME --node N`),
//! recorded in the replicated state: nodes have no channel to each other besides the
//! Raft log, so the asking node records the request, node N claims it, performs it
//! locally and records the outcome, and the asker reads the outcome from its own replica.
//! Design: docs/design/040-cluster-volume.md §6.1.
//!
//! Life of a record: `pending` (recorded by `Request`) → `running` (`Claim` by the
//! target) → `done` (`Finish` by the target with its outcome). A `Cancel` by the asker
//! finishes a pending request as `cancelled` (a running one is left to finish); the
//! removal, expiry or leave of the target finishes its unfinished requests as
//! `unavailable`. Finished records are deleted by `Forget` once the asker read them, and
//! at most [`MAX_REMOTE_RECORDS`] records exist: a new request evicts the oldest finished
//! record when the table is full, and is refused when every record is unfinished.

use std::collections::BTreeMap;

use csv_api::error::ApiError;
use csv_api::{NodeId, VhdId};
use serde::{Deserialize, Serialize};

/// Most request records (unfinished and finished) in the state.
pub const MAX_REMOTE_RECORDS: usize = 256;
/// Longest error message recorded in an outcome (bytes; longer ones are cut).
pub const MAX_OUTCOME_MESSAGE: usize = 1024;
/// Longest socket path, URI or TCP address recorded in an outcome (bytes).
pub const MAX_OUTCOME_FIELD: usize = 4096;

/// What the target node is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteAction {
    /// Attach the VHD there (take the hold, open, export).
    Attach {
        /// Shared read-only hold and a read-only export.
        read_only: bool,
    },
    /// Detach it there (flush, remove the export, release).
    Detach,
}

/// An attachment as the target node reported it (the fields of the admin `Attachment`
/// that only the target knows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAttachment {
    /// Read-only.
    pub read_only: bool,
    pub generation: u64,
    /// The target's NBD Unix socket.
    pub socket: String,
    /// NBD URI on the target.
    pub uri: String,
    /// The target's NBD TCP address, or empty.
    pub tcp: String,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteOutcome {
    /// The target attached the VHD.
    Attached { attachment: RemoteAttachment },
    /// The target detached the VHD.
    Detached,
    /// The target tried and failed, or could not be asked (expired, removed).
    Failed {
        /// The error, with its stable code.
        error: ApiError,
    },
    /// The asker gave up before the target took the request up: nothing was done.
    Cancelled,
}

/// Where a request is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteState {
    /// Recorded; the target has not taken it up.
    Pending,
    /// The target took it up (it may have restarted since: it finishes it again).
    Running,
    /// Finished.
    Done {
        outcome: RemoteOutcome,
        /// Log index of the command that finished it (eviction order).
        finished_index: u64,
    },
}

/// One request record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteRecord {
    /// Request id, chosen by the asker (random, non-zero).
    pub id: u64,
    /// The asking node.
    pub from: NodeId,
    /// The node asked to act.
    pub target: NodeId,
    pub vhd: VhdId,
    /// Its name (the export name).
    pub name: String,
    /// What to do.
    pub action: RemoteAction,
    /// Log index of the request.
    pub created_index: u64,
    /// Where it is.
    pub state: RemoteState,
}

impl RemoteRecord {
    /// Whether the request has finished.
    pub fn is_done(&self) -> bool {
        matches!(self.state, RemoteState::Done { .. })
    }
}

/// The commands of remote requests (inside `Command::Remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rop", rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteCommand {
    /// Records a pending request. Legal when `from ≠ target`; the target is an active
    /// member whose lease is live (else `unavailable`); the VHD exists (and is ready, for
    /// an attach); the id is non-zero and new (the same request again answers the record:
    /// a retried proposal); a record slot is free or can be freed by evicting the oldest
    /// finished record (else `limit`).
    Request {
        id: u64,
        /// The asking node.
        from: NodeId,
        /// The node asked to act.
        target: NodeId,
        name: String,
        /// What to do.
        action: RemoteAction,
    },
    /// The target takes a pending request up (pending → running; running again answers
    /// the record). Legal for the target only; a finished request is `invalid_state`.
    Claim {
        id: u64,
        /// The claiming node (must be the target).
        node: NodeId,
    },
    /// The target records the outcome (running → done). The same outcome again answers
    /// the record; a request finished otherwise (cancelled, target expired) is
    /// `invalid_state`, and the target undoes an attach it cannot report.
    Finish {
        id: u64,
        /// The reporting node (must be the target).
        node: NodeId,
        /// The outcome (`attached`, `detached` or `failed`).
        outcome: RemoteOutcome,
    },
    /// The asker gives up: a pending request becomes `cancelled`; a running or finished
    /// one is left as it is. Always answers the record as it is after the command.
    Cancel { id: u64 },
    /// Deletes a finished record (the asker has read it). An unfinished one is
    /// `invalid_state`.
    Forget { id: u64 },
}

/// Queries of remote requests (inside `Query::Remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rq", rename_all = "snake_case")]
pub enum RemoteQuery {
    /// One record → `RemoteReply::Record`.
    Get { id: u64 },
    /// The unfinished requests addressed to a node → `RemoteReply::Records`.
    PendingFor {
        /// The target.
        node: NodeId,
    },
}

/// Answers to [`RemoteQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rr", rename_all = "snake_case")]
pub enum RemoteReply {
    /// `Get`.
    Record {
        /// The record, if it exists.
        record: Option<RemoteRecord>,
    },
    /// `PendingFor`, ascending by creation index.
    Records { records: Vec<RemoteRecord> },
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The outcome as recorded: messages and paths bounded.
pub(super) fn bounded(o: RemoteOutcome) -> RemoteOutcome {
    match o {
        RemoteOutcome::Failed { error } => RemoteOutcome::Failed {
            error: ApiError {
                code: error.code,
                message: cut(&error.message, MAX_OUTCOME_MESSAGE),
            },
        },
        RemoteOutcome::Attached { attachment: a } => RemoteOutcome::Attached {
            attachment: RemoteAttachment {
                socket: cut(&a.socket, MAX_OUTCOME_FIELD),
                uri: cut(&a.uri, MAX_OUTCOME_FIELD),
                tcp: cut(&a.tcp, MAX_OUTCOME_FIELD),
                ..a
            },
        },
        o => o,
    }
}

/// Records by id (the state's table type).
pub(super) type RemoteTable = BTreeMap<u64, RemoteRecord>;
