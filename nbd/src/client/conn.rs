//! The client's transmission phase: requests are written under a lock by whichever
//! task issues them; one reader task matches replies to requests by cookie and
//! completes them (out of order), reassembling structured READ chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, oneshot};

use super::{BoxStream, ClientConfig, ClientError, ExportInfo};
use crate::codec::reply::{Chunk, ReplyHeader, parse_chunk, parse_reply_header};
use crate::codec::request::{Request, encode_request};
use crate::device::{Extent, ExtentKind, ZeroFlags};
use crate::error::Errno;
use crate::proto::*;

enum Answer {
    Done,
    Data(Bytes),
    Extents(Vec<(u32, u32)>),
}

enum Kind {
    Read {
        offset: u64,
        buf: BytesMut,
        covered: u64,
    },
    Status {
        extents: Option<Vec<(u32, u32)>>,
    },
    Other,
}

struct Pending {
    kind: Kind,
    error: Option<(Errno, String)>,
    tx: oneshot::Sender<Result<Answer, ClientError>>,
}

struct Inner {
    writer: tokio::sync::Mutex<WriteHalf<BoxStream>>,
    pending: Mutex<HashMap<u64, PendingSlot>>,
    next_cookie: AtomicU64,
    slots: Semaphore,
    closed: AtomicBool,
    info: ExportInfo,
    timeout: Duration,
    /// The reply reader, aborted when the connection is poisoned (so the socket is
    /// closed at once rather than when the server answers).
    reader: Mutex<Option<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("info", &self.info)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// `Pending` without Debug noise.
struct PendingSlot(Pending);
impl std::fmt::Debug for PendingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// A connected NBD client. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    pub(super) fn start(stream: BoxStream, info: ExportInfo, cfg: &ClientConfig) -> Client {
        let (rd, wr) = tokio::io::split(stream);
        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            next_cookie: AtomicU64::new(1),
            slots: Semaphore::new(cfg.max_in_flight.max(1)),
            closed: AtomicBool::new(false),
            info,
            timeout: cfg.request_timeout,
            reader: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(async move {
            let err = reader(rd, &weak).await;
            if let Some(inner) = weak.upgrade() {
                inner.fail_all(err);
            }
        });
        *inner.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Client { inner }
    }

    pub fn info(&self) -> &ExportInfo {
        &self.inner.info
    }

    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    async fn call(
        &self,
        req: Request,
        payload: Option<&[u8]>,
        kind: Kind,
    ) -> Result<Answer, ClientError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let _permit = inner
            .slots
            .acquire()
            .await
            .map_err(|_| ClientError::Closed)?;
        let cookie = inner.next_cookie.fetch_add(1, Ordering::Relaxed);
        let req = Request { cookie, ..req };
        let (tx, rx) = oneshot::channel();
        inner.lock_pending().insert(
            cookie,
            PendingSlot(Pending {
                kind,
                error: None,
                tx,
            }),
        );
        // From here until the answer, dropping this future (a caller's deadline) or
        // failing poisons the connection: bytes of this request may be on the wire.
        let mut guard = InFlight {
            inner: self.inner.clone(),
            cookie,
            armed: true,
        };
        let mut b = BytesMut::with_capacity(REQUEST_HEADER_LEN);
        encode_request(&mut b, &req);
        {
            let mut w = inner.writer.lock().await;
            // A request dropped in the middle of its bytes left the stream unusable:
            // nothing more may be written on it (the next header would complete the
            // other request's payload).
            if inner.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            let r = async {
                w.write_all(&b).await?;
                if let Some(p) = payload {
                    w.write_all(p).await?;
                }
                w.flush().await
            }
            .await;
            if let Err(e) = r {
                return Err(e.into());
            }
        }
        match tokio::time::timeout(inner.timeout, rx).await {
            Ok(Ok(r)) => {
                guard.armed = false;
                r
            }
            Ok(Err(_)) => Err(ClientError::Closed),
            // Replies can no longer be matched safely: the guard gives up the connection.
            Err(_) => Err(ClientError::Timeout),
        }
    }

    fn req(cmd: u16, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            cmd,
            cookie: 0,
            offset,
            len,
        }
    }

    pub async fn read(&self, offset: u64, len: u32) -> Result<Bytes, ClientError> {
        if len > MAX_PAYLOAD {
            return Err(ClientError::Invalid("read longer than 32 MiB"));
        }
        let kind = Kind::Read {
            offset,
            buf: BytesMut::zeroed(len as usize),
            covered: 0,
        };
        match self
            .call(Self::req(CMD_READ, 0, offset, len), None, kind)
            .await?
        {
            Answer::Data(b) => Ok(b),
            _ => Err(ClientError::Protocol("READ answered without data".into())),
        }
    }

    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), ClientError> {
        let len = u32::try_from(data.len()).map_err(|_| ClientError::Invalid("write too long"))?;
        let flags = if fua { CMD_FLAG_FUA } else { 0 };
        self.call(
            Self::req(CMD_WRITE, flags, offset, len),
            Some(data),
            Kind::Other,
        )
        .await
        .map(|_| ())
    }

    pub async fn flush(&self) -> Result<(), ClientError> {
        self.call(Self::req(CMD_FLUSH, 0, 0, 0), None, Kind::Other)
            .await
            .map(|_| ())
    }

    pub async fn trim(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.call(Self::req(CMD_TRIM, 0, offset, len), None, Kind::Other)
            .await
            .map(|_| ())
    }

    pub async fn cache(&self, offset: u64, len: u32) -> Result<(), ClientError> {
        self.call(Self::req(CMD_CACHE, 0, offset, len), None, Kind::Other)
            .await
            .map(|_| ())
    }

    pub async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        f: ZeroFlags,
    ) -> Result<(), ClientError> {
        let mut flags = 0;
        if f.no_hole {
            flags |= CMD_FLAG_NO_HOLE;
        }
        if f.fast {
            flags |= CMD_FLAG_FAST_ZERO;
        }
        if f.fua {
            flags |= CMD_FLAG_FUA;
        }
        self.call(
            Self::req(CMD_WRITE_ZEROES, flags, offset, len),
            None,
            Kind::Other,
        )
        .await
        .map(|_| ())
    }

    /// `base:allocation` extents from `offset` (at least one).
    pub async fn block_status(
        &self,
        offset: u64,
        len: u32,
        req_one: bool,
    ) -> Result<Vec<Extent>, ClientError> {
        if self.inner.info.base_allocation.is_none() {
            return Err(ClientError::NotNegotiated("base:allocation"));
        }
        let flags = if req_one { CMD_FLAG_REQ_ONE } else { 0 };
        let kind = Kind::Status { extents: None };
        match self
            .call(Self::req(CMD_BLOCK_STATUS, flags, offset, len), None, kind)
            .await?
        {
            Answer::Extents(e) => Ok(e
                .into_iter()
                .map(|(l, f)| {
                    let kind = match f & (STATE_HOLE | STATE_ZERO) {
                        0 => ExtentKind::Data,
                        STATE_ZERO => ExtentKind::Zero,
                        _ => ExtentKind::Hole,
                    };
                    Extent::new(u64::from(l), kind)
                })
                .collect()),
            _ => Err(ClientError::Protocol(
                "BLOCK_STATUS answered without extents".into(),
            )),
        }
    }

    /// Sends NBD_CMD_DISC and closes the write side; pending requests fail. On a
    /// connection a request was abandoned on (its bytes may be cut short), nothing is
    /// sent: the write side is only shut down.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        let mut b = BytesMut::new();
        encode_request(&mut b, &Self::req(CMD_DISC, 0, 0, 0));
        let was_closed = self.inner.closed.swap(true, Ordering::AcqRel);
        let mut w = self.inner.writer.lock().await;
        if !was_closed {
            w.write_all(&b).await?;
        }
        w.shutdown().await?;
        Ok(())
    }

    /// True once the connection can carry no more requests (closed, failed, or a request
    /// on it was abandoned).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }
}

