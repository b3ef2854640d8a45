//! The transmission phase of one connection, as one hand-written poll loop: read a
//! batch of requests, turn each into a device future kept in a `FuturesUnordered`,
//! encode replies as the futures finish (out of order), write them coalesced. No task
//! is spawned per request, so a request the device serves on its first poll costs no
//! wake-up. Bounded: at most `max_requests` requests and `max_bytes` of payload and
//! unsent replies per connection; past that the socket is not read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::command::{Command, Limits, Reject, validate};
use super::negotiate::Session;
use super::observe::{RequestKind, RequestObserver};
use super::outq::OutQueue;
use crate::codec::reply::*;
use crate::codec::request::{Request, parse_request_header};
use crate::device::{BlockDevice, DeviceError, DeviceFuture, Extent, Piece, ReadData};
use crate::error::Errno;
use crate::proto::*;

/// Socket reads ask for at least this much room.
const READ_CHUNK: usize = 256 * 1024;
/// Zeroes for OFFSET_HOLE-less (simple) replies of zero runs.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
/// Warnings a single connection may log before it is muted.
const MAX_WARNINGS: u32 = 8;

/// Per-connection bounds and the drain timing.
#[derive(Debug, Clone, Copy)]
pub struct TransmitLimits {
    pub max_requests: usize,
    pub max_bytes: usize,
    /// After a shutdown or export removal, how long an idle connection is kept open
    /// (answering ESHUTDOWN) for the client to disconnect by itself.
    pub linger: Duration,
}

enum Op<'a> {
    Read {
        offset: u64,
        len: u32,
        df: bool,
        fut: DeviceFuture<'a, ReadData>,
    },
    Unit(DeviceFuture<'a, ()>),
    Status {
        len: u32,
        req_one: bool,
        fut: DeviceFuture<'a, Vec<Extent>>,
    },
}

struct InFlight<'a> {
    cookie: u64,
    bytes: usize,
    op: Op<'a>,
    /// What the observer is told (only timed when the export has one).
    seen: Seen,
}

/// A request as its export's observer sees it.
#[derive(Clone, Copy)]
struct Seen {
    kind: RequestKind,
    len: u64,
    started: Option<Instant>,
}

enum Outcome {
    Read {
        offset: u64,
        len: u32,
        df: bool,
        res: Result<ReadData, DeviceError>,
    },
    Unit(Result<(), DeviceError>),
    Status {
        len: u32,
        req_one: bool,
        res: Result<Vec<Extent>, DeviceError>,
    },
}

struct Done {
    cookie: u64,
    bytes: usize,
    outcome: Outcome,
    seen: Seen,
}

impl Future for InFlight<'_> {
    type Output = Done;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = &mut *self;
        let outcome = match &mut this.op {
            Op::Read {
                offset,
                len,
                df,
                fut,
            } => match fut.as_mut().poll(cx) {
                Poll::Ready(res) => Outcome::Read {
                    offset: *offset,
                    len: *len,
                    df: *df,
                    res,
                },
                Poll::Pending => return Poll::Pending,
            },
            Op::Unit(fut) => match fut.as_mut().poll(cx) {
                Poll::Ready(res) => Outcome::Unit(res),
                Poll::Pending => return Poll::Pending,
            },
            Op::Status { len, req_one, fut } => match fut.as_mut().poll(cx) {
                Poll::Ready(res) => Outcome::Status {
                    len: *len,
                    req_one: *req_one,
                    res,
                },
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(Done {
            cookie: this.cookie,
            bytes: this.bytes,
            outcome,
            seen: this.seen,
        })
    }
}

enum ReadState {
    Header,
    /// A valid WRITE header was read; its payload (at most [`MAX_PAYLOAD`]) follows.
    Payload {
        cookie: u64,
        len: usize,
        cmd: Command,
    },
    /// A refused WRITE (any length up to 4 GiB): its payload is dropped as it arrives,
    /// never buffered, then the error is sent.
    Discard {
        cookie: u64,
        remaining: u64,
        reject: Reject,
    },
}

