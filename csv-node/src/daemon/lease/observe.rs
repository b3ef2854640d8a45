//! `Observed`: the cluster state machine with a tap. It applies every command exactly as
//! `ClusterState` does and, for lock commands, sends the command and its typed result to
//! the lease driver. Every replica applies every entry, so each node hears of the
//! hand-off requests and transfers that name it, and the coordinator's tracker sees
//! renewals after they were applied (the pairing §4.1 needs). The tap never changes what
//! is applied or persisted: determinism is untouched.

use meta_store::{KvRead, KvWrite, StateMachine, StoreError};
use tokio::sync::mpsc;

use super::{LockResult, Observation};
use crate::state::ClusterState;
use crate::state::locks::lock_error_of;
use crate::state::types::{Command, Reply, decode_result};

/// `ClusterState` that reports applied lock commands.
pub struct Observed {
    inner: ClusterState,
    tx: mpsc::Sender<Observation>,
    dropped: u64,
}

impl Observed {
    /// Wraps `inner`, reporting to `tx`.
    pub fn new(inner: ClusterState, tx: mpsc::Sender<Observation>) -> Observed {
        Observed {
            inner,
            tx,
            dropped: 0,
        }
    }
}

/// Whether an encoded command is a lock command (cheap test before decoding twice).
fn is_lock_command(bytes: &[u8]) -> bool {
    const TAG: &[u8] = br#""op":"lock""#;
    let head = &bytes[..bytes.len().min(64)];
    head.windows(TAG.len()).any(|w| w == TAG)
}

/// The typed result of a lock command from its encoded apply result.
pub fn typed_result(out: &[u8]) -> Option<LockResult> {
    match decode_result::<Reply>(out) {
        Ok(Reply::Lock { outcome }) => Some(Ok(outcome)),
        Ok(_) => None,
        Err(e) => lock_error_of(&e).map(Err),
    }
}

impl StateMachine for Observed {
    fn apply(&mut self, index: u64, command: &[u8], writes: &mut dyn KvWrite) -> Vec<u8> {
        let out = self.inner.apply(index, command, writes);
        if is_lock_command(command)
            && let Ok(Command::Lock { command: cmd }) = Command::decode(command)
            && let Some(result) = typed_result(&out)
            // A closed channel is a driver that stopped on purpose (leaving): not a lag.
            && let Err(mpsc::error::TrySendError::Full(_)) =
                self.tx.try_send(Observation { cmd, result })
        {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "lease driver lags: applied lock commands not reported"
                );
            }
        }
        out
    }

    fn load(&mut self, reader: &dyn KvRead) -> Result<(), StoreError> {
        self.inner.load(reader)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.inner.query(query)
    }

    fn state_hash(&self) -> Option<u64> {
        self.inner.state_hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csv_api::{Epoch, NodeId};
    use lock_manager::{LockError, Outcome};

    struct NoWrites;
    impl KvWrite for NoWrites {
        fn put(&mut self, _: &[u8], _: &[u8]) {}
        fn delete(&mut self, _: &[u8]) {}
    }

    #[test]
    fn lock_commands_are_reported_with_typed_results() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut sm = Observed::new(ClusterState::new(), tx);
        let renew = Command::Lock {
            command: lock_manager::Command::Renew {
                node: NodeId(1),
                epoch: Epoch(1),
            },
        };
        sm.apply(1, &renew.encode(), &mut NoWrites);
        let o = rx.try_recv().expect("observed");
        assert_eq!(o.result, Err(LockError::UnknownNode { node: NodeId(1) }));
        let reg = Command::Lock {
            command: lock_manager::Command::Register { node: NodeId(1) },
        };
        sm.apply(2, &reg.encode(), &mut NoWrites);
        let o = rx.try_recv().expect("observed");
        assert!(matches!(
            o.result,
            Ok(Outcome::Registered { created: true, .. })
        ));
        let stale = Command::Lock {
            command: lock_manager::Command::Renew {
                node: NodeId(1),
                epoch: Epoch(7),
            },
        };
        sm.apply(3, &stale.encode(), &mut NoWrites);
        let o = rx.try_recv().expect("observed");
        assert!(
            matches!(o.result, Err(LockError::StaleEpoch { current, .. }) if current == Epoch(1)),
            "{:?}",
            o.result
        );
        // Catalog commands are not reported.
        sm.apply(
            4,
            &Command::DeleteVhd {
                vhd: csv_api::VhdId(1),
            }
            .encode(),
            &mut NoWrites,
        );
        assert!(rx.try_recv().is_err());
    }
}
