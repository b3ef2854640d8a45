//! Expand: grow the virtual size. Fixed: new footer at the new end, then the old footer
//! bytes (now inside the data area) zeroed. Dynamic/differencing: more BAT entries in the
//! BAT's padded region when it has room, else a new BAT at the end of the file (new BAT
//! and footer, flush, header, flush); then both footer copies.

use crate::bat::{self, UNALLOCATED};
use crate::error::{Error, FormatError, Result};
use crate::footer::MAX_VIRTUAL_SIZE;
use crate::geometry::Geometry;
use crate::header::MAX_TABLE_ENTRIES;
use crate::image::Image;
use std::sync::atomic::AtomicU32;

fn io(ctx: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(ctx, e)
}

impl Image {
    /// Grows the virtual size to `new_size` bytes (a multiple of 512, at most 2040 GiB).
    pub fn expand(&mut self, new_size: u64) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        if new_size > MAX_VIRTUAL_SIZE {
            return Err(FormatError::SizeTooLarge {
                size: new_size,
                limit: MAX_VIRTUAL_SIZE,
            }
            .into());
        }
        if !new_size.is_multiple_of(512) {
            return Err(FormatError::SizeNotSectorAligned(new_size).into());
        }
        if new_size < self.size {
            return Err(Error::Shrink {
                new: new_size,
                current: self.size,
            });
        }
        if new_size == self.size {
            return Ok(());
        }
        self.flush()?;
        let mut footer = self.footer.clone();
        footer.current_size = new_size;
        // libvhdi 20210425 takes the original size as the disk size: keep both equal.
        footer.original_size = new_size;
        footer.geometry = Geometry::for_size(new_size);
        let st = self.storage.clone();
        let Some(d) = self.dynamic.as_mut() else {
            let old = self.size;
            st.write_at(&footer.encode(), new_size)
                .map_err(io("write new footer"))?;
            st.flush().map_err(io("flush"))?;
            st.write_at(&[0u8; 512], old)
                .map_err(io("zero old footer"))?;
            st.flush().map_err(io("flush"))?;
            self.footer = footer;
            self.size = new_size;
            return Ok(());
        };
        let needed = new_size.div_ceil(u64::from(d.block_size));
        if needed > MAX_TABLE_ENTRIES {
            return Err(FormatError::TableTooLarge {
                entries: needed,
                limit: MAX_TABLE_ENTRIES,
            }
            .into());
        }
        let needed = needed as u32;
        let footer_pos = d.lock_alloc().footer_pos;
        if needed > d.header.max_table_entries {
            let old_off = d.header.table_offset;
            let new_bytes = (u64::from(needed) * 4).next_multiple_of(512);
            // Room up to the first thing after the BAT (block, locator data or footer).
            let bat_end = old_off + d.header.bat_bytes();
            let mut limit = footer_pos;
            for b in 0..d.bat.len() as u32 {
                if let Some(o) = d.data_offset(b) {
                    let s = o - u64::from(d.bitmap_bytes);
                    if s >= bat_end {
                        limit = limit.min(s);
                    }
                }
            }
            for m in &d.meta {
                if m.0 >= bat_end {
                    limit = limit.min(m.0);
                }
            }
            d.bat
                .extend((d.bat.len()..needed as usize).map(|_| AtomicU32::new(UNALLOCATED)));
            let vals: Vec<u32> = d
                .bat
                .iter()
                .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
                .collect();
            let encoded = bat::encode(&vals);
            if old_off + new_bytes <= limit {
                st.write_at(&encoded, old_off)
                    .map_err(io("write grown BAT"))?;
                st.flush().map_err(io("flush"))?;
            } else {
                let new_off = footer_pos.next_multiple_of(512);
                let new_footer = new_off + new_bytes;
                st.write_at(&encoded, new_off)
                    .map_err(io("write relocated BAT"))?;
                st.write_at(&self.footer.encode(), new_footer)
                    .map_err(io("write footer"))?;
                st.flush().map_err(io("flush"))?;
                d.header.table_offset = new_off;
                d.lock_alloc().footer_pos = new_footer;
            }
            d.header.max_table_entries = needed;
            let bat_region = (
                d.header.table_offset,
                d.header.table_offset + d.header.bat_bytes(),
                "BAT",
            );
            if let Some(m) = d.meta.iter_mut().find(|m| m.2 == "BAT") {
                *m = bat_region;
            }
            st.write_at(&d.header.encode(), d.header_offset)
                .map_err(io("write header"))?;
            st.flush().map_err(io("flush"))?;
        }
        let footer_pos = d.lock_alloc().footer_pos;
        st.write_at(&footer.encode(), footer_pos)
            .map_err(io("write trailing footer"))?;
        st.flush().map_err(io("flush"))?;
        st.write_at(&footer.encode(), 0)
            .map_err(io("write footer copy"))?;
        st.flush().map_err(io("flush"))?;
        self.footer = footer;
        self.size = new_size;
        Ok(())
    }
}
