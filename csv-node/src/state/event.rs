//! What an applied command tells the node's shell, typed: the state machine derives it
//! from the command and its result, so subscribers never decode log entries themselves.
//! Every replica derives the same events from the same entries; they never change what
//! is applied or persisted.

use lock_manager::{LockError, Outcome};

use super::locks::lock_error_of;
use super::types::{ApplyResult, Command, Reply};

/// One consequence of an applied command that a node may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEvent {
    /// A lock command and its replicated result (the lease driver's input).
    Lock {
        command: lock_manager::Command,
        result: Result<Outcome, LockError>,
    },
    /// A remote attach/detach request may have changed (a request, claim or outcome, or
    /// a node's removal, expiry or leave, which fails the requests addressed to it).
    Remote,
    /// The catalog (volume and VHD records, extent maps) or the recorded LUN checkpoint
    /// changed.
    Catalog,
    /// The VM table may have changed, or a node's liveness did (VM placement depends
    /// on it).
    Vms,
}

/// A command's result and the events it raises.
#[derive(Debug)]
pub struct Applied {
    pub result: ApplyResult,
    pub events: Vec<StateEvent>,
}

/// The typed result of a lock command from its apply result: its outcome, or its
/// refusal; `None` for any other reply or error.
pub fn lock_result(result: &ApplyResult) -> Option<Result<Outcome, LockError>> {
    match result {
        Ok(Reply::Lock { outcome }) => Some(Ok(outcome.clone())),
        Ok(_) => None,
        Err(e) => lock_error_of(e).map(Err),
    }
}

/// What a command will raise, taken before it is applied (which consumes it).
pub(super) struct Pending {
    lock: Option<lock_manager::Command>,
    remote: bool,
    catalog: bool,
    vms: bool,
}

impl Pending {
    pub(super) fn of(command: &Command) -> Pending {
        use lock_manager::Command as L;
        let mut p = Pending {
            lock: None,
            remote: false,
            catalog: false,
            vms: false,
        };
        match command {
            Command::Lock { command } => {
                p.remote = matches!(command, L::ExpireNode { .. } | L::Leave { .. });
                p.vms = matches!(
                    command,
                    L::ExpireNode { .. } | L::Leave { .. } | L::Register { .. }
                );
                p.lock = Some(command.clone());
            }
            Command::Remote { .. } => p.remote = true,
            Command::RemoveNode { .. } => {
                p.remote = true;
                p.vms = true;
            }
            Command::Vm { .. } => p.vms = true,
            Command::SetExtents { .. }
            | Command::CheckpointWritten { .. }
            | Command::CreateVhd { .. }
            | Command::SetVhdState { .. }
            | Command::DeleteVhd { .. }
            | Command::SetVolume { .. }
            | Command::RestoreCatalog { .. }
            | Command::SetVirtualSize { .. } => p.catalog = true,
            Command::InitCluster { .. }
            | Command::AddNode { .. }
            | Command::SetNodeRole { .. }
            | Command::SetPathState { .. }
            | Command::SetRedirect { .. }
            | Command::ReserveExtents { .. } => {}
        }
        p
    }

    /// The events, given the command's result. A refused command raises its lock event
    /// (the driver learns of refusals too) and wakes the others as an applied one does.
    pub(super) fn events(self, result: &ApplyResult) -> Vec<StateEvent> {
        let mut events = Vec::new();
        if let Some(command) = self.lock
            && let Some(result) = lock_result(result)
        {
            events.push(StateEvent::Lock { command, result });
        }
        if self.remote {
            events.push(StateEvent::Remote);
        }
        if self.catalog {
            events.push(StateEvent::Catalog);
        }
        if self.vms {
            events.push(StateEvent::Vms);
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::remote::{RemoteAction, RemoteCommand};
    use csv_api::{Epoch, NodeId, VhdId};

    fn kinds(c: &Command) -> (bool, bool) {
        let p = Pending::of(c);
        (p.remote, p.catalog)
    }

    #[test]
    fn remote_and_catalog_events_come_from_the_commands_that_change_them() {
        let lock = |command| Command::Lock { command };
        let remote = [
            Command::Remote {
                command: RemoteCommand::Request {
                    id: 1,
                    from: NodeId(1),
                    target: NodeId(2),
                    name: "a".into(),
                    action: RemoteAction::Detach,
                },
            },
            Command::Remote {
                command: RemoteCommand::Forget { id: 1 },
            },
            Command::RemoveNode { node: NodeId(3) },
            lock(lock_manager::Command::ExpireNode {
                node: NodeId(3),
                epoch: Epoch(1),
                renewals: 4,
            }),
            lock(lock_manager::Command::Leave {
                node: NodeId(3),
                epoch: Epoch(1),
            }),
        ];
        for c in &remote {
            assert_eq!(kinds(c), (true, false), "{c:?}");
        }
        let neither = [
            lock(lock_manager::Command::Renew {
                node: NodeId(3),
                epoch: Epoch(1),
            }),
            Command::ReserveExtents {
                node: NodeId(2),
                epoch: Epoch(1),
                count: 4,
            },
        ];
        for c in &neither {
            assert_eq!(kinds(c), (false, false), "{c:?}");
        }
        let catalog = [
            Command::SetExtents {
                vhd: VhdId(1),
                node: NodeId(2),
                generation: csv_api::Generation(3),
                runs: Vec::new(),
                length: 0,
            },
            Command::CheckpointWritten {
                sequence: 1,
                index: 2,
            },
            Command::DeleteVhd { vhd: VhdId(1) },
        ];
        for c in &catalog {
            assert_eq!(kinds(c), (false, true), "{c:?}");
        }
    }

    #[test]
    fn lock_events_carry_typed_results_and_other_replies_none() {
        let renew = lock_manager::Command::Renew {
            node: NodeId(1),
            epoch: Epoch(1),
        };
        let refused =
            crate::state::locks::lock_api_error(&LockError::UnknownNode { node: NodeId(1) });
        let events = Pending::of(&Command::Lock {
            command: renew.clone(),
        })
        .events(&Err(refused));
        assert_eq!(
            events,
            vec![StateEvent::Lock {
                command: renew.clone(),
                result: Err(LockError::UnknownNode { node: NodeId(1) }),
            }]
        );
        // An error that is not a lock refusal (a malformed command) raises nothing.
        let other = csv_api::error::ApiError::new(csv_api::ErrorCode::Malformed, "x");
        assert!(
            Pending::of(&Command::Lock { command: renew })
                .events(&Err(other))
                .is_empty()
        );
    }
}
