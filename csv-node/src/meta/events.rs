//! The cluster state machine as meta-store runs it ([`Replica`]: the codec at its edge,
//! typed commands inside) and the node's subscriptions to what it applies ([`EventHub`]).
//! Applying a command returns its reply and typed [`StateEvent`]s; the hub hands lock
//! events to the lease driver and wakes the waiters of remote requests and of the
//! catalog. Every replica applies every entry, so each node hears of the hand-off requests
//! and transfers that name it, and the coordinator's tracker sees renewals after they were
//! applied (design 030 §4.1). Nothing here changes what is applied or persisted.

use std::sync::{Arc, Mutex};

use meta_store::{KvRead, KvWrite, StateMachine, StoreError};
use tokio::sync::{Notify, mpsc};

use crate::state::types::{Command, encode_result};
use crate::state::{ClusterState, StateEvent};

/// Applied lock commands buffered for the lease driver; beyond it they are dropped (only
/// liveness suffers: a missed renewal makes an expiry fail, design 030 §4.1).
pub const MAX_LOCK_EVENTS: usize = 4096;

/// A lock command and its replicated result, as every replica applied it.
#[derive(Debug, Clone)]
pub struct LockEvent {
    pub command: lock_manager::Command,
    pub result: Result<lock_manager::Outcome, lock_manager::LockError>,
}

/// Where applied events go. Shared by the replica (publisher) and the subscribers.
#[derive(Debug)]
pub struct EventHub {
    lock_tx: mpsc::Sender<LockEvent>,
    lock_rx: Mutex<Option<mpsc::Receiver<LockEvent>>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Commands applied (and snapshots loaded) so far by this replica: a view derived
    /// from the state stays current while this has not moved.
    applied: std::sync::atomic::AtomicU64,
    remote: Notify,
    remote_work: Notify,
    catalog: Notify,
    vms: Notify,
}

impl Default for EventHub {
    fn default() -> Self {
        let (lock_tx, lock_rx) = mpsc::channel(MAX_LOCK_EVENTS);
        EventHub {
            lock_tx,
            lock_rx: Mutex::new(Some(lock_rx)),
            dropped: Default::default(),
            applied: Default::default(),
            remote: Notify::new(),
            remote_work: Notify::new(),
            catalog: Notify::new(),
            vms: Notify::new(),
        }
    }
}

impl EventHub {
    /// The lock events, for the one lease driver (`None` once taken).
    pub fn take_lock_events(&self) -> Option<mpsc::Receiver<LockEvent>> {
        crate::sync::lock(&self.lock_rx).take()
    }

