//! A session to a peer (docs/design/070 §5): one TCP connection, `Open` then many
//! `Call`s in flight answered out of order by id, `Ping` when idle so the peer's session
//! lease stays renewed. Callers are `SwitchPath` calls on blocking threads: they hand a
//! call to the session's writer task and wait for its reply on a channel, at most the
//! call bound. A session that fails (transport error, a call without answer in time)
//! fails every call waiting on it and stays failed; the driver opens a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes};
use csv_tls::PeerSecurity;
use futures_util::StreamExt as _;
use redirector::wire::{Call, CallOp, Msg, MsgCodec, Refusal, Reply, encode_parts};
use tokio::io::{AsyncWrite, AsyncWriteExt as _, BufWriter};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use volume::path::{Op, PathError};

use super::link::{LinkError, LunCall, PeerLink};
use crate::sync::lock;

/// What the peer told at `Opened`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Terms {
    pub(crate) ttl: Duration,
    pub(crate) io_timeout: Duration,
}

impl Terms {
    /// After this long without a frame from us, the peer has closed the session and
    /// every call it was running has ended (070 §5).
    pub(crate) fn bound(&self) -> Duration {
        self.ttl + self.io_timeout * 2
    }
}

/// Read buffer of a session's connection: a whole largest call and then some.
pub(crate) const READ_BUFFER: usize = redirector::wire::MAX_FRAME + (1 << 20);

type Waiter = std::sync::mpsc::SyncSender<Result<Bytes, LinkError>>;

struct Outgoing {
    call: Call,
    reply: Waiter,
}