impl Inner {
    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PendingSlot>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail_all(&self, err: ClientError) {
        self.closed.store(true, Ordering::Release);
        let msg = err.to_string();
        for (_, PendingSlot(p)) in self.lock_pending().drain() {
            let _ = p.tx.send(Err(match &err {
                ClientError::Closed => ClientError::Closed,
                _ => ClientError::Protocol(msg.clone()),
            }));
        }
    }
}

/// A request between its first byte and its answer. Dropped armed (the caller gave up,
/// the write failed, the answer timed out), it removes the request and poisons the
/// connection: closed for further requests, write side shut down.
struct InFlight {
    inner: Arc<Inner>,
    cookie: u64,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.inner.lock_pending().remove(&self.cookie);
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let reader = self
            .inner
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(r) = reader {
            r.abort();
        }
        self.inner.fail_all(ClientError::Closed);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            rt.spawn(async move {
                let _ = inner.writer.lock().await.shutdown().await;
            });
        }
    }
}

fn finish(p: Pending) {
    let result = match p.error {
        Some((errno, message)) => Err(ClientError::Server { errno, message }),
        None => match p.kind {
            Kind::Read { buf, covered, .. } => {
                if covered == buf.len() as u64 {
                    Ok(Answer::Data(buf.freeze()))
                } else {
                    Err(ClientError::Protocol(format!(
                        "READ covered {covered} of {} bytes",
                        buf.len()
                    )))
                }
            }
            Kind::Status { extents: Some(e) } => Ok(Answer::Extents(e)),
            Kind::Status { extents: None } => Err(ClientError::Protocol(
                "BLOCK_STATUS without a status chunk".into(),
            )),
            Kind::Other => Ok(Answer::Done),
        },
    };
    let _ = p.tx.send(result);
}