    /// Lock events dropped because the driver lagged.
    pub fn dropped_lock_events(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many commands (and snapshots) this replica has applied. Read it before a local
    /// query: while it has not moved, nothing changed what that query answered.
    pub fn applied_count(&self) -> u64 {
        self.applied.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump_applied(&self) {
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Woken (every waiter) after a command that may change a remote request.
    pub fn remote_changed(&self) -> &Notify {
        &self.remote
    }

    /// Woken (one permit) for the executor of remote requests addressed to this node.
    pub fn remote_work(&self) -> &Notify {
        &self.remote_work
    }

    /// Woken (every waiter) after a catalog change or a recorded checkpoint (the
    /// checkpoint writer and the flushes waiting for a checkpoint: design 042 §6).
    pub fn catalog_changed(&self) -> &Notify {
        &self.catalog
    }

    /// Woken (every waiter) after a command that may change a VM's record or where VMs
    /// may run (the VM supervisor).
    pub fn vms_changed(&self) -> &Notify {
        &self.vms
    }

    fn publish(&self, event: StateEvent) {
        match event {
            StateEvent::Lock { command, result } => {
                // A closed channel is a driver that stopped on purpose (leaving): not a lag.
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    self.lock_tx.try_send(LockEvent { command, result })
                {
                    let n = self
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(
                            dropped = n,
                            "lease driver lags: applied lock commands not reported"
                        );
                    }
                }
            }
            StateEvent::Remote => self.wake_remote(),
            StateEvent::Catalog => self.catalog.notify_waiters(),
            StateEvent::Vms => self.vms.notify_waiters(),
        }
    }

    fn wake_remote(&self) {
        self.remote.notify_waiters();
        self.remote_work.notify_one();
    }
}

/// `ClusterState` as meta-store's state machine: decodes each command once, applies it
/// typed, publishes its events and encodes the reply.
pub struct Replica {
    state: ClusterState,
    hub: Arc<EventHub>,
}

impl Replica {
    pub fn new(state: ClusterState, hub: Arc<EventHub>) -> Replica {
        Replica { state, hub }
    }
}

impl StateMachine for Replica {
    fn apply(&mut self, index: u64, command: &[u8], writes: &mut dyn KvWrite) -> Vec<u8> {
        let cmd = match Command::decode(command) {
            Ok(c) => c,
            Err(e) => return encode_result::<()>(&Err(e)),
        };
        let applied = self.state.apply_command(index, cmd, writes);
        self.hub.bump_applied();
        for event in applied.events {
            self.hub.publish(event);
        }
        encode_result(&applied.result)
    }

    fn load(&mut self, reader: &dyn KvRead) -> Result<(), StoreError> {
        let r = self.state.load(reader);
        self.hub.bump_applied();
        // A snapshot may carry requests for this node or outcomes someone waits for.
        self.hub.wake_remote();
        self.hub.catalog.notify_waiters();
        r
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.state.query(query)
    }

    fn state_hash(&self) -> Option<u64> {
        self.state.state_hash()
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").finish_non_exhaustive()
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

    fn lock(command: lock_manager::Command) -> Vec<u8> {
        Command::Lock { command }.encode()
    }

    #[test]
    fn lock_commands_are_reported_with_typed_results() {
        let hub = Arc::new(EventHub::default());
        let mut rx = hub.take_lock_events().expect("first take");
        assert!(hub.take_lock_events().is_none());
        let mut sm = Replica::new(ClusterState::new(), hub.clone());
        let renew = lock_manager::Command::Renew {
            node: NodeId(1),
            epoch: Epoch(1),
        };
        sm.apply(1, &lock(renew), &mut NoWrites);
        let o = rx.try_recv().expect("observed");
        assert_eq!(o.result, Err(LockError::UnknownNode { node: NodeId(1) }));
        sm.apply(
            2,
            &lock(lock_manager::Command::Register { node: NodeId(1) }),
            &mut NoWrites,
        );
        let o = rx.try_recv().expect("observed");
        assert!(matches!(
            o.result,
            Ok(Outcome::Registered { created: true, .. })
        ));
        let stale = lock_manager::Command::Renew {
            node: NodeId(1),
            epoch: Epoch(7),
        };
        sm.apply(3, &lock(stale), &mut NoWrites);
        let o = rx.try_recv().expect("observed");
        assert!(
            matches!(o.result, Err(LockError::StaleEpoch { current, .. }) if current == Epoch(1)),
            "{:?}",
            o.result
        );
        // Catalog commands are not lock events.
        let delete = Command::DeleteVhd {
            vhd: csv_api::VhdId(1),
        };
        sm.apply(4, &delete.encode(), &mut NoWrites);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn remote_and_catalog_waiters_wake_on_their_commands_only() {
        let hub = Arc::new(EventHub::default());
        let mut sm = Replica::new(ClusterState::new(), hub.clone());
        fn armed(n: &Notify) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
            let mut f = Box::pin(n.notified());
            f.as_mut().enable();
            f
        }
        let catalog = armed(hub.catalog_changed());
        let remote = armed(hub.remote_changed());
        let delete = Command::DeleteVhd {
            vhd: csv_api::VhdId(1),
        };
        sm.apply(1, &delete.encode(), &mut NoWrites);
        assert!(futures_util::poll!(catalog).is_ready());
        assert!(futures_util::poll!(remote).is_pending());
        let remote = armed(hub.remote_changed());
        let catalog = armed(hub.catalog_changed());
        let leave = lock_manager::Command::Leave {
            node: NodeId(3),
            epoch: Epoch(1),
        };
        sm.apply(2, &lock(leave), &mut NoWrites);
        assert!(futures_util::poll!(remote).is_ready());
        assert!(futures_util::poll!(catalog).is_pending());
        // The executor keeps one permit even with nobody waiting at the time.
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            hub.remote_work().notified(),
        )
        .await
        .expect("a permit was stored");
    }
}
