//! `csv-node run --config FILE`: the cluster daemon. It hosts the metadata store
//! (meta-store with the TCP transport and the cluster state machine) and serves the admin
//! API on a Unix socket. States: uninitialised (waits for `cluster init`, or for a leader
//! that added it: `join.rs`), member, removed. Design: docs/design/050-control-plane.md §4.

mod admin;
mod attach;
mod checkpoint;
pub mod config;
mod convert;
mod detach;
mod extents;
mod handlers;
mod join;
pub mod lease;
mod merge;
mod progress;
mod remote_attach;
mod state_file;
mod vhd_ops;
mod vol_handlers;
pub mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use csv_api::error::ApiError;
use csv_api::{ClusterId, ErrorCode, NodeId};
use meta_store::{MetaHandle, MetaNode, TcpConfig, TcpTransport};
use tokio::sync::{RwLock, mpsc};
use tracing::Instrument;

use crate::state::ClusterState;
use crate::state::types::{Command, NodeState as RecordState, Query, QueryReply, decode_result};
use config::NodeConfig;
use state_file::NodeState;

/// How long closing the exports and releasing their holds may take at shutdown (a map
/// commit or a release needs a quorum, which a whole-cluster stop may already lack).
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the `Leave` proposal at shutdown may wait for a quorum.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping the metadata store may take. With the two above, a graceful
/// shutdown ends within 18 s (`scripts/local-cluster stop` waits 20 s before SIGKILL).
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// How often a member checks whether it was removed.
const REMOVAL_CHECK: Duration = Duration::from_secs(1);
/// Attempts to bind the cluster address after the join listener closed it.
const BIND_ATTEMPTS: u32 = 50;

/// `csv-node run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node configuration file (TOML; see csv-node/node.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// A running member: the metadata node and its transport.
#[derive(Clone)]
pub(crate) struct Member {
    pub cluster_id: ClusterId,
    pub meta: MetaHandle,
    pub transport: TcpTransport,
}

pub(crate) enum Phase {
    Uninitialized,
    Member(Member),
    Removed(ClusterId),
    Stopping,
}

/// Shared daemon state.
pub(crate) struct Daemon {
    pub cfg: NodeConfig,
    pub phase: RwLock<Phase>,
    /// Leases, fences and liveness (issue 5).
    pub leases: Arc<lease::Leases>,
    join_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(crate) vol: volume::VolumeRt,
    pub(crate) att: attach::Attachments,
    /// Long operations' progress (`progress.rs`).
    pub(crate) ops: progress::Operations,
    /// Attach/detach requests addressed to other nodes (`remote_attach.rs`).
    pub(crate) remote: remote_attach::RemoteRt,
    /// Woken after every applied catalog change or recorded checkpoint.
    pub(crate) catalog_changed: Arc<tokio::sync::Notify>,
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn meta_err(e: meta_store::Error) -> ApiError {
    ApiError::new(ErrorCode::from_meta_store(e.code() as u32), e.to_string())
}

impl Daemon {
    pub(crate) fn id(&self) -> u64 {
        self.cfg.node.id
    }