/// Reads replies until the connection ends; returns why.
async fn reader(mut rd: ReadHalf<BoxStream>, inner: &std::sync::Weak<Inner>) -> ClientError {
    let mut hdr = [0u8; STRUCTURED_REPLY_HEADER_LEN];
    loop {
        if let Err(e) = rd.read_exact(&mut hdr[..SIMPLE_REPLY_HEADER_LEN]).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                ClientError::Closed
            } else {
                e.into()
            };
        }
        let structured = hdr[..4] == STRUCTURED_REPLY_MAGIC.to_be_bytes();
        if structured && let Err(e) = rd.read_exact(&mut hdr[SIMPLE_REPLY_HEADER_LEN..]).await {
            return e.into();
        }
        let h = match parse_reply_header(&hdr) {
            Ok(Some((h, _))) => h,
            Ok(None) => return ClientError::Protocol("short reply header".into()),
            Err(e) => return e.into(),
        };
        let Some(inner) = inner.upgrade() else {
            return ClientError::Closed;
        };
        let cookie = h.cookie();
        let Some(PendingSlot(mut p)) = inner.lock_pending().remove(&cookie) else {
            return ClientError::Protocol(format!("reply for unknown cookie {cookie}"));
        };
        match h {
            ReplyHeader::Simple { error, .. } => {
                if error != 0 {
                    p.error = Some((Errno::from_code(error), String::new()));
                } else if let Kind::Read { buf, covered, .. } = &mut p.kind {
                    if let Err(e) = rd.read_exact(buf).await {
                        let _ = p.tx.send(Err(ClientError::Closed));
                        return e.into();
                    }
                    *covered = buf.len() as u64;
                } else if let Kind::Status { .. } = p.kind {
                    return ClientError::Protocol("simple reply to BLOCK_STATUS".into());
                }
                finish(p);
            }
            ReplyHeader::Chunk { flags, ty, len, .. } => {
                let mut payload = vec![0u8; len as usize];
                if let Err(e) = rd.read_exact(&mut payload).await {
                    return e.into();
                }
                if let Err(e) = apply_chunk(&mut p, ty, &payload) {
                    let _ = p.tx.send(Err(ClientError::Protocol(e.clone())));
                    return ClientError::Protocol(e);
                }
                if flags & REPLY_FLAG_DONE != 0 {
                    finish(p);
                } else {
                    inner.lock_pending().insert(cookie, PendingSlot(p));
                }
            }
        }
    }
}

