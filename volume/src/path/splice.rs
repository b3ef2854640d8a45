//! Reads whose data stays in the kernel (docs/design/070 §5.1): the redirect peer serves
//! a forwarded read by splicing the bytes from the SAN target's Unix socket into a pipe,
//! and from the pipe into the source's TCP connection. No copy in user space, no buffer:
//! on a host that forwards another node's I/O that is most of the peer's cost.
//!
//! A [`SpliceReader`] keeps its own NBD connections to the target, each in transmission
//! with simple replies and one request at a time (a reply is the header then exactly the
//! data, which then goes to the pipe as it arrives). It serves reads only: writes and
//! their ordering stay on the path's own connections. A target that lets several
//! connections see one another's writes (`CAN_MULTI_CONN`) is required, as for the path's
//! own pool.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nbd::client::{ClientConfig, ClientError};
use nbd::codec::reply::{ReplyHeader, parse_reply_header};
use nbd::codec::request::{Request, encode_request};
use nbd::proto::{CMD_READ, SIMPLE_REPLY_HEADER_LEN};
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;

use super::{Op, PathError};

/// Reads shorter than this are not worth a pipe: they take the path's usual way.
pub const MIN_SPLICE: usize = 64 << 10;
/// Capacity of each pipe, and so the longest read spliced (the default
/// `/proc/sys/fs/pipe-max-size`, allowed without privileges).
pub const PIPE_CAPACITY: usize = 1 << 20;
/// Idle connections and pipes kept for the next reads.
const KEEP: usize = 16;
/// Spliced reads at once (each holds a connection to the target and a pipe); more take
/// the path's usual way.
pub const MAX_SPLICING: usize = 32;

/// A pipe with room for [`PIPE_CAPACITY`] bytes.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> std::io::Result<Pipe> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_CAPACITY)?;
        if size < PIPE_CAPACITY {
            return Err(std::io::Error::other(format!(
                "pipe of {size} bytes (asked {PIPE_CAPACITY})"
            )));
        }
        Ok(Pipe { read, write })
    }
}

/// The data of a read, waiting in a pipe: [`PipeData::splice_into`] sends it on.
#[derive(Debug)]
pub struct PipeData {
    pipe: Option<Pipe>,
    len: usize,
    left: usize,
    home: std::sync::Weak<Mutex<Vec<Pipe>>>,
}

