//! In-memory engine for the simulation. It keeps what a synced write made durable apart
//! from what later unsynced writes added, so a simulated crash can either keep the unsynced
//! writes (process killed: the OS still has them) or lose them (power cut).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use super::{Cf, KvEngine, KvPairOwned, Op, Visit, WriteBatch};
use crate::error::StoreError;

type Family = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default, Clone)]
struct Tables {
    cfs: [Family; 5],
}

impl Tables {
    fn apply(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            match op {
                Op::Put(cf, k, v) => {
                    self.cfs[cf.slot()].insert(k.clone(), v.clone());
                }
                Op::Delete(cf, k) => {
                    self.cfs[cf.slot()].remove(k);
                }
                Op::DeleteRange(cf, s, e) => {
                    let fam = &mut self.cfs[cf.slot()];
                    let doomed: Vec<Vec<u8>> = fam
                        .range::<[u8], _>((Bound::Included(&s[..]), Bound::Excluded(&e[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        fam.remove(&k);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// What reads see: durable state plus unsynced batches.
    visible: Tables,
    /// What survives a power cut.
    durable: Tables,
    /// Batches written without sync since the last synced write.
    unsynced: Vec<WriteBatch>,
}

/// In-memory [`KvEngine`] with crash simulation.
#[derive(Debug, Default)]
pub struct MemEngine {
    inner: Mutex<Inner>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock can only come from a bug in this file; the data
        // is still consistent (every operation completes before the guard drops).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Simulates a crash: with `lose_unsynced`, writes made without sync since the last
    /// synced write vanish (power cut); otherwise they survive (process killed).
    pub fn crash(&self, lose_unsynced: bool) {
        let mut g = self.lock();
        if lose_unsynced {
            g.visible = g.durable.clone();
            g.unsynced.clear();
        } else {
            let pending = std::mem::take(&mut g.unsynced);
            for b in &pending {
                g.durable.apply(b);
            }
        }
    }

    /// Number of keys in `cf` (tests).
    pub fn len(&self, cf: Cf) -> usize {
        self.lock().visible.cfs[cf.slot()].len()
    }

    /// True when `cf` holds no key (tests).
    pub fn is_empty(&self, cf: Cf) -> bool {
        self.len(cf) == 0
    }
}

impl KvEngine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().visible.cfs[cf.slot()].get(key).cloned())
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let g = self.lock();
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        for (k, v) in g.visible.cfs[cf.slot()].range::<[u8], _>((Bound::Included(start), upper)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf) -> Result<Option<KvPairOwned>, StoreError> {
        Ok(self.lock().visible.cfs[cf.slot()]
            .iter()
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.visible.apply(&batch);
        if sync {
            let pending = std::mem::take(&mut g.unsynced);
            for b in &pending {
                g.durable.apply(b);
            }
            g.durable.apply(&batch);
        } else {
            g.unsynced.push(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        crate::engine::conformance::check(&MemEngine::new());
    }

    #[test]
    fn crash_keeps_or_loses_unsynced_writes() {
        for lose in [false, true] {
            let e = MemEngine::new();
            let mut b = WriteBatch::new();
            b.put(Cf::Sm, b"synced".to_vec(), b"1".to_vec());
            e.write(b, true).expect("write");
            let mut b = WriteBatch::new();
            b.put(Cf::Sm, b"unsynced".to_vec(), b"1".to_vec());
            e.write(b, false).expect("write");
            e.crash(lose);
            assert!(e.get(Cf::Sm, b"synced").expect("get").is_some());
            assert_eq!(e.get(Cf::Sm, b"unsynced").expect("get").is_some(), !lose);
            // A later synced write makes earlier unsynced ones durable too.
            let mut b = WriteBatch::new();
            b.put(Cf::Sm, b"u2".to_vec(), b"1".to_vec());
            e.write(b, false).expect("write");
            let mut b = WriteBatch::new();
            b.put(Cf::Sm, b"s2".to_vec(), b"1".to_vec());
            e.write(b, true).expect("write");
            e.crash(true);
            assert!(e.get(Cf::Sm, b"u2").expect("get").is_some());
        }
    }
}