/// Why transmission ended (for the connection log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Disconnect,
    ClientClosed,
    Shutdown,
    ProtocolError,
    IoError,
}

struct Conn<'a, S> {
    stream: S,
    dev: &'a dyn BlockDevice,
    limits: Limits,
    tl: TransmitLimits,
    structured: bool,
    rbuf: BytesMut,
    rstate: ReadState,
    reading: bool,
    write_failed: bool,
    end: Option<End>,
    inflight: FuturesUnordered<InFlight<'a>>,
    inflight_bytes: usize,
    /// The export's request observer (metrics), if any.
    observer: Option<&'a dyn RequestObserver>,
    out: OutQueue,
    stop: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    stopping: bool,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    warnings: u32,
}

/// Runs transmission on `stream` until the client disconnects, the connection fails,
/// or `stop` fires and the connection has drained.
pub async fn transmit<S>(
    stream: S,
    session: &Session,
    stop: Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    tl: TransmitLimits,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let export = &session.export;
    let dev: &dyn BlockDevice = &**export.device();
    let limits = Limits {
        size: export.size(),
        min_block: export.min_block(),
        tflags: session.tflags,
        structured: session.structured,
        base_allocation: session.base_allocation,
    };
    let mut conn = Conn {
        stream,
        dev,
        limits,
        tl,
        structured: session.structured,
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        rstate: ReadState::Header,
        reading: true,
        write_failed: false,
        end: None,
        inflight: FuturesUnordered::new(),
        inflight_bytes: 0,
        observer: export.observer(),
        out: OutQueue::new(),
        stop,
        stopping: false,
        linger: None,
        warnings: 0,
    };
    std::future::poll_fn(|cx| conn.poll(cx)).await
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'a, S> {
    fn warn(&mut self, what: &str) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            tracing::warn!("{what}");
        } else if self.warnings == MAX_WARNINGS + 1 {
            tracing::warn!("further warnings on this connection are muted");
        }
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < self.tl.max_requests
            && self.inflight_bytes + self.out.len() < self.tl.max_bytes
    }

    fn stop_reading(&mut self, end: End) {
        self.reading = false;
        self.end.get_or_insert(end);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            let mut progress = false;
            if !self.stopping && self.stop.as_mut().poll(cx).is_ready() {
                self.stopping = true;
                progress = true;
            }
            while let Poll::Ready(Some(done)) = self.inflight.poll_next_unpin(cx) {
                self.inflight_bytes -= done.bytes;
                self.complete(done);
                progress = true;
            }
            if !self.out.is_empty() && !self.write_failed {
                match self.out.poll_write(&mut self.stream, cx) {
                    Poll::Ready(Ok(w)) => progress |= w,
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => {
                        tracing::debug!("write failed: {e}");
                        self.write_failed = true;
                        self.stop_reading(End::IoError);
                        progress = true;
                    }
                }
            }
            if self.reading {
                progress |= self.parse();
                let payload_pending = !matches!(self.rstate, ReadState::Header);
                if self.reading && (payload_pending || self.window_open()) {
                    if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                        self.rbuf.reserve(READ_CHUNK);
                    }
                    match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf) {
                        Poll::Ready(Ok(0)) => {
                            self.stop_reading(End::ClientClosed);
                            progress = true;
                        }
                        Poll::Ready(Ok(_)) => progress = true,
                        Poll::Ready(Err(e)) => {
                            tracing::debug!("read failed: {e}");
                            self.stop_reading(End::IoError);
                            progress = true;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            if !progress {
                break;
            }
        }
        let drained = self.inflight.is_empty() && (self.out.is_empty() || self.write_failed);
        if !drained {
            return Poll::Pending;
        }
        if !self.reading {
            if !self.write_failed && self.end == Some(End::Disconnect) {
                // DISC: close the write side cleanly (TLS close_notify).
                if Pin::new(&mut self.stream).poll_shutdown(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            return Poll::Ready(self.end.unwrap_or(End::ClientClosed));
        }
        if self.stopping {
            let linger = self
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(self.tl.linger)));
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Shutdown);
            }
        }
        Poll::Pending
    }

    /// Parses and dispatches buffered requests while the window allows.
    fn parse(&mut self) -> bool {
        let mut progress = false;
        loop {
            match &self.rstate {
                ReadState::Discard { .. } => {
                    let ReadState::Discard {
                        cookie,
                        remaining,
                        reject,
                    } = &mut self.rstate
                    else {
                        return progress;
                    };
                    let n = (*remaining).min(self.rbuf.len() as u64);
                    if n > 0 {
                        self.rbuf.advance(n as usize);
                        *remaining -= n;
                        progress = true;
                    }
                    if *remaining > 0 {
                        return progress;
                    }
                    let (cookie, reject) = (*cookie, *reject);
                    self.rstate = ReadState::Header;
                    self.error_reply(cookie, reject.errno, reject.msg);
                }
                ReadState::Payload { len, .. } => {
                    let len = *len;
                    if self.rbuf.len() < len {
                        self.rbuf.reserve(len - self.rbuf.len());
                        return progress;
                    }
                    let ReadState::Payload { cookie, cmd, .. } =
                        std::mem::replace(&mut self.rstate, ReadState::Header)
                    else {
                        return progress;
                    };
                    let data = self.rbuf.split_to(len).freeze();
                    progress = true;
                    match cmd {
                        Command::Write { offset, fua, .. } if !self.stopping => {
                            self.inflight_bytes += len;
                            let seen = self.seen(RequestKind::Write, len as u64);
                            self.inflight.push(InFlight {
                                cookie,
                                bytes: len,
                                op: Op::Unit(self.dev.write(offset, data, fua)),
                                seen,
                            });
                        }
                        _ => self.error_reply(cookie, Errno::Shutdown, "server is shutting down"),
                    }
                }
                ReadState::Header => {
                    if !self.reading || !self.window_open() {
                        return progress;
                    }
                    let (req, n) = match parse_request_header(&self.rbuf) {
                        Ok(Some(x)) => x,
                        Ok(None) => return progress,
                        Err(e) => {
                            self.warn(&format!("closing connection: {e}"));
                            self.rbuf.clear();
                            self.stop_reading(End::ProtocolError);
                            return true;
                        }
                    };
                    let _ = self.rbuf.split_to(n);
                    progress = true;
                    self.request(req);
                }
            }
        }
    }

    fn request(&mut self, req: Request) {
        let cmd = validate(&req, &self.limits);
        if req.cmd == CMD_WRITE {
            self.rstate = match cmd {
                Ok(cmd) => ReadState::Payload {
                    cookie: req.cookie,
                    len: req.len as usize,
                    cmd,
                },
                Err(reject) => {
                    self.warn(&format!(
                        "refused WRITE {}+{}: {}",
                        req.offset, req.len, reject.msg
                    ));
                    ReadState::Discard {
                        cookie: req.cookie,
                        remaining: u64::from(req.len),
                        reject,
                    }
                }
            };
            return;
        }
        let cmd = match cmd {
            Ok(c) => c,
            Err(r) => {
                tracing::debug!(
                    "refused {} {}+{} flags {:#x}: {}",
                    command_name(req.cmd),
                    req.offset,
                    req.len,
                    req.flags,
                    r.msg
                );
                self.error_reply(req.cookie, r.errno, r.msg);
                return;
            }
        };
        if cmd == Command::Disc {
            self.stop_reading(End::Disconnect);
            return;
        }
        if self.stopping {
            self.error_reply(req.cookie, Errno::Shutdown, "server is shutting down");
            return;
        }
        let cookie = req.cookie;
        let dev = self.dev;
        // Timed from before the device is asked (a device may do work when called).
        let started = self.observer.map(|_| Instant::now());
        let (op, bytes, kind, covered) = match cmd {
            Command::Read { offset, len, df } => {
                if len == 0 {
                    self.read_reply(cookie, offset, 0, df, ReadData::default());
                    return;
                }
                (
                    Op::Read {
                        offset,
                        len,
                        df,
                        fut: dev.read(offset, len),
                    },
                    len as usize,
                    RequestKind::Read,
                    u64::from(len),
                )
            }
            Command::Flush => (Op::Unit(dev.flush()), 0, RequestKind::Flush, 0),
            Command::Trim { offset, len, fua } => {
                if len == 0 {
                    self.ok_reply(cookie);
                    return;
                }
                (
                    Op::Unit(dev.trim(offset, u64::from(len), fua)),
                    0,
                    RequestKind::Trim,
                    u64::from(len),
                )
            }
            Command::Cache { offset, len } => (
                Op::Unit(dev.cache(offset, u64::from(len))),
                0,
                RequestKind::Cache,
                u64::from(len),
            ),
            Command::WriteZeroes { offset, len, flags } => {
                if len == 0 {
                    self.ok_reply(cookie);
                    return;
                }
                (
                    Op::Unit(dev.write_zeroes(offset, u64::from(len), flags)),
                    0,
                    RequestKind::WriteZeroes,
                    u64::from(len),
                )
            }
            Command::BlockStatus {
                offset,
                len,
                req_one,
            } => (
                Op::Status {
                    len,
                    req_one,
                    fut: dev.block_status(offset, u64::from(len)),
                },
                0,
                RequestKind::BlockStatus,
                0,
            ),
            Command::Write { .. } | Command::Disc => return,
        };
        self.inflight_bytes += bytes;
        let seen = Seen {
            kind,
            len: covered,
            started,
        };
        self.inflight.push(InFlight {
            cookie,
            bytes,
            op,
            seen,
        });
    }

    /// A request as the observer will see it: timed from now when there is one.
    fn seen(&self, kind: RequestKind, len: u64) -> Seen {
        Seen {
            kind,
            len,
            started: self.observer.map(|_| Instant::now()),
        }
    }

    /// Tells the observer a request ended.
    fn observe(&self, seen: Seen, ok: bool) {
        if let (Some(o), Some(t)) = (self.observer, seen.started) {
            o.completed(seen.kind, seen.len, t.elapsed(), ok);
        }
    }

    fn ok_reply(&mut self, cookie: u64) {
        encode_simple_reply(self.out.staging(), 0, cookie);
    }

    fn error_reply(&mut self, cookie: u64, errno: Errno, msg: &str) {
        if self.structured {
            encode_error_chunk(
                self.out.staging(),
                REPLY_FLAG_DONE,
                cookie,
                errno.code(),
                msg,
            );
        } else {
            encode_simple_reply(self.out.staging(), errno.code(), cookie);
        }
    }

    fn device_error(&mut self, cookie: u64, e: &DeviceError) {
        let errno = e.errno();
        if errno != Errno::NotSup {
            self.warn(&format!("device error: {e}"));
        }
        let msg = e.to_string();
        self.error_reply(cookie, errno, &msg);
    }

    fn complete(&mut self, done: Done) {
        let cookie = done.cookie;
        let ok = match &done.outcome {
            Outcome::Read { len, res, .. } => {
                matches!(res, Ok(data) if data.len() == u64::from(*len))
            }
            Outcome::Unit(res) => res.is_ok(),
            Outcome::Status { res, .. } => res.is_ok(),
        };
        self.observe(done.seen, ok);
        match done.outcome {
            Outcome::Read {
                offset,
                len,
                df,
                res,
            } => match res {
                Ok(data) if data.len() == u64::from(len) => {
                    self.read_reply(cookie, offset, len, df, data)
                }
                Ok(data) => {
                    self.warn(&format!(
                        "device returned {} bytes for a {len}-byte read",
                        data.len()
                    ));
                    self.error_reply(cookie, Errno::Io, "device returned a short read");
                }
                Err(e) => self.device_error(cookie, &e),
            },
            Outcome::Unit(Ok(())) => self.ok_reply(cookie),
            Outcome::Unit(Err(e)) => self.device_error(cookie, &e),
            Outcome::Status { len, req_one, res } => match res {
                Ok(extents) => {
                    let ext = clip_extents(&extents, len, req_one);
                    encode_block_status(
                        self.out.staging(),
                        REPLY_FLAG_DONE,
                        cookie,
                        META_BASE_ALLOCATION_ID,
                        &ext,
                    );
                }
                Err(e) => self.device_error(cookie, &e),
            },
        }
    }

    fn read_reply(&mut self, cookie: u64, offset: u64, len: u32, df: bool, data: ReadData) {
        if !self.structured {
            encode_simple_reply(self.out.staging(), 0, cookie);
            for p in data.into_pieces() {
                match p {
                    Piece::Data(b) => self.out.push_data(b),
                    Piece::Zero(mut n) => {
                        while n > 0 {
                            let k = n.min(ZEROES.len() as u32);
                            self.out
                                .push_data(Bytes::from_static(&ZEROES[..k as usize]));
                            n -= k;
                        }
                    }
                }
            }
            return;
        }
        if len == 0 {
            encode_none_chunk(self.out.staging(), cookie);
            return;
        }
        let pieces = if df && data.pieces().len() > 1 {
            vec![Piece::Data(data.to_bytes())]
        } else {
            data.into_pieces()
        };
        let last = pieces.len().saturating_sub(1);
        let mut pos = offset;
        for (i, p) in pieces.into_iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            let n = p.len();
            match p {
                Piece::Data(b) => {
                    encode_offset_data_header(self.out.staging(), flags, cookie, pos, n);
                    self.out.push_data(b);
                }
                Piece::Zero(n) => encode_offset_hole(self.out.staging(), flags, cookie, pos, n),
            }
            pos += u64::from(n);
        }
    }
}

