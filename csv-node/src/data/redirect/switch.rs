//! `SwitchPath`: the node's LUN handle when redirection is on (docs/design/070 §2, §4).
//! It implements [`LunPath`] and sends each call down the route the driver set: the
//! node's own path, a peer's session, or nowhere yet (hold: the call waits). A call that
//! fails with a path error is not answered: it is reported to the driver and waits for
//! a later route (or, on the same direct route, for the failed path to be quiet), so a
//! write is never reissued while an earlier attempt may still land. Only media errors,
//! fence refusals and the pause limit reach the caller.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redirector::wire::{MAX_CALL, Writer as WireWriter};
use tokio::sync::mpsc;
use volume::LunPath;
use volume::path::{Op, PathError, WriteGate};

use super::link::{LinkError, LunCall, PeerLink};
use crate::sync::lock;

/// Pause between direct retries on a path that failed fast.
const DIRECT_RETRY: Duration = Duration::from_millis(10);
/// Pause before asking a peer again that answered "not yet".
const NOT_YET_RETRY: Duration = Duration::from_millis(20);

/// Where calls go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    Direct,
    /// Calls wait (quiescing, paused, failing back).
    Hold,
    Peer(Arc<dyn PeerLink>),
}

/// What a call tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// A call on the node's own path failed with a path error.
    PathError { timeout: bool },
    /// A peer's session failed (transport error, no answer in time, refused).
    PeerFailed { session: u64 },
}

#[derive(Debug)]
struct Inner {
    route: Route,
    /// Bumped at every route change.
    epoch: u64,
}

/// The state the driver and the calls share.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
    reports: mpsc::UnboundedSender<Report>,
    direct_in_flight: AtomicUsize,
    peer_in_flight: AtomicUsize,
    /// Until when calls sent on a lost session may still land (ms since `origin`, 0:
    /// none in doubt).
    peer_doubt_ms: AtomicU64,
    origin: Instant,
    pause_limit: Duration,
    /// Bytes forwarded through peers (for `volume status`).
    pub(crate) redirected_bytes: AtomicU64,
}

impl Shared {
    pub(crate) fn new(pause_limit: Duration) -> (Arc<Shared>, mpsc::UnboundedReceiver<Report>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Shared {
            inner: Mutex::new(Inner {
                route: Route::Direct,
                epoch: 0,
            }),
            changed: Condvar::new(),
            reports: tx,
            direct_in_flight: AtomicUsize::new(0),
            peer_in_flight: AtomicUsize::new(0),
            peer_doubt_ms: AtomicU64::new(0),
            origin: Instant::now(),
            pause_limit,
            redirected_bytes: AtomicU64::new(0),
        };
        (Arc::new(s), rx)
    }

    /// Sets the route (the driver, after the core's decision).
    pub(crate) fn set_route(&self, route: Route) {
        let mut g = lock(&self.inner);
        g.route = route;
        g.epoch += 1;
        drop(g);
        self.changed.notify_all();
    }

    pub(crate) fn route(&self) -> Route {
        lock(&self.inner).route.clone()
    }

    pub(crate) fn direct_in_flight(&self) -> usize {
        self.direct_in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn peer_in_flight(&self) -> usize {
        self.peer_in_flight.load(Ordering::Acquire)
    }

    /// Records that calls sent through a lost session may land until `until`.
    pub(crate) fn peer_in_doubt_until(&self, until: Instant) {
        let ms = until.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        self.peer_doubt_ms.fetch_max(ms, Ordering::AcqRel);
    }

    pub(crate) fn peer_quiet_at(&self) -> Option<Instant> {
        let ms = self.peer_doubt_ms.load(Ordering::Acquire);
        let t = self.origin + Duration::from_millis(ms);
        (ms > 0 && t > Instant::now()).then_some(t)
    }

    fn report(&self, r: Report) {
        let _ = self.reports.send(r);
    }
}

/// Counts a call in flight on a route until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The LUN path that follows the driver's route.
#[derive(Debug)]
pub(crate) struct SwitchPath {
    direct: Arc<dyn LunPath>,
    shared: Arc<Shared>,
    size: u64,
}

impl SwitchPath {
    pub(crate) fn new(direct: Arc<dyn LunPath>, shared: Arc<Shared>, size: u64) -> SwitchPath {
        SwitchPath {
            direct,
            shared,
            size,
        }
    }