fn apply_chunk(p: &mut Pending, ty: u16, payload: &[u8]) -> Result<(), String> {
    let chunk = parse_chunk(ty, payload).map_err(|e| e.to_string())?;
    match (chunk, &mut p.kind) {
        (Chunk::None, _) => {}
        (Chunk::Error { error, message, .. }, _) => {
            p.error = Some((Errno::from_code(error), message));
        }
        (
            Chunk::OffsetData(off, data),
            Kind::Read {
                offset,
                buf,
                covered,
            },
        ) => {
            let start = chunk_start(*offset, off, data.len() as u64, buf.len())
                .ok_or("OFFSET_DATA outside the request")?;
            buf[start as usize..start as usize + data.len()].copy_from_slice(data);
            *covered += data.len() as u64;
        }
        (
            Chunk::OffsetHole { offset: off, len },
            Kind::Read {
                offset,
                buf,
                covered,
            },
        ) => {
            let start = chunk_start(*offset, off, u64::from(len), buf.len())
                .ok_or("OFFSET_HOLE outside the request")?;
            buf[start as usize..start as usize + len as usize].fill(0);
            *covered += u64::from(len);
        }
        (Chunk::BlockStatus { extents, .. }, Kind::Status { extents: slot }) => {
            *slot = Some(extents);
        }
        _ => return Err(format!("unexpected chunk type {ty}")),
    }
    Ok(())
}

/// Where a READ chunk at `chunk_off` of `len` bytes starts in the buffer of a request at
/// `req_off`, if it lies inside it. The offsets come from the server: no arithmetic
/// on them may overflow.
fn chunk_start(req_off: u64, chunk_off: u64, len: u64, buf_len: usize) -> Option<u64> {
    let start = chunk_off.checked_sub(req_off)?;
    let end = start.checked_add(len)?;
    (end <= buf_len as u64).then_some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_pending(offset: u64, len: usize) -> Pending {
        let (tx, _rx) = oneshot::channel();
        Pending {
            kind: Kind::Read {
                offset,
                buf: BytesMut::zeroed(len),
                covered: 0,
            },
            error: None,
            tx,
        }
    }

    #[test]
    fn chunks_outside_the_request_are_errors_not_panics() {
        let mut p = read_pending(0, 8192);
        // OFFSET_DATA at u64::MAX - 3 with 8 bytes: start + len overflows
        let mut data = (u64::MAX - 3).to_be_bytes().to_vec();
        data.extend_from_slice(&[7u8; 8]);
        assert!(apply_chunk(&mut p, REPLY_TYPE_OFFSET_DATA, &data).is_err());
        let mut hole = (u64::MAX - 3).to_be_bytes().to_vec();
        hole.extend_from_slice(&16u32.to_be_bytes());
        assert!(apply_chunk(&mut p, REPLY_TYPE_OFFSET_HOLE, &hole).is_err());
        // running past the end of the request, and before its start
        let mut past = 8000u64.to_be_bytes().to_vec();
        past.extend_from_slice(&[1u8; 512]);
        assert!(apply_chunk(&mut p, REPLY_TYPE_OFFSET_DATA, &past).is_err());
        let mut q = read_pending(4096, 4096);
        let mut before = 0u64.to_be_bytes().to_vec();
        before.extend_from_slice(&[1u8; 16]);
        assert!(apply_chunk(&mut q, REPLY_TYPE_OFFSET_DATA, &before).is_err());
        // a chunk inside the request lands where it says
        let mut ok = 5000u64.to_be_bytes().to_vec();
        ok.extend_from_slice(&[9u8; 100]);
        apply_chunk(&mut q, REPLY_TYPE_OFFSET_DATA, &ok).expect("inside");
        let Kind::Read { buf, covered, .. } = &q.kind else {
            panic!("kind changed")
        };
        assert_eq!(*covered, 100);
        assert_eq!(&buf[904..1004], &[9u8; 100][..]);
    }
}
