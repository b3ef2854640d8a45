//! Reads and writes at any byte offset and length. Hot paths: a read of an unallocated
//! dynamic block does no I/O; a write into an allocated block is one `write_at` with no
//! lock and no metadata I/O. Differencing images follow the sector bitmap: absent sectors
//! read from the parent; a write that covers only part of an absent sector first merges
//! the parent's content of that sector.

use super::Image;
use crate::bat::UNALLOCATED;
use crate::error::{Error, Result};

/// Largest zero buffer used by `write_zeroes` (bounds memory per call).
pub const ZERO_CHUNK: usize = 1 << 20;

/// Splits `off..off+len` at block boundaries: calls `f(block, offset_in_block, buf_pos,
/// chunk_len)`.
pub(crate) fn chunks(
    off: u64,
    len: u64,
    shift: u32,
    mut f: impl FnMut(u32, u64, usize, usize) -> Result<()>,
) -> Result<()> {
    let bs = 1u64 << shift;
    let mut pos = 0u64;
    while pos < len {
        let abs = off + pos;
        let block = (abs >> shift) as u32;
        let in_block = abs & (bs - 1);
        let n = (bs - in_block).min(len - pos);
        f(block, in_block, pos as usize, n as usize)?;
        pos += n;
    }
    Ok(())
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<16>();
    words.iter().all(|c| u128::from_ne_bytes(*c) == 0) && rest.iter().all(|&x| x == 0)
}