impl PipeData {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Moves all of the data into `sock` (a stream socket: the source's TCP connection),
    /// waiting while its send buffer is full.
    pub async fn splice_into(&mut self, sock: &tokio::net::TcpStream) -> std::io::Result<()> {
        let Some(pipe) = &self.pipe else {
            return Err(std::io::Error::other("pipe already closed"));
        };
        while self.left > 0 {
            sock.writable().await?;
            let r = sock.try_io(Interest::WRITABLE, || {
                let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE | SpliceFlags::MORE;
                rustix::pipe::splice(&pipe.read, None, sock, None, self.left, flags)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.left -= n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for PipeData {
    fn drop(&mut self) {
        // An emptied pipe serves again; one with data left is closed.
        if let (Some(pipe), 0, Some(home)) = (self.pipe.take(), self.left, self.home.upgrade()) {
            let mut pool = home.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < KEEP {
                pool.push(pipe);
            }
        }
    }
}

/// Reads spliced from an NBD target on a Unix socket.
#[derive(Debug)]
pub struct SpliceReader {
    socket: PathBuf,
    export: String,
    /// The export's size as the path first saw it: a connection that finds another
    /// (the target now serves something else) is not used.
    size: u64,
    desc: String,
    io_timeout: Duration,
    conns: Mutex<Vec<UnixStream>>,
    pipes: std::sync::Arc<Mutex<Vec<Pipe>>>,
    /// Splicing failed as unsupported here (no pipes, an old kernel): never again.
    off: AtomicBool,
    /// Spliced reads running.
    running: std::sync::Arc<AtomicUsize>,
}

/// One running spliced read, counted until dropped.
struct Running(std::sync::Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a spliced read did not complete.
enum Fail {
    /// The target's answer, or a path failure: the caller's error.
    Path(PathError),
    /// This host cannot splice: the caller takes the usual way.
    Unsupported,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SpliceReader {
    pub fn new(
        socket: PathBuf,
        export: String,
        size: u64,
        desc: String,
        io_timeout: Duration,
    ) -> Self {
        SpliceReader {
            socket,
            export,
            size,
            desc,
            io_timeout,
            conns: Mutex::default(),
            pipes: std::sync::Arc::default(),
            off: AtomicBool::new(false),
            running: std::sync::Arc::default(),
        }
    }

    /// Whether a read of `len` bytes may be spliced now.
    pub fn fits(&self, len: usize) -> bool {
        (MIN_SPLICE..=PIPE_CAPACITY).contains(&len)
            && !self.off.load(Ordering::Relaxed)
            && self.running.load(Ordering::Acquire) < MAX_SPLICING
    }

    /// Reads `len` bytes at `offset` into a pipe, within the path's `io_timeout`.
    /// `Ok(None)`: splicing is not possible on this host (from now on `fits` says no):
    /// read the usual way.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Option<PipeData>, PathError> {
        self.running.fetch_add(1, Ordering::AcqRel);
        let _running = Running(self.running.clone());
        let deadline = Instant::now() + self.io_timeout;
        let r = tokio::time::timeout_at(deadline.into(), self.read_inner(offset, len)).await;
        match r {
            Ok(Ok(d)) => Ok(Some(d)),
            Ok(Err(Fail::Path(e))) => Err(e),
            Ok(Err(Fail::Unsupported)) => {
                if !self.off.swap(true, Ordering::Relaxed) {
                    tracing::info!(target = %self.desc, "spliced reads are not possible here");
                }
                Ok(None)
            }
            Err(_) => Err(PathError::Timeout {
                target: self.desc.clone(),
                op: Op::Read,
                offset,
                after: self.io_timeout,
            }),
        }
    }

    fn path_err(&self, offset: u64, detail: impl std::fmt::Display) -> Fail {
        Fail::Path(PathError::path(
            &self.desc,
            Op::Read,
            offset,
            detail.to_string(),
        ))
    }

    async fn read_inner(&self, offset: u64, len: usize) -> Result<PipeData, Fail> {
        let pipe = match lock(&self.pipes).pop() {
            Some(p) => p,
            None => Pipe::new().map_err(|_| Fail::Unsupported)?,
        };
        // A request dropped or failed half-way leaves a connection out of step: it is
        // put back only after a whole answer.
        let n = u32::try_from(len).map_err(|_| self.path_err(offset, "read too long"))?;
        let mut req = BytesMut::with_capacity(28);
        encode_request(
            &mut req,
            &Request {
                flags: 0,
                cmd: CMD_READ,
                cookie: offset,
                offset,
                len: n,
            },
        );
        let mut h = [0u8; SIMPLE_REPLY_HEADER_LEN];
        // An idle connection may have died meanwhile (a restarted target): before any
        // answer came, the read is asked again once on a new connection.
        let mut taken = lock(&self.conns).pop();
        let conn = loop {
            let pooled = taken.is_some();
            let mut conn = match taken.take() {
                Some(c) => c,
                None => self.connect().await.map_err(|e| self.path_err(offset, e))?,
            };
            let asked = async {
                conn.write_all(&req).await?;
                conn.read_exact(&mut h).await
            };
            match asked.await {
                Ok(_) => break conn,
                Err(_) if pooled => {}
                Err(e) => return Err(self.path_err(offset, e)),
            }
        };
        let (error, cookie) = match parse_reply_header(&h) {
            Ok(Some((ReplyHeader::Simple { error, cookie }, _))) => (error, cookie),
            Ok(_) => return Err(self.path_err(offset, "not a simple reply")),
            Err(e) => return Err(self.path_err(offset, e)),
        };
        if cookie != offset {
            return Err(self.path_err(offset, "reply for another request"));
        }
        if error != 0 {
            // No data follows an error (the spec's rule for simple replies); the
            // connection is not trusted further all the same.
            return Err(Fail::Path(PathError::Media {
                target: self.desc.clone(),
                op: Op::Read,
                offset,
                errno: i32::try_from(error).ok(),
                detail: format!("target answered error {error}"),
            }));
        }
        let mut left = len;
        while left > 0 {
            conn.readable()
                .await
                .map_err(|e| self.path_err(offset, e))?;
            let r = conn.try_io(Interest::READABLE, || {
                let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
                rustix::pipe::splice(&conn, None, &pipe.write, None, left, flags)
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(0) => return Err(self.path_err(offset, "the target closed the connection")),
                Ok(k) => left -= k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return Err(Fail::Unsupported);
                }
                Err(e) => return Err(self.path_err(offset, e)),
            }
        }
        self.put_back(conn);
        Ok(PipeData {
            pipe: Some(pipe),
            len,
            left: len,
            home: std::sync::Arc::downgrade(&self.pipes),
        })
    }

    fn put_back(&self, conn: UnixStream) {
        let mut conns = lock(&self.conns);
        if conns.len() < KEEP {
            conns.push(conn);
        }
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let s = UnixStream::connect(&self.socket).await?;
        let cfg = ClientConfig {
            export: self.export.clone(),
            structured_replies: false,
            base_allocation: false,
            ..ClientConfig::default()
        };
        let (s, info) = nbd::client::negotiate_raw(s, &cfg).await?;
        if info.size != self.size {
            return Err(ClientError::Protocol(format!(
                "export size changed from {} to {}",
                self.size, info.size
            )));
        }
        Ok(s)
    }
}
