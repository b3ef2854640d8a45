//! The node's only `unsafe` code: system calls that rustix does not cover in the form
//! needed. Each block states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `preadv2` into the spare capacity of `buf` (at most `want` bytes), growing its
/// length by what the kernel wrote. Reading into uninitialised capacity avoids
/// zeroing a buffer that is about to be overwritten (measurable on 1 MiB reads).
pub fn pread_spare(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    want: usize,
    offset: u64,
    flags: libc::c_int,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let n = want.min(spare.len());
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: n,
    };
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `iov` describes `n` bytes of `buf`'s spare capacity, which is allocated,
    // writable and not aliased while `buf` is borrowed mutably here; the kernel writes
    // at most `iov_len` bytes into it.
    let r = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, off, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = r as usize;
    // SAFETY: the kernel initialised the first `r <= n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + r) };
    Ok(r)
}
