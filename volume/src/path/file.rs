//! `FilePath`: the LUN as a local file or block device. `pread`/`pwrite` on the caller's
//! thread, `fdatasync`, fast zeroing (fallocate on files, BLKZEROOUT on block devices),
//! and optional O_DIRECT with aligned bounce buffers and read-modify-write of partial
//! blocks (docs/design/041 §1).

use super::{
    ErrorClass, LunPath, Op, PathError, WriteGate, check_range, classify_io, validate_io_timeout,
};
use rustix::fs::{AtFlags, FallocateFlags, StatxFlags};
use rustix::time::{ClockId, DynamicClockId, clock_gettime_dynamic};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Lock stripes for read-modify-write of partial blocks under O_DIRECT.
const RMW_STRIPES: usize = 64;

/// How to open a [`FilePath`].
#[derive(Debug, Clone)]
pub struct FileOptions {
    pub read_only: bool,
    /// Open with O_DIRECT (required for nodes on different hosts sharing a SAN LUN).
    pub direct: bool,
    /// Calls slower than this are counted and logged (the kernel bounds them: 041 §1).
    pub io_timeout: Duration,
    /// Classify EIO as a path failure (dm-multipath with `no_path_retry fail`).
    pub eio_is_path: bool,
}

impl Default for FileOptions {
    fn default() -> Self {
        FileOptions {
            read_only: false,
            direct: false,
            io_timeout: super::DEFAULT_IO_TIMEOUT,
            eio_is_path: false,
        }
    }
}

/// A LUN that is a local file or block device.
pub struct FilePath {
    file: File,
    path: PathBuf,
    target: String,
    block_device: bool,
    /// A regular file with fewer blocks than its length at open (thin): zeroing punches
    /// holes so the file stays thin; a fully allocated file keeps its blocks (zero range).
    sparse: bool,
    /// Alignment of offsets, lengths and buffers (1 without O_DIRECT).
    align: usize,
    size: u64,
    opts: FileOptions,
    stripes: Vec<Mutex<()>>,
    slow_calls: AtomicU64,
}

