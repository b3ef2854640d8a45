//! `flush()`: when metadata is dirty, storage flush (data, new blocks and footers
//! durable), then the dirty BAT sectors and differencing bitmaps, then a second storage
//! flush; otherwise one storage flush. The on-disk BAT therefore never points at a block
//! whose data is not durable, and no bitmap bit on disk covers non-durable data.

use super::Image;
use crate::bat;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

impl Image {
    /// True when BAT sectors or bitmaps wait for a flush.
    pub fn is_dirty(&self) -> bool {
        let Some(d) = &self.dynamic else { return false };
        !d.dirty_bat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
            || d.bitmaps.as_ref().is_some_and(|b| b.any_dirty())
    }

    /// Makes every completed write durable, with metadata written after the data it
    /// points at.
    pub fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Error::Poisoned);
        }
        let _serial = self.flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(d) = &self.dynamic else {
            return self.storage.flush().map_err(|e| Error::io("flush", e));
        };
        // Snapshot under the allocation lock: every allocation is either complete (its data
        // write returned, so the first storage flush covers it) or not yet visible.
        let bat_sectors: Vec<(u32, Vec<u8>)> = {
            let _st = d.lock_alloc();
            let dirty = std::mem::take(&mut *d.dirty_bat.lock().unwrap_or_else(|e| e.into_inner()));
            dirty
                .into_iter()
                .map(|s| {
                    let vals: Vec<u32> = bat::blocks_in_sector(s, d.header.max_table_entries)
                        .map(|b| d.bat[b as usize].load(Ordering::Acquire))
                        .collect();
                    (s, bat::encode(&vals))
                })
                .collect()
        };
        let bitmaps: Vec<(u32, u64, Vec<u8>)> = match &d.bitmaps {
            None => Vec::new(),
            Some(bms) => bms
                .take_dirty()
                .into_iter()
                .filter_map(|(b, bytes)| {
                    let e = d.entry(b);
                    (e != bat::UNALLOCATED).then(|| (b, u64::from(e) * 512, bytes))
                })
                .collect(),
        };
        if bat_sectors.is_empty() && bitmaps.is_empty() {
            return self.storage.flush().map_err(|e| Error::io("flush", e));
        }
        let res = (|| -> Result<()> {
            self.storage
                .flush()
                .map_err(|e| Error::io("flush data", e))?;
            for (s, bytes) in &bat_sectors {
                let off = d.header.table_offset + u64::from(*s) * 512;
                self.storage
                    .write_at(bytes, off)
                    .map_err(|e| Error::io(format!("write BAT sector {s}"), e))?;
            }
            for (_, off, bytes) in &bitmaps {
                self.storage
                    .write_at(bytes, *off)
                    .map_err(|e| Error::io("write sector bitmap", e))?;
            }
            self.storage
                .flush()
                .map_err(|e| Error::io("flush metadata", e))
        })();
        if res.is_err() {
            // Keep them dirty so a later flush retries.
            let mut set = d.dirty_bat.lock().unwrap_or_else(|e| e.into_inner());
            set.extend(bat_sectors.iter().map(|(s, _)| *s));
            drop(set);
            if let Some(bms) = &d.bitmaps {
                bms.mark_dirty(bitmaps.iter().map(|(b, _, _)| *b));
            }
        }
        res
    }
}
