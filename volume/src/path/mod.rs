//! LUN paths: the one trait through which a node touches the shared LUN ([`LunPath`]),
//! the typed error that tells path failures from media errors and fencing
//! ([`PathError`], [`ErrorClass`]), and the backends: a local file or block device
//! ([`FilePath`]) and an NBD client to a SAN target ([`NbdPath`]). docs/design/041 §1.

mod error;
mod file;
mod nbd;
mod quiet;
pub mod splice;

pub use crate::classify::classify_io;
pub use error::{ErrorClass, Op, PathError, classify_errno};
pub use file::{FileOptions, FilePath};
pub use nbd::{NbdOptions, NbdPath, NbdTarget};
pub use quiet::{QuietStep, quiet_step, wait_quiet};

use std::time::{Duration, Instant};

use bytes::Bytes;

/// Fallback zero fill writes at most this many bytes per request.
pub const ZERO_CHUNK: usize = 1 << 20;

/// Smallest accepted `io_timeout`.
pub const MIN_IO_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest accepted `io_timeout`.
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `io_timeout` of a path used on its own (tools, tests). A node derives its
/// `io_timeout` from its lease (docs/design/042 §4): half the lease's margin.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Asked immediately before every write call a path makes to the storage (one `pwrite`
/// syscall, one NBD request), each attempt anew: the owner's fence (docs/design/042 §1).
pub trait WriteGate {
    fn check(&self) -> Result<(), PathError>;

    /// The writer behind the gate, when it stands for a VHD's write hold: a path that
    /// forwards the write to another node sends it along (docs/design/070 §5).
    fn writer(&self) -> Option<Writer> {
        None
    }
}

/// A VHD's writer: the VHD, the node holding it and the hold's generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Writer {
    pub vhd: u64,
    pub node: u64,
    pub generation: u64,
}

/// The gate of callers that own the LUN outright (format, checkpoints, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGate;

impl WriteGate for NoGate {
    fn check(&self) -> Result<(), PathError> {
        Ok(())
    }
}

/// A path call as a future (see [`LunPath::read_bytes_async`]).
pub type PathFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, PathError>> + Send + 'a>>;

