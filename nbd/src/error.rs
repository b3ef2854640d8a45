//! The NBD error values as a type: the only errors that go on the wire. Devices and the
//! server speak in [`Errno`]; nothing else is ever sent.

use crate::proto::errno;

/// An NBD error value (`NBD_E*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    Perm,
    Io,
    NoMem,
    Inval,
    NoSpc,
    Overflow,
    NotSup,
    Shutdown,
}

impl Errno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Errno::Perm => errno::EPERM,
            Errno::Io => errno::EIO,
            Errno::NoMem => errno::ENOMEM,
            Errno::Inval => errno::EINVAL,
            Errno::NoSpc => errno::ENOSPC,
            Errno::Overflow => errno::EOVERFLOW,
            Errno::NotSup => errno::ENOTSUP,
            Errno::Shutdown => errno::ESHUTDOWN,
        }
    }

    /// A wire value as a client sees it; unknown values read as EINVAL (the spec's
    /// advice to clients).
    pub fn from_code(code: u32) -> Errno {
        match code {
            errno::EPERM => Errno::Perm,
            errno::EIO => Errno::Io,
            errno::ENOMEM => Errno::NoMem,
            errno::ENOSPC => Errno::NoSpc,
            errno::EOVERFLOW => Errno::Overflow,
            errno::ENOTSUP => Errno::NotSup,
            errno::ESHUTDOWN => Errno::Shutdown,
            _ => Errno::Inval,
        }
    }

    /// Maps a host I/O error onto the NBD set (EDQUOT and EFBIG become ENOSPC as the
    /// spec asks; anything without an NBD counterpart is EIO). An error made by a
    /// library rather than a syscall (no errno) counts by its kind: full storage is
    /// ENOSPC, a read-only file system EPERM.
    pub fn from_io(err: &std::io::Error) -> Errno {
        use std::io::ErrorKind as K;
        match err.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::NoSpc,
            Some(libc::EPERM | libc::EACCES | libc::EROFS) => Errno::Perm,
            Some(libc::ENOMEM) => Errno::NoMem,
            Some(libc::EINVAL) => Errno::Inval,
            Some(_) => Errno::Io,
            None => match err.kind() {
                K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Errno::NoSpc,
                K::ReadOnlyFilesystem => Errno::Perm,
                _ => Errno::Io,
            },
        }
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Errno::Perm => "EPERM",
            Errno::Io => "EIO",
            Errno::NoMem => "ENOMEM",
            Errno::Inval => "EINVAL",
            Errno::NoSpc => "ENOSPC",
            Errno::Overflow => "EOVERFLOW",
            Errno::NotSup => "ENOTSUP",
            Errno::Shutdown => "ESHUTDOWN",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            Errno::Perm,
            Errno::Io,
            Errno::NoMem,
            Errno::Inval,
            Errno::NoSpc,
            Errno::Overflow,
            Errno::NotSup,
            Errno::Shutdown,
        ] {
            assert_eq!(Errno::from_code(e.code()), e);
        }
        assert_eq!(Errno::from_code(9999), Errno::Inval);
    }

    #[test]
    fn io_errors_map_onto_the_nbd_set() {
        let e = |n| std::io::Error::from_raw_os_error(n);
        assert_eq!(Errno::from_io(&e(libc::EDQUOT)), Errno::NoSpc);
        assert_eq!(Errno::from_io(&e(libc::EFBIG)), Errno::NoSpc);
        assert_eq!(Errno::from_io(&e(libc::EROFS)), Errno::Perm);
        assert_eq!(Errno::from_io(&e(libc::EBADF)), Errno::Io);
        assert_eq!(Errno::from_io(&std::io::Error::other("x")), Errno::Io);
    }
}
