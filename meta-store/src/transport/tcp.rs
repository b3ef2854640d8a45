//! TCP transport. Each node dials every peer it sends to (one outbound connection per
//! peer, writing only) and accepts the peers' connections (reading only).
//!
//! * Outbound: a bounded queue per peer feeds one writer task; a full queue drops the
//!   envelope (Raft retransmits), so a slow or dead peer never blocks the node or the
//!   other peers. The writer reconnects with exponential backoff (bounded); envelopes that
//!   arrive while the peer is unreachable are dropped and counted.
//! * Every connection starts with a [`Hello`] frame: magic, protocol version, cluster id,
//!   sender and intended receiver. The acceptor checks all of them and afterwards delivers
//!   only envelopes whose `from` is the node that said hello, so raft messages are decoded
//!   only from peers that passed the handshake.
//! * With [`PeerSecurity::Tls`] every connection is mutual TLS under the cluster CA: the
//!   dialler checks the acceptor's certificate names the peer it dialled, and the acceptor
//!   checks the client certificate names the node its hello claims to be (a node holding
//!   another CA's certificate fails the handshake and never gets a frame decoded).
//!   [`PeerSecurity::Plaintext`] (tests) skips both.
//! * A partition filter (`block`/`unblock`) drops traffic to and from chosen peers, for
//!   fault tests.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use csv_tls::{PeerIdentity, PeerReadHalf, PeerSecurity, PeerWriteHalf};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::frame::{FrameError, read_frame, write_frame};
use super::{Inbox, Transport};
use crate::wire::{Envelope, HELLO_MAGIC, Hello, PROTOCOL_VERSION};

/// Largest hello frame accepted.
const MAX_HELLO_BYTES: usize = 1024;
/// Envelopes written before a flush when more are queued.
const WRITE_BATCH: usize = 256;

/// TCP transport settings.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// This node's id.
    pub node_id: u64,
    /// Cluster identity checked in the handshake.
    pub cluster_id: String,
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Envelopes queued per peer.
    pub queue_capacity: usize,
    /// Largest frame read or written (see `Config::required_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Deadline of a connection attempt including the hello.
    pub connect_timeout: Duration,
    /// Deadline of an inbound hello.
    pub handshake_timeout: Duration,
    /// Deadline of writing one batch; a peer that stops reading is disconnected.
    pub write_timeout: Duration,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Inbound connections served at once.
    pub max_inbound: usize,
    /// Address peers reach this node at, sent in every hello (`None`: not sent).
    pub advertise: Option<String>,
    /// Mutual TLS or plaintext (tests).
    pub security: PeerSecurity,
}

impl TcpConfig {
    /// Defaults for node `node_id` of `cluster_id` listening on `listen`, with frames up
    /// to `max_frame_bytes`.
    pub fn new(
        node_id: u64,
        cluster_id: impl Into<String>,
        listen: SocketAddr,
        max_frame_bytes: usize,
    ) -> Self {
        TcpConfig {
            node_id,
            cluster_id: cluster_id.into(),
            listen,
            queue_capacity: 4_096,
            max_frame_bytes,
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            max_inbound: 256,
            advertise: None,
            security: PeerSecurity::Plaintext,
        }
    }

    fn validate(&self) -> std::io::Result<()> {
        let bad = |m: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, m));
        if self.node_id == 0 || self.cluster_id.is_empty() {
            return bad("node id 0 or empty cluster id".into());
        }
        if self.queue_capacity == 0 || self.max_inbound == 0 {
            return bad("queue capacity and max inbound must be > 0".into());
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > crate::config::MAX_FRAME_CEILING {
            return bad(format!(
                "max frame {} outside 1 KiB..1 GiB",
                self.max_frame_bytes
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return bad("backoff bounds".into());
        }
        Ok(())
    }
}

/// Counters of a [`TcpTransport`].
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Envelopes written.
    pub sent: AtomicU64,
    /// Dropped: the peer's queue was full.
    pub dropped_full: AtomicU64,
    /// Dropped: the peer was unreachable (backing off).
    pub dropped_unreachable: AtomicU64,
    /// Dropped: no address for the peer.
    pub dropped_unknown: AtomicU64,
    /// Dropped by the partition filter.
    pub dropped_blocked: AtomicU64,
    /// Envelopes delivered to the inbox.
    pub received: AtomicU64,
    /// Inbound connections refused (handshake, limits, protocol violations).
    pub rejected: AtomicU64,
    /// Outbound connections made.
    pub connects: AtomicU64,
}

