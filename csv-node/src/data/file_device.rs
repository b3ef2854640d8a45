//! A raw file (or block device) as a [`BlockDevice`]: positional I/O on one shared
//! open file. FLUSH is fdatasync, FUA a write with RWF_DSYNC, TRIM punches a hole,
//! WRITE_ZEROES punches or zero-ranges (or writes zeroes where the file system cannot),
//! block status comes from SEEK_DATA/SEEK_HOLE.
//!
//! Blocking syscalls must not stall the runtime. In [`IoMode::Auto`] reads and writes
//! first try `RWF_NOWAIT` (served from the page cache, or refused with EAGAIN without
//! blocking) on the calling task, and only what was refused goes to tokio's blocking
//! pool; syncs and fallocate always go there. [`IoMode::Inline`] and [`IoMode::Pool`]
//! are the two simple alternatives, kept for measurement (docs/benchmarks.md).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::ReadWriteFlags;

use nbd::device::{
    BlockDevice, Capabilities, DeviceError, DeviceFuture, Extent, ExtentKind, Piece, ReadData,
    ZeroFlags,
};
use nbd::proto::MAX_EXTENTS;

/// Reads at least this long look for holes first (one lseek pair), so that large
/// reads of sparse regions go out as OFFSET_HOLE chunks; smaller reads skip the
/// lookup, which would cost more than the zeroes it saves.
pub const HOLE_DETECT_MIN_READ: u32 = 256 * 1024;
/// In [`IoMode::Auto`], reads and writes at least this long go straight to the
/// blocking pool: their copy (tens of microseconds and up) then overlaps with the
/// connection task sending earlier replies and receiving later payloads, which is worth
/// far more than the thread wake-up it costs.
pub const POOL_MIN_LEN: usize = 256 * 1024;
/// An inline operation slower than this sends the following ones to the blocking pool
/// for [`POOL_AFTER_SLOW`] (see [`Adaptive`]).
pub const SLOW_INLINE_OP: Duration = Duration::from_millis(5);
pub const POOL_AFTER_SLOW: Duration = Duration::from_millis(200);

/// Decides between running a blocking syscall inline (cheap when it is a page-cache
/// copy) and in the blocking pool: inline until one inline call takes longer than
/// [`SLOW_INLINE_OP`] (dirty throttling, a cache miss), then the pool for
/// [`POOL_AFTER_SLOW`], then inline again. A miss costs the runtime one stall, not one
/// per request.
#[derive(Debug)]
pub struct Adaptive {
    pool_until_ns: AtomicU64,
    epoch: Instant,
}

impl Default for Adaptive {
    fn default() -> Self {
        Adaptive {
            pool_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Adaptive {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Whether the next call should go to the pool.
    pub fn use_pool(&self) -> bool {
        self.now_ns() < self.pool_until_ns.load(Ordering::Relaxed)
    }

    /// Records how long an inline call took.
    pub fn record(&self, took: Duration) {
        if took > SLOW_INLINE_OP {
            tracing::debug!(
                ?took,
                "slow inline I/O: using the blocking pool for a while"
            );
            let until = self.now_ns() + POOL_AFTER_SLOW.as_nanos() as u64;
            self.pool_until_ns.store(until, Ordering::Relaxed);
        }
    }

    /// Runs `f` inline, timing it.
    pub fn inline<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let r = f();
        self.record(start.elapsed());
        r
    }
}
/// Zeroes written per call where the file system cannot zero a range by itself.
const ZERO_WRITE_CHUNK: usize = 1024 * 1024;

/// Where the blocking syscalls of a [`FileDevice`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// `RWF_NOWAIT` on the calling task, the blocking pool for what it refuses.
    #[default]
    Auto,
    /// Plain syscalls on the calling task (fast on a hot page cache, stalls the
    /// worker thread on a miss).
    Inline,
    /// Every syscall in tokio's blocking pool.
    Pool,
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "inline" => Ok(IoMode::Inline),
            "pool" => Ok(IoMode::Pool),
            _ => Err(format!("unknown I/O mode {s:?} (auto, inline, pool)")),
        }
    }
}

#[derive(Debug)]
struct Inner {
    file: File,
    size: u64,
    read_only: bool,
    mode: IoMode,
    /// Cleared the first time the kernel answers RWF_NOWAIT with EOPNOTSUPP (ext4
    /// refuses it for buffered writes).
    nowait_read: AtomicBool,
    nowait_write: AtomicBool,
    /// Without RWF_NOWAIT, writes run inline unless a recent one was slow.
    writes: Adaptive,
}

