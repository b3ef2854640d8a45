//! `NbdPath`: the LUN through a SAN target spoken to over NBD (`nbdkit file`,
//! `qemu-nbd --shared`), as the synchronous [`LunPath`]. A small pool of `nbd::client`
//! connections runs on the path's own tokio runtime; every call waits at most
//! `io_timeout` (reconnects included); lost connections are re-established on demand with
//! bounded exponential backoff; requests are split at the target's maximum block size.
//! Flush semantics across connections: docs/design/041 §1.

use super::splice::{PipeData, SpliceReader};
use super::{
    LunPath, Op, PathError, PathFuture, WriteGate, check_range, validate_io_timeout,
    write_zeroes_by_writing,
};
use bytes::Bytes;
use nbd::client::{Client, ClientConfig, ClientError};
use nbd::proto::{TFLAG_SEND_FLUSH, TFLAG_SEND_WRITE_ZEROES};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most connections one path keeps.
pub const MAX_CONNECTIONS: usize = 16;
/// First reconnect delay after a failed attempt; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Largest WRITE_ZEROES request.
const ZERO_REQUEST: u64 = 1 << 30;
/// Slack past the deadline for the runtime to hand the answer over.
const HANDOVER_GRACE: Duration = Duration::from_millis(50);
/// Requests in flight per connection.
const MAX_IN_FLIGHT: usize = 64;

/// Where the SAN target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NbdTarget {
    Tcp {
        host: String,
        port: u16,
        export: String,
    },
    Unix {
        socket: PathBuf,
        export: String,
    },
}

impl NbdTarget {
    /// Parses `nbd://host[:port][/export]` or `nbd+unix:///[export]?socket=PATH`.
    pub fn parse(uri: &str) -> Result<NbdTarget, String> {
        if let Some(rest) = uri.strip_prefix("nbd+unix://") {
            let (path, query) = rest
                .split_once('?')
                .ok_or_else(|| format!("{uri}: nbd+unix needs ?socket=PATH"))?;
            let export = path.strip_prefix('/').unwrap_or(path).to_string();
            let socket = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("socket="))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("{uri}: nbd+unix needs ?socket=PATH"))?;
            return Ok(NbdTarget::Unix {
                socket: PathBuf::from(socket),
                export,
            });
        }
        let rest = uri
            .strip_prefix("nbd://")
            .ok_or_else(|| format!("{uri}: expected nbd:// or nbd+unix://"))?;
        let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h
                .split_once(']')
                .ok_or_else(|| format!("{uri}: unclosed IPv6 bracket"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{uri}: no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("{uri}: bad port {p:?}"))?,
            None => 10809,
        };
        Ok(NbdTarget::Tcp {
            host,
            port,
            export: export.to_string(),
        })
    }

    fn export(&self) -> &str {
        match self {
            NbdTarget::Tcp { export, .. } | NbdTarget::Unix { export, .. } => export,
        }
    }
}

impl std::fmt::Display for NbdTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdTarget::Tcp { host, port, export } if host.contains(':') => {
                write!(f, "nbd://[{host}]:{port}/{export}")
            }
            NbdTarget::Tcp { host, port, export } => write!(f, "nbd://{host}:{port}/{export}"),
            NbdTarget::Unix { socket, export } => {
                write!(f, "nbd+unix:///{export}?socket={}", socket.display())
            }
        }
    }
}

/// Settings of an [`NbdPath`].
#[derive(Debug, Clone)]
pub struct NbdOptions {
    /// Bound of every call, connection set-up included.
    pub io_timeout: Duration,
    /// Connections in the pool (1..=16).
    pub connections: usize,
}

impl Default for NbdOptions {
    fn default() -> Self {
        NbdOptions {
            io_timeout: super::DEFAULT_IO_TIMEOUT,
            connections: 2,
        }
    }
}

#[derive(Debug)]
struct SlotState {
    client: Option<Client>,
    /// Bumped at every new connection, so a failure reported for an old one is ignored.
    generation: u64,
    /// Writes completed on this connection since its last flush.
    dirty: bool,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The export as first negotiated.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    size: u64,
    flags: u16,
    max_block: u64,
}

