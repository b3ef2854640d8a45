//! The lease machinery of one node ([`Leases`]): the fence guard, the coordinator's
//! liveness tracker, the fence history, the hand-off requests to the data path, and the
//! watchdog feed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use csv_api::{NodeId, VhdId};
use lock_manager::{
    FenceEvent, FenceGuard, LeaseTiming, LivenessTracker, LockError, Mode, Outcome, Request,
};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::clock::wall_ms_of;
use super::watchdog;
use crate::meta::now_unix_ms;
use crate::metrics::Metrics;
use crate::sync::lock;
use crate::task::Tasks;

/// Proposal results buffered for the driver.
pub const MAX_RESULTS: usize = 1024;
/// Lost holds and fence transitions remembered for `owner show` / `node liveness`.
pub const MAX_FENCE_HISTORY: usize = 256;
/// Longest the data path may take to let a VHD go before a hand-off (flush and close
/// of the VHD's users).
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// A lock command's replicated result.
pub type LockResult = Result<Outcome, LockError>;

/// Asked of the data path before this node hands a VHD it writes to another node
/// (`owner move`): flush what it buffered for the VHD and stop issuing writes, then
/// answer `Ok`. An `Err`, or no answer within [`HANDOFF_TIMEOUT`], aborts the hand-off
/// (the fence stays open, nothing is proposed).
#[derive(Debug)]
pub struct HandoffRequest {
    pub vhd: VhdId,
    pub done: oneshot::Sender<Result<(), HandoffRefused>>,
}

/// Why the data path did not let a VHD go.
pub type HandoffRefused = Box<dyn std::error::Error + Send + Sync>;

/// Hand-off requests waiting for the data path.
const MAX_HANDOFFS: usize = 64;

/// A hold this node lost with its epoch (shown by `owner show` and `node liveness`).
#[derive(Debug, Clone, Serialize)]
pub struct LostRecord {
    pub vhd: VhdId,
    /// How it was held.
    pub mode: Mode,
    pub generation: u64,
    /// The epoch it was held under.
    pub old_epoch: Option<u64>,
    /// The node's epoch after the loss.
    pub new_epoch: Option<u64>,
    /// When the loss was noticed (Unix ms).
    pub at_unix_ms: u64,
}

/// Fence history of this node since it started.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FenceRecord {
    /// Times the lease lapsed.
    pub lapses: u64,
    /// When the fence last closed by lapse (Unix ms of the local deadline).
    pub last_lapse_unix_ms: Option<u64>,
    /// When it last reopened after a lapse (Unix ms).
    pub last_reopen_unix_ms: Option<u64>,
    /// Holds lost with the epoch, oldest first (bounded by `MAX_FENCE_HISTORY`).
    pub lost: VecDeque<LostRecord>,
    /// Hand-offs that were refused or failed and were resolved by `Reclaim`.
    pub failed_handoffs: u64,
}