impl Image {
    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if self.poisoned.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let Some(d) = &self.dynamic else {
            return Ok(self.storage.read_at(buf, offset)?);
        };
        chunks(
            offset,
            buf.len() as u64,
            d.block_shift,
            |block, in_block, pos, n| {
                let out = &mut buf[pos..pos + n];
                let e = d.entry(block);
                if e == UNALLOCATED {
                    return self.read_parent(out, offset + pos as u64);
                }
                let data = u64::from(e) * 512 + u64::from(d.bitmap_bytes);
                let runs = match &d.bitmaps {
                    None => None,
                    Some(bm) => bm.runs(
                        block,
                        (in_block / 512) as u32,
                        (in_block + n as u64).div_ceil(512) as u32,
                    ),
                };
                let Some(runs) = runs else {
                    return Ok(self.storage.read_at(out, data + in_block)?);
                };
                for (s0, s1, present) in runs {
                    let a = (u64::from(s0) * 512).max(in_block);
                    let b = (u64::from(s1) * 512).min(in_block + n as u64);
                    let part = &mut out[(a - in_block) as usize..(b - in_block) as usize];
                    if present {
                        self.storage.read_at(part, data + a)?;
                    } else {
                        self.read_parent(part, offset + pos as u64 + (a - in_block))?;
                    }
                }
                Ok(())
            },
        )
    }

    /// Reads from the parent; zeros where there is no parent or past its size.
    pub(crate) fn read_parent(&self, out: &mut [u8], offset: u64) -> Result<()> {
        match &self.parent {
            None => {
                out.fill(0);
                Ok(())
            }
            Some(p) => p.read_clamped(out, offset),
        }
    }

    /// Like `read_at`, but bytes past the virtual size read as zero.
    pub(crate) fn read_clamped(&self, out: &mut [u8], offset: u64) -> Result<()> {
        let avail = self.size.saturating_sub(offset).min(out.len() as u64) as usize;
        out[avail..].fill(0);
        if avail > 0 {
            self.read_at(&mut out[..avail], offset)
        } else {
            Ok(())
        }
    }

    /// Writes `buf` at `offset` of the virtual disk. Not durable until `flush()`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        let Some(d) = &self.dynamic else {
            return Ok(self.storage.write_at(buf, offset)?);
        };
        chunks(
            offset,
            buf.len() as u64,
            d.block_shift,
            |block, in_block, pos, n| self.write_chunk(block, in_block, &buf[pos..pos + n]),
        )
    }

    pub(crate) fn write_chunk(&self, block: u32, in_block: u64, data: &[u8]) -> Result<()> {
        let d = self.dyn_ref()?;
        let e = d.entry(block);
        if e == UNALLOCATED {
            // Zeros into a hole of a dynamic disk change nothing a reader sees.
            if d.bitmaps.is_none() && is_zero(data) {
                return Ok(());
            }
            return self.allocate_and_write(block, in_block, data);
        }
        let data_off = u64::from(e) * 512 + u64::from(d.bitmap_bytes);
        if let Some(bm) = &d.bitmaps {
            let s0 = (in_block / 512) as u32;
            let s1 = (in_block + data.len() as u64).div_ceil(512) as u32;
            if !bm.all_present(block, s0, s1) {
                return self.write_diff_slow(block, data_off, in_block, data);
            }
        }
        Ok(self.storage.write_at(data, data_off + in_block)?)
    }

    /// Differencing write into an allocated block with absent sectors: under the block's
    /// shard lock, merge parent content into partial absent sectors, write, set bits.
    fn write_diff_slow(&self, block: u32, data_off: u64, in_block: u64, data: &[u8]) -> Result<()> {
        let d = self.dyn_ref()?;
        let Some(bms) = &d.bitmaps else { return Ok(()) };
        let mut shard = bms.lock(block);
        let s0 = (in_block / 512) as u32;
        let s1 = (in_block + data.len() as u64).div_ceil(512) as u32;
        let present = |s: u32| {
            shard
                .partial
                .get(&block)
                .is_none_or(|bm| crate::bitmap::get(bm, s))
        };
        let (start, aligned) = self.sector_align(block, in_block, data, present)?;
        self.storage.write_at(&aligned, data_off + start)?;
        let full = match shard.partial.get_mut(&block) {
            Some(bm) => {
                crate::bitmap::set_range(bm, s0, s1);
                crate::bitmap::is_full(bm, bms.sectors)
            }
            None => true,
        };
        if full {
            shard.partial.remove(&block);
        }
        shard.dirty.insert(block);
        Ok(())
    }

    /// Extends `data` (at `in_block`) to whole sectors. The head/tail partial sectors are
    /// filled from the child (`present`) or the parent. Returns (aligned start, bytes).
    pub(crate) fn sector_align(
        &self,
        block: u32,
        in_block: u64,
        data: &[u8],
        present: impl Fn(u32) -> bool,
    ) -> Result<(u64, Vec<u8>)> {
        let end = in_block + data.len() as u64;
        let start = in_block / 512 * 512;
        let aligned_end = end.div_ceil(512) * 512;
        if start == in_block && aligned_end == end {
            return Ok((in_block, data.to_vec()));
        }
        let d = self.dyn_ref()?;
        let block_base = (u64::from(block)) << d.block_shift;
        let mut buf = vec![0u8; (aligned_end - start) as usize];
        let last = buf.len() - 512;
        let mut fill = |sector_in_block: u64, at: usize| -> Result<()> {
            let s = (sector_in_block / 512) as u32;
            let part = &mut buf[at..at + 512];
            if present(s) {
                if let Some(off) = d.data_offset(block) {
                    self.storage.read_at(part, off + sector_in_block)?;
                } else {
                    part.fill(0);
                }
                Ok(())
            } else {
                self.read_parent(part, block_base + sector_in_block)
            }
        };
        if start != in_block {
            fill(start, 0)?;
        }
        if aligned_end != end && (aligned_end - 512 != start || start == in_block) {
            fill(aligned_end - 512, last)?;
        }
        let at = (in_block - start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        Ok((start, buf))
    }

    /// Writes zeros. With `may_unmap`, whole blocks of a dynamic image are deallocated
    /// (BAT entry cleared at the next flush; the space leaks until compact).
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let zeros = vec![0u8; (len as usize).min(ZERO_CHUNK)];
        let Some(d) = &self.dynamic else {
            return self.zero_fill(&zeros, offset, len);
        };
        let bs = u64::from(d.block_size);
        chunks(offset, len, d.block_shift, |block, in_block, pos, n| {
            let abs = offset + pos as u64;
            let diff = d.bitmaps.is_some();
            if !diff {
                if d.entry(block) == UNALLOCATED {
                    return Ok(());
                }
                if may_unmap && in_block == 0 && n as u64 == bs {
                    return self.deallocate(block);
                }
            }
            self.zero_fill(&zeros, abs, n as u64)
        })
    }

    fn zero_fill(&self, zeros: &[u8], offset: u64, len: u64) -> Result<()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            match &self.dynamic {
                None => self.storage.write_at(&zeros[..n], offset + done)?,
                Some(_) => self.write_at(&zeros[..n], offset + done)?,
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Hint that a range is unused: whole blocks of a dynamic image are deallocated; other
    /// ranges and image types are left as they are (content after a discard is unspecified).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let Some(d) = &self.dynamic else {
            return Ok(());
        };
        if d.bitmaps.is_some() {
            return Ok(());
        }
        let bs = u64::from(d.block_size);
        chunks(offset, len, d.block_shift, |block, in_block, _, n| {
            if in_block == 0 && n as u64 == bs && d.entry(block) != UNALLOCATED {
                self.deallocate(block)?;
            }
            Ok(())
        })
    }
}
