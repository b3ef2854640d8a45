//! The extent map of one file: runs of LUN extent indices in file order, so a
//! contiguously allocated file is one run. Immutable once published (the extent file
//! swaps whole maps), with a prefix index for O(log runs) lookups.

/// Most runs one file's map may have.
pub const MAX_RUNS: usize = 1 << 20;

/// `count` consecutive LUN extents starting at extent index `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtentRun {
    pub start: u64,
    pub count: u64,
}

impl ExtentRun {
    pub fn new(start: u64, count: u64) -> ExtentRun {
        ExtentRun { start, count }
    }

    /// One past the last extent (None on overflow).
    pub fn end(&self) -> Option<u64> {
        self.start.checked_add(self.count)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("empty run at extent {0}")]
    EmptyRun(u64),
    #[error("run at {start} of {count} extents overflows")]
    Overflow { start: u64, count: u64 },
    #[error("extent {0} is mapped twice")]
    Duplicate(u64),
    #[error("more than {MAX_RUNS} runs")]
    TooManyRuns,
    #[error("extent {index} is beyond the volume's {count} extents")]
    OutOfVolume { index: u64, count: u64 },
}

/// Runs in file order. File extent `i` is LUN extent `lookup(i)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtentMap {
    runs: Vec<ExtentRun>,
    /// File extent index at which each run begins.
    starts: Vec<u64>,
    total: u64,
}

impl ExtentMap {
    pub fn new() -> ExtentMap {
        ExtentMap::default()
    }

    /// Builds a map from runs in file order (adjacent contiguous runs are merged),
    /// refusing empty, overflowing or overlapping runs.
    pub fn from_runs(runs: &[ExtentRun]) -> Result<ExtentMap, MapError> {
        let mut sorted: Vec<ExtentRun> = Vec::with_capacity(runs.len());
        for r in runs {
            if r.count == 0 {
                return Err(MapError::EmptyRun(r.start));
            }
            r.end().ok_or(MapError::Overflow {
                start: r.start,
                count: r.count,
            })?;
            sorted.push(*r);
        }
        sorted.sort_unstable();
        for w in sorted.windows(2) {
            // Both ends were checked above.
            if w[0].start + w[0].count > w[1].start {
                return Err(MapError::Duplicate(w[1].start));
            }
        }
        let mut m = ExtentMap::new();
        for r in runs {
            m.push_unchecked(*r)?;
        }
        Ok(m)
    }

    fn push_unchecked(&mut self, r: ExtentRun) -> Result<(), MapError> {
        if let Some(last) = self.runs.last_mut()
            && last.start + last.count == r.start
        {
            last.count += r.count;
        } else {
            if self.runs.len() >= MAX_RUNS {
                return Err(MapError::TooManyRuns);
            }
            self.runs.push(r);
            self.starts.push(self.total);
        }
        self.total = self.total.checked_add(r.count).ok_or(MapError::Overflow {
            start: r.start,
            count: r.count,
        })?;
        Ok(())
    }

    /// Appends a run at the file's end (merged with the last run when contiguous).
    /// Refuses extents already in the map.
    pub fn push(&mut self, r: ExtentRun) -> Result<(), MapError> {
        if r.count == 0 {
            return Err(MapError::EmptyRun(r.start));
        }
        let end = r.end().ok_or(MapError::Overflow {
            start: r.start,
            count: r.count,
        })?;
        for x in &self.runs {
            if x.start < end && r.start < x.start + x.count {
                return Err(MapError::Duplicate(r.start.max(x.start)));
            }
        }
        self.push_unchecked(r)
    }

    pub fn runs(&self) -> &[ExtentRun] {
        &self.runs
    }

    /// Number of extents mapped.
    pub fn extent_count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The last LUN extent of the file (the contiguity hint for growth).
    pub fn last_extent(&self) -> Option<u64> {
        self.runs.last().map(|r| r.start + r.count - 1)
    }

    /// Highest LUN extent index used, for range checks against the volume.
    pub fn check_within(&self, extent_count: u64) -> Result<(), MapError> {
        for r in &self.runs {
            if r.start + r.count > extent_count {
                return Err(MapError::OutOfVolume {
                    index: r.start + r.count - 1,
                    count: extent_count,
                });
            }
        }
        Ok(())
    }

    /// LUN extent of file extent `i`, and how many file extents from `i` on continue
    /// contiguously on the LUN (at least 1).
    pub fn segment(&self, i: u64) -> Option<(u64, u64)> {
        if i >= self.total {
            return None;
        }
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        let r = self.runs[k];
        let within = i - self.starts[k];
        Some((r.start + within, r.count - within))
    }