impl std::fmt::Debug for FilePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilePath")
            .field("target", &self.target)
            .field("block_device", &self.block_device)
            .field("align", &self.align)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl FilePath {
    /// Opens a LUN file or block device (it must exist).
    pub fn open(path: &Path, opts: FileOptions) -> Result<FilePath, PathError> {
        let desc = format!(
            "file {}{}",
            path.display(),
            if opts.direct { " (O_DIRECT)" } else { "" }
        );
        validate_io_timeout(opts.io_timeout).map_err(|detail| PathError::Unsupported {
            target: desc.clone(),
            detail,
        })?;
        let mut oo = std::fs::OpenOptions::new();
        oo.read(true).write(!opts.read_only);
        if opts.direct {
            oo.custom_flags(libc::O_DIRECT);
        }
        let file = match oo.open(path) {
            Ok(f) => f,
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                return Err(PathError::Unsupported {
                    target: desc,
                    detail: "the file system refuses O_DIRECT (tmpfs does): put the LUN file \
                             on a disk file system, or open it without direct I/O"
                        .into(),
                });
            }
            Err(e) => return Err(PathError::from_io(&desc, Op::Open, 0, &e, false)),
        };
        let meta = file
            .metadata()
            .map_err(|e| PathError::from_io(&desc, Op::Open, 0, &e, false))?;
        let block_device = meta.file_type().is_block_device();
        let size = if block_device {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(|e| PathError::from_io(&desc, Op::Size, 0, &e, false))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(PathError::Unsupported {
                target: desc,
                detail: "not a regular file or block device".into(),
            });
        };
        let sparse = !block_device && meta.blocks().saturating_mul(512) < size;
        let align = if !opts.direct {
            1
        } else if block_device {
            logical_block_size(&file).unwrap_or(4096)
        } else {
            dio_alignment(&file).unwrap_or(4096)
        };
        if opts.direct && size % align as u64 != 0 {
            return Err(PathError::Unsupported {
                target: desc,
                detail: format!("size {size} is not a multiple of the O_DIRECT alignment {align}"),
            });
        }
        if opts.direct && size >= align as u64 {
            // Some file systems accept O_DIRECT at open and refuse it at the first I/O.
            let mut probe = AlignedBuf::new(align, align);
            if let Err(e) = file.read_at(probe.as_mut(), 0)
                && e.raw_os_error() == Some(libc::EINVAL)
            {
                return Err(PathError::Unsupported {
                    target: desc,
                    detail: "the file system refuses O_DIRECT reads: put the LUN file on \
                             a disk file system, or open it without direct I/O"
                        .into(),
                });
            }
        }
        Ok(FilePath {
            file,
            path: path.to_path_buf(),
            target: desc,
            block_device,
            sparse,
            align,
            size,
            opts,
            stripes: (0..RMW_STRIPES).map(|_| Mutex::new(())).collect(),
            slow_calls: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Request alignment in force (1 without O_DIRECT; 512 or 4096 with it).
    pub fn alignment(&self) -> usize {
        self.align
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Calls that took longer than `io_timeout`.
    pub fn slow_calls(&self) -> u64 {
        self.slow_calls.load(Ordering::Relaxed)
    }

    fn err(&self, op: Op, offset: u64, e: &io::Error) -> PathError {
        PathError::from_io(&self.target, op, offset, e, self.opts.eio_is_path)
    }

    fn timed<T>(&self, op: Op, offset: u64, f: impl FnOnce() -> T) -> T {
        let start = coarse_now();
        let r = f();
        let took = coarse_now().saturating_sub(start);
        if took > self.opts.io_timeout {
            self.slow_calls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target = %self.target, %op, offset, ?took, "LUN call slower than io_timeout");
        }
        r
    }

    fn is_aligned(&self, ptr: *const u8, offset: u64, len: usize) -> bool {
        self.align == 1
            || (offset.is_multiple_of(self.align as u64)
                && len.is_multiple_of(self.align)
                && (ptr as usize).is_multiple_of(self.align))
    }

    fn pread_all(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(PathError::media(
                        &self.target,
                        Op::Read,
                        offset + done as u64,
                        "unexpected end of the LUN",
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(Op::Read, offset + done as u64, &e)),
            }
        }
        Ok(())
    }

    /// Writes all of `buf`, asking `gate` before each `pwrite` (a short write is followed
    /// by another call).
    fn pwrite_all(&self, buf: &[u8], offset: u64, gate: &dyn WriteGate) -> Result<(), PathError> {
        let mut done = 0;
        while done < buf.len() {
            gate.check()?;
            match self.file.write_at(&buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(PathError::media(
                        &self.target,
                        Op::Write,
                        offset + done as u64,
                        "write made no progress",
                    ));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err(Op::Write, offset + done as u64, &e)),
            }
        }
        Ok(())
    }

    fn read_direct_unaligned(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        let a = self.align as u64;
        let start = offset - offset % a;
        let end = (offset + buf.len() as u64).next_multiple_of(a);
        let mut bounce = AlignedBuf::new((end - start) as usize, self.align);
        self.pread_all(bounce.as_mut(), start)?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_mut()[skip..skip + buf.len()]);
        Ok(())
    }

    /// Read-modify-write of the partial head and tail blocks; the gate is asked after the
    /// read-back, immediately before the write.
    fn write_direct_unaligned(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        let a = self.align as u64;
        let end = offset + buf.len() as u64;
        let start = offset - offset % a;
        let aend = end.next_multiple_of(a);
        let head_partial = !offset.is_multiple_of(a);
        let tail_partial = !end.is_multiple_of(a);
        // Lock the stripes of the blocks we read back and rewrite, in index order.
        let mut locks: Vec<usize> = Vec::with_capacity(2);
        if head_partial {
            locks.push(((start / a) % RMW_STRIPES as u64) as usize);
        }
        if tail_partial {
            locks.push((((aend - a) / a) % RMW_STRIPES as u64) as usize);
        }
        locks.sort_unstable();
        locks.dedup();
        let _guards: Vec<_> = locks
            .iter()
            .map(|&i| self.stripes[i].lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let mut bounce = AlignedBuf::new((aend - start) as usize, self.align);
        let n = bounce.as_mut().len();
        if head_partial {
            self.pread_all(&mut bounce.as_mut()[..self.align], start)?;
        }
        if tail_partial && (aend - a > start || !head_partial) {
            self.pread_all(&mut bounce.as_mut()[n - self.align..], aend - a)?;
        }
        let skip = (offset - start) as usize;
        bounce.as_mut()[skip..skip + buf.len()].copy_from_slice(buf);
        self.pwrite_all(bounce.as_mut(), start, gate)
    }

    /// Zeroes with one fallocate / BLKZEROOUT call (the gate asked before it); false when
    /// the storage has no such call.
    fn zero_fast(&self, offset: u64, len: u64, gate: &dyn WriteGate) -> Result<bool, PathError> {
        if self.block_device {
            let a = self.align.max(512) as u64;
            let zs = offset.next_multiple_of(a);
            let ze = (offset + len) - (offset + len) % a;
            if ze <= zs {
                return Ok(false);
            }
            gate.check()?;
            match crate::sys::blkzeroout(&self.file, zs, ze - zs) {
                Ok(()) => {
                    if zs > offset {
                        super::write_zeroes_by_writing(self, offset, zs - offset, gate)?;
                    }
                    if offset + len > ze {
                        super::write_zeroes_by_writing(self, ze, offset + len - ze, gate)?;
                    }
                    Ok(true)
                }
                Err(e) if unsupported(&e) => Ok(false),
                Err(e) => Err(self.err(Op::WriteZeroes, offset, &e)),
            }
        } else {
            let keep = FallocateFlags::KEEP_SIZE;
            let (zero, punch) = (
                FallocateFlags::ZERO_RANGE | keep,
                FallocateFlags::PUNCH_HOLE | keep,
            );
            // ZERO_RANGE allocates (unwritten) blocks: on a thin LUN file every zeroed
            // extent would cost real space (a new dynamic VHD zeroes a whole extent).
            let modes = if self.sparse {
                [punch, zero]
            } else {
                [zero, punch]
            };
            for mode in modes {
                gate.check()?;
                match fallocate(&self.file, mode, offset, len) {
                    Ok(()) => return Ok(true),
                    Err(e) if unsupported(&e) => continue,
                    Err(e) => return Err(self.err(Op::WriteZeroes, offset, &e)),
                }
            }
            Ok(false)
        }
    }
}

