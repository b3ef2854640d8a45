//! The peer side of redirected I/O (docs/design/070 §5): other nodes' sessions, their
//! LUN calls run on this node's own path after the checks of §5 — the session is valid
//! right before each LUN call (a session not renewed for `session_ttl` is closed: a
//! source or peer that slept cannot land a call after the bound), and a write's
//! (vhd, node, generation) is the writer this node's replica of the lock table knows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use csv_tls::PeerSecurity;
use csv_tls::PeerWriteHalf;
use futures_util::StreamExt as _;
use redirector::wire::{
    Call, CallOp, Failure, Msg, MsgCodec, Refusal, Reply, VERSION, Writer, encode_reply_head,
};
use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use volume::LunPath;
use volume::path::splice::PipeData;
use volume::path::{PathError, WriteGate};

use super::session::{READ_BUFFER, write_msg};
use super::switch::{Route, Shared};
use crate::meta::Meta;
use crate::state::types::{Query, QueryReply};
use crate::sync::lock;

/// How long a write waits for this node's replica to learn its writer's generation.
const CATCH_UP: Duration = Duration::from_secs(1);

/// One source's session as this node serves it.
#[derive(Debug)]
struct PeerSession {
    source: u64,
    renewed: Mutex<Instant>,
    closed: AtomicBool,
    running: AtomicUsize,
    ttl: Duration,
}

impl PeerSession {
    fn renew(&self) {
        *lock(&self.renewed) = Instant::now();
    }

    /// Open and renewed within its lease, at this very moment.
    fn valid(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && lock(&self.renewed).elapsed() < self.ttl
    }
}

/// The gate of a forwarded write: the session is still valid right before each LUN
/// write call (070 §4 rule 3).
struct SessionGate<'a>(&'a PeerSession);

impl WriteGate for SessionGate<'_> {
    fn check(&self) -> Result<(), PathError> {
        if self.0.valid() {
            Ok(())
        } else {
            Err(PathError::Fenced {
                detail: "the redirect session is closed".into(),
            })
        }
    }
}

/// What serving needs.
#[derive(Debug)]
pub(crate) struct Serve {
    pub(crate) node: u64,
    meta: Arc<Meta>,
    direct: Arc<dyn LunPath>,
    /// This node's own switch: it serves only while its route is direct.
    own: Arc<Shared>,
    ttl: Duration,
    io_timeout: Duration,
    /// Mutual TLS with the session's node (or plaintext on a test bed).
    security: PeerSecurity,
    /// Calls served (the published load is its recent rate).
    pub(crate) served: AtomicU64,
    sessions: Mutex<HashMap<(u64, u64), Arc<PeerSession>>>,
    /// Writers this replica confirmed, valid while it has applied nothing since.
    writers: Mutex<WriterCache>,
}

/// Confirmed writers as of `applied` (the replica's applied count read before the query
/// that confirmed them): a write checks its writer here without a round trip to the
/// replica's thread while nothing was applied since, which is what that round trip would
/// have answered too.
#[derive(Debug, Default)]
struct WriterCache {
    applied: u64,
    ok: std::collections::HashSet<(u64, u64, u64)>,
}

impl WriterCache {
    fn key(w: Writer) -> (u64, u64, u64) {
        (w.vhd, w.node, w.generation)
    }

    fn holds(&self, w: Writer, applied_now: u64) -> bool {
        self.applied == applied_now && self.ok.contains(&Self::key(w))
    }

    /// Records `w` as confirmed by a query made after the count was `applied`.
    fn confirm(&mut self, w: Writer, applied: u64) {
        if self.applied != applied {
            self.ok.clear();
            self.applied = applied;
        }
        self.ok.insert(Self::key(w));
    }
}

impl Serve {
    pub(crate) fn new(
        node: u64,
        meta: Arc<Meta>,
        direct: Arc<dyn LunPath>,
        own: Arc<Shared>,
        ttl: Duration,
        io_timeout: Duration,
        security: PeerSecurity,
    ) -> Serve {
        Serve {
            node,
            meta,
            direct,
            own,
            ttl,
            io_timeout,
            security,
            served: AtomicU64::new(0),
            sessions: Mutex::default(),
            writers: Mutex::default(),
        }
    }

    /// Whether this node may serve now: its own route is direct.
    fn can_serve(&self) -> bool {
        matches!(self.own.route(), Route::Direct)
    }
}

