//! The extent allocator: the free pool and each node's reservation, with their keys
//! (`f/<start>` and `r/<node><start>`, run lengths). Changes mark the runs they touch;
//! `flush` writes those after every command, `load` rebuilds the allocator.

use std::collections::BTreeMap;

use csv_api::NodeId;
use meta_store::{KvRead, KvWrite};

use super::keys::{ids_of, json, key, scan_prefix, u64_of};
use super::runs::{Run, RunSet};

pub(super) const FREE: &[u8] = b"f/";
pub(super) const RESERVED: &[u8] = b"r/";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocator {
    free: RunSet,
    reserved: BTreeMap<NodeId, RunSet>,
}

impl Allocator {
    /// The free pool.
    pub fn free(&self) -> &RunSet {
        &self.free
    }

    /// Every node's reservation.
    pub fn reservations(&self) -> impl Iterator<Item = (&NodeId, &RunSet)> {
        self.reserved.iter()
    }

    /// The reservation of `node`, if it holds one.
    pub fn reservation(&self, node: NodeId) -> Option<&RunSet> {
        self.reserved.get(&node)
    }

    /// Returns `run` to the free pool.
    pub(super) fn give_back(&mut self, run: Run) {
        self.free.insert(run);
    }

    /// Takes `run` out of the free pool (a restored catalog's maps).
    pub(super) fn take(&mut self, run: Run) {
        self.free.remove(run);
    }

    /// Takes `count` extents in at most `max_runs` runs from the free pool; `None` when
    /// the pool cannot.
    pub(super) fn allocate(&mut self, count: u64, max_runs: usize) -> Option<Vec<Run>> {
        let runs = self.free.plan(count, max_runs)?;
        for r in &runs {
            self.free.remove(*r);
        }
        Some(runs)
    }

    /// Moves `count` extents (at most `max_runs` runs) from the free pool into the
    /// reservation of `node`.
    pub(super) fn reserve(
        &mut self,
        node: NodeId,
        count: u64,
        max_runs: usize,
    ) -> Option<Vec<Run>> {
        let runs = self.allocate(count, max_runs)?;
        let res = self.reserved.entry(node).or_default();
        for r in &runs {
            res.insert(*r);
        }
        Some(runs)
    }

    /// Returns the reservation of `node` to the free pool; the runs returned.
    pub(super) fn release(&mut self, node: NodeId) -> Vec<Run> {
        let Some(res) = self.reserved.get_mut(&node) else {
            return Vec::new();
        };
        let runs = res.drain();
        for r in &runs {
            self.free.insert(*r);
        }
        runs
    }

    /// Replaces the reservation of `node` (what is left after a map took runs of it).
    pub(super) fn set_reservation(&mut self, node: NodeId, res: RunSet) {
        self.reserved.insert(node, res);
    }

    /// Writes the runs that changed since the last flush.
    pub(super) fn flush(&mut self, w: &mut dyn KvWrite) {
        for (start, len) in self.free.take_dirty() {
            let k = key(FREE, &[start]);
            match len {
                Some(l) => w.put(&k, &l.to_be_bytes()),
                None => w.delete(&k),
            }
        }
        for (node, set) in self.reserved.iter_mut() {
            for (start, len) in set.take_dirty() {
                let k = key(RESERVED, &[node.0, start]);
                match len {
                    Some(l) => w.put(&k, &l.to_be_bytes()),
                    None => w.delete(&k),
                }
            }
        }
        self.reserved.retain(|_, s| !s.is_empty());
    }

    /// Feeds the state hash, in key order.
    pub(super) fn hash_into(&self, put: &mut dyn FnMut(&[u8], &[u8])) {
        for r in self.free.runs() {
            put(FREE, &json(&r));
        }
        for (n, s) in &self.reserved {
            for r in s.runs() {
                put(RESERVED, &json(&(n, r)));
            }
        }
    }

    /// The allocator as persisted under `r`.
    pub(super) fn load(r: &dyn KvRead) -> Result<Allocator, String> {
        let mut a = Allocator::default();
        scan_prefix(r, FREE, |k, v| {
            let start = ids_of("free key", k, FREE, 1)?[0];
            a.free.load(Run {
                start,
                count: u64_of("free run", v)?,
            })
        })?;
        scan_prefix(r, RESERVED, |k, v| {
            let ids = ids_of("reservation key", k, RESERVED, 2)?;
            a.reserved.entry(NodeId(ids[0])).or_default().load(Run {
                start: ids[1],
                count: u64_of("reservation run", v)?,
            })
        })?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_kv::MemKv;

    fn run(start: u64, count: u64) -> Run {
        Run { start, count }
    }

    #[test]
    fn runs_move_between_pool_and_reservations_and_load_back() {
        let mut kv = MemKv::default();
        let mut a = Allocator::default();
        a.give_back(run(0, 100));
        a.flush(&mut kv);
        let got = a.reserve(NodeId(2), 10, 4).expect("reserved");
        assert_eq!(got.iter().map(|r| r.count).sum::<u64>(), 10);
        assert_eq!(a.free().total(), 90);
        let vhd = a.allocate(20, 4).expect("allocated");
        assert_eq!(vhd.iter().map(|r| r.count).sum::<u64>(), 20);
        assert!(a.allocate(71, 4).is_none(), "only 70 left");
        a.flush(&mut kv);
        assert_eq!(Allocator::load(&kv), Ok(a.clone()));
        assert_eq!(a.release(NodeId(2)).len(), got.len());
        a.flush(&mut kv);
        assert_eq!(
            a.reservation(NodeId(2)),
            None,
            "an empty reservation is dropped"
        );
        assert_eq!(a.free().total(), 80);
        assert_eq!(Allocator::load(&kv), Ok(a));
    }
}