/// A raw image file or block device.
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
}

impl FileDevice {
    /// Opens `path` read-write (or read-only).
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            rustix::fs::seek(&file, SeekFrom::End(0))?
        };
        Ok(FileDevice {
            inner: Arc::new(Inner {
                file,
                size,
                read_only,
                mode: IoMode::Auto,
                nowait_read: AtomicBool::new(true),
                nowait_write: AtomicBool::new(true),
                writes: Adaptive::default(),
            }),
        })
    }

    /// Chooses where blocking syscalls run (before the device is shared).
    pub fn with_io_mode(self, mode: IoMode) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.mode = mode;
                FileDevice {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => FileDevice { inner },
        }
    }

    pub fn io_mode(&self) -> IoMode {
        self.inner.mode
    }
}

fn join_error(e: tokio::task::JoinError) -> DeviceError {
    DeviceError::Io(io::Error::other(format!("blocking I/O task failed: {e}")))
}

/// Runs `f` in tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> Result<T, DeviceError> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

fn is_errno(e: &io::Error, n: i32) -> bool {
    e.raw_os_error() == Some(n)
}

impl Inner {
    /// Blocking read of the rest of `buf` (up to `len`), zero-filling past the end of
    /// a file that shrank under us.
    fn read_rest(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        while buf.len() < len {
            let done = buf.len();
            match crate::sys::pread_spare(
                self.file.as_fd(),
                buf,
                len - done,
                offset + done as u64,
                0,
            ) {
                Ok(0) => buf.resize(len, 0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Non-blocking read from the page cache; stops at the first refusal.
    fn read_nowait(&self, buf: &mut Vec<u8>, offset: u64, len: usize) -> io::Result<()> {
        while buf.len() < len {
            let done = buf.len();
            match crate::sys::pread_spare(
                self.file.as_fd(),
                buf,
                len - done,
                offset + done as u64,
                libc::RWF_NOWAIT,
            ) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if is_errno(&e, libc::EOPNOTSUPP) => {
                    self.nowait_read.store(false, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if is_errno(&e, libc::EAGAIN) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_all_at(&self, data: &[u8], offset: u64, flags: ReadWriteFlags) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwritev2(
                &self.file,
                &[IoSlice::new(&data[done..])],
                offset + done as u64,
                flags,
            ) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Non-blocking write into the page cache: bytes written before the first refusal.
    fn write_nowait(&self, data: &[u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwritev2(
                &self.file,
                &[IoSlice::new(&data[done..])],
                offset + done as u64,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::OPNOTSUPP) => {
                    self.nowait_write.store(false, Ordering::Relaxed);
                    break;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        loop {
            match rustix::fs::fallocate(&self.file, flags, offset, len) {
                Err(rustix::io::Errno::INTR) => {}
                r => return r.map_err(Into::into),
            }
        }
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; ZERO_WRITE_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }

    fn zero_sync(&self, offset: u64, len: u64, flags: ZeroFlags) -> Result<(), DeviceError> {
        let keep = FallocateFlags::KEEP_SIZE;
        let mut done = false;
        if !flags.no_hole {
            done = self
                .fallocate(FallocateFlags::PUNCH_HOLE | keep, offset, len)
                .is_ok();
        }
        if !done {
            done = self
                .fallocate(FallocateFlags::ZERO_RANGE | keep, offset, len)
                .is_ok();
        }
        if !done {
            if flags.fast {
                return Err(DeviceError::NotFast);
            }
            self.write_zero_bytes(offset, len)?;
        }
        if flags.fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Allocation map of `[offset, offset+len)` from SEEK_DATA / SEEK_HOLE. A file
    /// system without them reports everything as data.
    fn extents(&self, offset: u64, len: u64) -> Vec<Extent> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < MAX_EXTENTS {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => end,
                Err(_) => {
                    out.push(Extent::new(end - pos, ExtentKind::Data));
                    break;
                }
            };
            if data > pos {
                let stop = data.min(end);
                out.push(Extent::new(stop - pos, ExtentKind::Hole));
                pos = stop;
                continue;
            }
            let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(pos)) {
                Ok(h) => h,
                Err(_) => end,
            };
            // SEEK_HOLE at a data position always moves forward; guard anyway so a
            // misbehaving file system cannot make this loop spin.
            let stop = hole.min(end).max(pos + 1);
            out.push(Extent::new(stop - pos, ExtentKind::Data));
            pos = stop;
        }
        out
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DeviceError::OutOfRange { offset, len }),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DeviceError::NoSpace),
        }
    }
}

impl FileDevice {
    /// Reads one contiguous run of data.
    async fn read_data(&self, offset: u64, len: u32) -> Result<Bytes, DeviceError> {
        let len = len as usize;
        let inner = &self.inner;
        let mut buf = Vec::with_capacity(len);
        match inner.mode {
            IoMode::Inline => inner.read_rest(&mut buf, offset, len)?,
            IoMode::Auto | IoMode::Pool => {
                if inner.mode == IoMode::Auto
                    && len < POOL_MIN_LEN
                    && inner.nowait_read.load(Ordering::Relaxed)
                {
                    inner.read_nowait(&mut buf, offset, len)?;
                }
                if buf.len() < len {
                    let inner = self.inner.clone();
                    buf = blocking(move || {
                        inner.read_rest(&mut buf, offset, len)?;
                        Ok(buf)
                    })
                    .await?;
                }
            }
        }
        Ok(Bytes::from(buf))
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.inner.read_only,
            can_flush: true,
            can_fua: true,
            can_trim: !self.inner.read_only,
            can_zero: !self.inner.read_only,
            can_fast_zero: !self.inner.read_only,
            can_cache: true,
            // One open file (one page cache) serves every connection: a flush through
            // any connection covers them all.
            can_multi_conn: true,
            rotational: false,
            min_block: if self.inner.size.is_multiple_of(512) {
                512
            } else {
                1
            },
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move {
            self.inner.check(offset, u64::from(len))?;
            if len >= HOLE_DETECT_MIN_READ {
                let extents = self.inner.extents(offset, u64::from(len));
                if extents.iter().any(|e| e.kind != ExtentKind::Data) {
                    let mut out = ReadData::default();
                    let mut pos = offset;
                    for e in extents {
                        // extents are within the u32 request
                        let l = e.len as u32;
                        match e.kind {
                            ExtentKind::Data => {
                                out.push(Piece::Data(self.read_data(pos, l).await?))
                            }
                            ExtentKind::Zero | ExtentKind::Hole => out.push(Piece::Zero(l)),
                        }
                        pos += e.len;
                    }
                    let covered = pos - offset;
                    if covered < u64::from(len) {
                        let rest = (u64::from(len) - covered) as u32;
                        out.push(Piece::Data(self.read_data(pos, rest).await?));
                    }
                    return Ok(out);
                }
            }
            Ok(ReadData::data(self.read_data(offset, len).await?))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.check_write(offset, data.len() as u64)?;
            if fua {
                let inner = self.inner.clone();
                return blocking(move || {
                    Ok(inner.write_all_at(&data, offset, ReadWriteFlags::DSYNC)?)
                })
                .await;
            }
            match inner.mode {
                IoMode::Inline => Ok(inner.write_all_at(&data, offset, ReadWriteFlags::empty())?),
                IoMode::Pool => {
                    let inner = self.inner.clone();
                    blocking(move || {
                        Ok(inner.write_all_at(&data, offset, ReadWriteFlags::empty())?)
                    })
                    .await
                }
                IoMode::Auto => {
                    let mut done = 0;
                    let small = data.len() < POOL_MIN_LEN;
                    if small && inner.nowait_write.load(Ordering::Relaxed) {
                        done = inner.write_nowait(&data, offset)?;
                        if done == data.len() {
                            return Ok(());
                        }
                    }
                    if small
                        && !inner.nowait_write.load(Ordering::Relaxed)
                        && !inner.writes.use_pool()
                    {
                        inner.writes.inline(|| {
                            inner.write_all_at(
                                &data[done..],
                                offset + done as u64,
                                ReadWriteFlags::empty(),
                            )
                        })?;
                        return Ok(());
                    }
                    let inner = self.inner.clone();
                    let rest = data.slice(done..);
                    blocking(move || {
                        Ok(inner.write_all_at(
                            &rest,
                            offset + done as u64,
                            ReadWriteFlags::empty(),
                        )?)
                    })
                    .await
                }
            }
        })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || Ok(inner.file.sync_data()?)))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceFuture<'_, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.check_write(offset, len)?;
            if inner.read_only {
                return Err(DeviceError::ReadOnly);
            }
            blocking(move || {
                // TRIM is a hint: a file system that cannot punch holes ignores it.
                let _ = inner.fallocate(
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    offset,
                    len,
                );
                if fua {
                    inner.file.sync_data()?;
                }
                Ok(())
            })
            .await
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.check_write(offset, len)?;
            blocking(move || inner.zero_sync(offset, len, flags)).await
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            self.inner.check(offset, len)?;
            if self.inner.mode == IoMode::Pool {
                let inner = self.inner.clone();
                return blocking(move || Ok(inner.extents(offset, len))).await;
            }
            Ok(self.inner.extents(offset, len))
        })
    }

