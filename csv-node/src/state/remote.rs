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
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::NodeStatus;
use meta_store::KvWrite;
use serde::{Deserialize, Serialize};

use super::types::{ApplyResult, NodeState, Reply, VhdState};
use super::{ClusterState, err, persist};

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
    /// Hold generation.
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
    Attached {
        /// Its attachment.
        attachment: RemoteAttachment,
    },
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
        /// The outcome.
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
    /// The VHD.
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
        /// Request id.
        id: u64,
        /// The asking node.
        from: NodeId,
        /// The node asked to act.
        target: NodeId,
        /// VHD name.
        name: String,
        /// What to do.
        action: RemoteAction,
    },
    /// The target takes a pending request up (pending → running; running again answers
    /// the record). Legal for the target only; a finished request is `invalid_state`.
    Claim {
        /// Request id.
        id: u64,
        /// The claiming node (must be the target).
        node: NodeId,
    },
    /// The target records the outcome (running → done). The same outcome again answers
    /// the record; a request finished otherwise (cancelled, target expired) is
    /// `invalid_state`, and the target undoes an attach it cannot report.
    Finish {
        /// Request id.
        id: u64,
        /// The reporting node (must be the target).
        node: NodeId,
        /// The outcome (`attached`, `detached` or `failed`).
        outcome: RemoteOutcome,
    },
    /// The asker gives up: a pending request becomes `cancelled`; a running or finished
    /// one is left as it is. Always answers the record as it is after the command.
    Cancel {
        /// Request id.
        id: u64,
    },
    /// Deletes a finished record (the asker has read it). An unfinished one is
    /// `invalid_state`.
    Forget {
        /// Request id.
        id: u64,
    },
}

