//! The redirection driver (docs/design/070 §3, §4, §6): feeds `redirector::health`
//! with the switch's reports, the heartbeat probes, the peers' published path states and
//! the operator's request; turns its modes into routes (opening a session to the chosen
//! peer, waiting for quiet before any reissue); publishes the node's path state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use csv_api::NodeId;
use redirector::health::{Config, Health, Input, Mode, Peer, Status};
use tokio::sync::mpsc;
use volume::{Layout, LunPath};

use super::handle::Redirect;
use super::serve::{self, Serve};
use super::session::Session;
use super::switch::{Report, Route};
use crate::data::Data;
use crate::meta::now_unix_ms;
use crate::state::paths::PathUpdate;
use crate::state::types::{Command, Query, QueryReply};
use crate::sync::lock;

/// How often the driver looks at the peers' states and at quiet.
const LOOK: Duration = Duration::from_millis(50);
/// How often the peers' published states are read.
const PEERS_EVERY: Duration = Duration::from_millis(500);
/// How often the node republishes its state (its load) without a change.
const PUBLISH_EVERY: Duration = Duration::from_secs(10);
/// Least time between two coordinator hand-overs of a node without a direct path.
const HANDOVER_EVERY: Duration = Duration::from_secs(5);
/// Bound of a connect and session open to a peer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);

fn health_config(d: &Data) -> Config {
    let r = &d.cfg.redirect;
    Config {
        error_threshold: r.error_threshold,
        error_window: r.error_window.0,
        settle_time: r.settle_time.0,
        flap_window: r.flap_window.0,
        ..Config::default()
    }
}

/// Where the data transport listens, and the address peers are told.
fn listen_addr(d: &Data) -> SocketAddr {
    d.cfg
        .redirect
        .listen
        .unwrap_or_else(|| SocketAddr::new(d.cfg.cluster.listen.ip(), 0))
}

fn advertised(d: &Data, bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let host = d
        .cfg
        .cluster
        .advertise
        .as_deref()
        .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("{host}:{}", bound.port())
}

/// The driver's state besides the core.
struct Driver {
    d: Arc<Data>,
    r: Arc<Redirect>,
    serve: Arc<Serve>,
    core: Health,
    session: Option<Arc<Session>>,
    next_session: u64,
    peers: Vec<(Peer, String)>,
    data_addr: String,
    bound_ms: u64,
    published: Option<Instant>,
    /// When the coordinator role was last handed over.
    handed_over: Option<Instant>,
    publish: tokio::sync::watch::Sender<Option<PathUpdate>>,
    served_before: u64,
    load: u64,
    probes: u64,
    user: bool,
}

/// Runs the driver for the node's life (a member task).
pub(crate) async fn run(d: Arc<Data>) {
    if !d.cfg.redirect.enabled || d.cfg.volume.is_none() {
        return;
    }
    let layout = loop {
        match d.volume_ready().await {
            Ok((_, l)) => break l,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    let Some(r) = d.redirect() else { return };
    let Some(mut reports) = lock(&r.reports).take() else {
        return;
    };
    let listener = match tokio::net::TcpListener::bind(listen_addr(&d)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "redirection off: the data transport cannot listen on {}: {e}",
                listen_addr(&d)
            );
            return;
        }
    };
    let data_addr = match listener.local_addr() {
        Ok(a) => advertised(&d, a),
        Err(e) => {
            tracing::error!("redirection off: {e}");
            return;
        }
    };
    lock(&r.view).data_addr.clone_from(&data_addr);
    let io = d.io_timeout();
    let ttl = d.cfg.redirect.session_ttl.0;
    let serve = Arc::new(Serve::new(
        d.id(),
        d.meta.clone(),
        r.direct.clone(),
        r.shared.clone(),
        ttl,
        io,
        d.cfg.loaded_tls.peers.clone(),
    ));
    d.tasks
        .spawn(serve::run(listener, serve.clone(), d.tasks.token()));
    tracing::info!(%data_addr, "redirected I/O ready");
    let node = d.id();
    let (publish, publish_rx) = tokio::sync::watch::channel(None);
    d.tasks.spawn(publisher(d.clone(), publish_rx));
    let mut drv = Driver {
        core: Health::new(health_config(&d), node, Instant::now()),
        d,
        r,
        serve,
        session: None,
        next_session: u64::from(std::process::id()) << 32 | u64::from(rand_u32()),
        peers: Vec::new(),
        data_addr,
        bound_ms: (ttl + io * 2).as_millis() as u64,
        published: None,
        handed_over: None,
        publish,
        served_before: 0,
        load: 0,
        probes: 0,
        user: false,
    };
    let (probe_tx, mut probe_rx) = mpsc::channel(4);
    let mut probe_tick = tokio::time::interval(drv.d.cfg.redirect.probe_interval.0);
    let mut look = tokio::time::interval(LOOK);
    let mut peers_at = Instant::now() - PEERS_EVERY;
    let mut probing = false;
    loop {
        tokio::select! {
            Some(rep) = reports.recv() => drv.report(rep),
            Some(ok) = probe_rx.recv() => {
                probing = false;
                drv.input(Input::Probe { ok });
            }
            _ = probe_tick.tick(), if !probing => {
                probing = true;
                drv.probes += 1;
                let (lun, tx, counter, node) = (drv.r.direct.clone(), probe_tx.clone(), drv.probes, node);
                let layout: Layout = layout;
                tokio::task::spawn_blocking(move || {
                    let r = super::probe::probe(&*lun, node, counter, &layout);
                    if let Err(e) = &r {
                        tracing::debug!("heartbeat probe: {e}");
                    }
                    let _ = tx.blocking_send(!r.as_ref().is_err_and(|e| e.is_path_failure()));
                });
            }
            _ = look.tick() => {}
        }
        if peers_at.elapsed() >= PEERS_EVERY {
            peers_at = Instant::now();
            drv.refresh_peers().await;
        }
        drv.step().await;
        drv.publish_if_due();
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_unix_ms());
    h.finish() as u32
}

