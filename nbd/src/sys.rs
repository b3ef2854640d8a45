//! The crate's unsafe operating-system calls, each with its SAFETY argument.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

/// Takes ownership of a descriptor passed by systemd socket activation, after checking
/// that it is open. The caller checked that `LISTEN_PID` names this process and takes
/// each descriptor of `3..3 + LISTEN_FDS` exactly once.
#[allow(unsafe_code)]
pub(crate) fn take_listen_fd(fd: i32) -> io::Result<OwnedFd> {
    // Check that the descriptor is open before taking ownership of it.
    rustix::io::fcntl_getfd(
        // SAFETY: borrowing for one fcntl call; the fd number comes from the
        // activation protocol and is not owned by anything else in this process.
        unsafe { BorrowedFd::borrow_raw(fd) },
    )?;
    // SAFETY: LISTEN_PID names this process, so descriptors 3..3+LISTEN_FDS were
    // passed to it by its parent for it to own; each is taken exactly once, here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
