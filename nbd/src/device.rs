//! The block-device trait an export serves. Object-safe (exports hold
//! `Arc<dyn BlockDevice>`) and async (the cluster volume does network I/O behind it);
//! methods return boxed futures that borrow the device. The server checks bounds,
//! alignment and read-only before calling, so a device sees only valid ranges, but it
//! must still answer errors with a [`DeviceError`], never panic.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::error::Errno;
use crate::proto::{STATE_HOLE, STATE_ZERO};

/// The future every device method returns.
pub type DeviceFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DeviceError>> + Send + 'a>>;

/// Why a device operation failed; each maps onto exactly one NBD error value.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device is read-only")]
    ReadOnly,
    #[error("range {offset}+{len} is beyond the end of the device")]
    OutOfRange { offset: u64, len: u64 },
    #[error("no space left on the device")]
    NoSpace,
    /// A FAST_ZERO request that the device cannot do faster than a write.
    #[error("zeroing this range would not be fast")]
    NotFast,
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    #[error("the device is shutting down")]
    Shutdown,
    /// Anything else a device wants to say, with the value to send.
    #[error("{message}")]
    Other { errno: Errno, message: String },
}

impl DeviceError {
    pub fn errno(&self) -> Errno {
        match self {
            DeviceError::Io(e) => Errno::from_io(e),
            DeviceError::ReadOnly => Errno::Perm,
            DeviceError::OutOfRange { .. } | DeviceError::Unsupported(_) => Errno::Inval,
            DeviceError::NoSpace => Errno::NoSpc,
            DeviceError::NotFast => Errno::NotSup,
            DeviceError::Shutdown => Errno::Shutdown,
            DeviceError::Other { errno, .. } => *errno,
        }
    }
}

/// What a device can do; turned into transmission flags per export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub read_only: bool,
    pub can_flush: bool,
    pub can_fua: bool,
    pub can_trim: bool,
    pub can_zero: bool,
    /// WRITE_ZEROES with FAST_ZERO may succeed (the device answers NotFast when it
    /// cannot); advertised only with `can_zero`.
    pub can_fast_zero: bool,
    pub can_cache: bool,
    /// All connections share one backend instance, so a FLUSH on one covers writes
    /// made through every other.
    pub can_multi_conn: bool,
    pub rotational: bool,
    /// Smallest addressable unit (a power of two ≤ 64 KiB; the size should be a
    /// multiple of it).
    pub min_block: u32,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            read_only: false,
            can_flush: true,
            can_fua: true,
            can_trim: false,
            can_zero: true,
            can_fast_zero: false,
            can_cache: false,
            can_multi_conn: false,
            rotational: false,
            min_block: crate::proto::BLOCK_SIZE_MIN,
        }
    }
}

/// WRITE_ZEROES modifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range must stay allocated (NBD_CMD_FLAG_NO_HOLE).
    pub no_hole: bool,
    /// Fail with [`DeviceError::NotFast`] unless zeroing is faster than writing.
    pub fast: bool,
    /// Persist before returning (NBD_CMD_FLAG_FUA).
    pub fua: bool,
}

/// A piece of read data: bytes, or a run that reads as zeroes (sent as OFFSET_HOLE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data(Bytes),
    Zero(u32),
}