/// Positional access to the shared LUN. Implementations are shared between threads;
/// every call is bounded by the path's `io_timeout` (see each backend for how).
///
/// Writes take a [`WriteGate`] that the backend asks immediately before each write call
/// it makes to the storage (one `pwrite`, one NBD request, one zeroing call): a backend
/// cannot cover several calls with one check. `write_at` and `write_zeroes` are the
/// same with [`NoGate`].
pub trait LunPath: Send + Sync + std::fmt::Debug {
    /// Fills `buf` from `offset`. Reading past the LUN's end is a media error
    /// (out of range), never a short read.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError>;
    /// Writes all of `buf` at `offset` (within the LUN), asking `gate` before each write
    /// call.
    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError>;
    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), PathError>;
    /// Makes `len` bytes at `offset` read as zero, by the fastest means the storage has,
    /// asking `gate` before each write call.
    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError>;
    /// The LUN's size in bytes.
    fn size(&self) -> Result<u64, PathError>;
    /// What this path is, for messages ("file /dev/sdb (O_DIRECT)", "nbd unix:/s/x").
    fn describe(&self) -> String;

    /// [`LunPath::write_at_gated`] for a caller that holds its data as [`Bytes`]: a path
    /// that hands the buffer on (an NBD connection, a redirect session) does so without
    /// copying it. The default borrows it.
    fn write_bytes_gated(
        &self,
        data: Bytes,
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        self.write_at_gated(&data, offset, gate)
    }

    /// `len` bytes at `offset` as [`Bytes`]: a path that receives its data as a buffer
    /// (NBD) returns that buffer instead of copying it. The default reads into a new one.
    fn read_bytes(&self, offset: u64, len: usize) -> Result<Bytes, PathError> {
        let mut buf = vec![0u8; len];
        self.read_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }

    /// [`LunPath::read_bytes`] as a future that never blocks the thread polling it, when
    /// this path can serve the read that way now (an NBD path with a connection up): a
    /// caller on a runtime worker (the redirect peer) then needs no blocking thread and
    /// no hand-over between threads. `None`: call `read_bytes` on a blocking thread. The
    /// future is bounded by the path's `io_timeout` as `read_bytes` is.
    fn read_bytes_async(&self, offset: u64, len: usize) -> Option<PathFuture<'_, Bytes>> {
        let _ = (offset, len);
        None
    }

    /// [`LunPath::read_bytes_async`] with the data left in a pipe, for a caller that sends
    /// it on to a socket ([`splice`]): when this path can splice a read of `len` bytes
    /// (an NBD target on a Unix socket). `None`: not here; the future's `Ok(None)`: this
    /// host cannot splice after all (and the path will not offer it again).
    fn read_spliced(
        &self,
        offset: u64,
        len: usize,
    ) -> Option<PathFuture<'_, Option<splice::PipeData>>> {
        let _ = (offset, len);
        None
    }

    /// [`LunPath::write_bytes_gated`] as a future that never blocks the thread polling
    /// it, when this path can serve the write that way now (one NBD request on a
    /// connection that is up); `gate` is asked right before the request goes out. `None`:
    /// call `write_bytes_gated` on a blocking thread.
    fn write_bytes_async<'a>(
        &'a self,
        data: Bytes,
        offset: u64,
        gate: &'a (dyn WriteGate + Sync),
    ) -> Option<PathFuture<'a, ()>> {
        let _ = (data, offset, gate);
        None
    }

    /// [`LunPath::write_at_gated`] for a caller that owns the LUN outright.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), PathError> {
        self.write_at_gated(buf, offset, &NoGate)
    }

    /// [`LunPath::write_zeroes_gated`] for a caller that owns the LUN outright.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), PathError> {
        self.write_zeroes_gated(offset, len, &NoGate)
    }

    /// How many times completed, unflushed writes may have been lost (a connection that
    /// carried them dropped): a flush that finds this moved since the caller's last good
    /// flush cannot promise the caller's writes (docs/design/042 §5). Files: always 0.
    fn lost_writes(&self) -> u64 {
        0
    }

    /// The instant after which no write issued through this path so far can still land
    /// (writes that ended without an answer are in doubt until their bound), or `None`
    /// when none is in doubt (docs/design/042 §4).
    fn quiet_at(&self) -> Option<Instant> {
        None
    }

    /// False when calls are local and fast enough to run on a runtime worker (a file or
    /// block device of this host: its slow calls are caught by the caller's adaptive
    /// placement); true for paths that wait on a network (docs/design/042 §10).
    fn may_block(&self) -> bool {
        true
    }
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

/// After a flush: fails when a connection that carried writes made since `before` (the
/// path's [`LunPath::lost_writes`] then) was lost, since those writes may not be durable.
pub fn check_no_loss(path: &dyn LunPath, before: u64, offset: u64) -> Result<(), PathError> {
    if path.lost_writes() == before {
        return Ok(());
    }
    Err(PathError::path(
        &path.describe(),
        Op::Flush,
        offset,
        "a connection that carried completed, unflushed writes was lost: they may not be on the LUN",
    ))
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

/// Writes zeros in `ZERO_CHUNK` pieces, asking `gate` before each: the fallback of every
/// `write_zeroes`.
pub(crate) fn write_zeroes_by_writing(
    path: &dyn LunPath,
    offset: u64,
    len: u64,
    gate: &dyn WriteGate,
) -> Result<(), PathError> {
    let chunk = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        path.write_at_gated(&chunk[..n], offset + done, gate)?;
        done += n as u64;
    }
    Ok(())
}

