//! The ordered key-value engine under the Raft storage: column families, atomic write
//! batches with or without fsync, ordered scans. Two implementations share every code path
//! above this trait: RocksDB on disk and an in-memory engine for the simulation (which can
//! also lose the writes that were never synced, to model a power cut).

mod mem;
mod rocks;

pub use mem::MemEngine;
pub use rocks::RocksEngine;

use crate::error::StoreError;

/// Column families. Keys inside each are described in `keys.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Raft log entries by index.
    Log,
    /// Raft metadata: hard state, conf state, truncated and applied positions, identity.
    Meta,
    /// State-machine data, written only by `StateMachine::apply` and snapshot install.
    Sm,
    /// Replicated address book: node id to address.
    Peers,
    /// Replicated client sessions: results of recent requests, for exactly-once retries.
    Sessions,
}

impl Cf {
    /// Every column family, in a fixed order.
    pub const ALL: [Cf; 5] = [Cf::Log, Cf::Meta, Cf::Sm, Cf::Peers, Cf::Sessions];

    /// The RocksDB column family name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Log => "raft_log",
            Cf::Meta => "raft_meta",
            Cf::Sm => "sm_data",
            Cf::Peers => "sm_peers",
            Cf::Sessions => "sm_sessions",
        }
    }

    pub(crate) fn slot(self) -> usize {
        match self {
            Cf::Log => 0,
            Cf::Meta => 1,
            Cf::Sm => 2,
            Cf::Peers => 3,
            Cf::Sessions => 4,
        }
    }
}

/// One operation of a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put(Cf, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Cf, Vec<u8>),
    /// Remove every key in `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// Operations applied atomically, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(cf, key.into(), value.into()));
    }

    /// Removes `key` from `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(cf, key.into()));
    }

    /// Removes the keys of `cf` in `[start, end)`.
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(cf, start.into(), end.into()));
    }

    /// The operations in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

/// A key and its value.
pub type KvPairOwned = (Vec<u8>, Vec<u8>);

/// Visitor of an ordered scan: return `false` to stop.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> bool + 'a;

/// An ordered key-value store with column families and atomic batches.
///
/// The node's driver is the only writer, so reads issued by the driver between two of its
/// writes see one consistent state (snapshots rely on this).
pub trait KvEngine: Send + Sync + 'static {
    /// The value of `key`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits the keys in `[start, end)` (to the end of the family when `end` is `None`) in
    /// ascending order until the visitor returns `false`.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
    /// The greatest key of `cf` and its value.
    fn last(&self, cf: Cf) -> Result<Option<KvPairOwned>, StoreError>;
    /// Applies `batch` atomically. With `sync`, the batch and every earlier one are durable
    /// when this returns; without, they become durable with the next synced write.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError>;
}

impl<E: KvEngine + ?Sized> KvEngine for std::sync::Arc<E> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(cf, key)
    }
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        (**self).scan(cf, start, end, visit)
    }
    fn last(&self, cf: Cf) -> Result<Option<KvPairOwned>, StoreError> {
        (**self).last(cf)
    }
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        (**self).write(batch, sync)
    }
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour both engines must share, run against each.
    use super::*;

    fn collect(e: &dyn KvEngine, cf: Cf, start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        e.scan(cf, start, end, &mut |k, _| {
            out.push(k.to_vec());
            true
        })
        .expect("scan");
        out
    }

    pub(crate) fn check(e: &dyn KvEngine) {
        let mut b = WriteBatch::new();
        for i in 0u64..10 {
            b.put(Cf::Log, i.to_be_bytes(), vec![i as u8]);
        }
        b.put(Cf::Sm, b"a".to_vec(), b"1".to_vec());
        e.write(b, true).expect("write");
        assert_eq!(
            e.get(Cf::Log, &3u64.to_be_bytes()).expect("get"),
            Some(vec![3])
        );
        assert_eq!(
            e.get(Cf::Meta, b"a").expect("get"),
            None,
            "families are separate"
        );
        let (k, v) = e.last(Cf::Log).expect("last").expect("some");
        assert_eq!((k, v), (9u64.to_be_bytes().to_vec(), vec![9]));
        assert_eq!(e.last(Cf::Peers).expect("last"), None);

        let mut b = WriteBatch::new();
        b.delete_range(Cf::Log, 2u64.to_be_bytes(), 5u64.to_be_bytes());
        b.delete(Cf::Log, 9u64.to_be_bytes());
        b.put(Cf::Log, 3u64.to_be_bytes(), vec![33]); // after the range delete: survives
        e.write(b, false).expect("write");
        let keys: Vec<u64> = collect(e, Cf::Log, &[], None)
            .iter()
            .map(|k| u64::from_be_bytes(k.as_slice().try_into().expect("8 bytes")))
            .collect();
        assert_eq!(keys, vec![0, 1, 3, 5, 6, 7, 8]);
        assert_eq!(
            e.get(Cf::Log, &3u64.to_be_bytes()).expect("get"),
            Some(vec![33])
        );
        let bounded = collect(e, Cf::Log, &1u64.to_be_bytes(), Some(&6u64.to_be_bytes()));
        assert_eq!(bounded.len(), 3);
        let mut n = 0;
        e.scan(Cf::Log, &[], None, &mut |_, _| {
            n += 1;
            n < 2
        })
        .expect("scan");
        assert_eq!(n, 2, "visitor stops the scan");
    }
}
