//! An open VHD image (fixed, dynamic or differencing): the shared state the I/O paths use
//! (footer, header, in-memory BAT of atomics, differencing bitmaps, allocation state) and
//! the info accessors. Opening and validation live in `open.rs`, reads and writes in
//! `io.rs`, block allocation in `alloc.rs`, block status in `status.rs`, flush in
//! `flush.rs`.

mod alloc;
mod bitmaps;
mod flush;
mod io;
mod open;
mod status;

pub use alloc::place_block;
pub(crate) use io::is_zero;
pub use open::OpenOptions;
pub use status::{Extent, ExtentKind};

use crate::bat::UNALLOCATED;
use crate::footer::{DiskType, Footer};
use crate::header::DynamicHeader;
use crate::storage::Storage;
use bitmaps::Bitmaps;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Data areas of new blocks start at a multiple of this (the Hyper-V sample's layout).
pub const DATA_ALIGN: u64 = 4096;

/// An open image. `Send + Sync`; every I/O method takes `&self` so many requests can run
/// concurrently. Metadata (BAT, differencing bitmaps) is kept in memory and written at
/// `flush()` (and on a clean drop), in the order docs/design/001 describes.
#[derive(Debug)]
pub struct Image {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) read_only: bool,
    pub(crate) footer: Footer,
    pub(crate) size: u64,
    pub(crate) dynamic: Option<Dyn>,
    pub(crate) parent: Option<Arc<Image>>,
    pub(crate) identity: String,
    pub(crate) path: Option<PathBuf>,
    pub(crate) warnings: Vec<String>,
    /// Serialises flushes so an older BAT snapshot never overwrites a newer one.
    pub(crate) flush_lock: Mutex<()>,
    /// Set after a failed metadata write whose state cannot be retried safely.
    pub(crate) poisoned: AtomicBool,
}

/// Allocation state, under the allocation mutex.
#[derive(Debug)]
pub(crate) struct AllocState {
    /// Offset of the trailing footer; the next block goes here (padded for alignment).
    pub(crate) footer_pos: u64,
}

/// State of dynamic and differencing images.
#[derive(Debug)]
pub(crate) struct Dyn {
    pub(crate) header: DynamicHeader,
    pub(crate) header_offset: u64,
    pub(crate) bat: Vec<AtomicU32>,
    pub(crate) block_size: u32,
    pub(crate) block_shift: u32,
    pub(crate) bitmap_bytes: u32,
    pub(crate) align: u64,
    pub(crate) alloc: Mutex<AllocState>,
    pub(crate) dirty_bat: Mutex<BTreeSet<u32>>,
    /// Differencing images only.
    pub(crate) bitmaps: Option<Bitmaps>,
    /// Metadata byte ranges blocks must not overlap: (start, end, what).
    pub(crate) meta: Vec<(u64, u64, &'static str)>,
}

impl Dyn {
    pub(crate) fn entry(&self, block: u32) -> u32 {
        self.bat[block as usize].load(Ordering::Acquire)
    }

    pub(crate) fn sectors_per_block(&self) -> u32 {
        self.block_size / 512
    }

    /// Byte offset of a block's data area, if allocated.
    pub(crate) fn data_offset(&self, block: u32) -> Option<u64> {
        let e = self.entry(block);
        (e != UNALLOCATED).then(|| u64::from(e) * 512 + u64::from(self.bitmap_bytes))
    }

    pub(crate) fn lock_alloc(&self) -> std::sync::MutexGuard<'_, AllocState> {
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn mark_bat_dirty(&self, block: u32) {
        self.dirty_bat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(crate::bat::sector_of(block));
    }
}

/// One image of a chain, for display.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub identity: String,
    pub disk_type: DiskType,
    pub uuid: Uuid,
    pub virtual_size: u64,
}

impl Image {
    /// Virtual disk size in bytes (the footer's current size, see docs/design/002).
    pub fn virtual_size(&self) -> u64 {
        self.size
    }

    pub fn disk_type(&self) -> DiskType {
        self.footer.disk_type
    }

    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    pub fn header(&self) -> Option<&DynamicHeader> {
        self.dynamic.as_ref().map(|d| &d.header)
    }

    pub fn parent(&self) -> Option<&Arc<Image>> {
        self.parent.as_ref()
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Canonical path (file images) or the identity given by the opener.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Findings made while opening (e.g. trailing footer missing, footer copies differ).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Block size of dynamic/differencing images.
    pub fn block_size(&self) -> Option<u32> {
        self.dynamic.as_ref().map(|d| d.block_size)
    }

    /// Number of allocated blocks (dynamic/differencing), `None` for fixed.
    pub fn allocated_blocks(&self) -> Option<u64> {
        self.dynamic.as_ref().map(|d| {
            d.bat
                .iter()
                .filter(|e| e.load(Ordering::Relaxed) != UNALLOCATED)
                .count() as u64
        })
    }

    /// BAT entry (sector offset of the bitmap) of a block, `None` when unallocated.
    pub fn bat_entry(&self, block: u32) -> Option<u32> {
        let d = self.dynamic.as_ref()?;
        let e = d.bat.get(block as usize)?.load(Ordering::Acquire);
        (e != UNALLOCATED).then_some(e)
    }

    /// The chain from this image to its base.
    pub fn chain(&self) -> Vec<ChainEntry> {
        let mut out = Vec::new();
        let mut cur = Some(self);
        while let Some(img) = cur {
            out.push(ChainEntry {
                identity: img.identity.clone(),
                disk_type: img.footer.disk_type,
                uuid: img.footer.uuid,
                virtual_size: img.size,
            });
            cur = img.parent.as_deref();
        }
        out
    }

    /// Offset of the trailing footer (file end minus 512 once the footer is written).
    pub fn footer_position(&self) -> u64 {
        match &self.dynamic {
            Some(d) => d.lock_alloc().footer_pos,
            None => self.size,
        }
    }

    pub(crate) fn dyn_ref(&self) -> crate::Result<&Dyn> {
        self.dynamic.as_ref().ok_or(crate::Error::WrongDiskType {
            needed: "dynamic or differencing",
            found: self.footer.disk_type.name(),
        })
    }

    /// Flushes and closes, returning any error (a plain drop only logs it).
    pub fn close(self) -> crate::Result<()> {
        let r = self.flush();
        // the Drop impl then finds nothing dirty
        drop(self);
        r
    }
}

impl Image {
    /// Gives the image up without writing anything more: every later write and flush
    /// fails, and dropping it does not flush (its caller reopens the file from what is on
    /// the storage, and a late flush of this one must not change that).
    pub fn abandon(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let abandoned = self.poisoned.load(std::sync::atomic::Ordering::Acquire);
        if self.read_only || abandoned || !self.is_dirty() {
            return;
        }
        if let Err(e) = self.flush() {
            tracing::error!(image = %self.identity, error = %e, "flush on close failed");
        }
    }
}
