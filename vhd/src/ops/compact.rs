//! Compact in place: deallocate blocks that read as zero (in a differencing child only
//! when dropping them changes nothing a reader sees), then pack the remaining blocks into
//! the lowest free slots and truncate. Every move: copy the block into free space, flush,
//! point the BAT entry at the copy, flush; a crash leaves either copy referenced and at
//! worst leaked space. Truncation comes last, after the footer is written at the new end.

use crate::bat::{self, UNALLOCATED};
use crate::bitmap;
use crate::error::{Error, Result};
use crate::image::is_zero;
use crate::image::{Image, place_block};
use crate::{Progress, ops::COPY_CHUNK};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// What compact did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    pub blocks_deallocated: u64,
    pub blocks_moved: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn io(ctx: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(ctx, e)
}

impl Image {
    /// Reclaims zero blocks and leaked space. Progress counts blocks examined plus moved.
    pub fn compact(&mut self, progress: Progress<'_>) -> Result<CompactStats> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.dyn_ref()?;
        crate::check::ensure_sound(self)?;
        self.flush()?;
        let mut stats = CompactStats {
            bytes_before: self.storage.len()?,
            ..Default::default()
        };
        let Some(d) = self.dynamic.as_ref() else {
            return Ok(stats);
        };
        let allocated: Vec<u32> = (0..d.bat.len() as u32)
            .filter(|&b| d.entry(b) != UNALLOCATED)
            .collect();
        let total = allocated.len() as u64 * 2;
        let bs = d.block_size as usize;
        let mut buf = vec![0u8; bs.min(COPY_CHUNK)];
        let mut pbuf = vec![0u8; bs.min(COPY_CHUNK)];
        for (i, &b) in allocated.iter().enumerate() {
            progress(i as u64, total);
            let Some(data_off) = d.data_offset(b) else {
                continue;
            };
            let bm = d.bitmaps.as_ref().map(|bms| bms.get(b));
            let mut droppable = bm
                .as_ref()
                .is_none_or(|bm| !bitmap::is_empty(bm, d.sectors_per_block()));
            let mut at = 0usize;
            while droppable && at < bs {
                let n = buf.len().min(bs - at);
                self.storage.read_at(&mut buf[..n], data_off + at as u64)?;
                match &bm {
                    None => droppable = is_zero(&buf[..n]),
                    Some(bm) => {
                        // present sectors must be zero, and so must the parent below them
                        let vabs = (u64::from(b) << d.block_shift) + at as u64;
                        self.read_parent(&mut pbuf[..n], vabs)?;
                        for s in 0..(n / 512) {
                            let sec = ((at / 512) + s) as u32;
                            let r = s * 512..(s + 1) * 512;
                            if bitmap::get(bm, sec)
                                && (!is_zero(&buf[r.clone()]) || !is_zero(&pbuf[r]))
                            {
                                droppable = false;
                                break;
                            }
                        }
                    }
                }
                at += n;
            }
            if droppable {
                self.deallocate(b)?;
                stats.blocks_deallocated += 1;
            }
        }
        self.flush()?;
        stats.blocks_moved =
            self.pack(&mut |done, _| progress(allocated.len() as u64 + done, total))?;
        stats.bytes_after = self.storage.len()?;
        progress(total, total);
        Ok(stats)
    }

