//! `ExtentFile`: a VHD's bytes on the LUN as a `vhd::Storage` (docs/design/041 §4). A
//! logical length plus an extent map published as an immutable snapshot, so reads and
//! writes inside the mapped capacity take no lock; growth (under a mutex) takes extents
//! from an [`ExtentSource`], zeroes them before mapping them, and leaves the new mapping
//! pending until `flush` (path flush, then [`ExtentMapSink::commit`]). Every LUN write of
//! a writable file asks the [`WriteFence`] first.

use crate::extent_map::{ExtentMap, ExtentRun, MapError};
use crate::hooks::{
    ExtentMapSink, ExtentSource, FenceError, Grant, MapUpdate, SinkError, SourceError, WriteFence,
};
use crate::layout::Layout;
use crate::path::{ErrorClass, LunPath, PathError};
use arc_swap::ArcSwap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Largest extent file (VHD maximum of 2040 GiB plus metadata, with room to spare).
pub const MAX_FILE_LEN: u64 = 4 << 40;
/// Interval at which a write waiting on a closed fence asks again.
pub const FENCE_POLL: Duration = Duration::from_millis(5);
/// Default bound on the wait for a closed fence (the outage budget of 030).
pub const DEFAULT_FENCE_WAIT: Duration = Duration::from_secs(8);
/// Largest accepted `fence_wait`.
pub const MAX_FENCE_WAIT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum ExtentError {
    #[error("{file}: opened read-only")]
    ReadOnly { file: String },
    #[error("{file}: write refused after waiting {waited:?} for the fence: {reason}")]
    Fenced {
        file: String,
        waited: Duration,
        reason: FenceError,
    },
    #[error("{file}: cannot grow: {source}")]
    NoSpace { file: String, source: SourceError },
    #[error("{file}: the extent source handed out unusable extents: {detail}")]
    BadGrant { file: String, detail: String },
    #[error("{file}: {source}")]
    Commit { file: String, source: SinkError },
    #[error("{file}: {source}")]
    Path { file: String, source: PathError },
    #[error("{file}: length {end} exceeds the limit {max}")]
    TooLarge { file: String, end: u64, max: u64 },
    #[error("{file}: invalid extent map: {source}")]
    BadMap { file: String, source: MapError },
    #[error("{file}: length {len} needs {need} extents, the map has {have}")]
    BadLength {
        file: String,
        len: u64,
        need: u64,
        have: u64,
    },
    #[error("{file}: invalid setting: {detail}")]
    Config { file: String, detail: String },
}

impl ExtentError {
    /// Path failures (redirection acts on them) vs everything else.
    pub fn class(&self) -> ErrorClass {
        match self {
            ExtentError::Path { source, .. } => source.class(),
            ExtentError::Fenced { .. } => ErrorClass::Fenced,
            _ => ErrorClass::Media,
        }
    }

    /// The errno an NBD server answers with (a closed fence past its wait is EIO).
    pub fn errno(&self) -> i32 {
        match self {
            ExtentError::Path { source, .. } => source.errno(),
            ExtentError::ReadOnly { .. } => libc::EROFS,
            ExtentError::NoSpace { .. } => libc::ENOSPC,
            ExtentError::TooLarge { .. } => libc::EFBIG,
            _ => libc::EIO,
        }
    }
}

