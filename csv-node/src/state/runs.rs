//! Sets of extent runs: the free pool and each node's reservation. Runs never overlap and
//! adjacent runs are merged, so a set has one canonical form (equal sets, equal bytes on
//! every replica). A (length, start) index answers best-fit queries. Starts whose run
//! changed are remembered until the host persists them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Consecutive extents `[start, start + count)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Run {
    /// First extent.
    pub start: u64,
    /// Number of extents (> 0).
    pub count: u64,
}

impl Run {
    /// One past the last extent (saturating: never overflows for valid runs).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }
}

/// A canonical set of extent runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSet {
    by_start: BTreeMap<u64, u64>,
    by_len: BTreeSet<(u64, u64)>,
    total: u64,
    dirty: BTreeSet<u64>,
}

impl RunSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Extents in the set.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Runs in the set.
    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// The longest run's length.
    pub fn largest(&self) -> u64 {
        self.by_len.last().map_or(0, |(l, _)| *l)
    }

    /// Runs ascending by start.
    pub fn runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.by_start.iter().map(|(s, c)| Run {
            start: *s,
            count: *c,
        })
    }

    fn put(&mut self, start: u64, count: u64) {
        self.by_start.insert(start, count);
        self.by_len.insert((count, start));
        self.total += count;
        self.dirty.insert(start);
    }

    fn take(&mut self, start: u64) -> Option<u64> {
        let count = self.by_start.remove(&start)?;
        self.by_len.remove(&(count, start));
        self.total -= count;
        self.dirty.insert(start);
        Some(count)
    }

    /// True when `run` overlaps no run of the set.
    pub fn is_disjoint(&self, run: Run) -> bool {
        let before = self.by_start.range(..run.end()).next_back();
        before.is_none_or(|(s, c)| s.saturating_add(*c) <= run.start)
    }

    /// True when `run` lies inside one run of the set.
    pub fn contains(&self, run: Run) -> bool {
        self.by_start
            .range(..=run.start)
            .next_back()
            .is_some_and(|(s, c)| s.saturating_add(*c) >= run.end())
    }

    /// Adds `run`, merging it with its neighbours. The caller checked it is disjoint.
    pub fn insert(&mut self, run: Run) {
        debug_assert!(run.count > 0 && self.is_disjoint(run));
        let mut start = run.start;
        let mut count = run.count;
        if let Some((&ps, &pc)) = self.by_start.range(..run.start).next_back()
            && ps + pc == run.start
        {
            self.take(ps);
            start = ps;
            count += pc;
        }
        if let Some(nc) = self.by_start.get(&run.end()).copied() {
            self.take(run.end());
            count += nc;
        }
        self.put(start, count);
    }

    /// Removes `run`, which the caller checked lies inside one run, splitting that run.
    pub fn remove(&mut self, run: Run) {
        debug_assert!(self.contains(run));
        let Some((&s, _)) = self.by_start.range(..=run.start).next_back() else {
            return;
        };
        let Some(c) = self.take(s) else { return };
        if run.start > s {
            self.put(s, run.start - s);
        }
        let end = s + c;
        if end > run.end() {
            self.put(run.end(), end - run.end());
        }
    }

    /// Plans taking `count` extents: the smallest run that holds them all (lowest start
    /// on ties); else the longest runs in turn, at most `max_runs` of them. `None` when
    /// that cannot cover `count`. Changes nothing.
    pub fn plan(&self, count: u64, max_runs: usize) -> Option<Vec<Run>> {
        if count == 0 {
            return Some(Vec::new());
        }
        if count > self.total {
            return None;
        }
        if let Some(&(_, start)) = self.by_len.range((count, 0)..).next() {
            return Some(vec![Run { start, count }]);
        }
        let mut need = count;
        let mut out = Vec::new();
        for &(len, start) in self.by_len.iter().rev() {
            if out.len() == max_runs {
                return None;
            }
            let take = len.min(need);
            out.push(Run { start, count: take });
            need -= take;
            if need == 0 {
                out.sort();
                return Some(out);
            }
        }
        None
    }

    /// Removes every run and returns them ascending.
    pub fn drain(&mut self) -> Vec<Run> {
        let runs: Vec<Run> = self.runs().collect();
        for r in &runs {
            self.take(r.start);
        }
        runs
    }

    /// Starts changed since the last call, with their current length (`None`: gone).
    pub fn take_dirty(&mut self) -> Vec<(u64, Option<u64>)> {
        let d = std::mem::take(&mut self.dirty);
        d.into_iter()
            .map(|s| (s, self.by_start.get(&s).copied()))
            .collect()
    }

    /// Loads a persisted run (no merge: persisted sets are canonical already).
    pub fn load(&mut self, run: Run) -> Result<(), String> {
        if run.count == 0 || !self.is_disjoint(run) || run.start.checked_add(run.count).is_none() {
            return Err(format!("persisted run {run:?} is empty or overlaps"));
        }
        self.put(run.start, run.count);
        self.dirty.remove(&run.start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, count: u64) -> Run {
        Run { start, count }
    }

    #[test]
    fn merge_split_and_best_fit() {
        let mut s = RunSet::new();
        s.insert(r(0, 10));
        s.insert(r(20, 5));
        s.insert(r(10, 10));
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![r(0, 25)]);
        s.remove(r(5, 5));
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![r(0, 5), r(10, 15)]);
        assert_eq!(s.plan(4, 8), Some(vec![r(0, 4)]), "smallest run that fits");
        assert_eq!(s.plan(6, 8), Some(vec![r(10, 6)]));
        assert_eq!(s.plan(18, 8), Some(vec![r(0, 3), r(10, 15)]));
        assert_eq!(s.plan(18, 1), None, "too many runs");
        assert_eq!(s.plan(21, 8), None);
        assert!(!s.is_disjoint(r(4, 2)));
        assert!(s.is_disjoint(r(5, 5)));
        assert!(s.contains(r(11, 3)));
        assert!(!s.contains(r(4, 2)));
        assert_eq!(s.total(), 20);
        assert_eq!(s.largest(), 15);
        let d = s.take_dirty();
        assert!(d.contains(&(0, Some(5))) && d.contains(&(10, Some(15))));
        assert!(d.contains(&(20, None)));
        assert_eq!(s.drain(), vec![r(0, 5), r(10, 15)]);
        assert!(s.is_empty());
    }

    proptest! {
        // Inserting and removing runs keeps the set equal to a plain bitmap model, and
        // the canonical form is independent of the operation order.
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..60, 1u64..8), 1..80)) {
            let mut s = RunSet::new();
            let mut bits = [false; 70];
            for (add, start, count) in ops {
                let run = r(start, count);
                if add && s.is_disjoint(run) {
                    s.insert(run);
                    for b in &mut bits[start as usize..(start + count) as usize] { *b = true; }
                } else if !add && s.contains(run) {
                    s.remove(run);
                    for b in &mut bits[start as usize..(start + count) as usize] { *b = false; }
                }
                let mut rebuilt = RunSet::new();
                let mut i = 0;
                while i < bits.len() {
                    if bits[i] {
                        let j = (i..bits.len()).find(|&j| !bits[j]).unwrap_or(bits.len());
                        rebuilt.insert(r(i as u64, (j - i) as u64));
                        i = j;
                    } else {
                        i += 1;
                    }
                }
                prop_assert_eq!(s.runs().collect::<Vec<_>>(), rebuilt.runs().collect::<Vec<_>>());
                prop_assert_eq!(s.total(), bits.iter().filter(|b| **b).count() as u64);
            }
        }
    }
}