    /// Moves blocks into the lowest slots after the metadata and truncates the file.
    fn pack(&mut self, progress: Progress<'_>) -> Result<u64> {
        let st = self.storage.clone();
        let footer_bytes = self.footer.encode();
        let Some(d) = self.dynamic.as_ref() else {
            return Ok(0);
        };
        let span = d.block_span();
        let bm = u64::from(d.bitmap_bytes);
        let mut blocks: Vec<(u64, u32)> = (0..d.bat.len() as u32)
            .filter_map(|b| d.data_offset(b).map(|o| (o - bm, b)))
            .collect();
        blocks.sort_unstable();
        let first = blocks.first().map_or(d.lock_alloc().footer_pos, |b| b.0);
        let front_end = d
            .meta
            .iter()
            .filter(|m| m.0 < first)
            .map(|m| m.1)
            .max()
            .unwrap_or(512);
        let overlaps_meta = |s: u64| {
            d.meta
                .iter()
                .find(|m| s < m.1 && m.0 < s + span)
                .map(|m| m.1)
        };
        // Target slots in block order, skipping metadata (a relocated BAT stays where it
        // is). A block already packed (between the end of the previous slot and the
        // aligned position it would get) keeps its place: qemu packs blocks without
        // aligning them, and moving those would grow the file, not shrink it. So every
        // slot is at or below its block, and the file never grows.
        let mut slots = Vec::with_capacity(blocks.len());
        let mut p = front_end;
        for &(at, _) in &blocks {
            let mut aligned = place_block(p, bm, d.align);
            while let Some(end) = overlaps_meta(aligned) {
                aligned = place_block(end, bm, d.align);
            }
            let slot = if at >= p && at <= aligned && overlaps_meta(at).is_none() {
                at
            } else {
                aligned
            };
            slots.push(slot);
            p = slot + span;
        }
        // unplaced blocks by current offset
        let mut unplaced: BTreeMap<u64, u32> = blocks.iter().copied().collect();
        let mut moves = 0u64;
        let mut copy = vec![0u8; (span as usize).min(COPY_CHUNK)];
        let mut move_block = |b: u32, from: u64, to: u64| -> Result<()> {
            let mut alloc = d.lock_alloc();
            let mut at = 0u64;
            while at < span {
                let n = (span - at).min(copy.len() as u64) as usize;
                st.read_at(&mut copy[..n], from + at)
                    .map_err(io("read block"))?;
                st.write_at(&copy[..n], to + at).map_err(io("copy block"))?;
                at += n as u64;
            }
            if to + span > alloc.footer_pos {
                // the copy reaches past the trailing footer: zero any gap, footer after it
                if to > alloc.footer_pos {
                    let gap = vec![0u8; (to - alloc.footer_pos) as usize];
                    st.write_at(&gap, alloc.footer_pos)
                        .map_err(io("zero gap"))?;
                }
                st.write_at(&footer_bytes, to + span)
                    .map_err(io("write footer"))?;
                alloc.footer_pos = to + span;
            }
            drop(alloc);
            st.flush().map_err(io("flush moved block"))?;
            d.bat[b as usize].store((to / 512) as u32, Ordering::Release);
            let sector = bat::sector_of(b);
            let vals: Vec<u32> = bat::blocks_in_sector(sector, d.header.max_table_entries)
                .map(|x| d.bat[x as usize].load(Ordering::Acquire))
                .collect();
            st.write_at(
                &bat::encode(&vals),
                d.header.table_offset + u64::from(sector) * 512,
            )
            .map_err(io("write BAT sector"))?;
            st.flush().map_err(io("flush BAT"))?;
            Ok(())
        };
        for &slot in &slots {
            if unplaced.remove(&slot).is_some() {
                continue;
            }
            // evacuate unplaced blocks in the slot's way to the end of the file
            let in_way: Vec<(u64, u32)> = unplaced
                .range(slot.saturating_sub(span - 1)..slot + span)
                .map(|(&s, &b)| (s, b))
                .collect();
            for (s, b) in in_way {
                unplaced.remove(&s);
                let to = place_block(d.lock_alloc().footer_pos.max(slot + span), bm, d.align);
                move_block(b, s, to)?;
                unplaced.insert(to, b);
                moves += 1;
            }
            let Some((s, b)) = unplaced.pop_last() else {
                break;
            };
            move_block(b, s, slot)?;
            moves += 1;
            progress(moves, slots.len() as u64);
        }
        let meta_end = d.meta.iter().map(|m| m.1).max().unwrap_or(512);
        let blocks_end = slots.last().map_or(front_end, |s| s + span);
        let new_pos = blocks_end.max(meta_end);
        let mut alloc = d.lock_alloc();
        if new_pos < alloc.footer_pos {
            st.write_at(&footer_bytes, new_pos)
                .map_err(io("write footer"))?;
            st.flush().map_err(io("flush"))?;
            st.set_len(new_pos + 512).map_err(io("truncate"))?;
            st.flush().map_err(io("flush"))?;
            alloc.footer_pos = new_pos;
        }
        Ok(moves)
    }
}
