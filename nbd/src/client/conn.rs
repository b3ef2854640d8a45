//! The client's transmission phase: requests are written under a lock by whichever
//! task issues them; one reader task matches replies to requests by cookie and
//! completes them (out of order), reassembling structured READ chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
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
    Read(ReadBuf),
    Status { extents: Option<Vec<(u32, u32)>> },
    Other,
}

/// Where a READ's data lands. The buffer starts empty with room for the whole request and
/// grows as data arrives in order (the usual case: one chunk, or a simple reply), read
/// from the socket straight into it: no zeroing and no copy. A chunk out of order, or a
/// hole, first zero-fills the buffer to its full size.
struct ReadBuf {
    /// The request's offset.
    offset: u64,
    /// The request's length.
    size: usize,
    buf: BytesMut,
    /// Bytes the server's chunks covered so far.
    covered: u64,
}

impl ReadBuf {
    fn new(offset: u64, size: usize) -> Self {
        ReadBuf {
            offset,
            size,
            buf: BytesMut::with_capacity(size),
            covered: 0,
        }
    }

    /// Where `len` bytes of a chunk at `chunk_off` start in the buffer.
    fn start_of(&self, chunk_off: u64, len: u64) -> Result<usize, String> {
        chunk_start(self.offset, chunk_off, len, self.size)
            .map(|s| s as usize)
            .ok_or_else(|| "a READ chunk outside the request".to_string())
    }

    /// The whole buffer, zero-filled where nothing arrived yet.
    fn full(&mut self) -> &mut [u8] {
        if self.buf.len() < self.size {
            self.buf.resize(self.size, 0);
        }
        &mut self.buf[..]
    }

    /// Puts `data` at `start` (from [`Self::start_of`]).
    fn put(&mut self, start: usize, data: &[u8]) {
        if start == self.buf.len() {
            self.buf.extend_from_slice(data);
        } else {
            self.full()[start..start + data.len()].copy_from_slice(data);
        }
        self.covered += data.len() as u64;
    }

    /// Zeroes `len` bytes at `start` (from [`Self::start_of`]).
    fn zero(&mut self, start: usize, len: usize) {
        if start == self.buf.len() {
            self.buf.resize(start + len, 0);
        } else {
            self.full()[start..start + len].fill(0);
        }
        self.covered += len as u64;
    }