/// A LUN reached through an NBD target.
#[derive(Debug)]
pub struct NbdPath {
    target: NbdTarget,
    desc: String,
    opts: NbdOptions,
    runtime: Option<tokio::runtime::Runtime>,
    slots: Vec<Mutex<SlotState>>,
    next: AtomicUsize,
    geometry: Geometry,
    /// Connections lost while they carried completed, unflushed writes.
    lost_writes: AtomicU64,
    /// Until when a write request that ended without an answer may still land.
    in_doubt_until: Mutex<Option<Instant>>,
    /// Reads spliced into pipes, for a target on a Unix socket that promises consistency
    /// across connections.
    splice: Option<SpliceReader>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

enum Failure {
    Client(ClientError),
    Deadline,
}

impl NbdPath {
    /// Connects (the first connection now, the others on demand).
    pub fn connect(target: NbdTarget, opts: NbdOptions) -> Result<NbdPath, PathError> {
        let desc = format!("nbd {target}");
        validate_io_timeout(opts.io_timeout).map_err(|detail| PathError::Unsupported {
            target: desc.clone(),
            detail,
        })?;
        if !(1..=MAX_CONNECTIONS).contains(&opts.connections) {
            return Err(PathError::Unsupported {
                target: desc,
                detail: format!("connections must be 1..={MAX_CONNECTIONS}"),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nbd-path")
            .enable_all()
            .build()
            .map_err(|e| PathError::from_io(&desc, Op::Connect, 0, &e, false))?;
        let slots = (0..opts.connections)
            .map(|_| {
                Mutex::new(SlotState {
                    client: None,
                    generation: 0,
                    dirty: false,
                    backoff: MIN_BACKOFF,
                    retry_at: None,
                    last_error: String::new(),
                })
            })
            .collect();
        let mut p = NbdPath {
            target,
            desc,
            opts,
            runtime: Some(runtime),
            slots,
            next: AtomicUsize::new(0),
            geometry: Geometry {
                size: 0,
                flags: 0,
                max_block: 0,
            },
            lost_writes: AtomicU64::new(0),
            in_doubt_until: Mutex::new(None),
            splice: None,
        };
        let deadline = Instant::now() + p.opts.io_timeout;
        let client = p.connect_slot(0, deadline)?.0;
        let info = client.info();
        p.geometry = Geometry {
            size: info.size,
            flags: info.flags,
            max_block: u64::from(info.max_block.clamp(4096, nbd::proto::MAX_PAYLOAD)),
        };
        if let NbdTarget::Unix { socket, export } = &p.target
            && info.has(nbd::proto::TFLAG_CAN_MULTI_CONN)
        {
            p.splice = Some(SpliceReader::new(
                socket.clone(),
                export.clone(),
                info.size,
                p.desc.clone(),
                p.opts.io_timeout,
            ));
        }
        Ok(p)
    }

    pub fn target(&self) -> &NbdTarget {
        &self.target
    }

    /// Runs `fut` on the path's runtime and waits for it until `deadline`.
    fn run<T, F>(&self, deadline: Instant, fut: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let Some(rt) = &self.runtime else {
            return Err(Failure::Client(ClientError::Closed));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let r = tokio::time::timeout_at(deadline.into(), fut).await;
            let _ = tx.send(r);
        });
        let wait = deadline.saturating_duration_since(Instant::now()) + HANDOVER_GRACE;
        match rx.recv_timeout(wait) {
            Ok(Ok(r)) => r.map_err(Failure::Client),
            Ok(Err(_)) | Err(_) => Err(Failure::Deadline),
        }
    }

    fn to_path_error(&self, op: Op, offset: u64, f: Failure) -> PathError {
        match f {
            Failure::Deadline | Failure::Client(ClientError::Timeout) => PathError::Timeout {
                target: self.desc.clone(),
                op,
                offset,
                after: self.opts.io_timeout,
            },
            Failure::Client(ClientError::Server { errno, message })
                if errno != nbd::Errno::Shutdown =>
            {
                PathError::Media {
                    target: self.desc.clone(),
                    op,
                    offset,
                    // NBD error values are Linux errno values.
                    errno: i32::try_from(errno.code()).ok(),
                    detail: format!("target answered {errno}: {message}"),
                }
            }
            Failure::Client(ClientError::Invalid(what)) => {
                PathError::media(&self.desc, op, offset, format!("invalid request: {what}"))
            }
            Failure::Client(e) => PathError::path(&self.desc, op, offset, e.to_string()),
        }
    }

    /// Connects slot `i` (its lock held by the caller through `st`).
    fn connect_locked(
        &self,
        st: &mut SlotState,
        deadline: Instant,
    ) -> Result<(Client, u64), PathError> {
        let now = Instant::now();
        if let Some(at) = st.retry_at
            && now < at
        {
            return Err(PathError::path(
                &self.desc,
                Op::Connect,
                0,
                format!("reconnect backing off after: {}", st.last_error),
            ));
        }
        let cfg = ClientConfig {
            export: self.target.export().to_string(),
            request_timeout: self.opts.io_timeout,
            max_in_flight: MAX_IN_FLIGHT,
            // A partitioned connection's unacknowledged requests are dropped by the
            // kernel after io_timeout, and closing resets it: nothing this node gave up
            // on is delivered after the partition heals (docs/design/042 §4).
            tcp_user_timeout: Some(self.opts.io_timeout),
            reset_on_close: true,
            ..ClientConfig::default()
        };
        let target = self.target.clone();
        let r = self.run(deadline, async move {
            match target {
                NbdTarget::Tcp { host, port, .. } => {
                    nbd::client::connect_tcp((host.as_str(), port), cfg).await
                }
                NbdTarget::Unix { socket, .. } => nbd::client::connect_unix(&socket, cfg).await,
            }
        });
        match r {
            Ok(c) => {
                if self.geometry.size != 0 && c.size() != self.geometry.size {
                    let e = format!(
                        "export size changed from {} to {}",
                        self.geometry.size,
                        c.size()
                    );
                    st.last_error = e.clone();
                    st.retry_at = Some(now + st.backoff);
                    return Err(PathError::media(&self.desc, Op::Connect, 0, e));
                }
                st.generation += 1;
                st.client = Some(c.clone());
                st.dirty = false;
                st.backoff = MIN_BACKOFF;
                st.retry_at = None;
                Ok((c, st.generation))
            }
            Err(f) => {
                let e = self.to_path_error(Op::Connect, 0, f);
                st.last_error = e.to_string();
                st.retry_at = Some(Instant::now() + st.backoff);
                st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
                // Whatever the target said, this path cannot reach the LUN now.
                Err(match e {
                    PathError::Media { detail, .. } => {
                        PathError::path(&self.desc, Op::Connect, 0, detail)
                    }
                    other => other,
                })
            }
        }
    }

    fn connect_slot(&self, i: usize, deadline: Instant) -> Result<(Client, u64), PathError> {
        let mut st = lock(&self.slots[i]);
        if let Some(c) = &st.client {
            return Ok((c.clone(), st.generation));
        }
        self.connect_locked(&mut st, deadline)
    }

    /// A live connection: the next one round-robin, else any live one, else a new one.
    fn pick(&self, deadline: Instant) -> Result<(usize, Client, u64), PathError> {
        if let Some(live) = self.pick_live() {
            return Ok(live);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let (c, g) = self.connect_slot(start, deadline)?;
        Ok((start, c, g))
    }

    /// Drops a connection after a path failure seen on it.
    fn discard(&self, i: usize, generation: u64) {
        let mut st = lock(&self.slots[i]);
        if st.generation != generation {
            return;
        }
        if let Some(c) = st.client.take() {
            // A target that promises multi-conn consistency makes every write it completed
            // on any connection durable at a flush on any other (the NBD spec's
            // CAN_MULTI_CONN): losing the connection loses nothing it answered. Other
            // targets may keep unflushed data per connection (041 §1).
            if st.dirty && !c.info().has(nbd::proto::TFLAG_CAN_MULTI_CONN) {
                self.lost_writes.fetch_add(1, Ordering::AcqRel);
            }
            st.dirty = false;
            if let Some(rt) = &self.runtime {
                let timeout = self.opts.io_timeout;
                rt.spawn(async move {
                    let _ = tokio::time::timeout(timeout, c.disconnect()).await;
                });
            }
        }
    }

    fn mark_dirty(&self, i: usize, generation: u64) {
        let mut st = lock(&self.slots[i]);
        if st.generation == generation && st.client.is_some() {
            st.dirty = true;
        }
    }

    /// One request on a live connection; path failures drop that connection.
    fn call<T, F, Fut>(&self, op: Op, offset: u64, deadline: Instant, f: F) -> Result<T, PathError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
    {
        let (i, client, generation) = self.pick(deadline)?;
        let r = self.run(deadline, f(client));
        self.settle(op, offset, deadline, (i, generation), r)
    }

    /// What a request on connection `conn` (slot, generation) that ended with `r` means
    /// for the path: a completed write dirties the connection; a path failure drops it
    /// (and leaves a write in doubt until the target's own bound).
    fn settle<T>(
        &self,
        op: Op,
        offset: u64,
        deadline: Instant,
        conn: (usize, u64),
        r: Result<T, Failure>,
    ) -> Result<T, PathError> {
        let (i, generation) = conn;
        match r {
            Ok(v) => {
                if matches!(op, Op::Write | Op::WriteZeroes) {
                    self.mark_dirty(i, generation);
                }
                Ok(v)
            }
            Err(fail) => {
                let e = self.to_path_error(op, offset, fail);
                if e.is_path_failure() {
                    if matches!(op, Op::Write | Op::WriteZeroes) {
                        // No answer: it may still land, until the target's own bound.
                        self.note_in_doubt(deadline + self.opts.io_timeout);
                    }
                    self.discard(i, generation);
                }
                Err(e)
            }
        }
    }

    /// A connection that is up now, round-robin (never connects, so never blocks).
    fn pick_live(&self) -> Option<(usize, Client, u64)> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).find_map(|k| {
            let i = (start + k) % n;
            let st = lock(&self.slots[i]);
            st.client.as_ref().map(|c| (i, c.clone(), st.generation))
        })
    }

    /// One read request of `len` (at most the target's largest block) at `off`.
    fn read_chunk(&self, off: u64, len: usize, deadline: Instant) -> Result<Bytes, PathError> {
        let n = len as u32;
        let data = self.call(Op::Read, off, deadline, move |c| async move {
            c.read(off, n).await
        })?;
        self.check_read_len(off, len, data)
    }

    fn check_read_len(&self, off: u64, len: usize, data: Bytes) -> Result<Bytes, PathError> {
        if data.len() != len {
            return Err(PathError::media(
                &self.desc,
                Op::Read,
                off,
                format!("read returned {} of {len} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    fn note_in_doubt(&self, until: Instant) {
        let mut g = lock(&self.in_doubt_until);
        if g.is_none_or(|t| t < until) {
            *g = Some(until);
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.opts.io_timeout
    }
}

/// `fut` until `deadline`, on the caller's runtime.
async fn bounded<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, Failure> {
    match tokio::time::timeout_at(deadline.into(), fut).await {
        Ok(r) => r.map_err(Failure::Client),
        Err(_) => Err(Failure::Deadline),
    }
}

impl Drop for NbdPath {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the path inside another runtime is fine.
            rt.shutdown_background();
        }
    }
}

impl LunPath for NbdPath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        check_range(self, Op::Read, offset, buf.len() as u64, self.geometry.size)?;
        let deadline = self.deadline();
        let max = self.geometry.max_block as usize;
        for (k, chunk) in buf.chunks_mut(max).enumerate() {
            let off = offset + (k * max) as u64;
            let data = self.read_chunk(off, chunk.len(), deadline)?;
            chunk.copy_from_slice(&data);
        }
        Ok(())
    }

    /// One request when `len` fits the target's largest block: its buffer as it came.
    fn read_bytes(&self, offset: u64, len: usize) -> Result<Bytes, PathError> {
        let max = self.geometry.max_block as usize;
        if len > max {
            let mut buf = vec![0u8; len];
            self.read_at(&mut buf, offset)?;
            return Ok(Bytes::from(buf));
        }
        check_range(self, Op::Read, offset, len as u64, self.geometry.size)?;
        self.read_chunk(offset, len, self.deadline())
    }

    /// One request on a connection that is up, polled by the caller's runtime (the
    /// connection's socket stays driven by the path's runtime): no blocking thread and
    /// no hand-over to the path's threads. A read that needs a connection made first, or
    /// more than one request, takes the blocking way.
    fn read_bytes_async(&self, offset: u64, len: usize) -> Option<PathFuture<'_, Bytes>> {
        if len as u64 > self.geometry.max_block
            || check_range(self, Op::Read, offset, len as u64, self.geometry.size).is_err()
        {
            return None;
        }
        let (i, client, generation) = self.pick_live()?;
        let deadline = self.deadline();
        Some(Box::pin(async move {
            let r = bounded(deadline, client.read(offset, len as u32)).await;
            let data = self.settle(Op::Read, offset, deadline, (i, generation), r)?;
            self.check_read_len(offset, len, data)
        }))
    }

    /// Through the path's [`SpliceReader`] (a target on a Unix socket with multi-conn
    /// consistency), for reads of the sizes it takes.
    fn read_spliced(&self, offset: u64, len: usize) -> Option<PathFuture<'_, Option<PipeData>>> {
        let splice = self.splice.as_ref().filter(|s| s.fits(len))?;
        check_range(self, Op::Read, offset, len as u64, self.geometry.size).ok()?;
        Some(Box::pin(splice.read(offset, len)))
    }

