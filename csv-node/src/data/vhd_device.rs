//! A VHD image (fixed, dynamic, differencing; the `vhd` crate) as an NBD
//! [`BlockDevice`]. The image API is synchronous: reads and writes run inline while
//! they are fast (page-cache hits) and move to the blocking pool for a while after a
//! slow one ([`Adaptive`]); flush, zeroing and discard always run in the pool. Block
//! status comes from the in-memory BAT and bitmaps (merged over the parent chain), so
//! unallocated blocks are holes and large reads send them as OFFSET_HOLE.
//!
//! On the cluster volume ([`VhdDevice::on_volume`]) an inline call runs inside the
//! volume's non-blocking scope: anything that could block the runtime worker (a closed
//! fence, growth, a network LUN path) comes back as `WouldBlock` before any side effect
//! and the request runs again in the pool (docs/design/042 §10). The device counts its
//! requests in flight, so a hand-off can wait until none is left.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::file_device::{Adaptive, HOLE_DETECT_MIN_READ, IoMode, POOL_MIN_LEN};
use bytes::Bytes;
use nbd::device::{
    BlockDevice, Capabilities, DeviceError, DeviceFuture, Extent, ExtentKind, Piece, ReadData,
    ZeroFlags,
};
use nbd::error::Errno;
use tokio::sync::Notify;
use vhd::{DiskType, Image};

/// Maps the image library's errors onto the NBD set (ENOSPC only for a full volume or
/// image: QEMU's default `werror=enospc` pauses the VM for it).
fn map_err(e: vhd::Error) -> DeviceError {
    match e {
        vhd::Error::Io(io) | vhd::Error::IoAt { source: io, .. } => match volume::errno(&io) {
            libc::ENOSPC => DeviceError::NoSpace,
            libc::EROFS => DeviceError::ReadOnly,
            _ => DeviceError::Io(io),
        },
        vhd::Error::ReadOnly => DeviceError::ReadOnly,
        vhd::Error::OutOfRange { offset, len, .. } => DeviceError::OutOfRange { offset, len },
        vhd::Error::ImageFull => DeviceError::NoSpace,
        other => DeviceError::Other {
            errno: Errno::Io,
            message: other.to_string(),
        },
    }
}

/// True when an inline call found it would have to block (run it in the pool).
fn would_block(e: &vhd::Error) -> bool {
    match e {
        vhd::Error::Io(io) | vhd::Error::IoAt { source: io, .. } => volume::is_would_block(io),
        _ => false,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> Result<T, DeviceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeviceError::Io(std::io::Error::other(format!("blocking task: {e}"))))?
}

/// Requests in flight on a device.
#[derive(Debug, Default)]
struct InFlight {
    n: AtomicUsize,
    idle: Notify,
}

/// One request in flight; moved into the blocking task that runs it, if any.
struct Busy(Arc<InFlight>);

