//! The path-health core (docs/design/070 §3, §4): what a node's own LUN path is worth
//! and where its LUN calls go. Pure: the shell feeds it what happened (call outcomes,
//! probes, peers, operator requests, "the failed path is quiet", "the session is
//! drained") with the time, and acts on the mode it answers.
//!
//! The rules it keeps (checked by the seeded simulation in `tests`):
//! * leaving `Direct`, nothing is reissued until the shell reports [`Input::Quiet`]
//!   (every call issued on the failed path has finished or passed its in-doubt bound);
//! * leaving a peer (it failed), the same: `Quiescing` until the shell reports the old
//!   session closed ([`Input::Quiet`]);
//! * back to `Direct` only through `FailingBack` and [`Input::Drained`] (the session's
//!   calls answered and the session closed), and only after the path has been healthy for
//!   the settle time with no operator request standing;
//! * the settle time doubles for each loss within `flap_window` of a return, up to
//!   `max_settle`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Thresholds of the core.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path errors within `error_window` that mean the path is lost.
    pub error_threshold: u32,
    pub error_window: Duration,
    /// How long the path must be healthy before failing back.
    pub settle_time: Duration,
    /// The settle time's ceiling when the path flaps.
    pub max_settle: Duration,
    /// A loss this soon after a return counts as a flap (doubles the settle time).
    pub flap_window: Duration,
    /// How long a peer that failed is not chosen again (unless no other is left).
    pub peer_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            error_threshold: 3,
            error_window: Duration::from_secs(5),
            settle_time: Duration::from_secs(10),
            max_settle: Duration::from_secs(300),
            flap_window: Duration::from_secs(60),
            peer_retry: Duration::from_secs(10),
        }
    }
}

/// Where the node's LUN calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Through the node's own path.
    Direct,
    /// Nothing is issued: waiting until the path (or session) being left is quiet.
    Quiescing,
    /// Through `peer`.
    Redirected,
    /// No path and no peer: calls wait (the shell fails them after its pause limit).
    Paused,
    /// Leaving the peer: its session drains and closes, then `Direct`.
    FailingBack,
}