struct PeerLink {
    addr: String,
    tx: mpsc::Sender<Envelope>,
    task: AbortHandle,
}

struct Inner {
    cfg: TcpConfig,
    rt: Handle,
    inbox: OnceLock<Inbox>,
    peers: Mutex<HashMap<u64, PeerLink>>,
    blocked: Mutex<HashSet<u64>>,
    tasks: Mutex<Vec<AbortHandle>>,
    inbound: AtomicUsize,
    stats: TcpStats,
    local_addr: SocketAddr,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a plain map update that cannot leave the data
    // inconsistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The TCP [`Transport`].
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node", &self.inner.cfg.node_id)
            .field("listen", &self.inner.local_addr)
            .finish()
    }
}

impl TcpTransport {
    /// Binds the listener and starts accepting. Must run inside a tokio runtime, whose
    /// handle the transport keeps for all of its tasks.
    pub async fn bind(cfg: TcpConfig) -> std::io::Result<Self> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            cfg,
            rt: Handle::current(),
            inbox: OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            blocked: Mutex::new(HashSet::new()),
            tasks: Mutex::new(Vec::new()),
            inbound: AtomicUsize::new(0),
            stats: TcpStats::default(),
            local_addr,
        });
        let task = inner.rt.spawn(accept_loop(inner.clone(), listener));
        lock(&inner.tasks).push(task.abort_handle());
        Ok(TcpTransport { inner })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Counters.
    pub fn stats(&self) -> &TcpStats {
        &self.inner.stats
    }

    /// Drops all traffic to and from `peer` until [`TcpTransport::unblock`].
    pub fn block(&self, peer: u64) {
        lock(&self.inner.blocked).insert(peer);
    }

    /// Lifts [`TcpTransport::block`].
    pub fn unblock(&self, peer: u64) {
        lock(&self.inner.blocked).remove(&peer);
    }

    /// Lifts every block.
    pub fn unblock_all(&self) {
        lock(&self.inner.blocked).clear();
    }
}

impl Transport for TcpTransport {
    fn attach(&self, inbox: Inbox) {
        if self.inner.inbox.set(inbox).is_err() {
            tracing::warn!("transport already attached to a node");
        }
    }