/// CLOCK_MONOTONIC_COARSE: a few ns per reading (the precise clock costs ~50 ns, a
/// visible share of a 4 KiB page-cache read); its ~4 ms resolution is plenty against an
/// io_timeout of seconds.
fn coarse_now() -> Duration {
    match clock_gettime_dynamic(DynamicClockId::Known(ClockId::MonotonicCoarse)) {
        Ok(ts) => Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
        Err(_) => Duration::ZERO,
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS | libc::EINVAL)
    )
}

impl LunPath for FilePath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        check_range(self, Op::Read, offset, buf.len() as u64, self.size)?;
        self.timed(Op::Read, offset, || {
            if self.is_aligned(buf.as_ptr(), offset, buf.len()) {
                self.pread_all(buf, offset)
            } else {
                self.read_direct_unaligned(buf, offset)
            }
        })
    }

    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        check_range(self, Op::Write, offset, buf.len() as u64, self.size)?;
        self.timed(Op::Write, offset, || {
            if self.is_aligned(buf.as_ptr(), offset, buf.len()) {
                self.pwrite_all(buf, offset, gate)
            } else if offset.is_multiple_of(self.align as u64)
                && buf.len().is_multiple_of(self.align)
            {
                // Aligned range, unaligned memory: a copy, no read-back.
                let mut b = AlignedBuf::new(buf.len(), self.align);
                b.as_mut().copy_from_slice(buf);
                self.pwrite_all(b.as_mut(), offset, gate)
            } else {
                self.write_direct_unaligned(buf, offset, gate)
            }
        })
    }

    fn flush(&self) -> Result<(), PathError> {
        self.timed(Op::Flush, 0, || {
            self.file
                .sync_data()
                .map_err(|e| self.err(Op::Flush, 0, &e))
        })
    }

    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        check_range(self, Op::WriteZeroes, offset, len, self.size)?;
        if len == 0 {
            return Ok(());
        }
        self.timed(Op::WriteZeroes, offset, || {
            if self.zero_fast(offset, len, gate)? {
                Ok(())
            } else {
                super::write_zeroes_by_writing(self, offset, len, gate)
            }
        })
    }

    /// Nothing is ever in doubt here: a call that returned has landed (or failed), and
    /// one still inside the kernel belongs to a request not answered yet, which the
    /// caller drains before it lets another writer in; the kernel bounds the call
    /// (SCSI timeout, multipath `no_path_retry`: 041 §1).
    fn quiet_at(&self) -> Option<std::time::Instant> {
        None
    }

    fn may_block(&self) -> bool {
        false
    }

    fn size(&self) -> Result<u64, PathError> {
        Ok(self.size)
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// A heap buffer whose usable part starts at an `align` boundary (no unsafe needed:
/// over-allocate and skip to the boundary).
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> AlignedBuf {
        let raw = vec![0u8; len + align];
        let start = raw.as_ptr().align_offset(align).min(align);
        AlignedBuf { raw, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    // The kernel takes signed offsets: larger ones are refused before the call.
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    rustix::fs::fallocate(file, mode, offset, len).map_err(io::Error::from)
}

fn logical_block_size(file: &File) -> Option<usize> {
    // The kernel's value is a C int: only positive ones are sizes.
    let v = rustix::fs::ioctl_blksszget(file).ok()?;
    (1..=i32::MAX as u32)
        .contains(&v)
        .then_some(v as usize)
        .filter(|v| v.is_power_of_two())
}

/// The file system's O_DIRECT offset alignment (statx STATX_DIOALIGN, Linux 6.1+).
fn dio_alignment(file: &File) -> Option<usize> {
    let st = rustix::fs::statx(file, c"", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    if st.stx_mask & StatxFlags::DIOALIGN.bits() == 0 {
        return None;
    }
    let a = st.stx_dio_offset_align.max(st.stx_dio_mem_align) as usize;
    (a >= 512 && a.is_power_of_two()).then_some(a)
}

impl FilePath {
    /// The class of an I/O error on this path (EIO counts as a path failure when the
    /// options say so).
    pub fn classify(&self, e: &io::Error) -> ErrorClass {
        classify_io(e, self.opts.eio_is_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lun(len: u64) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lun");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        (d, p)
    }

    #[test]
    fn read_write_zero_and_range() {
        let (_d, p) = lun(1 << 20);
        let f = FilePath::open(&p, FileOptions::default()).unwrap();
        f.write_at(b"hello", 4090).unwrap();
        let mut b = [0u8; 5];
        f.read_at(&mut b, 4090).unwrap();
        assert_eq!(&b, b"hello");
        f.write_zeroes(4092, 2).unwrap();
        f.read_at(&mut b, 4090).unwrap();
        assert_eq!(&b, b"he\0\0o");
        let e = f.read_at(&mut b, (1 << 20) - 2).unwrap_err();
        assert!(matches!(e, PathError::OutOfRange { .. }), "{e}");
        assert_eq!(e.class(), ErrorClass::Media);
        let e = f.write_at(b"x", u64::MAX).unwrap_err();
        assert!(matches!(e, PathError::OutOfRange { .. }));
        f.flush().unwrap();
    }

    #[test]
    fn zeroing_keeps_a_thin_file_thin_and_a_thick_file_thick() {
        const MB: u64 = 1 << 20;
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        let (_d, p) = lun(8 * MB);
        let f = FilePath::open(&p, FileOptions::default()).unwrap();
        f.write_zeroes(0, 4 * MB).unwrap();
        assert!(blocks(&p) < MB, "zeroing allocated {} bytes", blocks(&p));
        f.write_at(&vec![7u8; MB as usize], MB).unwrap();
        f.flush().unwrap();
        f.write_zeroes(0, 4 * MB).unwrap();
        assert!(blocks(&p) < MB, "zeroing kept {} bytes", blocks(&p));
        let mut b = vec![1u8; MB as usize];
        f.read_at(&mut b, MB).unwrap();
        assert!(b.iter().all(|x| *x == 0));

        let (_d2, p2) = lun(0);
        std::fs::write(&p2, vec![9u8; 8 * MB as usize]).unwrap();
        let f = FilePath::open(&p2, FileOptions::default()).unwrap();
        f.write_zeroes(0, 4 * MB).unwrap();
        assert!(
            blocks(&p2) >= 8 * MB,
            "a thick file lost blocks: {}",
            blocks(&p2)
        );
        f.read_at(&mut b, MB).unwrap();
        assert!(b.iter().all(|x| *x == 0));
    }

    #[test]
    fn aligned_buf_is_aligned() {
        for a in [512usize, 4096] {
            for len in [0usize, 1, 512, 5000] {
                let mut b = AlignedBuf::new(len, a);
                let s = b.as_mut();
                assert_eq!(s.len(), len);
                assert_eq!(s.as_ptr() as usize % a, 0);
            }
        }
    }
}
