//! The replicated state machine interface. The store applies committed commands through
//! it and persists what it writes together with the applied index, in one batch.

use crate::engine::{Cf, KvEngine, Visit, WriteBatch};
use crate::error::StoreError;

/// Writes a state machine makes while applying one command. They land in the state
/// machine's column family in the same atomic batch as the applied index.
pub trait KvWrite {
    /// Sets `key` to `value`.
    fn put(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, key: &[u8]);
}

/// Read access to the persisted state-machine data (at start and after a snapshot).
pub trait KvRead {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits keys in `[start, end)` in order until the visitor returns `false`.
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
}

/// A deterministic state machine replicated by Raft.
///
/// Determinism is the contract: the same commands applied in the same order from the same
/// loaded state produce the same results, the same writes and the same in-memory state on
/// every node. Do not read clocks, random numbers or local configuration in `apply`.
pub trait StateMachine: Send + 'static {
    /// Applies the committed command at log `index`, records its persistent effects in
    /// `writes` and returns the result the proposer receives. Invalid commands must be
    /// answered with an error result (encoded in the bytes), never a panic.
    fn apply(&mut self, index: u64, command: &[u8], writes: &mut dyn KvWrite) -> Vec<u8>;

    /// Replaces the whole in-memory state with what `reader` holds. Called once at start
    /// and after every snapshot install.
    fn load(&mut self, reader: &dyn KvRead) -> Result<(), StoreError>;

    /// Answers a read-only query from the current state (linearizable when reached through
    /// `MetaHandle::query`).
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// A hash of the in-memory state, for tests that compare replicas. `None` when the
    /// state machine does not provide one (the store still compares persisted data).
    fn state_hash(&self) -> Option<u64> {
        None
    }
}

/// Collects state-machine writes into the apply batch.
pub(crate) struct SmWriter<'a> {
    pub(crate) batch: &'a mut WriteBatch,
}

impl KvWrite for SmWriter<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(Cf::Sm, key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.batch.delete(Cf::Sm, key.to_vec());
    }
}

/// Reads the state-machine family of an engine.
pub(crate) struct SmReader<'a, E: KvEngine> {
    pub(crate) engine: &'a E,
}

impl<E: KvEngine> KvRead for SmReader<'_, E> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(Cf::Sm, key)
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.engine.scan(Cf::Sm, start, end, visit)
    }
}