    fn cache(&self, offset: u64, len: u64) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            self.inner.check(offset, len)?;
            let len = std::num::NonZeroU64::new(len);
            // Readahead is only a hint; a failure changes nothing for later reads.
            let _ =
                rustix::fs::fadvise(&self.inner.file, offset, len, rustix::fs::Advice::WillNeed);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(size: u64, mode: IoMode) -> (tempfile::NamedTempFile, FileDevice) {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        f.as_file().set_len(size).expect("set_len");
        let d = FileDevice::open(f.path(), false)
            .expect("open")
            .with_io_mode(mode);
        (f, d)
    }

    #[tokio::test]
    async fn write_read_round_trip_in_every_mode() {
        for mode in [IoMode::Auto, IoMode::Inline, IoMode::Pool] {
            let (_f, d) = device(1 << 20, mode);
            let data = Bytes::from((0..8192u32).map(|i| i as u8).collect::<Vec<_>>());
            d.write(4096, data.clone(), false).await.expect("write");
            d.write(65536, data.clone(), true).await.expect("fua write");
            assert_eq!(d.read(4096, 8192).await.expect("read").to_bytes(), data);
            assert_eq!(d.read(65536, 8192).await.expect("read").to_bytes(), data);
            d.flush().await.expect("flush");
        }
    }