/// The lease machinery of one node.
pub struct Leases {
    pub(super) node: NodeId,
    pub(super) timing: LeaseTiming,
    pub(super) guard: Mutex<FenceGuard>,
    pub(super) tracker: Mutex<LivenessTracker>,
    pub(super) record: Mutex<FenceRecord>,
    pub(super) handoff_tx: mpsc::Sender<HandoffRequest>,
    pub(super) handoff_rx: Mutex<Option<mpsc::Receiver<HandoffRequest>>>,
    /// Notified after every applied lock command (waiters of `owner move`).
    pub(super) applied: Notify,
    pub(super) res_tx: mpsc::Sender<(u64, LockResult)>,
    pub(super) res_rx: Mutex<Option<mpsc::Receiver<(u64, LockResult)>>>,
    /// Set when the node leaves at shutdown: the driver stops renewing (a renewal at
    /// the pre-`Leave` epoch would fail and make it register again).
    pub(super) stopping: std::sync::atomic::AtomicBool,
    pub(super) stop: Notify,
    pub(super) watchdog: Mutex<Option<watchdog::Watchdog>>,
    pub(super) lock_events: Mutex<Option<mpsc::Receiver<crate::meta::LockEvent>>>,
    pub(super) tasks: Tasks,
    /// Renewals and fence closures are counted here.
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &self.node)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl Leases {
    /// The lease machinery of node `node` with `timing`, fed the applied lock commands
    /// `lock_events`; its background proposals run on `tasks`.
    pub fn new(
        node: NodeId,
        timing: LeaseTiming,
        lock_events: mpsc::Receiver<crate::meta::LockEvent>,
        tasks: Tasks,
        metrics: Arc<Metrics>,
    ) -> Leases {
        let (handoff_tx, handoff_rx) = mpsc::channel(MAX_HANDOFFS);
        let (res_tx, res_rx) = mpsc::channel(MAX_RESULTS);
        Leases {
            node,
            timing,
            guard: Mutex::new(FenceGuard::new(node, &timing)),
            tracker: Mutex::new(LivenessTracker::new(&timing)),
            record: Mutex::new(FenceRecord::default()),
            handoff_tx,
            handoff_rx: Mutex::new(Some(handoff_rx)),
            applied: Notify::new(),
            res_tx,
            res_rx: Mutex::new(Some(res_rx)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Notify::new(),
            watchdog: Mutex::new(None),
            lock_events: Mutex::new(Some(lock_events)),
            tasks,
            metrics,
        }
    }

    /// This node.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Hands the started watchdog to the lease machinery, which arms it from now on.
    pub fn set_watchdog(&self, w: watchdog::Watchdog) {
        *lock(&self.watchdog) = Some(w);
    }

    /// Tells the watchdog (if any) the current kill time: the local lease deadline plus
    /// half of `io_timeout` while a write hold exists, none otherwise. Cheap when
    /// nothing changed; called by the driver after every event.
    pub(crate) fn feed_watchdog(&self) {
        use watchdog::Arm;
        let mut w = lock(&self.watchdog);
        let Some(wd) = w.as_mut() else {
            return;
        };
        let arm = self.kill_time().map_or(Arm::Off, Arm::At);
        if let Err(e) = wd.set(arm) {
            tracing::error!(
                pid = wd.pid(),
                "the lease watchdog is gone ({e}); this node runs unguarded"
            );
            *w = None;
        }
    }

    /// When this node must be gone if no renewal is confirmed before (on
    /// `CLOCK_BOOTTIME`): the local lease deadline plus half of `io_timeout` while it
    /// holds a write hold, `None` otherwise (a lapsed node without a write hold harms
    /// nobody). The lease watchdog is armed with it, and the systemd watchdog pings stop
    /// early enough that systemd's kill comes no later (docs/design/100 §2).
    pub fn kill_time(&self) -> Option<lock_manager::Time> {
        let g = self.guard();
        match g.deadline() {
            Some(d) if g.holds().values().any(|h| h.mode == Mode::Write) => {
                Some(d.saturating_add(self.timing.io_timeout / 2))
            }
            _ => None,
        }
    }

    /// Stops the driver (no more renewals, registrations or expiries from this node).
    pub(crate) fn stop_driver(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        self.stop.notify_one();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The derived timings.
    pub fn timing(&self) -> &LeaseTiming {
        &self.timing
    }

    pub(crate) fn guard(&self) -> MutexGuard<'_, FenceGuard> {
        lock(&self.guard)
    }

    /// Write holds this node has now.
    pub(crate) fn write_holds(&self) -> usize {
        self.guard()
            .holds()
            .values()
            .filter(|h| h.mode == Mode::Write)
            .count()
    }

    pub(crate) fn tracker(&self) -> MutexGuard<'_, LivenessTracker> {
        lock(&self.tracker)
    }

    pub(crate) fn record(&self) -> MutexGuard<'_, FenceRecord> {
        lock(&self.record)
    }

    /// The hand-off requests, for the data path that serves them (`None` once taken).
    pub fn take_handoff_requests(&self) -> Option<mpsc::Receiver<HandoffRequest>> {
        lock(&self.handoff_rx).take()
    }

    /// Asks the data path to let `vhd` go before a hand-off. Nobody serving the requests
    /// (a node without a data path) means nobody uses the VHD.
    pub(super) async fn let_go(&self, vhd: VhdId) -> Result<(), HandoffRefused> {
        if lock(&self.handoff_rx).is_some() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        let asked = async {
            self.handoff_tx
                .send(HandoffRequest { vhd, done })
                .await
                .map_err(|_| HandoffRefused::from("the data path stopped"))?;
            answer
                .await
                .map_err(|_| HandoffRefused::from("the data path dropped the request"))?
        };
        tokio::time::timeout(HANDOFF_TIMEOUT, asked)
            .await
            .map_err(|_| HandoffRefused::from(format!("no answer within {HANDOFF_TIMEOUT:?}")))?
    }

    /// Logs and records fence events; returns the follow-up requests they call for
    /// (releases of grants the guard refused to install).
    pub(crate) fn note_events(&self, events: Vec<FenceEvent>) -> Vec<Request> {
        let mut follow = Vec::new();
        for ev in events {
            match ev {
                FenceEvent::Lapsed { deadline } => {
                    let at = wall_ms_of(deadline);
                    tracing::warn!(
                        closed_at_unix_ms = at,
                        "lease lapsed: every local write fence is closed until a renewal is confirmed"
                    );
                    self.metrics.fence_closed("lease_lapse", 1);
                    let mut r = self.record();
                    r.lapses += 1;
                    r.last_lapse_unix_ms = Some(at);
                }
                FenceEvent::Reopened { deadline } => {
                    tracing::info!(%deadline, "lease renewed at the same epoch: fences reopen");
                    self.record().last_reopen_unix_ms = Some(now_unix_ms());
                }
                FenceEvent::OwnershipLost {
                    old_epoch,
                    new_epoch,
                    holds,
                } => {
                    let at = now_unix_ms();
                    tracing::warn!(
                        old_epoch = ?old_epoch.map(|e| e.0),
                        new_epoch = ?new_epoch.map(|e| e.0),
                        lost = ?holds.iter().map(|h| (h.vhd.0, h.generation.0)).collect::<Vec<_>>(),
                        "ownership lost with the epoch: these holds are gone and are not retaken"
                    );
                    self.metrics
                        .fence_closed("ownership_lost", holds.len() as u64);
                    let mut r = self.record();
                    for h in holds {
                        if r.lost.len() >= MAX_FENCE_HISTORY {
                            r.lost.pop_front();
                        }
                        r.lost.push_back(LostRecord {
                            vhd: h.vhd,
                            mode: h.mode,
                            generation: h.generation.0,
                            old_epoch: old_epoch.map(|e| e.0),
                            new_epoch: new_epoch.map(|e| e.0),
                            at_unix_ms: at,
                        });
                    }
                }
                FenceEvent::HoldDropped { vhd, generation } => {
                    tracing::info!(%vhd, %generation, "hold dropped (handed off or superseded)");
                    self.metrics.fence_closed("hold_dropped", 1);
                }
                FenceEvent::HandoffFailed { vhd } => {
                    tracing::warn!(%vhd, "hand-off refused; reclaiming the hold");
                    self.record().failed_handoffs += 1;
                    self.metrics.fence_closed("handoff_failed", 1);
                }
                FenceEvent::GrantRefused {
                    vhd,
                    epoch,
                    generation,
                } => {
                    tracing::info!(%vhd, %generation, "grant not installed; releasing it");
                    if let Some(req) = self.guard().release_unwanted(vhd, epoch, generation) {
                        follow.push(req);
                    }
                }
            }
        }
        follow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    const BASE: &str = "[node]\nid = 1\n[cluster]\nlisten = \"127.0.0.1:7000\"\n[paths]\ndata_dir = \"/var/lib/csv\"\n[tls]\nplaintext = true\n";

    #[test]
    fn the_budget_is_configurable_and_bounded() {
        let c = NodeConfig::parse(BASE).expect("default");
        assert_eq!(c.lease.outage_budget.0, Duration::from_secs(8));
        let c = NodeConfig::parse(&format!("{BASE}[lease]\noutage_budget = \"6s\"\n"))
            .expect("minimum");
        assert_eq!(
            c.lease.timing().expect("timing").outage_budget,
            Duration::from_secs(6)
        );
        for bad in ["5s", "301s", "0ms"] {
            let e = NodeConfig::parse(&format!("{BASE}[lease]\noutage_budget = \"{bad}\"\n"))
                .expect_err(bad);
            assert!(e.to_string().contains("lease.outage_budget"), "{e}");
        }
        assert!(NodeConfig::parse(&format!("{BASE}[lease]\nbudget = \"8s\"\n")).is_err());
    }
}
