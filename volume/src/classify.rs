//! Failure class of an I/O error from any layer of the crate: its errno, or the
//! [`PathError`] or [`ExtentError`] it carries (through `vhd::Storage`), or its kind;
//! and the [`PathError`] of a failed syscall, built from that class.

use std::io;

use crate::extent_file::ExtentError;
use crate::path::{ErrorClass, Op, PathError, classify_errno};

/// Classifies an I/O error: by errno when it has one, else by kind (a socket that ended
/// or timed out is a path failure).
pub fn classify_io(err: &io::Error, eio_is_path: bool) -> ErrorClass {
    if let Some(e) = err.raw_os_error() {
        return classify_errno(e, eio_is_path);
    }
    if let Some(pe) = err.get_ref().and_then(|r| r.downcast_ref::<PathError>()) {
        return pe.class();
    }
    if let Some(ee) = err.get_ref().and_then(|r| r.downcast_ref::<ExtentError>()) {
        return ee.class();
    }
    match err.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected
        | io::ErrorKind::TimedOut => ErrorClass::Path,
        _ => ErrorClass::Media,
    }
}

impl PathError {
    /// Builds the error for a failed syscall, classified by its errno.
    pub fn from_io(
        target: &str,
        op: Op,
        offset: u64,
        err: &io::Error,
        eio_is_path: bool,
    ) -> PathError {
        let class = classify_io(err, eio_is_path);
        let detail = err.to_string();
        match class {
            ErrorClass::Path => PathError::Path {
                target: target.to_string(),
                op,
                offset,
                detail,
            },
            _ => PathError::Media {
                target: target.to_string(),
                op,
                offset,
                errno: err.raw_os_error(),
                detail,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_round_trip_keeps_the_class() {
        let pe = PathError::path("t", Op::Write, 7, "gone");
        let io: io::Error = pe.into();
        assert_eq!(classify_io(&io, false), ErrorClass::Path);
        let pe = PathError::Media {
            target: "t".into(),
            op: Op::Write,
            offset: 0,
            errno: Some(libc::ENOSPC),
            detail: "full".into(),
        };
        assert_eq!(pe.errno(), libc::ENOSPC);
        let io: io::Error = pe.into();
        assert_eq!(io.kind(), io::ErrorKind::StorageFull);
        assert_eq!(classify_io(&io, false), ErrorClass::Media);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(&eof, false), ErrorClass::Path);
    }
}