impl Driver {
    fn report(&mut self, rep: Report) {
        match rep {
            Report::PathError { timeout } => self.input(Input::PathError { timeout }),
            Report::PeerFailed { session } => {
                if self
                    .session
                    .as_ref()
                    .is_some_and(|s| s.session_id() == session)
                {
                    self.input(Input::PeerFailed);
                }
            }
        }
    }

    fn input(&mut self, i: Input) {
        if let Some(st) = self.core.handle(Instant::now(), i) {
            self.changed(st);
        }
    }

    /// The core's new status: mark a session being left, and set holds at once (the
    /// route to a peer is set in `step`, after the session opens).
    fn changed(&mut self, st: Status) {
        tracing::info!(mode = st.mode.as_str(), reason = st.reason.as_str(), peer = ?st.peer, "LUN path mode");
        {
            let mut v = lock(&self.r.view);
            v.mode = st.mode;
            v.reason = st.reason;
            v.peer = st.peer;
            v.since_unix_ms = now_unix_ms();
        }
        match st.mode {
            Mode::Direct => {
                self.r.shared.set_route(Route::Direct);
                self.session = None;
            }
            Mode::Quiescing | Mode::Paused | Mode::FailingBack => {
                self.r.shared.set_route(Route::Hold);
                if st.mode == Mode::Quiescing
                    && let Some(s) = self.session.take()
                {
                    // Calls sent on it may land at the peer until its bound.
                    s.fail();
                    self.r.shared.peer_in_doubt_until(s.closed_by());
                }
            }
            Mode::Redirected => {}
        }
        self.published = None;
    }

    async fn refresh_peers(&mut self) {
        let Ok(m) = self.d.member().await else { return };
        let status = m.meta.status().await.ok();
        let coordinator = status.as_ref().and_then(|s| s.leader);
        let Ok(QueryReply::Paths { paths, .. }) = m
            .query_local(Query::Paths {
                after: u64::MAX - 1,
                limit: 0,
            })
            .await
        else {
            return;
        };
        let me = self.d.id();
        let mut user = false;
        self.peers = paths
            .iter()
            .filter_map(|p| {
                if p.node.0 == me {
                    user = p.user_redirect;
                    return None;
                }
                Some((
                    Peer {
                        node: p.node.0,
                        direct: p.mode == Mode::Direct.as_str(),
                        reachable: !p.data_addr.is_empty(),
                        load: p.load,
                    },
                    p.data_addr.clone(),
                ))
            })
            .collect();
        let peers = self.peers.iter().map(|(p, _)| *p).collect();
        self.input(Input::Peers { peers, coordinator });
        if user != self.user {
            self.user = user;
            self.input(Input::User { on: user });
        }
        if let Some(st) = status
            && st.leader == Some(me)
        {
            let live: Vec<u64> = st
                .progress
                .iter()
                .filter(|p| p.voter && p.recent_active && p.id != me)
                .map(|p| p.id)
                .collect();
            self.hand_over_coordination(&m, &live).await;
        }
    }

