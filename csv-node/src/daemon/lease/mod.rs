//! The node-side shell of the lock manager (issue 5, design note 030 §11): one
//! [`Leases`] per daemon owns the node's `FenceGuard` (register, renew through the Raft
//! log, self-fence on the local clock), the coordinator's `LivenessTracker` (expire nodes
//! whose renewals stopped, with the new-leader grace), and the API the data path uses
//! (`Daemon::acquire_vhd`, `Daemon::release_vhd`, `Daemon::on_handoff`).
//!
//! * `observe.rs`: the state machine wrapper that reports every applied lock command.
//! * `driver.rs`: the per-node task (renewals, fence polling, tracker, hand-offs).
//! * `api.rs`: acquire, release, move, and the `WriteFence` handed to the data path.
//! * `admin.rs`: the `csvadm owner …` / `node liveness` requests.
//!
//! Clocks: the fence and the tracker read `CLOCK_BOOTTIME` (keeps counting across a
//! host suspend, §2 A2); wall-clock times are only recorded for operators and tests.

mod admin;
mod api;
mod driver;
mod observe;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::{
    FenceEvent, FenceGuard, LeaseTiming, LivenessTracker, LockError, Mode, Outcome, Request, Time,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

pub(crate) use admin::handle;
pub use api::VhdHold;
pub(crate) use driver::run;
pub(crate) use observe::Observed;

use super::config::Dur;

/// Applied lock commands buffered for the driver; beyond it observations are dropped
/// (only liveness suffers: a missed renewal makes an expiry fail, §4.1).
pub const MAX_OBSERVATIONS: usize = 4096;
/// Proposal results buffered for the driver.
pub const MAX_RESULTS: usize = 1024;
/// Lost holds and fence transitions remembered for `owner show` / `node liveness`.
pub const MAX_FENCE_HISTORY: usize = 256;
/// Most hand-off hooks the data path may register.
pub const MAX_HANDOFF_HOOKS: usize = 16;
/// Longest a hand-off hook may take (flush and close of the VHD's users).
pub const HANDOFF_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A lock command's replicated result.
pub type LockResult = Result<Outcome, LockError>;

/// The future a hand-off hook returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Called before this node hands a VHD it writes to another node (`owner move`): the
/// data path flushes what it buffered for the VHD and stops issuing writes, then
/// resolves `Ok`. Any `Err` aborts the hand-off (the fence stays open, nothing is
/// proposed). Hooks run in registration order, each bounded by [`HANDOFF_HOOK_TIMEOUT`].
pub type HandoffHook = Box<dyn Fn(VhdId) -> BoxFuture<Result<(), ApiError>> + Send + Sync>;

/// `[lease]` of the node configuration.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSection {
    /// Longest a crashed owner's VHDs stay unwritable (6 s to 300 s, default 8 s); every
    /// other lease timeout is derived from it (design note 030 §8).
    pub outage_budget: Dur,
    /// Run the lease watchdog (`crate::watchdog`): a separate process that SIGKILLs this
    /// node when it holds a write hold and its lease ends without a confirmed renewal
    /// (paused, stuck, or cut off), so no write checked before the deadline can be
    /// submitted after it.
    pub watchdog: bool,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection {
            outage_budget: Dur(lock_manager::timing::DEFAULT_OUTAGE_BUDGET),
            watchdog: false,
        }
    }
}

impl LeaseSection {
    /// The derived timings, or why the budget is refused.
    pub fn timing(&self) -> Result<LeaseTiming, lock_manager::TimingError> {
        LeaseTiming::from_budget(self.outage_budget.0)
    }
}