impl Mode {
    /// The name operators see (`csvadm volume status`): `quiescing` and `failing_back`
    /// are shown as what they are for a VM, a pause.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Quiescing => "quiescing",
            Mode::Redirected => "redirected",
            Mode::Paused => "paused",
            Mode::FailingBack => "failing_back",
        }
    }

    /// Parses [`Mode::as_str`].
    pub fn parse(s: &str) -> Option<Mode> {
        [
            Mode::Direct,
            Mode::Quiescing,
            Mode::Redirected,
            Mode::Paused,
            Mode::FailingBack,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// Why the node is in its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The path works (direct).
    Healthy,
    /// Path errors past the threshold.
    IoErrors,
    /// A call got no answer within its bound.
    IoTimeout,
    /// The heartbeat probe failed.
    NoDiskConnectivity,
    /// The operator asked (`csvadm volume redirect --node N on`).
    UserRequest,
    /// The peer serving the node stopped answering or lost its own path.
    PeerLost,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Healthy => "healthy",
            Reason::IoErrors => "io_errors",
            Reason::IoTimeout => "io_timeout",
            Reason::NoDiskConnectivity => "no_disk_connectivity",
            Reason::UserRequest => "user_request",
            Reason::PeerLost => "peer_lost",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [
            Reason::Healthy,
            Reason::IoErrors,
            Reason::IoTimeout,
            Reason::NoDiskConnectivity,
            Reason::UserRequest,
            Reason::PeerLost,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A peer as the node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub node: u64,
    /// Its published path is direct (it can serve).
    pub direct: bool,
    /// It has a data address and was not found unreachable.
    pub reachable: bool,
    /// Its published load (redirected calls it serves); lower is chosen first.
    pub load: u64,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A call on the node's own path succeeded.
    CallOk,
    /// A call on the node's own path failed with a path error; `timeout` when it hit
    /// the call bound (one is enough).
    PathError { timeout: bool },
    /// The heartbeat probe of the node's own path.
    Probe { ok: bool },
    /// The operator's standing request (`on`: stay redirected).
    User { on: bool },
    /// The peers and the coordinator, from the replicated state.
    Peers {
        peers: Vec<Peer>,
        coordinator: Option<u64>,
    },
    /// The current peer failed (connection lost, no answer, it refused to open).
    PeerFailed,
    /// The path or session being left is quiet: no call issued on it can still land.
    Quiet,
    /// Failing back: the session's calls are answered and it is closed.
    Drained,
}

/// The core's answer: the mode and why, since when, and the peer in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub mode: Mode,
    pub reason: Reason,
    /// The peer calls go to (`Redirected`, `FailingBack`), or the one being left
    /// (`Quiescing` after a peer loss).
    pub peer: Option<u64>,
    pub since: Instant,
}

/// The path-health state machine of one node.
#[derive(Debug, Clone)]
pub struct Health {
    cfg: Config,
    node: u64,
    status: Status,
    /// Path errors in the window (their times).
    errors: Vec<Instant>,
    /// Since when the node's own path has been healthy (probes ok, no error), if it is.
    healthy_since: Option<Instant>,
    user: bool,
    peers: Vec<Peer>,
    coordinator: Option<u64>,
    /// Peers that failed, and when.
    failed: BTreeMap<u64, Instant>,
    /// The current settle time (doubles on flaps).
    settle: Duration,
    /// When the node last returned to direct.
    returned_at: Option<Instant>,
}

impl Health {
    /// A node `node` whose path is taken as healthy at `now`.
    pub fn new(cfg: Config, node: u64, now: Instant) -> Health {
        let settle = cfg.settle_time;
        Health {
            cfg,
            node,
            status: Status {
                mode: Mode::Direct,
                reason: Reason::Healthy,
                peer: None,
                since: now,
            },
            errors: Vec::new(),
            healthy_since: Some(now),
            user: false,
            peers: Vec::new(),
            coordinator: None,
            failed: BTreeMap::new(),
            settle,
            returned_at: None,
        }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The current settle time.
    pub fn settle_time(&self) -> Duration {
        self.settle
    }

    /// Whether the operator's request stands.
    pub fn user_request(&self) -> bool {
        self.user
    }

    /// Feeds `input`; the new status when it changed.
    pub fn handle(&mut self, now: Instant, input: Input) -> Option<Status> {
        let before = self.status.clone();
        match input {
            Input::CallOk => {}
            Input::PathError { timeout } => self.path_error(now, timeout),
            Input::Probe { ok: true } => {
                self.healthy_since.get_or_insert(now);
            }
            Input::Probe { ok: false } => {
                self.healthy_since = None;
                if self.status.mode == Mode::Direct {
                    self.lose(now, Reason::NoDiskConnectivity);
                }
            }
            Input::User { on } => {
                self.user = on;
                if on && self.status.mode == Mode::Direct {
                    self.lose(now, Reason::UserRequest);
                } else if on {
                    self.status.reason = Reason::UserRequest;
                }
            }
            Input::Peers { peers, coordinator } => {
                self.peers = peers.into_iter().filter(|p| p.node != self.node).collect();
                self.coordinator = coordinator;
                let current_gone = self.status.peer.is_some_and(|p| !self.serves(p));
                if current_gone && self.status.mode == Mode::Redirected {
                    self.leave_peer(now);
                }
            }
            Input::PeerFailed => {
                if let Some(p) = self.status.peer {
                    self.failed.insert(p, now);
                }
                if self.status.mode == Mode::Redirected {
                    self.leave_peer(now);
                } else if self.status.mode == Mode::FailingBack {
                    // The session is gone: the shell still waits for its bound before
                    // reporting it drained (`Drained` comes from the shell's wait).
                }
            }
            Input::Quiet => {
                if self.status.mode == Mode::Quiescing {
                    if self.may_return(now) {
                        // Left a peer (its session closed) while the own path settled.
                        self.back_direct(now);
                    } else {
                        self.redirect(now);
                    }
                }
            }
            Input::Drained => {
                if self.status.mode == Mode::FailingBack {
                    self.back_direct(now);
                }
            }
        }
        self.tick_inner(now);
        (self.status != before).then(|| self.status.clone())
    }

    /// Looks at the clock (fail-back after the settle time, a paused node finding a
    /// peer); the new status when it changed. Call it at least every probe interval.
    pub fn tick(&mut self, now: Instant) -> Option<Status> {
        let before = self.status.clone();
        self.tick_inner(now);
        (self.status != before).then(|| self.status.clone())
    }

    fn tick_inner(&mut self, now: Instant) {
        self.failed
            .retain(|_, at| now.saturating_duration_since(*at) < self.cfg.peer_retry);
        match self.status.mode {
            Mode::Redirected | Mode::Paused if self.may_return(now) => {
                if self.status.mode == Mode::Paused {
                    // Nothing was issued while paused: the path is used again at once.
                    self.back_direct(now);
                } else {
                    let peer = self.status.peer;
                    self.set(now, Mode::FailingBack, Reason::Healthy, peer);
                }
            }
            Mode::Paused => self.redirect(now),
            _ => {}
        }
    }

    fn back_direct(&mut self, now: Instant) {
        self.set(now, Mode::Direct, Reason::Healthy, None);
        self.returned_at = Some(now);
        self.errors.clear();
    }

    fn may_return(&self, now: Instant) -> bool {
        !self.user
            && self
                .healthy_since
                .is_some_and(|h| now.saturating_duration_since(h) >= self.settle)
    }

    fn path_error(&mut self, now: Instant, timeout: bool) {
        self.healthy_since = None;
        if self.status.mode != Mode::Direct {
            return;
        }
        if timeout {
            self.lose(now, Reason::IoTimeout);
            return;
        }
        let window = self.cfg.error_window;
        self.errors
            .retain(|t| now.saturating_duration_since(*t) < window);
        self.errors.push(now);
        if self.errors.len() >= self.cfg.error_threshold.max(1) as usize {
            self.lose(now, Reason::IoErrors);
        }
    }

    /// Direct → quiescing; a flap doubles the settle time.
    fn lose(&mut self, now: Instant, reason: Reason) {
        let flap = self
            .returned_at
            .is_some_and(|r| now.saturating_duration_since(r) < self.cfg.flap_window);
        self.settle = if flap {
            (self.settle * 2).min(self.cfg.max_settle)
        } else {
            self.cfg.settle_time
        };
        if reason != Reason::UserRequest {
            self.healthy_since = None;
        }
        self.errors.clear();
        self.set(now, Mode::Quiescing, reason, None);
    }

    /// The peer in use failed or stopped serving: quiesce until its session is closed.
    fn leave_peer(&mut self, now: Instant) {
        let peer = self.status.peer;
        self.set(now, Mode::Quiescing, Reason::PeerLost, peer);
    }

    /// Quiet (or paused): to the chosen peer, else paused. The reason stays the loss's
    /// (or the operator's), except after a peer loss.
    fn redirect(&mut self, now: Instant) {
        let reason = if self.user {
            Reason::UserRequest
        } else {
            self.status.reason
        };
        match self.choose() {
            Some(p) => self.set(now, Mode::Redirected, reason, Some(p)),
            None if self.status.mode != Mode::Paused => self.set(now, Mode::Paused, reason, None),
            None => {}
        }
    }

    fn serves(&self, node: u64) -> bool {
        self.peers
            .iter()
            .any(|p| p.node == node && p.direct && p.reachable)
    }

    /// The coordinator when it serves, else the least loaded serving peer (by id on a
    /// tie); peers that failed lately only when no other is left.
    pub fn choose(&self) -> Option<u64> {
        let pick = |skip_failed: bool| {
            let ok = |p: &&Peer| {
                p.direct && p.reachable && !(skip_failed && self.failed.contains_key(&p.node))
            };
            if let Some(c) = self.coordinator
                && self.peers.iter().filter(ok).any(|p| p.node == c)
            {
                return Some(c);
            }
            self.peers
                .iter()
                .filter(ok)
                .min_by_key(|p| (p.load, p.node))
                .map(|p| p.node)
        };
        pick(true).or_else(|| pick(false))
    }

    fn set(&mut self, now: Instant, mode: Mode, reason: Reason, peer: Option<u64>) {
        if self.status.mode != mode || self.status.reason != reason || self.status.peer != peer {
            self.status = Status {
                mode,
                reason,
                peer,
                since: now,
            };
        }
    }
}

#[cfg(test)]
mod tests;