impl Piece {
    pub fn len(&self) -> u32 {
        match self {
            Piece::Data(b) => b.len() as u32,
            Piece::Zero(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer to a read: pieces in order, covering exactly the requested length.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadData {
    pieces: Vec<Piece>,
}

impl ReadData {
    pub fn data(bytes: Bytes) -> Self {
        ReadData {
            pieces: vec![Piece::Data(bytes)],
        }
    }

    pub fn zeroes(len: u32) -> Self {
        ReadData {
            pieces: vec![Piece::Zero(len)],
        }
    }

    /// Appends a piece, merging adjacent zero runs and dropping empty pieces.
    pub fn push(&mut self, piece: Piece) {
        if piece.is_empty() {
            return;
        }
        if let (Some(Piece::Zero(a)), Piece::Zero(b)) = (self.pieces.last_mut(), &piece)
            && let Some(sum) = a.checked_add(*b)
        {
            *a = sum;
            return;
        }
        self.pieces.push(piece);
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn into_pieces(self) -> Vec<Piece> {
        self.pieces
    }

    /// Total length described.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|p| u64::from(p.len())).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All the bytes in one buffer, zero runs written out.
    pub fn to_bytes(&self) -> Bytes {
        if let [Piece::Data(b)] = self.pieces.as_slice() {
            return b.clone();
        }
        let mut out = Vec::with_capacity(self.len() as usize);
        for p in &self.pieces {
            match p {
                Piece::Data(b) => out.extend_from_slice(b),
                Piece::Zero(n) => out.resize(out.len() + *n as usize, 0),
            }
        }
        Bytes::from(out)
    }
}

/// Allocation state of a run of the device (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated; contents unknown.
    Data,
    /// Allocated and reads as zeroes.
    Zero,
    /// Not allocated; reads as zeroes.
    Hole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub kind: ExtentKind,
}

impl Extent {
    pub fn new(len: u64, kind: ExtentKind) -> Self {
        Extent { len, kind }
    }

    /// The `base:allocation` flags.
    pub fn flags(&self) -> u32 {
        match self.kind {
            ExtentKind::Data => 0,
            ExtentKind::Zero => STATE_ZERO,
            ExtentKind::Hole => STATE_HOLE | STATE_ZERO,
        }
    }
}

/// A block device served over NBD.
pub trait BlockDevice: Send + Sync + std::fmt::Debug {
    /// Size in bytes (fixed while served).
    fn size(&self) -> u64;

    fn capabilities(&self) -> Capabilities;

    /// Reads `len` bytes at `offset`; the answer must cover exactly `len` bytes.
    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData>;

    /// Writes `data` at `offset`; with `fua`, persists it before returning.
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()>;

    /// Persists every write that completed before this call.
    fn flush(&self) -> DeviceFuture<'_, ()>;

    /// Discards a range (a hint: contents afterwards are unspecified).
    fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceFuture<'_, ()> {
        let _ = (offset, len, fua);
        Box::pin(async { Err(DeviceError::Unsupported("trim")) })
    }

    /// Makes a range read as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()>;

    /// Allocation state from `offset`: consecutive extents covering at least one byte
    /// and at most `len` bytes are expected (the server clips longer answers).
    fn block_status(&self, offset: u64, len: u64) -> DeviceFuture<'_, Vec<Extent>> {
        let _ = offset;
        Box::pin(async move { Ok(vec![Extent::new(len, ExtentKind::Data)]) })
    }

    /// Hint that a range will be read soon.
    fn cache(&self, offset: u64, len: u64) -> DeviceFuture<'_, ()> {
        let _ = (offset, len);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_data_merges_zero_runs_and_materialises() {
        let mut d = ReadData::default();
        d.push(Piece::Data(Bytes::from_static(b"ab")));
        d.push(Piece::Zero(2));
        d.push(Piece::Zero(1));
        d.push(Piece::Data(Bytes::new()));
        d.push(Piece::Data(Bytes::from_static(b"c")));
        assert_eq!(d.pieces().len(), 3);
        assert_eq!(d.len(), 6);
        assert_eq!(&d.to_bytes()[..], b"ab\0\0\0c");
    }

    #[test]
    fn errors_map_to_nbd_values() {
        assert_eq!(DeviceError::ReadOnly.errno(), Errno::Perm);
        assert_eq!(DeviceError::NotFast.errno(), Errno::NotSup);
        assert_eq!(
            DeviceError::OutOfRange { offset: 0, len: 1 }.errno(),
            Errno::Inval
        );
        // Errors of a library (no errno) by kind: full storage is ENOSPC (QEMU pauses a
        // VM for it), others EIO.
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "volume full");
        assert_eq!(DeviceError::Io(full).errno(), Errno::NoSpc);
        let other = std::io::Error::other("no coordinator");
        assert_eq!(DeviceError::Io(other).errno(), Errno::Io);
        let ro = std::io::Error::new(std::io::ErrorKind::ReadOnlyFilesystem, "ro");
        assert_eq!(DeviceError::Io(ro).errno(), Errno::Perm);
        assert_eq!(Extent::new(1, ExtentKind::Hole).flags(), 3);
        assert_eq!(Extent::new(1, ExtentKind::Zero).flags(), 2);
    }
}