/// A reading of `CLOCK_BOOTTIME`.
pub fn boottime() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Time::from_nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// The wall-clock time (Unix ms) at which the local clock read (or will read) `t`.
pub fn wall_ms_of(t: Time) -> u64 {
    let now = boottime();
    let wall = super::now_unix_ms();
    if t <= now {
        wall.saturating_sub(millis(now.saturating_since(t)))
    } else {
        wall.saturating_add(millis(t.saturating_since(now)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One applied lock command, as every replica saw it.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The command.
    pub cmd: lock_manager::Command,
    /// Its result.
    pub result: LockResult,
}

/// A hold this node lost with its epoch (shown by `owner show` and `node liveness`).
#[derive(Debug, Clone, Serialize)]
pub struct LostRecord {
    /// The VHD.
    pub vhd: VhdId,
    /// How it was held.
    pub mode: Mode,
    /// Its generation.
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
    /// Observations dropped because the driver lagged.
    pub dropped_observations: u64,
}

/// The lease machinery of one node.
pub struct Leases {
    node: NodeId,
    timing: LeaseTiming,
    guard: Mutex<FenceGuard>,
    tracker: Mutex<LivenessTracker>,
    record: Mutex<FenceRecord>,
    hooks: Mutex<Vec<Arc<HandoffHook>>>,
    /// Notified after every applied lock command (waiters of `owner move`).
    applied: Notify,
    obs_tx: mpsc::Sender<Observation>,
    obs_rx: Mutex<Option<mpsc::Receiver<Observation>>>,
    res_tx: mpsc::Sender<(u64, LockResult)>,
    res_rx: Mutex<Option<mpsc::Receiver<(u64, LockResult)>>>,
    /// Set when the node leaves at shutdown: the driver stops renewing (a renewal at
    /// the pre-`Leave` epoch would fail and make it register again).
    stopping: std::sync::atomic::AtomicBool,
    stop: Notify,
    watchdog: Mutex<Option<crate::watchdog::Watchdog>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &self.node)
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Leases {
    /// The lease machinery of node `node` with `timing`.
    pub fn new(node: NodeId, timing: LeaseTiming) -> Leases {
        let (obs_tx, obs_rx) = mpsc::channel(MAX_OBSERVATIONS);
        let (res_tx, res_rx) = mpsc::channel(MAX_RESULTS);
        Leases {
            node,
            timing,
            guard: Mutex::new(FenceGuard::new(node, &timing)),
            tracker: Mutex::new(LivenessTracker::new(&timing)),
            record: Mutex::new(FenceRecord::default()),
            hooks: Mutex::new(Vec::new()),
            applied: Notify::new(),
            obs_tx,
            obs_rx: Mutex::new(Some(obs_rx)),
            res_tx,
            res_rx: Mutex::new(Some(res_rx)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            stop: Notify::new(),
            watchdog: Mutex::new(None),
        }
    }

    /// Hands the started watchdog to the lease machinery, which arms it from now on.
    pub(crate) fn set_watchdog(&self, w: crate::watchdog::Watchdog) {
        *lock(&self.watchdog) = Some(w);
    }

    /// Tells the watchdog (if any) the current kill time: the local lease deadline plus
    /// half of `io_timeout` while a write hold exists, none otherwise. Cheap when
    /// nothing changed; called by the driver after every event.
    pub(crate) fn feed_watchdog(&self) {
        use crate::watchdog::Arm;
        let mut w = lock(&self.watchdog);
        let Some(wd) = w.as_mut() else {
            return;
        };
        let arm = {
            let g = self.guard();
            match g.deadline() {
                Some(d) if g.holds().values().any(|h| h.mode == Mode::Write) => {
                    Arm::At(d.saturating_add(self.timing.io_timeout / 2))
                }
                _ => Arm::Off,
            }
        };
        if let Err(e) = wd.set(arm) {
            tracing::error!(
                pid = wd.pid(),
                "the lease watchdog is gone ({e}); this node runs unguarded"
            );
            *w = None;
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

    /// The sender the state machine wrapper reports applied lock commands to.
    pub(crate) fn observer(&self) -> mpsc::Sender<Observation> {
        self.obs_tx.clone()
    }

    /// Registers a hand-off hook (see [`HandoffHook`]).
    pub fn add_handoff_hook(&self, f: HandoffHook) -> Result<(), ApiError> {
        let mut h = lock(&self.hooks);
        if h.len() >= MAX_HANDOFF_HOOKS {
            return Err(ApiError::new(
                ErrorCode::Limit,
                format!("at most {MAX_HANDOFF_HOOKS} hand-off hooks"),
            ));
        }
        h.push(Arc::new(f));
        Ok(())
    }

    fn hooks(&self) -> Vec<Arc<HandoffHook>> {
        lock(&self.hooks).clone()
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
                        node = %self.node,
                        closed_at_unix_ms = at,
                        "lease lapsed: every local write fence is closed until a renewal is confirmed"
                    );
                    let mut r = self.record();
                    r.lapses += 1;
                    r.last_lapse_unix_ms = Some(at);
                }
                FenceEvent::Reopened { deadline } => {
                    tracing::info!(node = %self.node, %deadline, "lease renewed at the same epoch: fences reopen");
                    self.record().last_reopen_unix_ms = Some(super::now_unix_ms());
                }
                FenceEvent::OwnershipLost {
                    old_epoch,
                    new_epoch,
                    holds,
                } => {
                    let at = super::now_unix_ms();
                    tracing::warn!(
                        node = %self.node,
                        old_epoch = ?old_epoch.map(|e| e.0),
                        new_epoch = ?new_epoch.map(|e| e.0),
                        lost = ?holds.iter().map(|h| (h.vhd.0, h.generation.0)).collect::<Vec<_>>(),
                        "ownership lost with the epoch: these holds are gone and are not retaken"
                    );
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
                }
                FenceEvent::HandoffFailed { vhd } => {
                    tracing::warn!(%vhd, "hand-off refused; reclaiming the hold");
                    self.record().failed_handoffs += 1;
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
    use crate::daemon::config::NodeConfig;

    const BASE: &str = "[node]\nid = 1\n[cluster]\nlisten = \"127.0.0.1:7000\"\n[paths]\ndata_dir = \"/var/lib/csv\"\n";

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

    #[test]
    fn wall_time_of_a_clock_reading() {
        let now = boottime();
        let wall = super::super::now_unix_ms();
        let past = Time::from_nanos(now.as_nanos().saturating_sub(2_000_000_000));
        let w = wall_ms_of(past);
        assert!(w + 2_000 >= wall && w + 1_900 <= wall, "{w} vs {wall}");
    }
}