    /// Waits for a route to use: not `Hold`, and after a failure on route epoch
    /// `failed_at`, a newer route or (the same direct route) the failed path quiet.
    fn wait_route(
        &self,
        deadline: Instant,
        failed_at: Option<u64>,
        last: &Option<PathError>,
        op: Op,
        offset: u64,
    ) -> Result<(Route, u64), PathError> {
        let mut g = lock(&self.shared.inner);
        loop {
            let now = Instant::now();
            let mut wake = deadline;
            let usable = match (&g.route, failed_at) {
                (Route::Hold, _) => false,
                (_, Some(e)) if e != g.epoch => true,
                (_, None) => true,
                (Route::Direct, Some(_)) => match self.direct.quiet_at() {
                    Some(t) if t > now => {
                        wake = wake.min(t);
                        false
                    }
                    _ => true,
                },
                // The driver replaces a failed peer: wait for the new route.
                (Route::Peer(_), Some(_)) => false,
            };
            if usable {
                return Ok((g.route.clone(), g.epoch));
            }
            if now >= deadline {
                return Err(last.clone().unwrap_or_else(|| {
                    PathError::path(
                        &self.describe(),
                        op,
                        offset,
                        format!(
                            "no path to the LUN and no peer to redirect to for {:?}",
                            self.shared.pause_limit
                        ),
                    )
                }));
            }
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            g = match self.shared.changed.wait_timeout(g, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Runs one call down the current route until it is answered (see the module
    /// documentation).
    fn run<T>(
        &self,
        op: Op,
        offset: u64,
        mut direct: impl FnMut(&dyn LunPath) -> Result<T, PathError>,
        mut peer: impl FnMut(&dyn PeerLink) -> Result<T, LinkError>,
    ) -> Result<T, PathError> {
        if volume::nonblocking::active() {
            // On a runtime worker: one direct attempt, or nothing (the caller runs the
            // request again in the blocking pool, where this call may wait).
            const WHAT: &str = "a LUN path being switched";
            if !matches!(self.shared.route(), Route::Direct) {
                return Err(PathError::WouldBlock { what: WHAT });
            }
            let r = {
                let _f = InFlight::new(&self.shared.direct_in_flight);
                direct(&*self.direct)
            };
            return match r {
                Err(e) if e.is_path_failure() => {
                    let timeout = matches!(e, PathError::Timeout { .. });
                    self.shared.report(Report::PathError { timeout });
                    Err(PathError::WouldBlock { what: WHAT })
                }
                r => r,
            };
        }
        let deadline = Instant::now() + self.shared.pause_limit;
        let mut failed_at = None;
        let mut last: Option<PathError> = None;
        loop {
            let (route, epoch) = self.wait_route(deadline, failed_at, &last, op, offset)?;
            match route {
                Route::Hold => {}
                Route::Direct => {
                    if failed_at == Some(epoch) {
                        std::thread::sleep(DIRECT_RETRY);
                    }
                    let r = {
                        let _f = InFlight::new(&self.shared.direct_in_flight);
                        direct(&*self.direct)
                    };
                    match r {
                        Err(e) if e.is_path_failure() => {
                            let timeout = matches!(e, PathError::Timeout { .. });
                            self.shared.report(Report::PathError { timeout });
                            failed_at = Some(epoch);
                            last = Some(e);
                        }
                        r => return r,
                    }
                }
                Route::Peer(link) => {
                    let r = {
                        let _f = InFlight::new(&self.shared.peer_in_flight);
                        peer(&*link)
                    };
                    match r {
                        Ok(v) => return Ok(v),
                        Err(LinkError::NotYet) => std::thread::sleep(NOT_YET_RETRY),
                        Err(LinkError::Refused(e)) => return Err(e),
                        Err(LinkError::Lost(detail)) => {
                            tracing::warn!(
                                peer = link.peer(),
                                session = link.session(),
                                "redirected call failed: {detail}"
                            );
                            self.shared.report(Report::PeerFailed {
                                session: link.session(),
                            });
                            failed_at = Some(epoch);
                            last = Some(PathError::path(&self.describe(), op, offset, detail));
                        }
                    }
                }
            }
        }
    }
}

/// The writer to send with a forwarded write: the gate's.
fn writer_of(gate: &dyn WriteGate) -> Option<WireWriter> {
    gate.writer().map(|w| WireWriter {
        vhd: w.vhd,
        node: w.node,
        generation: w.generation,
    })
}

impl LunPath for SwitchPath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        let len = buf.len();
        let shared = &self.shared;
        let buf = RefCell::new(buf);
        self.run(
            Op::Read,
            offset,
            |d| d.read_at(&mut buf.borrow_mut(), offset),
            |p| {
                let mut out = buf.borrow_mut();
                let mut done = 0usize;
                while done < len {
                    let n = (len - done).min(MAX_CALL);
                    let data = p.call(LunCall::Read {
                        offset: offset + done as u64,
                        len: n as u64,
                    })?;
                    if data.len() != n {
                        return Err(LinkError::Lost(format!(
                            "peer answered {} bytes for a read of {n}",
                            data.len()
                        )));
                    }
                    out[done..done + n].copy_from_slice(&data);
                    done += n;
                }
                shared
                    .redirected_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                Ok(())
            },
        )
    }

    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        let shared = &self.shared;
        self.run(
            Op::Write,
            offset,
            |d| d.write_at_gated(buf, offset, gate),
            |p| {
                for (i, chunk) in buf.chunks(MAX_CALL).enumerate() {
                    gate.check().map_err(LinkError::Refused)?;
                    p.call(LunCall::Write {
                        offset: offset + (i * MAX_CALL) as u64,
                        data: Bytes::copy_from_slice(chunk),
                        writer: writer_of(gate),
                    })?;
                }
                shared
                    .redirected_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                Ok(())
            },
        )
    }

    fn flush(&self) -> Result<(), PathError> {
        self.run(
            Op::Flush,
            0,
            |d| d.flush(),
            |p| p.call(LunCall::Flush).map(drop),
        )
    }

    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        self.run(
            Op::WriteZeroes,
            offset,
            |d| d.write_zeroes_gated(offset, len, gate),
            |p| {
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(MAX_CALL as u64);
                    gate.check().map_err(LinkError::Refused)?;
                    p.call(LunCall::WriteZeroes {
                        offset: offset + done,
                        len: n,
                        writer: writer_of(gate),
                    })?;
                    done += n;
                }
                Ok(())
            },
        )
    }

    fn size(&self) -> Result<u64, PathError> {
        Ok(self.size)
    }

    fn describe(&self) -> String {
        self.direct.describe()
    }

    fn lost_writes(&self) -> u64 {
        self.direct.lost_writes()
    }

    fn quiet_at(&self) -> Option<Instant> {
        match (self.direct.quiet_at(), self.shared.peer_quiet_at()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Direct on a local path: as that path; otherwise a network is in the way.
    fn may_block(&self) -> bool {
        !matches!(self.shared.route(), Route::Direct) || self.direct.may_block()
    }
}
