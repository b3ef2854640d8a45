//! Applying remote attach/detach requests (the life of a record is in `remote.rs`).

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use lock_manager::NodeStatus;
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::remote::*;
use super::types::{ApplyResult, NodeState, Reply, VhdState};
use super::{err, persist};

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
        let vhd = match self.vhds.by_name(&name) {
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