    #[tokio::test]
    async fn bounds_and_read_only_are_enforced() {
        let (f, d) = device(8192, IoMode::Auto);
        assert!(matches!(
            d.read(8192, 1).await,
            Err(DeviceError::OutOfRange { .. })
        ));
        assert!(matches!(
            d.write(8000, Bytes::from(vec![1; 512]), false).await,
            Err(DeviceError::NoSpace)
        ));
        let ro = FileDevice::open(f.path(), true).expect("open ro");
        assert!(ro.capabilities().read_only);
        assert!(matches!(
            ro.write(0, Bytes::from(vec![1; 512]), false).await,
            Err(DeviceError::ReadOnly)
        ));
    }

    #[tokio::test]
    async fn holes_zeroes_and_block_status() {
        let (_f, d) = device(4 << 20, IoMode::Auto);
        let ones = Bytes::from(vec![1u8; 1 << 20]);
        d.write(1 << 20, ones.clone(), false).await.expect("write");
        let ext = d.block_status(0, 4 << 20).await.expect("status");
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4 << 20);
        assert_eq!(ext[0], Extent::new(1 << 20, ExtentKind::Hole));
        assert_eq!(ext[1], Extent::new(1 << 20, ExtentKind::Data));
        // a large read over hole + data comes back as a zero piece and a data piece
        let r = d.read(0, 2 << 20).await.expect("read");
        assert_eq!(r.pieces().first(), Some(&Piece::Zero(1 << 20)));
        assert_eq!(r.len(), 2 << 20);
        assert_eq!(r.to_bytes().slice(1 << 20..), ones);
        // zeroing punches; fast zero works on a file system that can punch
        let flags = ZeroFlags {
            fast: true,
            ..ZeroFlags::default()
        };
        d.write_zeroes(1 << 20, 1 << 20, flags).await.expect("zero");
        assert!(
            d.read(1 << 20, 4096)
                .await
                .expect("read")
                .to_bytes()
                .iter()
                .all(|b| *b == 0)
        );
        d.write(0, ones.slice(..4096), false).await.expect("write");
        d.trim(0, 4096, false).await.expect("trim");
        assert!(
            d.read(0, 4096)
                .await
                .expect("read")
                .to_bytes()
                .iter()
                .all(|b| *b == 0)
        );
        let no_hole = ZeroFlags {
            no_hole: true,
            ..ZeroFlags::default()
        };
        d.write(8192, ones.slice(..4096), false)
            .await
            .expect("write");
        d.write_zeroes(8192, 4096, no_hole).await.expect("zero");
        assert!(
            d.read(8192, 4096)
                .await
                .expect("read")
                .to_bytes()
                .iter()
                .all(|b| *b == 0)
        );
    }
}