    /// The member handles, or the error that says why there are none.
    pub(crate) async fn member(&self) -> Result<Member, ApiError> {
        match &*self.phase.read().await {
            Phase::Member(m) => Ok(m.clone()),
            Phase::Uninitialized => Err(ApiError::new(
                ErrorCode::NotInitialized,
                "this node is not a cluster member: run `csvadm cluster init` here, or `csvadm node add` on a member",
            )),
            Phase::Removed(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "this node was removed from the cluster",
            )),
            Phase::Stopping => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the node is stopping",
            )),
        }
    }

    /// Starts the metadata store under `st` (writing the state file first when new).
    /// The caller holds the phase lock in `phase`.
    async fn become_member(
        self: &Arc<Self>,
        phase: &mut Phase,
        st: &NodeState,
        write_state: bool,
    ) -> anyhow::Result<Member> {
        let data = &self.cfg.paths.data_dir;
        if write_state {
            // It syncs the file and the directory: not on a runtime worker.
            let (dir, st2) = (data.clone(), st.clone());
            tokio::task::spawn_blocking(move || state_file::write(&dir, &st2))
                .await
                .map_err(|e| anyhow::anyhow!("write the state file: {e}"))??;
        }
        let join = self
            .join_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = join {
            t.abort();
            let _ = t.await;
        }
        let mut mcfg = self
            .cfg
            .meta_config(st.cluster_id, st.initial_voters.clone());
        for p in &st.seed_peers {
            if p.id != self.id() {
                mcfg.peers.push(meta_store::PeerAddr {
                    id: p.id,
                    addr: p.addr.clone(),
                });
            }
        }
        let mut tcfg = TcpConfig::new(
            self.id(),
            st.cluster_id.to_string(),
            self.cfg.cluster.listen,
            mcfg.required_frame_bytes(),
        );
        tcfg.advertise = Some(self.cfg.advertise());
        let mut attempt = 0;
        let transport = loop {
            match TcpTransport::bind(tcfg.clone()).await {
                Ok(t) => break t,
                Err(e) if attempt < BIND_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "cluster address busy; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("bind cluster address {}", self.cfg.cluster.listen)
                    });
                }
            }
        };
        let meta = MetaNode::start(
            mcfg,
            &data.join("store"),
            remote_attach::Tapped::new(
                lease::Observed::new(ClusterState::new(), self.leases.observer()),
                &self.remote,
                self.catalog_changed.clone(),
            ),
            Arc::new(transport.clone()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("start metadata store: {e}"))?;
        let m = Member {
            cluster_id: st.cluster_id,
            meta,
            transport,
        };
        *phase = Phase::Member(m.clone());
        tracing::info!(cluster = %st.cluster_id, "metadata store running");
        let d = self.clone();
        tokio::spawn(watch_removal(d).in_current_span());
        tokio::spawn(lease::run(self.clone(), m.clone()).in_current_span());
        tokio::spawn(volume::watch_volume(self.clone()).in_current_span());
        tokio::spawn(checkpoint::run(self.clone()).in_current_span());
        tokio::spawn(remote_attach::run(self.clone(), m.clone()).in_current_span());
        if st.initial_voters.contains(&self.id()) {
            let d = self.clone();
            let st = st.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = d.ensure_init(&st).await {
                        tracing::warn!(error = %e, "cluster init command not applied yet");
                    }
                }
                .in_current_span(),
            );
        }
        Ok(m)
    }

    /// The bootstrap node proposes `InitCluster` until it is applied (a crash between
    /// bootstrap and the first commit leaves the identity unset).
    pub(crate) async fn ensure_init(&self, st: &NodeState) -> Result<(), ApiError> {
        let m = self.member().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let cmd = Command::InitCluster {
            id: st.cluster_id,
            name: st.cluster_name.clone().unwrap_or_else(|| "csv".into()),
            created_unix_ms: st.created_unix_ms.unwrap_or(0),
            node: NodeId(self.id()),
            address: self.cfg.advertise(),
        };
        loop {
            let q = m
                .meta
                .query_local(Query::Cluster.encode())
                .await
                .map_err(meta_err)?;
            if let Ok(QueryReply::Cluster {
                identity: Some(_), ..
            }) = decode_result(&q)
            {
                return Ok(());
            }
            match m.meta.propose(cmd.encode()).await {
                Ok(r) => {
                    decode_result::<crate::state::types::Reply>(&r)?;
                    return Ok(());
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "init proposal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(meta_err(e)),
            }
        }
    }

    /// `cluster init`: a new cluster with this node as its only voter.
    pub(crate) async fn init_cluster(self: &Arc<Self>, name: &str) -> Result<ClusterId, ApiError> {
        let st = {
            let mut phase = self.phase.write().await;
            if !matches!(*phase, Phase::Uninitialized) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyInitialized,
                    "this node is a cluster member already",
                ));
            }
            let st = NodeState {
                cluster_id: ClusterId::random(),
                initial_voters: vec![self.id()],
                cluster_name: Some(if name.is_empty() {
                    "csv".into()
                } else {
                    name.into()
                }),
                created_unix_ms: Some(now_unix_ms()),
                seed_peers: Vec::new(),
            };
            if name.len() > crate::state::MAX_NAME_BYTES || name.contains('/') {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    "cluster name: at most 255 bytes, no '/'",
                ));
            }
            self.become_member(&mut phase, &st, true)
                .await
                .map_err(|e| ApiError::new(ErrorCode::Internal, format!("{e:#}")))?;
            st
        };
        self.ensure_init(&st).await?;
        Ok(st.cluster_id)
    }

    /// A leader contacted this uninitialised node: join its cluster.
    async fn join(self: &Arc<Self>, inv: join::Invitation) -> anyhow::Result<()> {
        let mut phase = self.phase.write().await;
        if !matches!(*phase, Phase::Uninitialized) {
            return Ok(());
        }
        let st = NodeState {
            cluster_id: inv.cluster,
            initial_voters: Vec::new(),
            cluster_name: None,
            created_unix_ms: None,
            seed_peers: vec![state_file::SeedPeer {
                id: inv.from,
                addr: inv.from_addr,
            }],
        };
        self.become_member(&mut phase, &st, true).await?;
        Ok(())
    }

    async fn stop(&self) {
        let old = std::mem::replace(&mut *self.phase.write().await, Phase::Stopping);
        if let Some(t) = self
            .join_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
        if let Phase::Member(m) = old {
            m.meta.shutdown().await;
            meta_store::Transport::shutdown(&m.transport);
        }
    }
}

