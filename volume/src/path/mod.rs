//! LUN paths: the one trait through which a node touches the shared LUN ([`LunPath`]),
//! the typed error that tells path failures from media errors and fencing
//! ([`PathError`], [`ErrorClass`]), and the backends: a local file or block device
//! ([`FilePath`]) and an NBD client to a SAN target ([`NbdPath`]). docs/design/041 §1.

mod error;
mod file;
mod nbd;

pub use error::{ErrorClass, Op, PathError, classify_errno, classify_io};
pub use file::{FileOptions, FilePath};
pub use nbd::{NbdOptions, NbdPath, NbdTarget};

use std::time::Duration;

/// Fallback zero fill writes at most this many bytes per request.
pub const ZERO_CHUNK: usize = 1 << 20;

/// Smallest accepted `io_timeout`.
pub const MIN_IO_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest accepted `io_timeout`.
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `io_timeout` (030: writes land within it or never).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Positional access to the shared LUN. Implementations are shared between threads;
/// every call is bounded by the path's `io_timeout` (see each backend for how).
pub trait LunPath: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`. Reading past the LUN's end is a media error
    /// (out of range), never a short read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError>;
    /// Writes all of `buf` at `offset` (within the LUN).
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), PathError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), PathError>;
    /// Makes `len` bytes at `offset` read as zero, by the fastest means the storage has.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), PathError>;
    /// The LUN's size in bytes.
    fn size(&self) -> Result<u64, PathError>;
    /// What this path is, for messages ("file /dev/sdb (O_DIRECT)", "nbd unix:/s/x").
    fn describe(&self) -> String;
}

/// Checks that `[offset, offset + len)` lies within `size`.
pub(crate) fn check_range(
    path: &dyn LunPath,
    op: Op,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<(), PathError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PathError::OutOfRange {
            target: path.describe(),
            op,
            offset,
            len,
            size,
        }),
    }
}

/// Validates an `io_timeout` setting.
pub fn validate_io_timeout(t: Duration) -> Result<(), String> {
    if (MIN_IO_TIMEOUT..=MAX_IO_TIMEOUT).contains(&t) {
        Ok(())
    } else {
        Err(format!(
            "io_timeout {t:?} outside {MIN_IO_TIMEOUT:?}..={MAX_IO_TIMEOUT:?}"
        ))
    }
}

/// Writes zeros in `ZERO_CHUNK` pieces: the fallback of every `write_zeroes`.
pub(crate) fn write_zeroes_by_writing(
    path: &dyn LunPath,
    offset: u64,
    len: u64,
) -> Result<(), PathError> {
    let chunk = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        path.write_at(&chunk[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl<T: LunPath + ?Sized> LunPath for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), PathError> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), PathError> {
        (**self).flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), PathError> {
        (**self).write_zeroes(offset, len)
    }
    fn size(&self) -> Result<u64, PathError> {
        (**self).size()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}
