//! `PathError`: every failure of a LUN path, with its class (path failure, media error,
//! fenced) so that redirection can act on path failures only. Also the errno
//! classification shared by the backends.

use std::io;
use std::time::Duration;

/// What a failure means for the caller (docs/design/041 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The way from this node to the storage is gone; another node may still reach it.
    Path,
    /// The storage answered with an error; another path would get the same answer.
    Media,
    /// The caller's fence is closed.
    Fenced,
}

/// The operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Open,
    Connect,
    Read,
    Write,
    Flush,
    WriteZeroes,
    Size,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Open => "open",
            Op::Connect => "connect",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::WriteZeroes => "write zeroes",
            Op::Size => "size",
        })
    }
}

/// A failed LUN path call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PathError {
    /// The path to the storage failed (connection lost, device gone, ...).
    #[error("{op} at {offset} on {target}: path failure: {detail}")]
    Path {
        target: String,
        op: Op,
        offset: u64,
        detail: String,
    },
    /// No answer within `io_timeout` (a write may still land later).
    #[error("{op} at {offset} on {target}: no answer within {after:?} (path failure)")]
    Timeout {
        target: String,
        op: Op,
        offset: u64,
        after: Duration,
    },
    /// The storage answered with an error.
    #[error("{op} at {offset} on {target}: media error: {detail}")]
    Media {
        target: String,
        op: Op,
        offset: u64,
        errno: Option<i32>,
        detail: String,
    },
    /// A request outside the LUN.
    #[error("{op} of {len} bytes at {offset} on {target}: outside the LUN ({size} bytes)")]
    OutOfRange {
        target: String,
        op: Op,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// The storage cannot do what the configuration asks (e.g. O_DIRECT on tmpfs).
    #[error("{target}: {detail}")]
    Unsupported { target: String, detail: String },
    /// The caller's fence closed.
    #[error("fenced: {detail}")]
    Fenced { detail: String },
    /// Inside the non-blocking scope (042 §10), the call would have to wait (a path that
    /// is being switched or goes through a network): nothing was done; run it again in
    /// the blocking pool.
    #[error("{what} would block the runtime thread")]
    WouldBlock { what: &'static str },
}

impl PathError {
    pub fn class(&self) -> ErrorClass {
        match self {
            PathError::Path { .. } | PathError::Timeout { .. } | PathError::WouldBlock { .. } => {
                ErrorClass::Path
            }
            PathError::Media { .. }
            | PathError::OutOfRange { .. }
            | PathError::Unsupported { .. } => ErrorClass::Media,
            PathError::Fenced { .. } => ErrorClass::Fenced,
        }
    }

    /// True when another path might succeed (redirection acts on these only).
    pub fn is_path_failure(&self) -> bool {
        self.class() == ErrorClass::Path
    }

    /// The errno an NBD server should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            PathError::Media {
                errno: Some(e @ (libc::ENOSPC | libc::EDQUOT | libc::EFBIG)),
                ..
            } => *e,
            PathError::Media {
                errno: Some(e @ (libc::EROFS | libc::EPERM | libc::EACCES)),
                ..
            } => *e,
            PathError::OutOfRange { .. } => libc::EINVAL,
            PathError::Unsupported { .. } => libc::EOPNOTSUPP,
            _ => libc::EIO,
        }
    }

    /// The path failure of a call refused without reaching the storage.
    pub fn path(target: &str, op: Op, offset: u64, detail: impl Into<String>) -> PathError {
        PathError::Path {
            target: target.to_string(),
            op,
            offset,
            detail: detail.into(),
        }
    }

    /// A media error without an errno.
    pub fn media(target: &str, op: Op, offset: u64, detail: impl Into<String>) -> PathError {
        PathError::Media {
            target: target.to_string(),
            op,
            offset,
            errno: None,
            detail: detail.into(),
        }
    }
}

/// Classifies an errno: errors that mean "the way to the storage is gone".
pub fn classify_errno(errno: i32, eio_is_path: bool) -> ErrorClass {
    match errno {
        libc::ENXIO
        | libc::ENODEV
        | libc::ENOTCONN
        | libc::EPIPE
        | libc::ESHUTDOWN
        | libc::ECONNREFUSED
        | libc::ECONNRESET
        | libc::ECONNABORTED
        | libc::ETIMEDOUT
        | libc::EHOSTUNREACH
        | libc::EHOSTDOWN
        | libc::ENETUNREACH
        | libc::ENETDOWN
        | libc::ENETRESET
        | libc::ENOLINK
        | libc::ENOMEDIUM
        | libc::ESTALE => ErrorClass::Path,
        libc::EIO if eio_is_path => ErrorClass::Path,
        _ => ErrorClass::Media,
    }
}

impl From<PathError> for io::Error {
    /// Keeps the `PathError` inside (recoverable with `get_ref().downcast_ref()`, which
    /// [`classify_io`] does) under a kind that says the class.
    fn from(e: PathError) -> io::Error {
        let kind = match &e {
            PathError::Path { .. } => io::ErrorKind::NotConnected,
            PathError::Timeout { .. } => io::ErrorKind::TimedOut,
            PathError::OutOfRange { .. } => io::ErrorKind::InvalidInput,
            PathError::Unsupported { .. } => io::ErrorKind::Unsupported,
            PathError::Fenced { .. } => io::ErrorKind::PermissionDenied,
            PathError::WouldBlock { .. } => io::ErrorKind::WouldBlock,
            PathError::Media { errno: Some(n), .. } if *n == libc::ENOSPC => {
                io::ErrorKind::StorageFull
            }
            PathError::Media { .. } => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        for (e, c) in [
            (libc::ENXIO, ErrorClass::Path),
            (libc::ENODEV, ErrorClass::Path),
            (libc::ENOTCONN, ErrorClass::Path),
            (libc::EPIPE, ErrorClass::Path),
            (libc::ESHUTDOWN, ErrorClass::Path),
            (libc::ECONNRESET, ErrorClass::Path),
            (libc::ECONNREFUSED, ErrorClass::Path),
            (libc::ETIMEDOUT, ErrorClass::Path),
            (libc::EIO, ErrorClass::Media),
            (libc::ENOSPC, ErrorClass::Media),
            (libc::EINVAL, ErrorClass::Media),
            (libc::EROFS, ErrorClass::Media),
        ] {
            assert_eq!(classify_errno(e, false), c, "errno {e}");
        }
        assert_eq!(classify_errno(libc::EIO, true), ErrorClass::Path);
    }
}
