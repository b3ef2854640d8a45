//! The flush of an extent file (docs/design/041 §4, 042 §5): path flush, then the pending
//! mapping and length to the sink; a flush that cannot vouch for the file's writes
//! poisons the file until it is reopened.

use super::{ExtentError, ExtentFile, lock};
use crate::hooks::MapUpdate;
use crate::nonblocking;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl ExtentFile {
    /// Path flush, then the pending mapping and length go to the sink. Read-only files:
    /// nothing to do. A failed commit leaves everything pending (a later flush sends it
    /// again). A failed path flush, or writes of this file that a lost connection may have
    /// carried, poison the file: this flush and every later one fail, so no VHD metadata
    /// written after it can point at data that may be gone.
    pub fn flush(&self) -> Result<(), ExtentError> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        if nonblocking::active() {
            return Err(self.would_block("flush"));
        }
        let _serial = lock(&self.flush_lock);
        crate::failpoint::crash("extent.flush.enter");
        if let Some(reason) = self.poisoned() {
            return Err(self.poisoned_err(reason));
        }
        let (map, len, released, changed) = {
            let p = lock(&self.growth);
            let map = self.map.load_full();
            let len = self.len.load(Ordering::Acquire);
            let changed = !p.released.is_empty()
                || len != p.committed_len
                || !Arc::ptr_eq(&map, &p.committed_map);
            (map, len, p.released.clone(), changed)
        };
        let wrote = self.wrote.swap(false, Ordering::AcqRel);
        if let Err(e) = self.lun.flush() {
            if wrote {
                return Err(self.poison(format!("a flush failed: {e}")));
            }
            return Err(self.path_err(e));
        }
        let lost = self.lun.lost_writes();
        if lost != self.loss_seen.load(Ordering::Acquire) {
            if wrote {
                return Err(self.poison(
                    "a connection that carried completed, unflushed writes was lost: they may \
                     not be on the LUN"
                        .into(),
                ));
            }
            self.loss_seen.store(lost, Ordering::Release);
        }
        if !changed {
            return Ok(());
        }
        crate::failpoint::crash("extent.flush.after_path_flush");
        let update = MapUpdate {
            len,
            runs: map.runs().to_vec(),
            released,
        };
        w.sink
            .commit(&update)
            .map_err(|source| ExtentError::Commit {
                file: self.name.clone(),
                source,
            })?;
        crate::failpoint::crash("extent.flush.after_commit");
        let mut p = lock(&self.growth);
        p.committed_map = map;
        p.committed_len = len;
        // Only the runs this commit carried; later ones were appended after them.
        let n = update.released.len().min(p.released.len());
        p.released.drain(..n);
        Ok(())
    }

    fn poisoned_err(&self, reason: String) -> ExtentError {
        ExtentError::Poisoned {
            file: self.name.clone(),
            reason,
        }
    }

    fn poison(&self, reason: String) -> ExtentError {
        tracing::error!(file = %self.name, %reason, "flushes of this file fail until it is reopened");
        let mut g = lock(&self.poisoned);
        let r = g.get_or_insert(reason).clone();
        self.poisoned_err(r)
    }
}
