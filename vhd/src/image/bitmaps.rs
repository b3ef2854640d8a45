//! In-memory sector bitmaps of a differencing image, sharded by block. A block that is
//! allocated and absent from the map has an all-ones bitmap (no 512-byte copy kept);
//! blocks with some clear bits keep their bitmap here. Dirty blocks are written at flush.

use crate::bitmap;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

/// Number of lock shards (blocks map to shard `block % SHARDS`).
pub const SHARDS: usize = 64;

#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) partial: HashMap<u32, Box<[u8]>>,
    pub(crate) dirty: HashSet<u32>,
}

#[derive(Debug)]
pub(crate) struct Bitmaps {
    shards: Vec<Mutex<Shard>>,
    pub(crate) bytes: usize,
    pub(crate) sectors: u32,
}

impl Bitmaps {
    pub(crate) fn new(bytes: usize, sectors: u32) -> Bitmaps {
        Bitmaps {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            bytes,
            sectors,
        }
    }

    pub(crate) fn lock(&self, block: u32) -> MutexGuard<'_, Shard> {
        self.shards[block as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the bitmap of a newly loaded or allocated block (full bitmaps are not stored).
    pub(crate) fn install(&self, block: u32, bm: Vec<u8>) {
        let mut s = self.lock(block);
        if bitmap::is_full(&bm, self.sectors) {
            s.partial.remove(&block);
        } else {
            s.partial.insert(block, bm.into_boxed_slice());
        }
    }

    pub(crate) fn remove(&self, block: u32) {
        let mut s = self.lock(block);
        s.partial.remove(&block);
        s.dirty.remove(&block);
    }

    /// Runs of present/absent sectors in `start..end` of an allocated block, or `None`
    /// when the block's bitmap is full.
    pub(crate) fn runs(&self, block: u32, start: u32, end: u32) -> Option<Vec<(u32, u32, bool)>> {
        let s = self.lock(block);
        s.partial.get(&block).map(|bm| bitmap::runs(bm, start, end))
    }

    pub(crate) fn all_present(&self, block: u32, start: u32, end: u32) -> bool {
        let s = self.lock(block);
        s.partial
            .get(&block)
            .is_none_or(|bm| bitmap::all_set(bm, start, end))
    }

    /// A copy of the block's bitmap (all ones when full).
    pub(crate) fn get(&self, block: u32) -> Vec<u8> {
        let s = self.lock(block);
        s.partial
            .get(&block)
            .map_or_else(|| bitmap::full(self.bytes), |b| b.to_vec())
    }

    /// Takes the dirty set of every shard: (block, bitmap bytes).
    pub(crate) fn take_dirty(&self) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let dirty: Vec<u32> = s.dirty.drain().collect();
            for b in dirty {
                let bytes = s
                    .partial
                    .get(&b)
                    .map_or_else(|| bitmap::full(self.bytes), |x| x.to_vec());
                out.push((b, bytes));
            }
        }
        out
    }

    pub(crate) fn mark_dirty(&self, blocks: impl IntoIterator<Item = u32>) {
        for b in blocks {
            self.lock(b).dirty.insert(b);
        }
    }

    pub(crate) fn any_dirty(&self) -> bool {
        self.shards
            .iter()
            .any(|s| !s.lock().unwrap_or_else(|e| e.into_inner()).dirty.is_empty())
    }
}