/// Queries of remote requests (inside `Query::Remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rq", rename_all = "snake_case")]
pub enum RemoteQuery {
    /// One record → `RemoteReply::Record`.
    Get {
        /// Request id.
        id: u64,
    },
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
    Records {
        /// Records.
        records: Vec<RemoteRecord>,
    },
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
fn bounded(o: RemoteOutcome) -> RemoteOutcome {
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

impl ClusterState {
    /// The request records by id.
    pub fn remote_requests(&self) -> impl Iterator<Item = &RemoteRecord> {
        self.remote.values()
    }

    fn remote_ref(&self, id: u64) -> Result<&RemoteRecord, ApiError> {
        self.remote
            .get(&id)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no remote request {id:#x}")))
    }

    fn put_remote(&mut self, rec: RemoteRecord, w: &mut dyn KvWrite) -> Reply {
        persist::put_remote(w, &rec);
        self.remote.insert(rec.id, rec.clone());
        Reply::Remote { record: rec }
    }

    /// Why `target` cannot be asked now, if it cannot.
    fn unreachable(&self, target: NodeId) -> Option<String> {
        match self.nodes.get(&target).map(|n| n.state) {
            None => return Some(format!("{target} is not a member of this cluster")),
            Some(NodeState::Removed) => return Some(format!("{target} was removed")),
            Some(NodeState::Joining) => return Some(format!("{target} is still joining")),
            Some(NodeState::Active) => {}
        }
        match self.locks.node_record(target).map(|r| r.status) {
            Some(NodeStatus::Live) => None,
            None => Some(format!("{target} has not registered its lease")),
            Some(NodeStatus::Expired) => Some(format!(
                "{target}'s lease expired (the node is down or cut off)"
            )),
            Some(NodeStatus::Left) => Some(format!("{target} left the cluster")),
        }
    }

    pub(super) fn apply_remote(
        &mut self,
        index: u64,
        cmd: RemoteCommand,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        match cmd {
            RemoteCommand::Request {
                id,
                from,
                target,
                name,
                action,
            } => self.remote_request(index, id, from, target, name, action, w),
            RemoteCommand::Claim { id, node } => {
                let rec = self.remote_ref(id)?;
                if rec.target != node {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("request {id:#x} is addressed to {}, not {node}", rec.target),
                    ));
                }
                match &rec.state {
                    RemoteState::Pending => {}
                    RemoteState::Running => {
                        return Ok(Reply::Remote {
                            record: rec.clone(),
                        });
                    }
                    RemoteState::Done { outcome, .. } => {
                        return Err(err(
                            ErrorCode::InvalidState,
                            format!("request {id:#x} is finished ({outcome:?})"),
                        ));
                    }
                }
                let mut rec = rec.clone();
                rec.state = RemoteState::Running;
                Ok(self.put_remote(rec, w))
            }
            RemoteCommand::Finish { id, node, outcome } => {
                let outcome = bounded(outcome);
                let rec = self.remote_ref(id)?;
                if rec.target != node {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("request {id:#x} is addressed to {}, not {node}", rec.target),
                    ));
                }
                let fits = matches!(
                    (&rec.action, &outcome),
                    (RemoteAction::Attach { .. }, RemoteOutcome::Attached { .. })
                        | (RemoteAction::Detach, RemoteOutcome::Detached)
                        | (_, RemoteOutcome::Failed { .. })
                );
                if !fits {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("outcome {outcome:?} does not answer {:?}", rec.action),
                    ));
                }
                match &rec.state {
                    RemoteState::Running => {}
                    RemoteState::Done { outcome: o, .. } if *o == outcome => {
                        return Ok(Reply::Remote {
                            record: rec.clone(),
                        });
                    }
                    RemoteState::Done { outcome: o, .. } => {
                        return Err(err(
                            ErrorCode::InvalidState,
                            format!("request {id:#x} was finished meanwhile ({o:?})"),
                        ));
                    }
                    RemoteState::Pending => {
                        return Err(err(
                            ErrorCode::InvalidState,
                            format!("request {id:#x} was not claimed"),
                        ));
                    }
                }
                let mut rec = rec.clone();
                rec.state = RemoteState::Done {
                    outcome,
                    finished_index: index,
                };
                Ok(self.put_remote(rec, w))
            }
            RemoteCommand::Cancel { id } => {
                let rec = self.remote_ref(id)?;
                if rec.state != RemoteState::Pending {
                    return Ok(Reply::Remote {
                        record: rec.clone(),
                    });
                }
                let mut rec = rec.clone();
                rec.state = RemoteState::Done {
                    outcome: RemoteOutcome::Cancelled,
                    finished_index: index,
                };
                Ok(self.put_remote(rec, w))
            }
            RemoteCommand::Forget { id } => {
                let rec = self.remote_ref(id)?;
                if !rec.is_done() {
                    return Err(err(
                        ErrorCode::InvalidState,
                        format!("request {id:#x} has not finished"),
                    ));
                }
                let rec = rec.clone();
                persist::delete_remote(w, id);
                self.remote.remove(&id);
                Ok(Reply::Remote { record: rec })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn remote_request(
        &mut self,
        index: u64,
        id: u64,
        from: NodeId,
        target: NodeId,
        name: String,
        action: RemoteAction,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        if id == 0 {
            return Err(err(ErrorCode::InvalidArgument, "request id 0"));
        }
        if let Some(cur) = self.remote.get(&id) {
            return if cur.from == from
                && cur.target == target
                && cur.name == name
                && cur.action == action
            {
                Ok(Reply::Remote {
                    record: cur.clone(),
                })
            } else {
                Err(err(
                    ErrorCode::AlreadyExists,
                    format!("request id {id:#x} is taken"),
                ))
            };
        }
        if from == target {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{target} asks itself: it acts directly"),
            ));
        }
        if let Some(why) = self.unreachable(target) {
            return Err(err(
                ErrorCode::Unavailable,
                format!("{why}: it cannot act on {name}"),
            ));
        }
        let vhd = match self.names.get(&name).and_then(|v| self.vhds.get(v)) {
            Some(v) => v,
            None => return Err(err(ErrorCode::NotFound, format!("no VHD named {name:?}"))),
        };
        if matches!(action, RemoteAction::Attach { .. }) && vhd.state != VhdState::Ready {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{name} is {:?}, not ready", vhd.state),
            ));
        }
        let vhd = vhd.id;
        if self.remote.len() >= MAX_REMOTE_RECORDS {
            let oldest = self
                .remote
                .values()
                .filter_map(|r| match r.state {
                    RemoteState::Done { finished_index, .. } => Some((finished_index, r.id)),
                    _ => None,
                })
                .min();
            let Some((_, old)) = oldest else {
                return Err(err(
                    ErrorCode::Limit,
                    format!("{MAX_REMOTE_RECORDS} remote requests are unfinished"),
                ));
            };
            persist::delete_remote(w, old);
            self.remote.remove(&old);
        }
        let rec = RemoteRecord {
            id,
            from,
            target,
            vhd,
            name,
            action,
            created_index: index,
            state: RemoteState::Pending,
        };
        Ok(self.put_remote(rec, w))
    }

    /// Finishes every unfinished request addressed to `node` as `unavailable` (the node
    /// was removed, expired or left: it will not answer them).
    pub(super) fn fail_remote_for(
        &mut self,
        index: u64,
        node: NodeId,
        why: &str,
        w: &mut dyn KvWrite,
    ) {
        let open: Vec<u64> = self
            .remote
            .values()
            .filter(|r| r.target == node && !r.is_done())
            .map(|r| r.id)
            .collect();
        for id in open {
            if let Some(mut rec) = self.remote.get(&id).cloned() {
                rec.state = RemoteState::Done {
                    outcome: RemoteOutcome::Failed {
                        error: err(
                            ErrorCode::Unavailable,
                            format!(
                                "{node} {why} before it finished the request on {}",
                                rec.name
                            ),
                        ),
                    },
                    finished_index: index,
                };
                self.put_remote(rec, w);
            }
        }
    }

    pub(super) fn answer_remote(&self, q: RemoteQuery) -> RemoteReply {
        match q {
            RemoteQuery::Get { id } => RemoteReply::Record {
                record: self.remote.get(&id).cloned(),
            },
            RemoteQuery::PendingFor { node } => {
                let mut records: Vec<RemoteRecord> = self
                    .remote
                    .values()
                    .filter(|r| r.target == node && !r.is_done())
                    .cloned()
                    .collect();
                records.sort_by_key(|r| (r.created_index, r.id));
                RemoteReply::Records { records }
            }
        }
    }
}

/// Records by id (the state's table type).
pub(super) type RemoteTable = BTreeMap<u64, RemoteRecord>;