impl<T: LunPath + ?Sized> LunPath for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        (**self).read_at(buf, offset)
    }
    fn flush(&self) -> Result<(), PathError> {
        (**self).flush()
    }
    fn size(&self) -> Result<u64, PathError> {
        (**self).size()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        (**self).write_at_gated(buf, offset, gate)
    }
    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        (**self).write_zeroes_gated(offset, len, gate)
    }
    fn lost_writes(&self) -> u64 {
        (**self).lost_writes()
    }
    fn quiet_at(&self) -> Option<Instant> {
        (**self).quiet_at()
    }
    fn may_block(&self) -> bool {
        (**self).may_block()
    }
    fn write_bytes_gated(
        &self,
        data: Bytes,
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        (**self).write_bytes_gated(data, offset, gate)
    }
    fn read_bytes(&self, offset: u64, len: usize) -> Result<Bytes, PathError> {
        (**self).read_bytes(offset, len)
    }
    fn read_bytes_async(&self, offset: u64, len: usize) -> Option<PathFuture<'_, Bytes>> {
        (**self).read_bytes_async(offset, len)
    }
    fn read_spliced(
        &self,
        offset: u64,
        len: usize,
    ) -> Option<PathFuture<'_, Option<splice::PipeData>>> {
        (**self).read_spliced(offset, len)
    }
    fn write_bytes_async<'a>(
        &'a self,
        data: Bytes,
        offset: u64,
        gate: &'a (dyn WriteGate + Sync),
    ) -> Option<PathFuture<'a, ()>> {
        (**self).write_bytes_async(data, offset, gate)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), PathError> {
        (**self).write_at(buf, offset)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), PathError> {
        (**self).write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A path whose optional calls all answer differently from the defaults.
    #[derive(Debug)]
    struct Marked;

    impl LunPath for Marked {
        fn read_at(&self, _: &mut [u8], _: u64) -> Result<(), PathError> {
            Ok(())
        }
        fn write_at_gated(&self, _: &[u8], _: u64, _: &dyn WriteGate) -> Result<(), PathError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), PathError> {
            Ok(())
        }
        fn write_zeroes_gated(&self, _: u64, _: u64, _: &dyn WriteGate) -> Result<(), PathError> {
            Ok(())
        }
        fn size(&self) -> Result<u64, PathError> {
            Ok(1 << 20)
        }
        fn describe(&self) -> String {
            "marked".into()
        }
        fn write_bytes_gated(&self, _: Bytes, _: u64, _: &dyn WriteGate) -> Result<(), PathError> {
            Err(PathError::Fenced {
                detail: "write_bytes_gated".into(),
            })
        }
        fn read_bytes(&self, _: u64, _: usize) -> Result<Bytes, PathError> {
            Ok(Bytes::from_static(b"read_bytes"))
        }
        fn read_bytes_async(&self, _: u64, _: usize) -> Option<PathFuture<'_, Bytes>> {
            Some(Box::pin(async { Ok(Bytes::from_static(b"async")) }))
        }
        fn read_spliced(
            &self,
            _: u64,
            _: usize,
        ) -> Option<PathFuture<'_, Option<splice::PipeData>>> {
            Some(Box::pin(async { Ok(None) }))
        }
        fn write_bytes_async<'a>(
            &'a self,
            _: Bytes,
            _: u64,
            _: &'a (dyn WriteGate + Sync),
        ) -> Option<PathFuture<'a, ()>> {
            Some(Box::pin(async { Ok(()) }))
        }
        fn lost_writes(&self) -> u64 {
            7
        }
        fn may_block(&self) -> bool {
            false
        }
    }

    /// An `Arc` of a path is that path: every call reaches it. (A method called on an
    /// `Arc<dyn LunPath>` resolves to this impl, not to the path's own: one left to its
    /// default once kept the redirect peer off its fast paths.)
    #[test]
    fn an_arc_passes_every_call_on() {
        let inner: Arc<dyn LunPath> = Arc::new(Marked);
        let outer: Arc<dyn LunPath> = Arc::new(inner);
        assert_eq!(&outer.read_bytes(0, 4).unwrap()[..], b"read_bytes");
        assert!(outer.write_bytes_gated(Bytes::new(), 0, &NoGate).is_err());
        assert!(outer.read_bytes_async(0, 4).is_some());
        assert!(outer.read_spliced(0, 4).is_some());
        assert!(outer.write_bytes_async(Bytes::new(), 0, &NoGate).is_some());
        assert_eq!(outer.lost_writes(), 7);
        assert!(!outer.may_block());
    }
}