    fn send(&self, env: Envelope) {
        let s = &self.inner.stats;
        if lock(&self.inner.blocked).contains(&env.to) {
            s.dropped_blocked.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let peers = lock(&self.inner.peers);
        match peers.get(&env.to) {
            Some(link) => {
                if link.tx.try_send(env).is_err() {
                    s.dropped_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                s.dropped_unknown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn set_peer(&self, id: u64, addr: Option<String>) {
        if id == self.inner.cfg.node_id {
            return;
        }
        let mut peers = lock(&self.inner.peers);
        match addr {
            None => {
                if let Some(old) = peers.remove(&id) {
                    old.task.abort();
                }
            }
            Some(addr) => {
                if peers.get(&id).is_some_and(|l| l.addr == addr) {
                    return;
                }
                if let Some(old) = peers.remove(&id) {
                    old.task.abort();
                }
                let (tx, rx) = mpsc::channel(self.inner.cfg.queue_capacity);
                let task =
                    self.inner
                        .rt
                        .spawn(peer_writer(self.inner.clone(), id, addr.clone(), rx));
                peers.insert(
                    id,
                    PeerLink {
                        addr,
                        tx,
                        task: task.abort_handle(),
                    },
                );
            }
        }
    }

    fn shutdown(&self) {
        for (_, link) in lock(&self.inner.peers).drain() {
            link.task.abort();
        }
        for t in lock(&self.inner.tasks).drain(..) {
            t.abort();
        }
    }
}

/// An outbound connection: the write half carries frames; the read half only watches
/// for the peer closing (the acceptor never writes), so a restarted or dead peer is
/// noticed at once instead of at the next failed write, which would lose that write.
#[derive(Debug)]
struct Outbound {
    w: BufWriter<PeerWriteHalf>,
    r: PeerReadHalf,
}

async fn connect(inner: &Inner, peer: u64, addr: &str) -> Result<Outbound, FrameError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let stream = inner.cfg.security.connect(stream, peer).await?;
    let (r, w) = stream.split();
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    write_hello(&mut w, &inner.cfg, peer).await?;
    Ok(Outbound { w, r })
}

/// Sends the hello frame on a fresh connection (any stream type).
pub async fn write_hello<W: AsyncWrite + Unpin>(
    w: &mut W,
    cfg: &TcpConfig,
    to: u64,
) -> Result<(), FrameError> {
    let hello = Hello {
        magic: HELLO_MAGIC,
        version: PROTOCOL_VERSION,
        cluster_id: cfg.cluster_id.clone(),
        from: cfg.node_id,
        to,
        from_addr: cfg.advertise.clone().unwrap_or_default(),
    };
    write_frame(w, &hello.encode_to_vec()).await?;
    w.flush().await?;
    Ok(())
}

async fn peer_writer(inner: Arc<Inner>, peer: u64, addr: String, mut rx: mpsc::Receiver<Envelope>) {
    let cfg = &inner.cfg;
    let s = &inner.stats;
    let mut conn: Option<Outbound> = None;
    let mut backoff = cfg.backoff_min;
    let mut retry_at = Instant::now();
    loop {
        let env = tokio::select! {
            biased;
            _ = async {
                let mut buf = [0u8; 64];
                match conn.as_mut() {
                    Some(c) => c.r.read(&mut buf).await,
                    None => std::future::pending().await,
                }
            } => {
                // End of stream, an error, or bytes the acceptor never sends: the
                // connection is over either way.
                tracing::debug!(node = cfg.node_id, peer, "peer closed the connection");
                conn = None;
                continue;
            }
            e = rx.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        if conn.is_none() {
            if Instant::now() < retry_at {
                s.dropped_unreachable.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match tokio::time::timeout(cfg.connect_timeout, connect(&inner, peer, &addr)).await {
                Ok(Ok(c)) => {
                    s.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = cfg.node_id, peer, %addr, "connected");
                    conn = Some(c);
                    backoff = cfg.backoff_min;
                }
                failed => {
                    tracing::debug!(node = cfg.node_id, peer, %addr, ?failed, "connect failed");
                    retry_at = Instant::now() + backoff;
                    backoff = (backoff * 2).min(cfg.backoff_max);
                    s.dropped_unreachable.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let w = &mut c.w;
        let max = cfg.max_frame_bytes;
        let res = tokio::time::timeout(cfg.write_timeout, async {
            let mut n = 0u64;
            let mut next = Some(env);
            while let Some(e) = next.take() {
                let bytes = e.encode_to_vec();
                if bytes.len() > max {
                    tracing::warn!(
                        peer,
                        len = bytes.len(),
                        max,
                        "envelope over the frame limit dropped"
                    );
                } else {
                    write_frame(w, &bytes).await?;
                    n += 1;
                }
                if n < WRITE_BATCH as u64 {
                    next = rx.try_recv().ok();
                }
            }
            w.flush().await?;
            Ok::<u64, FrameError>(n)
        })
        .await;
        match res {
            Ok(Ok(n)) => {
                s.sent.fetch_add(n, Ordering::Relaxed);
            }
            failed => {
                tracing::debug!(node = cfg.node_id, peer, ?failed, "connection lost");
                conn = None;
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if inner.inbound.load(Ordering::Relaxed) >= inner.cfg.max_inbound {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = stream.set_nodelay(true);
        inner.inbound.fetch_add(1, Ordering::Relaxed);
        let i2 = inner.clone();
        let task = inner.rt.spawn(async move {
            let secured = tokio::time::timeout(
                i2.cfg.handshake_timeout,
                i2.cfg.security.accept(stream),
            )
            .await;
            let res = match secured {
                Ok(Ok((s, who))) => serve_inbound(&i2, BufReader::new(s), &who).await,
                Ok(Err(e)) => {
                    i2.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    Err(InboundError::Refused(format!("TLS handshake: {e}")))
                }
                Err(_) => {
                    i2.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    Err(InboundError::HandshakeTimeout)
                }
            };
            if let Err(e) = res {
                tracing::debug!(node = i2.cfg.node_id, %remote, error = %e, "inbound connection closed");
            }
            i2.inbound.fetch_sub(1, Ordering::Relaxed);
        });
        let mut tasks = lock(&inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// Why an inbound connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// Framing or I/O.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The hello did not arrive in time.
    #[error("no hello within the handshake timeout")]
    HandshakeTimeout,
    /// The hello was refused.
    #[error("hello refused: {0}")]
    Refused(String),
    /// An envelope broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Checks a hello frame against this node's identity; returns the peer's node id.
pub fn check_hello(bytes: &[u8], cluster_id: &str, me: u64) -> Result<u64, InboundError> {
    let h = Hello::decode(bytes).map_err(|e| InboundError::Refused(format!("undecodable: {e}")))?;
    if h.magic != HELLO_MAGIC {
        return Err(InboundError::Refused(format!("magic {:#x}", h.magic)));
    }
    if h.version != PROTOCOL_VERSION {
        return Err(InboundError::Refused(format!(
            "protocol version {}",
            h.version
        )));
    }
    if h.cluster_id != cluster_id {
        return Err(InboundError::Refused(format!("cluster {:?}", h.cluster_id)));
    }
    if h.to != me || h.from == 0 || h.from == me {
        return Err(InboundError::Refused(format!(
            "from {} to {}",
            h.from, h.to
        )));
    }
    Ok(h.from)
}

async fn serve_inbound<R: AsyncRead + Unpin>(
    inner: &Inner,
    mut r: R,
    who: &PeerIdentity,
) -> Result<(), InboundError> {
    let cfg = &inner.cfg;
    let hello = match tokio::time::timeout(
        cfg.handshake_timeout,
        read_frame(&mut r, MAX_HELLO_BYTES),
    )
    .await
    {
        Ok(Ok(Some(b))) => b,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(InboundError::HandshakeTimeout),
    };
    let checked = check_hello(&hello, &cfg.cluster_id, cfg.node_id).and_then(|p| {
        who.check(p)
            .map(|()| p)
            .map_err(|e| InboundError::Refused(e.to_string()))
    });
    let peer = match checked {
        Ok(p) => p,
        Err(e) => {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    while let Some(frame) = read_frame(&mut r, cfg.max_frame_bytes).await? {
        let env = Envelope::decode(frame.as_slice())
            .map_err(|e| InboundError::Protocol(format!("undecodable envelope: {e}")))?;
        if env.from != peer || env.to != cfg.node_id {
            inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(InboundError::Protocol(format!(
                "envelope from {} to {} on the connection of {peer}",
                env.from, env.to
            )));
        }
        if lock(&inner.blocked).contains(&peer) {
            inner.stats.dropped_blocked.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(inbox) = inner.inbox.get()
            && inbox.deliver(env)
        {
            inner.stats.received.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tcp_tests.rs"]
mod tests;