    /// One request on a connection that is up (as [`Self::read_bytes_async`]); the gate is
    /// asked when the future first runs, right before the request is written.
    fn write_bytes_async<'a>(
        &'a self,
        data: Bytes,
        offset: u64,
        gate: &'a (dyn WriteGate + Sync),
    ) -> Option<PathFuture<'a, ()>> {
        let len = data.len() as u64;
        if len == 0
            || len > self.geometry.max_block
            || check_range(self, Op::Write, offset, len, self.geometry.size).is_err()
        {
            return None;
        }
        let (i, client, generation) = self.pick_live()?;
        Some(Box::pin(async move {
            gate.check()?;
            let deadline = self.deadline();
            let r = bounded(deadline, client.write(offset, &data, false)).await;
            self.settle(Op::Write, offset, deadline, (i, generation), r)
        }))
    }

    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        // The request outlives a caller that gave up at its deadline: it owns its data.
        self.write_bytes_gated(Bytes::copy_from_slice(buf), offset, gate)
    }

    /// One NBD request per chunk (slices of `data`, not copies); the gate is asked before
    /// each, and each request's deadline is `io_timeout` from that check.
    fn write_bytes_gated(
        &self,
        data: Bytes,
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        check_range(
            self,
            Op::Write,
            offset,
            data.len() as u64,
            self.geometry.size,
        )?;
        let max = self.geometry.max_block as usize;
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(max);
            let off = offset + done as u64;
            let chunk = data.slice(done..done + n);
            gate.check()?;
            let deadline = self.deadline();
            self.call(Op::Write, off, deadline, move |c| async move {
                c.write(off, &chunk, false).await
            })?;
            done += n;
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), PathError> {
        let deadline = self.deadline();
        if self.geometry.flags & TFLAG_SEND_FLUSH != 0 {
            let mut flushed_any = false;
            for i in 0..self.slots.len() {
                let (client, generation) = {
                    let mut st = lock(&self.slots[i]);
                    match st.client.clone() {
                        Some(c) if st.dirty => {
                            st.dirty = false;
                            (c, st.generation)
                        }
                        _ => continue,
                    }
                };
                flushed_any = true;
                if let Err(fail) = self.run(deadline, async move { client.flush().await }) {
                    let e = self.to_path_error(Op::Flush, 0, fail);
                    // The writes it covered are not known to be durable.
                    self.mark_dirty(i, generation);
                    if e.is_path_failure() {
                        self.discard(i, generation);
                    }
                    return Err(e);
                }
            }
            if !flushed_any {
                self.call(Op::Flush, 0, deadline, |c| async move { c.flush().await })?;
            }
        }
        Ok(())
    }

    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        check_range(self, Op::WriteZeroes, offset, len, self.geometry.size)?;
        if self.geometry.flags & TFLAG_SEND_WRITE_ZEROES == 0 {
            return write_zeroes_by_writing(self, offset, len, gate);
        }
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(ZERO_REQUEST) as u32;
            let off = offset + done;
            gate.check()?;
            let deadline = self.deadline();
            self.call(Op::WriteZeroes, off, deadline, move |c| async move {
                c.write_zeroes(off, n, nbd::ZeroFlags::default()).await
            })?;
            done += u64::from(n);
        }
        Ok(())
    }

    fn lost_writes(&self) -> u64 {
        self.lost_writes.load(Ordering::Acquire)
    }

    fn quiet_at(&self) -> Option<Instant> {
        *lock(&self.in_doubt_until)
    }

    fn size(&self) -> Result<u64, PathError> {
        Ok(self.geometry.size)
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_targets() {
        assert_eq!(
            NbdTarget::parse("nbd://127.0.0.1:10810/lun").unwrap(),
            NbdTarget::Tcp {
                host: "127.0.0.1".into(),
                port: 10810,
                export: "lun".into()
            }
        );
        assert_eq!(
            NbdTarget::parse("nbd://san").unwrap(),
            NbdTarget::Tcp {
                host: "san".into(),
                port: 10809,
                export: String::new()
            }
        );
        assert_eq!(
            NbdTarget::parse("nbd://[::1]:99/x").unwrap(),
            NbdTarget::Tcp {
                host: "::1".into(),
                port: 99,
                export: "x".into()
            }
        );
        assert_eq!(
            NbdTarget::parse("nbd+unix:///lun?socket=/run/s.sock").unwrap(),
            NbdTarget::Unix {
                socket: "/run/s.sock".into(),
                export: "lun".into()
            }
        );
        for bad in [
            "http://x",
            "nbd://:1/x",
            "nbd://h:port/x",
            "nbd+unix:///x",
            "nbd+unix:///x?socket=",
            "nbd://[::1/x",
        ] {
            assert!(NbdTarget::parse(bad).is_err(), "{bad}");
        }
        let t = NbdTarget::parse("nbd+unix:///lun?socket=/s").unwrap();
        assert_eq!(NbdTarget::parse(&t.to_string()).unwrap(), t);
    }
}
