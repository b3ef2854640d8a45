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

/// The id of group `name` (a number is taken as the id itself), through the C library's
/// group database (`getgrnam_r`: /etc/group, or whatever NSS is configured). May block
/// on a network directory: call it off the runtime's workers.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| "contains a NUL byte".to_string())?;
    let mut buf_len = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; buf_len];
        // SAFETY: all-zero bytes are a valid `libc::group` (null pointers, zero id); it
        // is only read after getgrnam_r filled it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `cname` is NUL-terminated; `grp`, `buf` (of `buf.len()` bytes) and
        // `result` are valid for writes for the whole call and not aliased; getgrnam_r
        // keeps no pointer to them after it returns.
        let r = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf_len < 1 << 20 {
            buf_len *= 4;
            continue;
        }
        if r != 0 {
            return Err(format!(
                "group lookup failed: {}",
                io::Error::from_raw_os_error(r)
            ));
        }
        if result.is_null() {
            return Err("no such group on this host".into());
        }
        return Ok(grp.gr_gid);
    }
}

/// The supplementary groups of the process at the other end of a connected Unix
/// socket, as they were when it connected (`SO_PEERGROUPS`, Linux 4.13).
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `groups` is an allocated, writable buffer of `len` bytes that nothing
        // else borrows during the call; the kernel writes at most `len` bytes and sets
        // `len` to the size it needs (ERANGE when that is more).
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
                groups.resize(n, 0);
                continue;
            }
            return Err(e);
        }
        groups.truncate(n);
        return Ok(groups);
    }
}