/// Accepts sessions until `cancel`.
pub(crate) async fn run(listener: TcpListener, s: Arc<Serve>, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            () = cancel.cancelled() => return,
            c = listener.accept() => c,
        };
        match conn {
            Ok((stream, from)) => {
                let s = s.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(s, stream, cancel).await {
                        tracing::info!(%from, "redirect session ended: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("redirect listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a session's writer sends.
enum Out {
    Msg(Msg),
    /// A read's successful reply whose data waits in a pipe (070 §5.1).
    Spliced {
        id: u64,
        data: PipeData,
    },
}

/// What a call answers with.
enum Answer {
    Data(Bytes),
    Spliced(PipeData),
}

type SessionWriter = BufWriter<PeerWriteHalf>;

async fn send(w: &mut SessionWriter, out: Out) -> Result<(), String> {
    match out {
        Out::Msg(m) => write_msg(w, &m).await,
        Out::Spliced { id, mut data } => {
            let head = encode_reply_head(id, data.len()).map_err(|e| e.to_string())?;
            w.write_all(&head).await.map_err(|e| e.to_string())?;
            w.flush().await.map_err(|e| e.to_string())?;
            let tcp = w
                .get_ref()
                .plain_tcp()
                .ok_or("a spliced reply on a TLS connection")?;
            data.splice_into(tcp).await.map_err(|e| e.to_string())
        }
    }
}

async fn write_loop(mut w: SessionWriter, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(m) = rx.recv().await {
        if send(&mut w, m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if send(&mut w, m).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn connection(
    s: Arc<Serve>,
    stream: TcpStream,
    cancel: CancellationToken,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (stream, who) = tokio::time::timeout(s.ttl, s.security.accept(stream))
        .await
        .map_err(|_| "no TLS handshake within the session lease".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (r, w) = stream.split();
    let mut reader = FramedRead::with_capacity(r, MsgCodec::new(), READ_BUFFER);
    // Data goes from a pipe straight into a plaintext connection; TLS must see it.
    let plain = w.plain_tcp().is_some();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_loop(BufWriter::with_capacity(256 << 10, w), rx));
    let first = tokio::time::timeout(s.ttl, reader.next())
        .await
        .map_err(|_| "no open within the session lease".to_string())?;
    let (source, id) = match first {
        Some(Ok(Msg::Open {
            version,
            source,
            session,
        })) => {
            let refuse = if version != VERSION {
                Some(format!(
                    "protocol version {version}, this node speaks {VERSION}"
                ))
            } else if let Err(e) = who.check(source) {
                // Every write of the session is judged as node `source`'s: only
                // that node may open it.
                Some(e.to_string())
            } else if !s.can_serve() {
                Some(format!("node {} has no direct path to the LUN", s.node))
            } else {
                None
            };
            if let Some(detail) = refuse {
                let _ = tx.send(Out::Msg(Msg::OpenRefused {
                    detail: detail.clone(),
                }));
                return Err(detail);
            }
            (source, session)
        }
        Some(Ok(m)) => return Err(format!("expected an open, got {m:?}")),
        Some(Err(e)) => return Err(e.to_string()),
        None => return Ok(()),
    };
    let sess = Arc::new(PeerSession {
        source,
        renewed: Mutex::new(Instant::now()),
        closed: AtomicBool::new(false),
        running: AtomicUsize::new(0),
        ttl: s.ttl,
    });
    lock(&s.sessions).insert((source, id), sess.clone());
    let _ = tx.send(Out::Msg(Msg::Opened {
        session: id,
        ttl_ms: s.ttl.as_millis() as u64,
        io_timeout_ms: s.io_timeout.as_millis() as u64,
    }));
    tracing::info!(source, session = id, "redirect session opened");
    let end = serve_session(&s, &sess, (id, plain), &mut reader, &tx, &cancel).await;
    // Closed: nothing read from here on runs; calls already running finish (bounded by
    // the path's call bound) and their answers still go out.
    sess.closed.store(true, Ordering::Release);
    lock(&s.sessions).remove(&(source, id));
    tracing::info!(source, session = id, "redirect session closed: {end}");
    Ok(())
}

async fn serve_session<R: tokio::io::AsyncRead + Unpin>(
    s: &Arc<Serve>,
    sess: &Arc<PeerSession>,
    (id, plain): (u64, bool),
    reader: &mut FramedRead<R, MsgCodec>,
    tx: &mpsc::UnboundedSender<Out>,
    cancel: &CancellationToken,
) -> String {
    let mut check = tokio::time::interval(s.ttl / 4);
    loop {
        let frame = tokio::select! {
            () = cancel.cancelled() => return "node stopping".into(),
            _ = check.tick() => {
                if !sess.valid() {
                    return format!("not renewed for {:?}", s.ttl);
                }
                continue;
            }
            f = reader.next() => f,
        };
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(e)) => return format!("bad frame: {e}"),
            None => return "the source closed the connection".into(),
        };
        if !sess.valid() {
            return format!("not renewed for {:?}", s.ttl);
        }
        sess.renew();
        match msg {
            Msg::Call(c) if c.session == id => {
                sess.running.fetch_add(1, Ordering::AcqRel);
                let (s, sess, tx) = (s.clone(), sess.clone(), tx.clone());
                tokio::spawn(async move {
                    let id = c.id;
                    let result = handle(&s, &sess, c, plain).await;
                    sess.running.fetch_sub(1, Ordering::AcqRel);
                    s.served.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(match result {
                        Ok(Answer::Spliced(data)) => Out::Spliced { id, data },
                        Ok(Answer::Data(b)) => Out::Msg(Msg::Reply(Reply { id, result: Ok(b) })),
                        Err(f) => Out::Msg(Msg::Reply(Reply { id, result: Err(f) })),
                    });
                });
            }
            Msg::Ping { session } if session == id => {
                let _ = tx.send(Out::Msg(Msg::Pong { session }));
            }
            Msg::CloseSession { id: rid, session } => {
                let old = lock(&s.sessions).get(&(sess.source, session)).cloned();
                let (tx, io) = (tx.clone(), s.io_timeout);
                tokio::spawn(async move {
                    if let Some(old) = old {
                        old.closed.store(true, Ordering::Release);
                        let start = Instant::now();
                        while old.running.load(Ordering::Acquire) > 0 && start.elapsed() < io * 2 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if old.running.load(Ordering::Acquire) > 0 {
                            return;
                        }
                    }
                    let _ = tx.send(Out::Msg(Msg::Closed { id: rid, session }));
                });
            }
            m => return format!("unexpected frame {m:?}"),
        }
    }
}

fn failure(refusal: Refusal, errno: i32, detail: impl Into<String>) -> Failure {
    Failure {
        refusal,
        errno,
        detail: detail.into(),
    }
}

async fn handle(
    s: &Arc<Serve>,
    sess: &Arc<PeerSession>,
    c: Call,
    plain: bool,
) -> Result<Answer, Failure> {
    if !s.can_serve() {
        return Err(failure(
            Refusal::Path,
            libc::EIO,
            format!("node {} has no direct path now", s.node),
        ));
    }
    if matches!(c.op, CallOp::Write | CallOp::WriteZeroes) {
        let w = c.writer.ok_or_else(|| {
            failure(
                Refusal::Fenced,
                0,
                "a forwarded write must name its VHD writer",
            )
        })?;
        if w.node != sess.source {
            return Err(failure(
                Refusal::BadRequest,
                libc::EINVAL,
                format!("node {} writes for node {}", sess.source, w.node),
            ));
        }
        check_writer(s, w).await?;
    }
    // On this worker when the path can (an NBD connection that is up): the call then
    // takes no blocking thread and no hand-over between threads.
    match c.op {
        CallOp::Read => {
            SessionGate(sess).check().map_err(of_path)?;
            let len = read_len(&c)?;
            if let Some(read) = plain
                .then(|| s.direct.read_spliced(c.offset, len))
                .flatten()
            {
                // Ok(None): this host cannot splice; the usual ways follow.
                if let Some(data) = read.await.map_err(of_path)? {
                    return Ok(Answer::Spliced(data));
                }
            }
            if let Some(read) = s.direct.read_bytes_async(c.offset, len) {
                return read.await.map(Answer::Data).map_err(of_path);
            }
        }
        CallOp::Write => {
            let gate = SessionGate(sess);
            if let Some(write) = s
                .direct
                .write_bytes_async(c.payload.clone(), c.offset, &gate)
            {
                return write
                    .await
                    .map(|()| Answer::Data(Bytes::new()))
                    .map_err(of_path);
            }
        }
        CallOp::WriteZeroes | CallOp::Flush => {}
    }
    let (lun, sess) = (s.direct.clone(), sess.clone());
    let r = tokio::task::spawn_blocking(move || run_call(&*lun, &sess, c)).await;
    match r {
        Ok(r) => r.map(Answer::Data),
        Err(e) => Err(failure(
            Refusal::Media,
            libc::EIO,
            format!("call task: {e}"),
        )),
    }
}

/// The LUN call itself (blocking), each write call behind the session gate.
fn run_call(lun: &dyn LunPath, sess: &PeerSession, c: Call) -> Result<Bytes, Failure> {
    let gate = SessionGate(sess);
    let r = match c.op {
        CallOp::Read => {
            gate.check().map_err(of_path)?;
            lun.read_bytes(c.offset, read_len(&c)?)
        }
        // The payload goes on to the LUN as it was received (no copy).
        CallOp::Write => lun
            .write_bytes_gated(c.payload, c.offset, &gate)
            .map(|()| Bytes::new()),
        CallOp::WriteZeroes => lun
            .write_zeroes_gated(c.offset, c.len, &gate)
            .map(|()| Bytes::new()),
        CallOp::Flush => {
            gate.check().map_err(of_path)?;
            lun.flush().map(|()| Bytes::new())
        }
    };
    r.map_err(of_path)
}

fn read_len(c: &Call) -> Result<usize, Failure> {
    usize::try_from(c.len).map_err(|_| {
        failure(
            Refusal::BadRequest,
            libc::EINVAL,
            "read length out of range",
        )
    })
}

fn of_path(e: PathError) -> Failure {
    use volume::ErrorClass;
    let refusal = match (&e, e.class()) {
        (PathError::Fenced { .. }, _) => Refusal::SessionClosed,
        (_, ErrorClass::Path) => Refusal::Path,
        (_, ErrorClass::Media) => Refusal::Media,
        (_, ErrorClass::Fenced) => Refusal::Fenced,
    };
    failure(refusal, e.errno(), e.to_string())
}

/// The writer must be the VHD's valid writer at that generation in this node's replica;
/// a replica that has not seen the generation yet is waited for (bounded), then "not
/// yet" (the source asks again).
async fn check_writer(s: &Serve, w: Writer) -> Result<(), Failure> {
    // `fence.off` (FAILPOINTS, tests only): the broken build of tests/tests/chaos.rs lets
    // stale writes pass here too. This check is a fence of its own: a paused owner whose
    // LUN calls outlived their timeout is redirected on resume, and without this the
    // peer refused its stale writes, so the broken build only sometimes wrote stale.
    if volume::failpoint::value("fence.off").is_some() {
        return Ok(());
    }
    let hub = s.meta.events();
    if lock(&s.writers).holds(w, hub.applied_count()) {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        // Read before the query: an apply after this read invalidates what it confirms.
        let applied = hub.applied_count();
        let m = s
            .meta
            .member()
            .await
            .map_err(|e| failure(Refusal::NotYet, 0, e.to_string()))?;
        let view = match m
            .query_local(Query::Owner {
                vhd: csv_api::VhdId(w.vhd),
            })
            .await
        {
            Ok(QueryReply::Owner { owner }) => owner,
            Ok(_) => None,
            Err(e) => return Err(failure(Refusal::NotYet, 0, e.to_string())),
        };
        let behind = match &view {
            Some(v)
                if v.owner == Some(csv_api::NodeId(w.node))
                    && v.generation.0 == w.generation
                    && v.owner_valid =>
            {
                lock(&s.writers).confirm(w, applied);
                return Ok(());
            }
            Some(v) => v.generation.0 < w.generation,
            None => true,
        };
        if !behind {
            let held = view.map_or("nobody".to_string(), |v| {
                format!(
                    "{:?} at generation {} (valid: {})",
                    v.owner, v.generation.0, v.owner_valid
                )
            });
            return Err(failure(
                Refusal::Stale,
                0,
                format!(
                    "stale writer: vhd {} is held by {held}, not node {} at generation {}",
                    w.vhd, w.node, w.generation
                ),
            ));
        }
        if start.elapsed() >= CATCH_UP {
            return Err(failure(
                Refusal::NotYet,
                0,
                format!(
                    "this replica does not know generation {} of vhd {} yet",
                    w.generation, w.vhd
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(vhd: u64, node: u64, generation: u64) -> Writer {
        Writer {
            vhd,
            node,
            generation,
        }
    }

    #[test]
    fn a_confirmed_writer_holds_only_while_nothing_was_applied() {
        let mut c = WriterCache::default();
        assert!(!c.holds(w(1, 2, 3), 0), "nothing confirmed yet");
        c.confirm(w(1, 2, 3), 10);
        assert!(c.holds(w(1, 2, 3), 10));
        assert!(!c.holds(w(1, 2, 4), 10), "another generation");
        assert!(!c.holds(w(1, 3, 3), 10), "another node");
        assert!(!c.holds(w(1, 2, 3), 11), "applied since");
        // A confirmation as of a newer count forgets the older ones.
        c.confirm(w(5, 2, 1), 11);
        assert!(c.holds(w(5, 2, 1), 11));
        assert!(!c.holds(w(1, 2, 3), 11));
    }
}