/// Makes a device's extent list a valid reply: consecutive, non-empty, within the
/// request (the last one cut at its end), merged where flags repeat, at most
/// [`MAX_EXTENTS`] (one with REQ_ONE). Never empty: a device that said nothing gets
/// the always-safe "data" status for the whole range.
pub fn clip_extents(extents: &[Extent], len: u32, req_one: bool) -> Vec<(u32, u32)> {
    let max = if req_one { 1 } else { MAX_EXTENTS };
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut covered: u64 = 0;
    for e in extents {
        if covered >= u64::from(len) {
            break;
        }
        let l = e.len.min(u64::from(len) - covered);
        if l == 0 {
            continue;
        }
        let flags = e.flags();
        covered += l;
        let full = out.len() == max;
        match out.last_mut() {
            Some(last) if last.1 == flags => last.0 += l as u32,
            _ if full => break,
            _ => out.push((l as u32, flags)),
        }
    }
    if out.is_empty() {
        out.push((len, 0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::ExtentKind::*;

    #[test]
    fn extents_are_clipped_merged_and_never_empty() {
        let e = |len, kind| Extent::new(len, kind);
        assert_eq!(clip_extents(&[], 4096, false), vec![(4096, 0)]);
        assert_eq!(
            clip_extents(&[e(1024, Hole), e(1024, Hole), e(8192, Data)], 4096, false),
            vec![(2048, 3), (2048, 0)]
        );
        assert_eq!(
            clip_extents(&[e(1024, Hole), e(8192, Data)], 4096, true),
            vec![(1024, 3)]
        );
        assert_eq!(
            clip_extents(&[e(0, Data), e(1 << 40, Zero)], 512, true),
            vec![(512, 2)]
        );
    }
}