impl Busy {
    fn new(f: &Arc<InFlight>) -> Busy {
        f.n.fetch_add(1, Ordering::AcqRel);
        Busy(f.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// An open VHD served over NBD.
#[derive(Debug)]
pub struct VhdDevice {
    image: Arc<Image>,
    size: u64,
    read_only: bool,
    mode: IoMode,
    adaptive: Adaptive,
    /// Inline calls run inside the volume's non-blocking scope.
    scoped: bool,
    in_flight: Arc<InFlight>,
}

impl VhdDevice {
    /// Opens `path` (and its parents, read-only, for a differencing image).
    pub fn open(path: &Path, read_only: bool, mode: IoMode) -> Result<VhdDevice, vhd::Error> {
        let image = Image::open(
            path,
            &vhd::OpenOptions {
                read_only,
                parent: None,
            },
        )?;
        for w in image.warnings() {
            tracing::warn!(image = %path.display(), "{w}");
        }
        Ok(Self::new(image, read_only, mode, false))
    }

    fn new(image: Image, read_only: bool, mode: IoMode, scoped: bool) -> VhdDevice {
        VhdDevice {
            size: image.virtual_size(),
            read_only: read_only || image.is_read_only(),
            image: Arc::new(image),
            mode,
            adaptive: Adaptive::default(),
            scoped,
            in_flight: Arc::default(),
        }
    }

    /// Serves an image opened elsewhere (a local tool).
    pub fn from_image(image: Image, read_only: bool, mode: IoMode) -> VhdDevice {
        Self::new(image, read_only, mode, false)
    }

    /// Serves an image of the cluster volume: inline only inside the non-blocking scope,
    /// never on a LUN path that waits on a network.
    pub fn on_volume(image: Image, read_only: bool, path_may_block: bool) -> VhdDevice {
        let mode = if path_may_block {
            IoMode::Pool
        } else {
            IoMode::Auto
        };
        Self::new(image, read_only, mode, true)
    }

    pub fn disk_type(&self) -> DiskType {
        self.image.disk_type()
    }

    /// Requests in flight (read, write, flush, ...), blocking ones included.
    pub fn in_flight(&self) -> usize {
        self.in_flight.n.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight, at most `limit`; true when idle.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.in_flight.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    fn busy(&self) -> Busy {
        Busy::new(&self.in_flight)
    }

    /// Gives the image up: no more writes, no flush on drop (its file is reopened from
    /// the LUN instead).
    pub fn abandon(&self) {
        self.image.abandon();
    }

    /// On the cluster volume, may a request run inline at all? Only where the image itself
    /// takes no lock another thread may hold across LUN I/O: never for differencing
    /// images (their bitmap shard locks), and writes only into allocated blocks (an
    /// allocation holds the image's allocation lock through growth).
    fn inline_allowed(&self, offset: u64, len: u64, write: bool) -> bool {
        if !self.scoped {
            return true;
        }
        match self.image.disk_type() {
            DiskType::Fixed => true,
            DiskType::Differencing => false,
            _ if !write => true,
            _ => {
                let Some(bs) = self.image.block_size().map(u64::from).filter(|b| *b > 0) else {
                    return false;
                };
                let first = offset / bs;
                let last = (offset + len.max(1) - 1) / bs;
                (first..=last)
                    .all(|b| u32::try_from(b).is_ok_and(|b| self.image.bat_entry(b).is_some()))
            }
        }
    }

    /// Runs `f` on the image inline or in the pool, per the I/O mode.
    /// `len` is the request's size: large ones go to the pool in auto mode (see
    /// [`POOL_MIN_LEN`]).
    async fn run<T: Send + 'static>(
        &self,
        (offset, len, write): (u64, usize, bool),
        f: impl Fn(&Image) -> Result<T, vhd::Error> + Send + Sync + 'static,
    ) -> Result<T, DeviceError> {
        let busy = self.busy();
        let inline = match self.mode {
            IoMode::Inline => true,
            IoMode::Pool => false,
            IoMode::Auto => len < POOL_MIN_LEN && !self.adaptive.use_pool(),
        } && self.inline_allowed(offset, len as u64, write);
        if inline {
            let r = if self.scoped {
                self.adaptive
                    .inline(|| volume::nonblocking::run(|| f(&self.image)))
            } else {
                self.adaptive.inline(|| f(&self.image))
            };
            match r {
                Err(e) if would_block(&e) => {}
                other => return other.map_err(map_err),
            }
        }
        let image = self.image.clone();
        blocking(move || {
            let _busy = busy;
            f(&image).map_err(map_err)
        })
        .await
    }

    async fn read_bytes(&self, offset: u64, len: u32) -> Result<Bytes, DeviceError> {
        self.run((offset, len as usize, false), move |img| {
            let mut buf = vec![0u8; len as usize];
            img.read_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// Block status: inline from the in-memory BAT, but in the pool for a differencing
    /// image of the cluster volume (its bitmap shard locks: see `inline_allowed`).
    async fn status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        if !self.inline_allowed(offset, len, false) {
            let image = self.image.clone();
            let busy = self.busy();
            return blocking(move || {
                let _busy = busy;
                status_of(&image, offset, len)
            })
            .await;
        }
        status_of(&self.image, offset, len)
    }
}

fn status_of(image: &Image, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
    let ext = image.block_status(offset, len).map_err(map_err)?;
    Ok(ext
        .into_iter()
        .map(|e| {
            let kind = match e.kind {
                vhd::ExtentKind::Data => ExtentKind::Data,
                vhd::ExtentKind::Hole => ExtentKind::Hole,
                vhd::ExtentKind::Zero => ExtentKind::Zero,
            };
            Extent::new(e.length, kind)
        })
        .collect())
}

/// What an export of a VHD of `size` bytes offers (also a standby export's, before the
/// VHD is opened: a client sees the same flags either way).
pub(crate) fn vhd_capabilities(size: u64, read_only: bool) -> Capabilities {
    let rw = !read_only;
    Capabilities {
        read_only,
        can_flush: true,
        can_fua: true,
        can_trim: rw,
        can_zero: rw,
        // fast only where the range is already unallocated (checked per request)
        can_fast_zero: rw,
        can_cache: false,
        // one Image (one BAT, one file) serves every connection
        can_multi_conn: true,
        rotational: false,
        min_block: if size.is_multiple_of(512) { 512 } else { 1 },
    }
}

impl BlockDevice for VhdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        vhd_capabilities(self.size, self.read_only)
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move {
            if len >= HOLE_DETECT_MIN_READ {
                let ext = self.status(offset, u64::from(len)).await?;
                if ext.iter().any(|e| e.kind != ExtentKind::Data) {
                    let mut out = ReadData::default();
                    let mut pos = offset;
                    for e in ext {
                        let l = e.len as u32;
                        match e.kind {
                            ExtentKind::Data => {
                                out.push(Piece::Data(self.read_bytes(pos, l).await?))
                            }
                            ExtentKind::Hole | ExtentKind::Zero => out.push(Piece::Zero(l)),
                        }
                        pos += e.len;
                    }
                    return Ok(out);
                }
            }
            Ok(ReadData::data(self.read_bytes(offset, len).await?))
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            if self.read_only {
                return Err(DeviceError::ReadOnly);
            }
            if fua {
                let image = self.image.clone();
                let busy = self.busy();
                return blocking(move || {
                    let _busy = busy;
                    image.write_at(&data, offset).map_err(map_err)?;
                    image.flush().map_err(map_err)
                })
                .await;
            }
            self.run((offset, data.len(), true), move |img| {
                img.write_at(&data, offset)
            })
            .await
        })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        let image = self.image.clone();
        let busy = self.busy();
        Box::pin(blocking(move || {
            let _busy = busy;
            image.flush().map_err(map_err)
        }))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceFuture<'_, ()> {
        let image = self.image.clone();
        let ro = self.read_only;
        Box::pin(async move {
            if ro {
                return Err(DeviceError::ReadOnly);
            }
            let busy = self.busy();
            blocking(move || {
                let _busy = busy;
                image.discard(offset, len).map_err(map_err)?;
                if fua {
                    image.flush().map_err(map_err)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            if self.read_only {
                return Err(DeviceError::ReadOnly);
            }
            if flags.fast {
                // Fast only when nothing needs writing: the range is a hole already.
                let ext = self.status(offset, len).await?;
                if ext.iter().all(|e| e.kind == ExtentKind::Hole) {
                    return Ok(());
                }
                return Err(DeviceError::NotFast);
            }
            let image = self.image.clone();
            let busy = self.busy();
            blocking(move || {
                let _busy = busy;
                image
                    .write_zeroes(offset, len, !flags.no_hole)
                    .map_err(map_err)?;
                if flags.fua {
                    image.flush().map_err(map_err)?;
                }
                Ok(())
            })
            .await
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move { self.status(offset, len).await })
    }
}