    /// A coordinator without a direct path cannot write the LUN checkpoints (peers run
    /// no write that names no VHD writer): it hands the role to a voter whose path is
    /// direct, the least loaded (070 §6), at most once per `HANDOVER_EVERY`. Only to a
    /// voter that answered it lately (`live`): a leader refuses proposals while it
    /// transfers, and a dead node's path record still reads `direct`.
    async fn hand_over_coordination(&mut self, m: &crate::meta::Member, live: &[u64]) {
        if self.core.status().mode == Mode::Direct
            || self
                .handed_over
                .is_some_and(|t| t.elapsed() < HANDOVER_EVERY)
        {
            return;
        }
        let to = self
            .peers
            .iter()
            .filter(|(p, _)| p.direct && p.reachable && live.contains(&p.node))
            .min_by_key(|(p, _)| (p.load, p.node))
            .map(|(p, _)| p.node);
        let Some(to) = to else { return };
        self.handed_over = Some(Instant::now());
        tracing::info!(
            to,
            "coordinator without a direct LUN path: handing the role over"
        );
        if let Err(e) = m.meta.transfer_leader(to).await {
            tracing::warn!(to, "coordinator hand-over: {e}");
        }
    }

    /// Acts on the mode: quiet and drain checks, opening the session of a new peer.
    async fn step(&mut self) {
        if let Some(st) = self.core.tick(Instant::now()) {
            self.changed(st);
        }
        let sh = &self.r.shared;
        match self.core.status().mode {
            Mode::Quiescing => {
                let now = Instant::now();
                let direct_quiet =
                    sh.direct_in_flight() == 0 && self.r.direct.quiet_at().is_none_or(|t| t <= now);
                let peer_quiet =
                    sh.peer_in_flight() == 0 && sh.peer_quiet_at().is_none_or(|t| t <= now);
                if direct_quiet && peer_quiet {
                    self.input(Input::Quiet);
                }
            }
            // Every call sent is answered: nothing is in doubt at the peer.
            Mode::FailingBack if sh.peer_in_flight() == 0 => {
                if let Some(s) = self.session.take() {
                    s.fail();
                }
                self.input(Input::Drained);
            }
            _ => {}
        }
        let st = self.core.status().clone();
        if st.mode == Mode::Redirected && self.session.is_none() {
            let peer = st.peer.unwrap_or(0);
            match self.open(peer).await {
                Ok(s) => {
                    tracing::info!(peer, session = s.session_id(), "redirecting LUN calls");
                    self.r.shared.set_route(Route::Peer(s.clone()));
                    self.session = Some(s);
                }
                Err(e) => {
                    tracing::warn!(peer, "cannot redirect through node {peer}: {e}");
                    self.input(Input::PeerFailed);
                }
            }
        }
        if let Some(s) = &self.session
            && s.failed()
            && self.core.status().mode == Mode::Redirected
        {
            self.input(Input::PeerFailed);
        }
    }

    async fn open(&mut self, peer: u64) -> Result<Arc<Session>, String> {
        let addr = self
            .peers
            .iter()
            .find(|(p, _)| p.node == peer)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| format!("node {peer} published no data address"))?;
        let addr: SocketAddr = tokio::net::lookup_host(&addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        self.next_session += 1;
        Session::open(
            peer,
            addr,
            self.d.id(),
            self.next_session,
            OPEN_TIMEOUT,
            &self.d.cfg.loaded_tls.peers,
        )
        .await
    }

    /// Hands the node's state to the publisher on a change, and every
    /// `PUBLISH_EVERY` with its load (a proposal never holds the driver up).
    fn publish_if_due(&mut self) {
        if self.published.is_some_and(|t| t.elapsed() < PUBLISH_EVERY) {
            return;
        }
        let served = self.serve.served.load(Ordering::Relaxed);
        self.load = served - self.served_before;
        self.served_before = served;
        let st = self.core.status().clone();
        let update = PathUpdate {
            mode: st.mode.as_str().into(),
            reason: st.reason.as_str().into(),
            peer: st.peer.map(NodeId),
            since_unix_ms: lock(&self.r.view).since_unix_ms,
            load: self.load,
            data_addr: self.data_addr.clone(),
            session_bound_ms: self.bound_ms,
        };
        self.publish.send_replace(Some(update));
        self.published = Some(Instant::now());
    }
}

/// Proposes the latest path state the driver handed over (retrying until applied or
/// replaced by a newer one).
async fn publisher(d: Arc<Data>, mut rx: tokio::sync::watch::Receiver<Option<PathUpdate>>) {
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        loop {
            let Some(update) = rx.borrow_and_update().clone() else {
                break;
            };
            let cmd = Command::SetPathState {
                node: NodeId(d.id()),
                update,
            };
            let ok = match d.member().await {
                Ok(m) => matches!(
                    tokio::time::timeout(Duration::from_secs(3), m.propose(cmd)).await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            if ok || rx.has_changed().unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
