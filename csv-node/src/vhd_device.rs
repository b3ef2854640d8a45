//! A VHD image (fixed, dynamic, differencing; the `vhd` crate) as an NBD
//! [`BlockDevice`]. The image API is synchronous: reads and writes run inline while
//! they are fast (page-cache hits) and move to the blocking pool for a while after a
//! slow one ([`Adaptive`]); flush, zeroing and discard always run in the pool. Block
//! status comes from the in-memory BAT and bitmaps (merged over the parent chain), so
//! unallocated blocks are holes and large reads send them as OFFSET_HOLE.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use nbd::device::{
    BlockDevice, Capabilities, DeviceError, DeviceFuture, Extent, ExtentKind, Piece, ReadData,
    ZeroFlags,
};
use nbd::error::Errno;
use nbd::file::{Adaptive, HOLE_DETECT_MIN_READ, IoMode, POOL_MIN_LEN};
use vhd::{DiskType, Image};

/// Maps the image library's errors onto the NBD set.
fn map_err(e: vhd::Error) -> DeviceError {
    match e {
        vhd::Error::Io(io) | vhd::Error::IoAt { source: io, .. } => DeviceError::Io(io),
        vhd::Error::ReadOnly => DeviceError::ReadOnly,
        vhd::Error::OutOfRange { offset, len, .. } => DeviceError::OutOfRange { offset, len },
        vhd::Error::ImageFull => DeviceError::NoSpace,
        other => DeviceError::Other {
            errno: Errno::Io,
            message: other.to_string(),
        },
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
) -> Result<T, DeviceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DeviceError::Io(std::io::Error::other(format!("blocking task: {e}"))))?
}

/// An open VHD served over NBD.
#[derive(Debug)]
pub struct VhdDevice {
    image: Arc<Image>,
    size: u64,
    read_only: bool,
    mode: IoMode,
    adaptive: Adaptive,
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
        Ok(VhdDevice {
            size: image.virtual_size(),
            read_only: read_only || image.is_read_only(),
            image: Arc::new(image),
            mode,
            adaptive: Adaptive::default(),
        })
    }

    /// Serves an image opened elsewhere (a VHD on the cluster volume).
    pub fn from_image(image: Image, read_only: bool, mode: IoMode) -> VhdDevice {
        VhdDevice {
            size: image.virtual_size(),
            read_only: read_only || image.is_read_only(),
            image: Arc::new(image),
            mode,
            adaptive: Adaptive::default(),
        }
    }

    pub fn disk_type(&self) -> DiskType {
        self.image.disk_type()
    }

    /// Runs `f` on the image inline or in the pool, per the I/O mode.
    /// `len` is the request's size: large ones go to the pool in auto mode (see
    /// [`POOL_MIN_LEN`]).
    async fn run<T: Send + 'static>(
        &self,
        len: usize,
        f: impl FnOnce(&Image) -> Result<T, vhd::Error> + Send + 'static,
    ) -> Result<T, DeviceError> {
        let inline = match self.mode {
            IoMode::Inline => true,
            IoMode::Pool => false,
            IoMode::Auto => len < POOL_MIN_LEN && !self.adaptive.use_pool(),
        };
        if inline {
            return self.adaptive.inline(|| f(&self.image)).map_err(map_err);
        }
        let image = self.image.clone();
        blocking(move || f(&image).map_err(map_err)).await
    }

    async fn read_bytes(&self, offset: u64, len: u32) -> Result<Bytes, DeviceError> {
        self.run(len as usize, move |img| {
            let mut buf = vec![0u8; len as usize];
            img.read_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    fn status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, DeviceError> {
        let ext = self.image.block_status(offset, len).map_err(map_err)?;
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
}

impl BlockDevice for VhdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        let rw = !self.read_only;
        Capabilities {
            read_only: self.read_only,
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
            min_block: if self.size.is_multiple_of(512) {
                512
            } else {
                1
            },
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move {
            if len >= HOLE_DETECT_MIN_READ {
                let ext = self.status(offset, u64::from(len))?;
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
                return blocking(move || {
                    image.write_at(&data, offset).map_err(map_err)?;
                    image.flush().map_err(map_err)
                })
                .await;
            }
            self.run(data.len(), move |img| img.write_at(&data, offset))
                .await
        })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        let image = self.image.clone();
        Box::pin(blocking(move || image.flush().map_err(map_err)))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceFuture<'_, ()> {
        let image = self.image.clone();
        let ro = self.read_only;
        Box::pin(async move {
            if ro {
                return Err(DeviceError::ReadOnly);
            }
            blocking(move || {
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
                let ext = self.status(offset, len)?;
                if ext.iter().all(|e| e.kind == ExtentKind::Hole) {
                    return Ok(());
                }
                return Err(DeviceError::NotFast);
            }
            let image = self.image.clone();
            blocking(move || {
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
        Box::pin(async move { self.status(offset, len) })
    }
}