    /// LUN extent of file extent `i`.
    pub fn lookup(&self, i: u64) -> Option<u64> {
        self.segment(i).map(|(e, _)| e)
    }

    /// Keeps the first `keep` file extents; returns the runs removed.
    pub fn truncate(&mut self, keep: u64) -> Vec<ExtentRun> {
        if keep >= self.total {
            return Vec::new();
        }
        let mut removed = Vec::new();
        while let (Some(&r), Some(&s)) = (self.runs.last(), self.starts.last()) {
            if s >= keep {
                removed.push(r);
                self.runs.pop();
                self.starts.pop();
            } else {
                let kept = keep - s;
                if kept < r.count {
                    removed.push(ExtentRun::new(r.start + kept, r.count - kept));
                    if let Some(last) = self.runs.last_mut() {
                        last.count = kept;
                    }
                }
                break;
            }
        }
        self.total = keep;
        removed.reverse();
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merge_lookup_truncate() {
        let mut m = ExtentMap::new();
        m.push(ExtentRun::new(10, 2)).unwrap();
        m.push(ExtentRun::new(12, 3)).unwrap();
        assert_eq!(m.runs(), &[ExtentRun::new(10, 5)]);
        m.push(ExtentRun::new(3, 1)).unwrap();
        assert_eq!(m.extent_count(), 6);
        assert_eq!(m.segment(0), Some((10, 5)));
        assert_eq!(m.segment(4), Some((14, 1)));
        assert_eq!(m.segment(5), Some((3, 1)));
        assert_eq!(m.segment(6), None);
        assert_eq!(m.push(ExtentRun::new(11, 1)), Err(MapError::Duplicate(11)));
        assert_eq!(m.push(ExtentRun::new(0, 0)), Err(MapError::EmptyRun(0)));
        let removed = m.truncate(3);
        assert_eq!(removed, vec![ExtentRun::new(13, 2), ExtentRun::new(3, 1)]);
        assert_eq!(m.runs(), &[ExtentRun::new(10, 3)]);
        assert_eq!(m.truncate(0), vec![ExtentRun::new(10, 3)]);
        assert!(m.is_empty());
        assert_eq!(
            ExtentMap::from_runs(&[ExtentRun::new(0, 4), ExtentRun::new(3, 1)]),
            Err(MapError::Duplicate(3))
        );
        assert!(ExtentMap::from_runs(&[ExtentRun::new(u64::MAX, 2)]).is_err());
        let m = ExtentMap::from_runs(&[ExtentRun::new(5, 2)]).unwrap();
        assert!(m.check_within(7).is_ok());
        assert!(m.check_within(6).is_err());
    }

    fn runs_strategy() -> impl Strategy<Value = Vec<ExtentRun>> {
        // Disjoint runs: a shuffled partition of [0, N) into pieces.
        (prop::collection::vec(1u64..6, 0..20), any::<u64>()).prop_map(|(lens, seed)| {
            let mut runs = Vec::new();
            let mut at = 0;
            for l in lens {
                runs.push(ExtentRun::new(at, l));
                at += l + (seed % 3);
            }
            // deterministic shuffle
            let n = runs.len();
            for i in 0..n {
                let j = ((seed >> (i % 60)) as usize + i * 7) % n;
                runs.swap(i, j);
            }
            runs
        })
    }

    proptest! {
        #[test]
        fn map_matches_flat_model(runs in runs_strategy(), cut in 0u64..120) {
            let flat: Vec<u64> = runs.iter().flat_map(|r| r.start..r.start + r.count).collect();
            let mut m = ExtentMap::from_runs(&runs).unwrap();
            prop_assert_eq!(m.extent_count(), flat.len() as u64);
            for (i, &e) in flat.iter().enumerate() {
                let (lun, cont) = m.segment(i as u64).unwrap();
                prop_assert_eq!(lun, e);
                // `cont` extents are really contiguous in the model.
                for k in 0..cont {
                    prop_assert_eq!(flat[i + k as usize], e + k);
                }
            }
            // Adjacent runs are always merged: consecutive runs are never contiguous.
            for w in m.runs().windows(2) {
                prop_assert!(w[0].start + w[0].count != w[1].start);
            }
            let removed = m.truncate(cut);
            let keep = (cut as usize).min(flat.len());
            let gone: Vec<u64> = removed.iter().flat_map(|r| r.start..r.start + r.count).collect();
            prop_assert_eq!(&gone[..], &flat[keep..]);
            prop_assert_eq!(m.extent_count(), keep as u64);
            for (i, &e) in flat[..keep].iter().enumerate() {
                prop_assert_eq!(m.lookup(i as u64), Some(e));
            }
            prop_assert_eq!(m.lookup(keep as u64), None);
        }
    }
}
