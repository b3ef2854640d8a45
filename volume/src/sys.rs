//! The crate's unsafe operating-system calls, each with its SAFETY argument.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IO(0x12, 127)`: zero a byte range of a block device (not in the libc crate).
const BLKZEROOUT: libc::Ioctl = 0x127f;

/// Zeroes `len` bytes at `offset` of a block device (BLKZEROOUT).
#[allow(unsafe_code)]
pub(crate) fn blkzeroout(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer, which points at
    // `range`, alive for the call; the descriptor is borrowed from `file`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
