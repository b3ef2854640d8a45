//! Where connections come from: TCP, Unix sockets (stale socket files removed, mode
//! 0600 unless told otherwise), and sockets inherited through systemd socket
//! activation (`LISTEN_PID`/`LISTEN_FDS`, as libnbd's `nbdinfo -- [ server ]` uses).

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixListener};

/// First file descriptor systemd passes.
const SD_LISTEN_FDS_START: i32 = 3;
/// Most inherited sockets accepted (a sanity bound on LISTEN_FDS).
const MAX_LISTEN_FDS: i32 = 64;

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed when the listener is dropped, if we created it.
    Unix(UnixListener, Option<UnixSocketGuard>),
}

impl Listener {
    /// Human description of where it listens.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp {a}"))
                .unwrap_or_else(|_| "tcp".into()),
            Listener::Unix(l, _) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix {}", p.display())))
                .unwrap_or_else(|| "unix".into()),
        }
    }

    /// TCP port, if TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

/// Removes the socket file this process created when dropped.
#[derive(Debug)]
pub struct UnixSocketGuard(PathBuf);

impl Drop for UnixSocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn bind_tcp(addr: SocketAddr) -> io::Result<Listener> {
    Ok(Listener::Tcp(TcpListener::bind(addr).await?))
}

/// Binds a Unix socket at `path` with the given mode. An existing socket file that no
/// one listens on (a crashed server's) is replaced; a live one is an error.
pub fn bind_unix(path: &Path, mode: u32) -> io::Result<Listener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running server", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(Listener::Unix(l, Some(UnixSocketGuard(path.to_owned()))))
}

/// Listeners passed by systemd-style socket activation, or `None` when this process
/// was not activated (LISTEN_PID absent or naming another process).
pub fn from_systemd() -> io::Result<Option<Vec<Listener>>> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(None);
    }
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad LISTEN_FDS"))?;
    if !(1..=MAX_LISTEN_FDS).contains(&n) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("LISTEN_FDS={n} out of range"),
        ));
    }
    let mut out = Vec::new();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n {
        out.push(inherit(fd)?);
    }
    Ok(Some(out))
}

fn inherit(fd: i32) -> io::Result<Listener> {
    let owned = crate::sys::take_listen_fd(fd)?;
    let sock = socket2::Socket::from(owned);
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    let local = sock.local_addr()?;
    if local.is_unix() {
        let std_l: std::os::unix::net::UnixListener = OwnedFd::from(sock).into();
        Ok(Listener::Unix(UnixListener::from_std(std_l)?, None))
    } else {
        let std_l: std::net::TcpListener = OwnedFd::from(sock).into();
        Ok(Listener::Tcp(TcpListener::from_std(std_l)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_unix_socket_is_replaced_live_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("s.sock");
        let l = bind_unix(&p, 0o600).expect("bind");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            bind_unix(&p, 0o600).is_err(),
            "live socket must not be replaced"
        );
        // leave a stale socket file behind (no guard removal)
        if let Listener::Unix(ul, guard) = l {
            std::mem::forget(guard);
            drop(ul);
        }
        assert!(p.exists());
        let _l2 = bind_unix(&p, 0o600).expect("stale socket replaced");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        assert!(bind_unix(&dir.path().join("f"), 0o600).is_err());
    }
}