impl From<ExtentError> for io::Error {
    fn from(e: ExtentError) -> io::Error {
        let kind = match &e {
            ExtentError::ReadOnly { .. } => io::ErrorKind::ReadOnlyFilesystem,
            ExtentError::NoSpace { .. } => io::ErrorKind::StorageFull,
            ExtentError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            ExtentError::Path { source, .. } if source.is_path_failure() => {
                io::ErrorKind::NotConnected
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// What a file opened for writing is plugged into.
#[derive(Debug, Clone)]
pub struct WriteAccess {
    pub source: Arc<dyn ExtentSource>,
    pub sink: Arc<dyn ExtentMapSink>,
    pub fence: Arc<dyn WriteFence>,
    /// How long a write waits for a closed fence before failing.
    pub fence_wait: Duration,
}

#[derive(Debug)]
struct Pending {
    committed_map: Arc<ExtentMap>,
    committed_len: u64,
    /// Unmapped runs not yet committed, oldest first.
    released: Vec<ExtentRun>,
}

/// A file on the volume: exact VHD bytes at the extents of its map.
#[derive(Debug)]
pub struct ExtentFile {
    name: String,
    lun: Arc<dyn LunPath>,
    layout: Layout,
    map: ArcSwap<ExtentMap>,
    len: AtomicU64,
    writer: Option<WriteAccess>,
    /// Growth, shrinking and the pending state.
    growth: Mutex<Pending>,
    /// Serialises flushes (an older map must never be committed after a newer one).
    flush_lock: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ExtentFile {
    /// Opens a file from its committed map and length. With `access`, the file is
    /// writable: it zeroes any mapped bytes past its length (an earlier writer may have
    /// left unflushed data there before a crash), through the fence.
    pub fn open(
        lun: Arc<dyn LunPath>,
        layout: Layout,
        name: &str,
        map: ExtentMap,
        len: u64,
        access: Option<WriteAccess>,
    ) -> Result<ExtentFile, ExtentError> {
        let name = name.to_string();
        layout.validate().map_err(|e| ExtentError::Config {
            file: name.clone(),
            detail: e.to_string(),
        })?;
        map.check_within(layout.extent_count)
            .map_err(|source| ExtentError::BadMap {
                file: name.clone(),
                source,
            })?;
        if len > MAX_FILE_LEN {
            return Err(ExtentError::TooLarge {
                file: name,
                end: len,
                max: MAX_FILE_LEN,
            });
        }
        let need = len.div_ceil(layout.extent_size);
        if need > map.extent_count() {
            return Err(ExtentError::BadLength {
                file: name,
                len,
                need,
                have: map.extent_count(),
            });
        }
        if let Some(a) = &access
            && a.fence_wait > MAX_FENCE_WAIT
        {
            return Err(ExtentError::Config {
                file: name,
                detail: format!("fence_wait {:?} above {MAX_FENCE_WAIT:?}", a.fence_wait),
            });
        }
        let map = Arc::new(map);
        let f = ExtentFile {
            name,
            lun,
            layout,
            map: ArcSwap::new(map.clone()),
            len: AtomicU64::new(len),
            writer: access,
            growth: Mutex::new(Pending {
                committed_map: map.clone(),
                committed_len: len,
                released: Vec::new(),
            }),
            flush_lock: Mutex::new(()),
        };
        if f.writer.is_some() {
            let cap = map.extent_count() * layout.extent_size;
            if cap > len {
                f.zero_range(&map, len, cap - len)?;
            }
        }
        Ok(f)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// The current map (pending changes included).
    pub fn map(&self) -> Arc<ExtentMap> {
        self.map.load_full()
    }

    /// The current logical length (pending growth included).
    pub fn logical_len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Length and runs as last committed through the sink.
    pub fn committed(&self) -> (u64, Vec<ExtentRun>) {
        let p = lock(&self.growth);
        (p.committed_len, p.committed_map.runs().to_vec())
    }

    /// True when mapping or length changes wait for a flush.
    pub fn has_pending(&self) -> bool {
        let p = lock(&self.growth);
        !p.released.is_empty()
            || p.committed_len != self.len.load(Ordering::Acquire)
            || !Arc::ptr_eq(&p.committed_map, &self.map.load())
    }

    fn path_err(&self, source: PathError) -> ExtentError {
        ExtentError::Path {
            file: self.name.clone(),
            source,
        }
    }

    fn writer(&self) -> Result<&WriteAccess, ExtentError> {
        self.writer.as_ref().ok_or_else(|| ExtentError::ReadOnly {
            file: self.name.clone(),
        })
    }

    /// Waits (bounded by `fence_wait`) until the fence allows a write.
    fn fence_gate(&self) -> Result<(), ExtentError> {
        let w = self.writer()?;
        let first = match w.fence.check() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let start = Instant::now();
        let mut last = first;
        loop {
            let waited = start.elapsed();
            if waited >= w.fence_wait {
                return Err(ExtentError::Fenced {
                    file: self.name.clone(),
                    waited,
                    reason: last,
                });
            }
            std::thread::sleep(FENCE_POLL.min(w.fence_wait - waited));
            match w.fence.check() {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
    }

    /// Calls `f(lun_offset, position in request, length)` for each LUN-contiguous piece
    /// of the file range `[off, off + len)`, which must be mapped.
    fn walk(
        &self,
        map: &ExtentMap,
        off: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, usize) -> Result<(), ExtentError>,
    ) -> Result<(), ExtentError> {
        let es = self.layout.extent_size;
        // A power of two (validated layout): shifts and masks, not divisions, per request.
        let shift = es.trailing_zeros();
        let mut pos = 0u64;
        while pos < len {
            let fo = off + pos;
            let (lun_extent, cont) =
                map.segment(fo >> shift)
                    .ok_or_else(|| ExtentError::BadMap {
                        file: self.name.clone(),
                        source: MapError::OutOfVolume {
                            index: fo >> shift,
                            count: map.extent_count(),
                        },
                    })?;
            let within = fo & (es - 1);
            let n = (cont * es - within).min(len - pos);
            let lun_off = self.layout.data_offset + lun_extent * es + within;
            f(lun_off, pos as usize, n as usize)?;
            pos += n;
        }
        Ok(())
    }

    fn zero_range(&self, map: &ExtentMap, off: u64, len: u64) -> Result<(), ExtentError> {
        self.walk(map, off, len, |lo, _, n| {
            self.fence_gate()?;
            self.lun
                .write_zeroes(lo, n as u64)
                .map_err(|e| self.path_err(e))
        })
    }

    fn check_end(&self, off: u64, len: u64) -> Result<u64, ExtentError> {
        off.checked_add(len)
            .filter(|&e| e <= MAX_FILE_LEN)
            .ok_or_else(|| ExtentError::TooLarge {
                file: self.name.clone(),
                end: off.saturating_add(len),
                max: MAX_FILE_LEN,
            })
    }

    /// Reads `buf` at `off`; bytes past the logical end read as zero.
    pub fn read(&self, buf: &mut [u8], off: u64) -> Result<(), ExtentError> {
        let len = self.len.load(Ordering::Acquire);
        let map = self.map.load();
        let cap = map.extent_count() * self.layout.extent_size;
        let end = off.saturating_add(buf.len() as u64);
        // A shrink racing with this read may have unmapped the tail already: zeros.
        let data_end = end.min(len).min(cap);
        let n = data_end.saturating_sub(off);
        self.walk(&map, off, n, |lo, p, k| {
            self.lun
                .read_at(&mut buf[p..p + k], lo)
                .map_err(|e| self.path_err(e))
        })?;
        buf[n as usize..].fill(0);
        Ok(())
    }

    /// Writes `buf` at `off`, growing the file when it ends past the mapped capacity.
    pub fn write(&self, buf: &[u8], off: u64) -> Result<(), ExtentError> {
        self.writer()?;
        if buf.is_empty() {
            return Ok(());
        }
        let end = self.check_end(off, buf.len() as u64)?;
        let buf = self.torn_write_point(buf, off);
        let mut map = self.map.load();
        if end > map.extent_count() * self.layout.extent_size {
            drop(map);
            let mut g = lock(&self.growth);
            self.grow_locked(&mut g, end)?;
            drop(g);
            map = self.map.load();
        }
        self.walk(&map, off, buf.len() as u64, |lo, p, k| {
            self.fence_gate()?;
            self.lun
                .write_at(&buf[p..p + k], lo)
                .map_err(|e| self.path_err(e))
        })?;
        self.len.fetch_max(end, Ordering::AcqRel);
        if buf.len() as u64 != end - off {
            crate::failpoint::crash("extent.write.torn");
        }
        Ok(())
    }

    /// Fail point `extent.write.torn=return(LO-HI)`: a write overlapping file bytes
    /// `[LO, HI)` writes only its first half (whole sectors when it has several), then the
    /// process aborts: a torn write, as a crash in the middle of it leaves.
    fn torn_write_point<'a>(&self, buf: &'a [u8], off: u64) -> &'a [u8] {
        let Some(Some(spec)) = crate::failpoint::value("extent.write.torn") else {
            return buf;
        };
        let range = spec.split_once('-').and_then(|(a, b)| {
            Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
        });
        match range {
            Some((lo, hi)) if off < hi && off + buf.len() as u64 > lo => {
                let half = buf.len() / 2;
                let keep = if half >= 512 {
                    half - half % 512
                } else {
                    half.max(1)
                };
                &buf[..keep]
            }
            _ => buf,
        }
    }

    /// Maps enough extents to hold `end` bytes (growth mutex held).
    fn grow_locked(&self, _g: &mut Pending, end: u64) -> Result<(), ExtentError> {
        let w = self.writer()?;
        let es = self.layout.extent_size;
        let cur = self.map.load_full();
        let need = end.div_ceil(es);
        if need <= cur.extent_count() {
            return Ok(());
        }
        let count = need - cur.extent_count();
        let grants =
            w.source
                .take(count, cur.last_extent())
                .map_err(|source| ExtentError::NoSpace {
                    file: self.name.clone(),
                    source,
                })?;
        let bad = |detail: String| {
            w.source.put_back(&grants);
            ExtentError::BadGrant {
                file: self.name.clone(),
                detail,
            }
        };
        let got: u64 = grants.iter().map(|g| g.run.count).sum();
        if got != count {
            return Err(bad(format!("{got} extents for {count} asked")));
        }
        let mut next = (*cur).clone();
        for g in &grants {
            if let Err(e) = next.push(g.run) {
                return Err(bad(e.to_string()));
            }
        }
        if let Err(e) = next.check_within(self.layout.extent_count) {
            return Err(bad(e.to_string()));
        }
        for g in grants.iter().filter(|g| !g.clean) {
            if let Err(e) = self.zero_grant(g) {
                w.source.put_back(&grants);
                return Err(e);
            }
        }
        crate::failpoint::crash("extent.grow.after_zero");
        self.map.store(Arc::new(next));
        Ok(())
    }

    fn zero_grant(&self, g: &Grant) -> Result<(), ExtentError> {
        let es = self.layout.extent_size;
        self.fence_gate()?;
        self.lun
            .write_zeroes(self.layout.data_offset + g.run.start * es, g.run.count * es)
            .map_err(|e| self.path_err(e))
    }

    /// Sets the logical length: growth maps (zeroed) extents; shrinking zeroes the cut
    /// part of the last kept extent and unmaps the extents past it. Pending until flush.
    pub fn set_len(&self, new_len: u64) -> Result<(), ExtentError> {
        self.writer()?;
        self.check_end(new_len, 0)?;
        let mut g = lock(&self.growth);
        let cur_len = self.len.load(Ordering::Acquire);
        if new_len >= cur_len {
            self.grow_locked(&mut g, new_len)?;
            self.len.fetch_max(new_len, Ordering::AcqRel);
            return Ok(());
        }
        let es = self.layout.extent_size;
        let cur = self.map.load_full();
        let keep = new_len.div_ceil(es);
        let zero_end = cur_len.min(keep * es);
        if zero_end > new_len {
            self.zero_range(&cur, new_len, zero_end - new_len)?;
        }
        self.len.store(new_len, Ordering::Release);
        let mut next = (*cur).clone();
        let removed = next.truncate(keep);
        if !removed.is_empty() {
            g.released.extend(removed);
            self.map.store(Arc::new(next));
        }
        Ok(())
    }

    /// Zeroes a range inside the file (space reclaim on thin LUNs); past the end is ignored.
    pub fn discard(&self, off: u64, len: u64) -> Result<(), ExtentError> {
        self.writer()?;
        let map = self.map.load();
        let end = off
            .saturating_add(len)
            .min(self.len.load(Ordering::Acquire));
        if end <= off {
            return Ok(());
        }
        self.zero_range(&map, off, end - off)
    }

    /// Path flush, then the pending mapping and length go to the sink. Read-only files:
    /// nothing to do. On failure everything stays pending.
    pub fn flush(&self) -> Result<(), ExtentError> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let _serial = lock(&self.flush_lock);
        crate::failpoint::crash("extent.flush.enter");
        let (map, len, released, changed) = {
            let p = lock(&self.growth);
            let map = self.map.load_full();
            let len = self.len.load(Ordering::Acquire);
            let changed = !p.released.is_empty()
                || len != p.committed_len
                || !Arc::ptr_eq(&map, &p.committed_map);
            (map, len, p.released.clone(), changed)
        };
        self.lun.flush().map_err(|e| self.path_err(e))?;
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
}

impl vhd::Storage for ExtentFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(self.read(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Ok(self.write(buf, offset)?)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(ExtentFile::flush(self)?)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.logical_len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        Ok(ExtentFile::set_len(self, len)?)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(ExtentFile::discard(self, offset, len)?)
    }
}