    /// Reads `len` bytes from `rd` into the buffer at `start` (from [`Self::start_of`]).
    async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        start: usize,
        len: usize,
    ) -> std::io::Result<()> {
        if start == self.buf.len() {
            // into the buffer's spare room, which `with_capacity(size)` made
            let mut rest = rd.take(len as u64);
            let end = start + len;
            while self.buf.len() < end {
                if rest.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        } else {
            rd.read_exact(&mut self.full()[start..start + len]).await?;
        }
        self.covered += len as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<Bytes, ClientError> {
        if self.covered == self.size as u64 {
            self.full();
            Ok(self.buf.freeze())
        } else {
            Err(ClientError::Protocol(format!(
                "READ covered {} of {} bytes",
                self.covered, self.size
            )))
        }
    }
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
        let kind = Kind::Read(ReadBuf::new(offset, len as usize));
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
            Kind::Read(r) => r.finish().map(Answer::Data),
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
                } else if let Kind::Read(r) = &mut p.kind {
                    let size = r.size;
                    if let Err(e) = r.read_from(&mut rd, 0, size).await {
                        let _ = p.tx.send(Err(ClientError::Closed));
                        return e.into();
                    }
                } else if let Kind::Status { .. } = p.kind {
                    return ClientError::Protocol("simple reply to BLOCK_STATUS".into());
                }
                finish(p);
            }
            ReplyHeader::Chunk { flags, ty, len, .. } => {
                let applied = if ty == REPLY_TYPE_OFFSET_DATA
                    && let Kind::Read(r) = &mut p.kind
                {
                    read_data_chunk(&mut rd, r, len).await
                } else if len > MAX_CHUNK {
                    Err(ChunkError::Protocol(format!(
                        "a reply chunk of {len} bytes (at most {MAX_CHUNK})"
                    )))
                } else {
                    let mut payload = vec![0u8; len as usize];
                    match rd.read_exact(&mut payload).await {
                        Ok(_) => apply_chunk(&mut p, ty, &payload).map_err(ChunkError::Protocol),
                        Err(e) => Err(ChunkError::Io(e)),
                    }
                };
                match applied {
                    Ok(()) => {}
                    Err(ChunkError::Io(e)) => {
                        let _ = p.tx.send(Err(ClientError::Closed));
                        return e.into();
                    }
                    Err(ChunkError::Protocol(e)) => {
                        let _ = p.tx.send(Err(ClientError::Protocol(e.clone())));
                        return ClientError::Protocol(e);
                    }
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

/// Largest reply chunk other than READ data (a BLOCK_STATUS chunk, an error message).
const MAX_CHUNK: u32 = MAX_PAYLOAD;

enum ChunkError {
    Io(std::io::Error),
    Protocol(String),
}

/// An OFFSET_DATA chunk of `len` bytes (its offset, then data) read straight into the
/// request's buffer, once the offset was checked against the request.
async fn read_data_chunk<R: AsyncRead + Unpin>(
    rd: &mut R,
    r: &mut ReadBuf,
    len: u32,
) -> Result<(), ChunkError> {
    let Some(data_len) = len.checked_sub(8).filter(|n| *n > 0) else {
        return Err(ChunkError::Protocol(format!(
            "OFFSET_DATA chunk of {len} bytes"
        )));
    };
    let mut off = [0u8; 8];
    rd.read_exact(&mut off).await.map_err(ChunkError::Io)?;
    let start = r
        .start_of(u64::from_be_bytes(off), u64::from(data_len))
        .map_err(ChunkError::Protocol)?;
    r.read_from(rd, start, data_len as usize)
        .await
        .map_err(ChunkError::Io)
}

fn apply_chunk(p: &mut Pending, ty: u16, payload: &[u8]) -> Result<(), String> {
    let chunk = parse_chunk(ty, payload).map_err(|e| e.to_string())?;
    match (chunk, &mut p.kind) {
        (Chunk::None, _) => {}
        (Chunk::Error { error, message, .. }, _) => {
            p.error = Some((Errno::from_code(error), message));
        }
        (Chunk::OffsetData(off, data), Kind::Read(r)) => {
            let start = r.start_of(off, data.len() as u64)?;
            r.put(start, data);
        }
        (Chunk::OffsetHole { offset: off, len }, Kind::Read(r)) => {
            let start = r.start_of(off, u64::from(len))?;
            r.zero(start, len as usize);
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
            kind: Kind::Read(ReadBuf::new(offset, len)),
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
        let Kind::Read(r) = &q.kind else {
            panic!("kind changed")
        };
        assert_eq!(r.covered, 100);
        assert_eq!(&r.buf[904..1004], &[9u8; 100][..]);
    }

    /// An OFFSET_DATA chunk as the server sends it: offset, then data.
    fn data_chunk(off: u64, data: &[u8]) -> Vec<u8> {
        let mut v = off.to_be_bytes().to_vec();
        v.extend_from_slice(data);
        v
    }

    fn read_chunks(offset: u64, size: usize, chunks: &[(u64, Vec<u8>)]) -> Result<Bytes, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = ReadBuf::new(offset, size);
            for (off, data) in chunks {
                let wire = data_chunk(*off, data);
                let mut rd = &wire[..];
                match read_data_chunk(&mut rd, &mut r, wire.len() as u32).await {
                    Ok(()) => assert!(rd.is_empty(), "the chunk was read whole"),
                    Err(ChunkError::Io(e)) => return Err(e.to_string()),
                    Err(ChunkError::Protocol(e)) => return Err(e),
                }
            }
            r.finish().map_err(|e| e.to_string())
        })
    }

    #[test]
    fn data_chunks_in_order_out_of_order_and_short() {
        let a: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..212u32).map(|i| (i * 7) as u8).collect();
        let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
        // in order: appended
        let got = read_chunks(1000, 512, &[(1000, a.clone()), (1300, b.clone())]).unwrap();
        assert_eq!(&got[..], &whole[..]);
        // out of order: placed where they say
        let got = read_chunks(1000, 512, &[(1300, b.clone()), (1000, a.clone())]).unwrap();
        assert_eq!(&got[..], &whole[..]);
        // a gap is an error, not zeroes
        let e = read_chunks(1000, 512, &[(1300, b.clone())]).unwrap_err();
        assert!(e.contains("covered 212 of 512"), "{e}");
        // outside the request, and an empty chunk
        assert!(read_chunks(1000, 512, &[(1400, a.clone())]).is_err());
        assert!(read_chunks(1000, 512, &[(1000, Vec::new())]).is_err());
        // the connection ending inside a chunk
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut r = ReadBuf::new(0, 512);
        let wire = data_chunk(0, &a);
        let mut rd = &wire[..wire.len() - 1];
        let res = rt.block_on(read_data_chunk(&mut rd, &mut r, wire.len() as u32));
        assert!(matches!(res, Err(ChunkError::Io(_))));
    }

    proptest::proptest! {
        /// A request cut into data and hole chunks, sent in any order, reads back as the
        /// data with zeroes in the holes.
        #[test]
        fn chunks_in_any_order_reassemble(
            cuts in proptest::collection::vec((1usize..200, proptest::bool::ANY), 1..12),
            order in proptest::collection::vec(proptest::num::usize::ANY, 12),
        ) {
            let base = 1u64 << 40;
            let size: usize = cuts.iter().map(|c| c.0).sum();
            let mut want = Vec::with_capacity(size);
            let mut chunks = Vec::new();
            for (i, (len, hole)) in cuts.iter().enumerate() {
                let off = base + want.len() as u64;
                let data: Vec<u8> = (0..*len).map(|k| (k + i) as u8 | 1).collect();
                want.extend_from_slice(if *hole { &[0u8; 200][..*len] } else { &data });
                chunks.push((off, *len, *hole, data));
            }
            // a permutation of the chunks
            for (i, k) in order.iter().enumerate().take(chunks.len()) {
                let j = k % chunks.len();
                chunks.swap(i, j);
            }
            let mut p = read_pending(base, size);
            for (off, len, hole, data) in &chunks {
                if *hole {
                    let mut h = off.to_be_bytes().to_vec();
                    h.extend_from_slice(&(*len as u32).to_be_bytes());
                    apply_chunk(&mut p, REPLY_TYPE_OFFSET_HOLE, &h).unwrap();
                } else {
                    apply_chunk(&mut p, REPLY_TYPE_OFFSET_DATA, &data_chunk(*off, data)).unwrap();
                }
            }
            let Kind::Read(r) = p.kind else { panic!("kind changed") };
            let got = r.finish().map_err(|e| e.to_string()).unwrap();
            proptest::prop_assert_eq!(&got[..], &want[..]);
        }
    }

    #[test]
    fn holes_between_data_chunks_read_as_zero() {
        let mut p = read_pending(0, 64);
        let mut hole = 16u64.to_be_bytes().to_vec();
        hole.extend_from_slice(&16u32.to_be_bytes());
        apply_chunk(&mut p, REPLY_TYPE_OFFSET_DATA, &data_chunk(0, &[5u8; 16])).unwrap();
        apply_chunk(&mut p, REPLY_TYPE_OFFSET_HOLE, &hole).unwrap();
        apply_chunk(&mut p, REPLY_TYPE_OFFSET_DATA, &data_chunk(48, &[6u8; 16])).unwrap();
        // the hole at 32..48 comes last, out of order
        let mut hole2 = 32u64.to_be_bytes().to_vec();
        hole2.extend_from_slice(&16u32.to_be_bytes());
        apply_chunk(&mut p, REPLY_TYPE_OFFSET_HOLE, &hole2).unwrap();
        let Kind::Read(r) = p.kind else {
            panic!("kind changed")
        };
        let got = r.finish().map_err(|e| e.to_string()).unwrap();
        let mut want = vec![5u8; 16];
        want.extend_from_slice(&[0u8; 32]);
        want.extend_from_slice(&[6u8; 16]);
        assert_eq!(&got[..], &want[..]);
    }
}
