//! `ExtentError`: every failure of an extent file, with its class (path failure for
//! redirection, fenced, media) and the errno an NBD server answers.

use crate::extent_map::MapError;
use crate::hooks::{FenceError, SinkError, SourceError};
use crate::path::{ErrorClass, PathError};
use std::io;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ExtentError {
    #[error("{file}: opened read-only")]
    ReadOnly { file: String },
    #[error("{file}: refused after waiting {waited:?} for the fence: {reason}")]
    Fenced {
        file: String,
        waited: Duration,
        reason: FenceError,
    },
    /// The volume has no free extent left.
    #[error("{file}: cannot grow: {source}")]
    NoSpace { file: String, source: SourceError },
    /// The extent source failed for another reason (no coordinator, say).
    #[error("{file}: cannot grow: {source}")]
    Source { file: String, source: SourceError },
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
    /// A flush failed, or writes it should cover may be lost: every later flush fails
    /// until the file is reopened from the LUN (docs/design/042 §5).
    #[error("{file}: flushes fail until the VHD is reopened: {reason}")]
    Poisoned { file: String, reason: String },
    /// Inside a non-blocking scope the request would have to wait (a closed fence,
    /// growth, a network path): nothing was done, run it where blocking is fine.
    #[error("{file}: would block ({what})")]
    WouldBlock { file: String, what: &'static str },
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

    /// The errno an NBD server answers with: ENOSPC only for a full volume (QEMU's
    /// default `werror=enospc` pauses the VM for it), EIO for what is not known.
    pub fn errno(&self) -> i32 {
        match self {
            ExtentError::Path { source, .. } => source.errno(),
            ExtentError::ReadOnly { .. } => libc::EROFS,
            ExtentError::NoSpace { .. } => libc::ENOSPC,
            ExtentError::TooLarge { .. } => libc::EFBIG,
            ExtentError::WouldBlock { .. } => libc::EAGAIN,
            _ => libc::EIO,
        }
    }

    /// True for [`ExtentError::WouldBlock`].
    pub fn is_would_block(&self) -> bool {
        matches!(self, ExtentError::WouldBlock { .. })
    }
}

impl From<ExtentError> for io::Error {
    fn from(e: ExtentError) -> io::Error {
        let kind = match &e {
            ExtentError::ReadOnly { .. } => io::ErrorKind::ReadOnlyFilesystem,
            ExtentError::NoSpace { .. } => io::ErrorKind::StorageFull,
            ExtentError::TooLarge { .. } => io::ErrorKind::FileTooLarge,
            ExtentError::WouldBlock { .. } => io::ErrorKind::WouldBlock,
            ExtentError::Path { source, .. } if source.is_path_failure() => {
                io::ErrorKind::NotConnected
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// True when `e` is an extent file's [`ExtentError::WouldBlock`] (through any number of
/// `io::Error` wrappers the vhd crate adds).
pub fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        && e.get_ref()
            .and_then(|r| r.downcast_ref::<ExtentError>())
            .is_some_and(ExtentError::is_would_block)
}