/// The caller's side of a session.
pub(crate) struct Session {
    peer: u64,
    id: u64,
    addr: SocketAddr,
    terms: Terms,
    tx: mpsc::UnboundedSender<Outgoing>,
    next_id: AtomicU64,
    /// Failed: no call is sent any more.
    failed: Arc<AtomicBool>,
    /// Last time a frame left for the peer (renews the peer's session lease).
    last_sent: Arc<Mutex<Instant>>,
    /// How long a caller waits for an answer.
    call_timeout: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects to `addr`, opens session `id` for node `source` and starts its tasks.
    pub(crate) async fn open(
        peer: u64,
        addr: SocketAddr,
        source: u64,
        id: u64,
        connect_timeout: Duration,
        security: &PeerSecurity,
    ) -> Result<Arc<Session>, String> {
        let dial = async {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            security.connect(s, peer).await
        };
        let stream = tokio::time::timeout(connect_timeout, dial)
            .await
            .map_err(|_| {
                format!("connect to node {peer} at {addr}: no answer in {connect_timeout:?}")
            })?
            .map_err(|e| format!("connect to node {peer} at {addr}: {e}"))?;
        let (r, w) = stream.split();
        let mut w = BufWriter::with_capacity(256 << 10, w);
        let mut reader = FramedRead::with_capacity(r, MsgCodec::new(), READ_BUFFER);
        let open = Msg::Open {
            version: redirector::wire::VERSION,
            source,
            session: id,
        };
        write_msg(&mut w, &open)
            .await
            .map_err(|e| format!("open session at node {peer}: {e}"))?;
        w.flush()
            .await
            .map_err(|e| format!("open session at node {peer}: {e}"))?;
        let first = tokio::time::timeout(connect_timeout, reader.next())
            .await
            .map_err(|_| format!("node {peer} did not answer the session open"))?;
        let terms = match first {
            Some(Ok(Msg::Opened {
                session,
                ttl_ms,
                io_timeout_ms,
            })) if session == id => Terms {
                ttl: Duration::from_millis(ttl_ms),
                io_timeout: Duration::from_millis(io_timeout_ms),
            },
            Some(Ok(Msg::OpenRefused { detail })) => {
                return Err(format!("node {peer} refused the session: {detail}"));
            }
            Some(Ok(m)) => return Err(format!("node {peer} answered the open with {m:?}")),
            Some(Err(e)) => return Err(format!("session open at node {peer}: {e}")),
            None => return Err(format!("node {peer} closed the connection at open")),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let last_sent = Arc::new(Mutex::new(Instant::now()));
        let waiters: Arc<Mutex<HashMap<u64, Waiter>>> = Arc::default();
        let s = Arc::new(Session {
            peer,
            id,
            addr,
            terms,
            tx,
            next_id: AtomicU64::new(1),
            failed: failed.clone(),
            last_sent: last_sent.clone(),
            call_timeout: terms.io_timeout * 2 + Duration::from_secs(1),
        });
        let ping = terms.ttl / 3;
        tokio::spawn(write_loop(
            w,
            rx,
            waiters.clone(),
            failed.clone(),
            last_sent,
            ping,
            id,
        ));
        tokio::spawn(read_loop(reader, waiters, failed));
        Ok(s)
    }

    pub(crate) fn session_id(&self) -> u64 {
        self.id
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the session failed: no call is sent any more (its tasks end).
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// When the peer has surely closed the session and finished its calls, counting
    /// from the last frame sent.
    pub(crate) fn closed_by(&self) -> Instant {
        *lock(&self.last_sent) + self.terms.bound()
    }
}

/// Writes one frame: the head and the payload as it is (no copy), together in vectored
/// writes (one system call and one segment train for a call's head and its data).
pub(crate) async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, m: &Msg) -> Result<(), String> {
    let (head, payload) = encode_parts(m).map_err(|e| e.to_string())?;
    match payload {
        Some(p) => w.write_all_buf(&mut head.freeze().chain(p)).await,
        None => w.write_all(&head).await,
    }
    .map_err(|e| e.to_string())
}

fn fail_all(waiters: &Mutex<HashMap<u64, Waiter>>, detail: &str) {
    for (_, w) in lock(waiters).drain() {
        let _ = w.try_send(Err(LinkError::Lost(detail.to_string())));
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    failed: Arc<AtomicBool>,
    last_sent: Arc<Mutex<Instant>>,
    ping: Duration,
    session: u64,
) {
    let mut tick = tokio::time::interval(ping.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let detail = loop {
        if failed.load(Ordering::Acquire) {
            break "session closed".to_string();
        }
        let msg = tokio::select! {
            o = rx.recv() => match o {
                Some(o) => {
                    let id = o.call.id;
                    lock(&waiters).insert(id, o.reply);
                    Msg::Call(o.call)
                }
                None => break "session dropped".to_string(),
            },
            _ = tick.tick() => Msg::Ping { session },
        };
        if let Err(e) = write_msg(&mut w, &msg).await {
            break format!("send: {e}");
        }
        // Coalesce what is queued already into the same flush.
        let mut err = None;
        while let Ok(o) = rx.try_recv() {
            lock(&waiters).insert(o.call.id, o.reply);
            if let Err(e) = write_msg(&mut w, &Msg::Call(o.call)).await {
                err = Some(e);
                break;
            }
        }
        if let Some(e) = err {
            break format!("send: {e}");
        }
        if let Err(e) = w.flush().await {
            break format!("send: {e}");
        }
        *lock(&last_sent) = Instant::now();
    };
    failed.store(true, Ordering::Release);
    fail_all(&waiters, &detail);
    let _ = w.shutdown().await;
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    mut reader: FramedRead<R, MsgCodec>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    failed: Arc<AtomicBool>,
) {
    let detail = loop {
        match reader.next().await {
            Some(Ok(Msg::Reply(Reply { id, result }))) => {
                let r = result.map_err(|f| classify(f.refusal, f.errno, &f.detail));
                if let Some(w) = lock(&waiters).remove(&id) {
                    let _ = w.try_send(r);
                }
            }
            Some(Ok(Msg::Pong { .. })) => {}
            Some(Ok(m)) => break format!("unexpected frame from the peer: {m:?}"),
            Some(Err(e)) => break format!("receive: {e}"),
            None => break "the peer closed the connection".to_string(),
        }
        if failed.load(Ordering::Acquire) {
            break "session closed".to_string();
        }
    };
    failed.store(true, Ordering::Release);
    fail_all(&waiters, &detail);
}

/// A peer's refusal as the caller's error class.
fn classify(refusal: Refusal, errno: i32, detail: &str) -> LinkError {
    let target = "redirected";
    match refusal {
        Refusal::NotYet => LinkError::NotYet,
        Refusal::Stale | Refusal::Fenced => LinkError::Refused(PathError::Fenced {
            detail: format!("the peer refused: {detail}"),
        }),
        Refusal::Media | Refusal::BadRequest => LinkError::Refused(PathError::Media {
            target: target.into(),
            op: Op::Write,
            offset: 0,
            errno: (errno != 0).then_some(errno),
            detail: format!("at the peer: {detail}"),
        }),
        Refusal::Path | Refusal::SessionClosed => LinkError::Lost(format!("at the peer: {detail}")),
    }
}

impl PeerLink for Session {
    fn peer(&self) -> u64 {
        self.peer
    }

    fn session(&self) -> u64 {
        self.id
    }

    fn call(&self, call: LunCall) -> Result<Bytes, LinkError> {
        if self.failed() {
            return Err(LinkError::Lost("session failed".into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (op, offset, len, writer, payload) = match call {
            LunCall::Read { offset, len } => (CallOp::Read, offset, len, None, Bytes::new()),
            LunCall::Write {
                offset,
                data,
                writer,
            } => (CallOp::Write, offset, data.len() as u64, writer, data),
            LunCall::WriteZeroes {
                offset,
                len,
                writer,
            } => (CallOp::WriteZeroes, offset, len, writer, Bytes::new()),
            LunCall::Flush => (CallOp::Flush, 0, 0, None, Bytes::new()),
        };
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        let out = Outgoing {
            call: Call {
                id,
                session: self.id,
                op,
                offset,
                len,
                writer,
                payload,
            },
            reply,
        };
        if self.tx.send(out).is_err() {
            return Err(LinkError::Lost("session ended".into()));
        }
        match rx.recv_timeout(self.call_timeout) {
            Ok(r) => r,
            Err(_) => {
                // No answer in time: the session is failed; the call stays in doubt at
                // the peer until the session's bound.
                self.fail();
                Err(LinkError::Lost(format!(
                    "no answer from node {} within {:?}",
                    self.peer, self.call_timeout
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redirector::wire::Writer;

    /// Frames written head-and-payload together decode to the messages, back to back.
    #[tokio::test]
    async fn frames_written_vectored_decode_as_sent() {
        let call = Msg::Call(Call {
            id: 7,
            session: 3,
            op: CallOp::Write,
            offset: 1 << 20,
            len: 300_000,
            writer: Some(Writer {
                vhd: 1,
                node: 2,
                generation: 9,
            }),
            payload: Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<u8>>()),
        });
        let ping = Msg::Ping { session: 3 };
        let mut out: Vec<u8> = Vec::new();
        {
            // Smaller than the payload, as on a connection: the frame bypasses it.
            let mut w = BufWriter::with_capacity(64 << 10, &mut out);
            for m in [&ping, &call, &ping] {
                write_msg(&mut w, m).await.expect("write");
            }
            w.flush().await.expect("flush");
        }
        let mut r = FramedRead::new(&out[..], MsgCodec::new());
        for want in [&ping, &call, &ping] {
            let got = r.next().await.expect("a frame").expect("decodes");
            assert_eq!(&got, want);
        }
        assert!(r.next().await.is_none());
    }
}