/// Stops the metadata node once this node's record says it was removed.
async fn watch_removal(d: Arc<Daemon>) {
    loop {
        tokio::time::sleep(REMOVAL_CHECK).await;
        let m = match &*d.phase.read().await {
            Phase::Member(m) => m.clone(),
            _ => return,
        };
        let Ok(q) = m.meta.query_local(Query::Cluster.encode()).await else {
            continue;
        };
        let removed = matches!(
            decode_result(&q),
            Ok(QueryReply::Cluster { nodes, .. })
                if nodes.iter().any(|n| n.id.0 == d.id() && n.state == RecordState::Removed)
        );
        if removed {
            tracing::warn!("this node was removed from the cluster; stopping its metadata store");
            *d.phase.write().await = Phase::Removed(m.cluster_id);
            m.meta.shutdown().await;
            meta_store::Transport::shutdown(&m.transport);
            return;
        }
    }
}

fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("create data dir {}", dir.display()))?;
    let p = dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("open {}", p.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        anyhow::anyhow!(
            "data dir {} is in use by another csv-node ({e})",
            dir.display()
        )
    })?;
    Ok(f)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("csv-node")
        .build()
        .context("start runtime")?;
    let span = tracing::info_span!("node", node_id = cfg.node.id);
    rt.block_on(serve(cfg).instrument(span))
}

async fn serve(cfg: NodeConfig) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&cfg.paths.data_dir)?;
    let existing = state_file::read(&cfg.paths.data_dir)?;
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        phase: RwLock::new(Phase::Uninitialized),
        leases: Arc::new(lease::Leases::new(NodeId(cfg.node.id), cfg.lease.timing()?)),
        join_task: std::sync::Mutex::new(None),
        vol: Default::default(),
        att: Default::default(),
        ops: Default::default(),
        remote: Default::default(),
        catalog_changed: Default::default(),
    });
    detach::register_handoff(&daemon)?;
    if cfg.lease.watchdog {
        let w = crate::watchdog::Watchdog::spawn()?;
        tracing::info!(pid = w.pid(), "lease watchdog running");
        daemon.leases.set_watchdog(w);
    }
    let (found_tx, mut found_rx) = mpsc::channel(1);
    match &existing {
        Some(st) => {
            let mut phase = daemon.phase.write().await;
            daemon.become_member(&mut phase, st, false).await?;
        }
        None => {
            let listener = tokio::net::TcpListener::bind(cfg.cluster.listen)
                .await
                .with_context(|| format!("bind cluster address {}", cfg.cluster.listen))?;
            let expected = match &cfg.cluster.join_cluster_id {
                Some(c) => Some(c.parse::<ClusterId>().map_err(|e| anyhow::anyhow!("{e}"))?),
                None => None,
            };
            let t = tokio::spawn(
                join::wait_for_leader(listener, cfg.node.id, expected, found_tx).in_current_span(),
            );
            *daemon.join_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
            tracing::info!(listen = %cfg.cluster.listen, "uninitialised: waiting for `cluster init` or to be added");
        }
    }
    let sock = cfg.admin_socket();
    let listener = admin::bind(&sock)?;
    let admin_task = tokio::spawn(admin::serve(listener, daemon.clone()).in_current_span());
    tracing::info!(admin = %sock.display(), "admin socket ready");

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(inv) = found_rx.recv() => {
                let cluster = inv.cluster;
                if let Err(e) = daemon.join(inv).await {
                    tracing::error!(error = %format!("{e:#}"), "joining failed");
                    bail!("join cluster {cluster}: {e:#}");
                }
            }
        }
    }
    tracing::info!("shutting down");
    admin_task.abort();
    // Exports closed and flushed, holds released, then `Leave`: other nodes may take
    // this node's VHDs at once. Bounded: without a quorum the holds expire instead.
    if tokio::time::timeout(RELEASE_DEADLINE, daemon.release_at_shutdown())
        .await
        .is_err()
    {
        tracing::warn!("releasing the attachments took too long; the rest expire with the lease");
    }
    // `Leave` drops every hold at once: not while a write hold is kept (its final flush
    // failed, or its writes are still in doubt): that one expires with the lease.
    let kept = daemon.leases.write_holds();
    if kept > 0 {
        tracing::warn!(
            holds = kept,
            "write holds kept (a final flush failed or writes are in doubt): not leaving; they expire with the lease"
        );
    } else if let Err(e) = daemon.leave_cluster(LEAVE_TIMEOUT).await {
        tracing::warn!("leave at shutdown: {e}");
    }
    let _ = std::fs::remove_file(&sock);
    if tokio::time::timeout(STOP_DEADLINE, daemon.stop())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed");
    }
    tracing::info!("stopped");
    Ok(())
}
