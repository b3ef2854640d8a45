//! Block allocation and deallocation (docs/design/001). Allocation, under the allocation
//! mutex: (1) zero gap + bitmap at the trailing footer's position (overwriting the old
//! footer), then the caller's data in the block; the rest of the data area lies past the
//! old end of file and reads as zero without being written; (2) the footer at the new
//! end; (3) the BAT entry in memory, its BAT sector marked dirty. No flush: `flush()`
//! makes data durable before it writes BAT sectors.

use super::{Dyn, Image};
use crate::bat::UNALLOCATED;
use crate::bitmap;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;

/// Where a block goes when the trailing footer is at `footer_pos`: the first position at
/// or after it whose data area (after the bitmap) is `align`-aligned.
pub fn place_block(footer_pos: u64, bitmap_bytes: u64, align: u64) -> u64 {
    (footer_pos + bitmap_bytes).next_multiple_of(align) - bitmap_bytes
}

impl Dyn {
    /// Bytes a block occupies (bitmap + data).
    pub(crate) fn block_span(&self) -> u64 {
        u64::from(self.bitmap_bytes) + u64::from(self.block_size)
    }
}

impl Image {
    /// Allocates `block` and writes `data` at `in_block` into it. Concurrent writers into
    /// the same unallocated block serialise on the mutex; the loser finds it allocated.
    pub(crate) fn allocate_and_write(&self, block: u32, in_block: u64, data: &[u8]) -> Result<()> {
        let d = self.dyn_ref()?;
        let mut st = d.lock_alloc();
        if d.entry(block) != UNALLOCATED {
            drop(st);
            return self.write_chunk(block, in_block, data);
        }
        let bm_bytes = u64::from(d.bitmap_bytes);
        let (start, payload) = match &d.bitmaps {
            // Absent sectors read from the parent, so a partial sector takes its content.
            Some(_) => self.sector_align(block, in_block, data, |_| false)?,
            None => (in_block, data.to_vec()),
        };
        let pos = place_block(st.footer_pos, bm_bytes, d.align);
        let sector = pos / 512;
        let new_end = pos + d.block_span();
        if sector >= u64::from(UNALLOCATED) || new_end / 512 >= u64::from(UNALLOCATED) {
            return Err(Error::ImageFull);
        }
        let gap = (pos - st.footer_pos) as usize;
        let mut head = vec![0u8; gap + d.bitmap_bytes as usize];
        let bm = match &d.bitmaps {
            None => bitmap::full(d.bitmap_bytes as usize),
            Some(_) => {
                let mut bm = vec![0u8; d.bitmap_bytes as usize];
                let s0 = (start / 512) as u32;
                let s1 = s0 + (payload.len() / 512) as u32;
                bitmap::set_range(&mut bm, s0, s1);
                bm
            }
        };
        head[gap..].copy_from_slice(&bm);
        let footer = self.footer.encode();
        let res = (|| -> std::io::Result<()> {
            self.storage.write_at(&head, st.footer_pos)?;
            self.storage.write_at(&payload, pos + bm_bytes + start)?;
            self.storage.write_at(&footer, new_end)
        })();
        res.map_err(|e| Error::io(format!("allocate block {block}"), e))?;
        st.footer_pos = new_end;
        if let Some(bms) = &d.bitmaps {
            bms.install(block, bm);
        }
        d.bat[block as usize].store(sector as u32, Ordering::Release);
        d.mark_bat_dirty(block);
        Ok(())
    }

    /// Clears a block's BAT entry (written at the next flush). Its space leaks until
    /// compact; it is never reused in place, so a crash before the flush keeps old data.
    pub(crate) fn deallocate(&self, block: u32) -> Result<()> {
        let d = self.dyn_ref()?;
        let _st = d.lock_alloc();
        if d.entry(block) == UNALLOCATED {
            return Ok(());
        }
        d.bat[block as usize].store(UNALLOCATED, Ordering::Release);
        if let Some(bms) = &d.bitmaps {
            bms.remove(block);
        }
        d.mark_bat_dirty(block);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_matches_the_hyperv_layout() {
        // Hyper-V sample: footer at 0x40E00, first block data at 0x41000.
        assert_eq!(place_block(0x40E00, 512, 4096), 0x40E00);
        // Virtual PC sample: footer right after the BAT at 0x40000.
        assert_eq!(place_block(0x40000, 512, 4096), 0x40E00);
        // consecutive 2 MiB blocks keep their data aligned
        let next = 0x40E00 + 512 + (2 << 20);
        assert_eq!((place_block(next, 512, 4096) + 512) % 4096, 0);
    }
}
