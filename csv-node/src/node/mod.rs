//! `csv-node run --config FILE`: the node. It composes the subsystems, each over narrow
//! handles of the layers below it (config <- meta <- lease <- data <- ops <- admin <-
//! node), starts their tasks, serves the admin socket, and stops them in order at
//! SIGTERM/SIGINT. Design: docs/design/050-control-plane.md §4.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use csv_api::NodeId;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::admin::{self, Admin};
use crate::config::NodeConfig;
use crate::data::Data;
use crate::hypervisor::Hypervisor;
use crate::lease::{self, Leases};
use crate::meta::Meta;
use crate::metrics::Metrics;
use crate::metrics::collect::StateCollector;
use crate::ops::Ops;
use crate::task::Tasks;

mod systemd;
pub use systemd::{MIN_WATCHDOG, check_watchdog, max_watchdog, may_ping};

/// How long closing the exports and releasing their holds may take at shutdown (a map
/// commit or a release needs a quorum, which a whole-cluster stop may already lack).
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the `Leave` proposal at shutdown may wait for a quorum.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long stopping the metadata store may take.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// How long the node's remaining tasks may take to end once cancelled. With the three
/// above, a graceful shutdown ends within 19 s (`scripts/local-cluster stop` waits 20 s
/// before SIGKILL).
const TASKS_DEADLINE: Duration = Duration::from_secs(1);

/// `csv-node run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The node configuration file (TOML; see csv-node/node.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// `csv-node check-config` arguments.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The node configuration file to check.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

/// One node: its subsystems and its tasks.
struct Node {
    cfg: Arc<NodeConfig>,
    meta: Arc<Meta>,
    leases: Arc<Leases>,
    data: Arc<Data>,
    ops: Arc<Ops>,
    hv: Arc<Hypervisor>,
    /// Sets the state gauges of the node's metrics before each encoding.
    collector: Arc<StateCollector>,
    tasks: Tasks,
}

impl Node {
    fn new(cfg: NodeConfig) -> anyhow::Result<Node> {
        let cfg = Arc::new(cfg);
        let tasks = Tasks::default();
        let metrics = Arc::new(Metrics::new());
        let meta = Arc::new(Meta::new(cfg.clone(), metrics.clone(), tasks.clone()));
        let lock_events = meta
            .events()
            .take_lock_events()
            .context("the lock events have one reader")?;
        let leases = Arc::new(Leases::new(
            NodeId(cfg.node.id),
            cfg.lease.timing()?,
            lock_events,
            tasks.clone(),
            metrics.clone(),
        ));
        let data = Arc::new(Data::new(
            cfg.clone(),
            meta.clone(),
            leases.clone(),
            tasks.clone(),
        ));
        let ops = Arc::new(Ops::new(data.clone(), tasks.clone()));
        let hv = Arc::new(Hypervisor::new(cfg.clone(), meta.clone(), data.clone()));
        let collector = Arc::new(StateCollector::new(metrics, meta.clone(), data.clone()));
        Ok(Node {
            cfg,
            meta,
            leases,
            data,
            ops,
            hv,
            collector,
            tasks,
        })
    }

    fn admin(&self) -> Admin {
        Admin {
            cfg: self.cfg.clone(),
            meta: self.meta.clone(),
            leases: self.leases.clone(),
            data: self.data.clone(),
            ops: self.ops.clone(),
            hv: self.hv.clone(),
            metrics: self.collector.clone(),
            tasks: self.tasks.clone(),
        }
    }

    /// Starts the member tasks of every subsystem once the metadata store runs (at
    /// start from the state file, after `cluster init`, or after joining: a node
    /// becomes a member once per process).
    fn start_member_tasks(&self) {
        let mut members = self.meta.subscribe_members();
        let (leases, data, ops) = (self.leases.clone(), self.data.clone(), self.ops.clone());
        let hv = self.hv.clone();
        self.tasks.spawn(async move {
            let Ok(m) = members.wait_for(Option::is_some).await.map(|m| m.clone()) else {
                return;
            };
            let Some(m) = m else { return };
            leases.start_member(m.clone());
            data.start_member();
            hv.start_member(m.clone());
            ops.start_member(m);
        });
    }

    /// Graceful stop: the VM runners ended (QEMU runs on), exports closed and flushed, holds released, then `Leave` (other
    /// nodes may take this node's VHDs at once), then the metadata store, then the
    /// remaining tasks. Bounded: without a quorum the holds expire instead.
    async fn shutdown(&self) {
        if self.hv.stop().await > 0 {
            tracing::warn!("VM runners still running at their stop bound");
        }
        if tokio::time::timeout(RELEASE_DEADLINE, self.data.release_at_shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                "releasing the attachments took too long; the rest expire with the lease"
            );
        }
        // `Leave` drops every hold at once: not while a write hold is kept (its final
        // flush failed, or its writes are still in doubt): that one expires with the
        // lease.
        let kept = self.leases.write_holds();
        if kept > 0 {
            tracing::warn!(
                holds = kept,
                "write holds kept (a final flush failed or writes are in doubt): not leaving; they expire with the lease"
            );
        } else if let Err(e) = self.leases.leave_cluster(&self.meta, LEAVE_TIMEOUT).await {
            tracing::warn!("leave at shutdown: {e}");
        }
        if tokio::time::timeout(STOP_DEADLINE, self.meta.stop())
            .await
            .is_err()
        {
            tracing::warn!("shutdown deadline passed");
        }
        let left = self.tasks.stop(TASKS_DEADLINE).await;
        if left > 0 {
            tracing::warn!(tasks = left, "tasks still running at the stop deadline");
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

/// Everything `csv-node run` checks before it starts: the file (syntax, every value,
/// the cross-field rules), what it names on this host (the admin socket's read-only
/// group), and systemd's watchdog interval (`WATCHDOG_USEC`) against the outage budget.
/// Returns the configuration, the admin socket's group id and the watchdog interval.
fn load_checked(
    path: &std::path::Path,
) -> anyhow::Result<(NodeConfig, Option<u32>, Option<Duration>)> {
    let cfg = NodeConfig::load(path)?;
    let group = match &cfg.admin.read_only_group {
        Some(name) => Some(crate::sys::group_id(name).map_err(|e| {
            anyhow::anyhow!("invalid config: admin.read_only_group: {name:?}: {e}")
        })?),
        None => None,
    };
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        let timing = cfg
            .lease
            .timing()
            .map_err(|e| anyhow::anyhow!("invalid config: lease.outage_budget: {e}"))?;
        if let Some(warning) = check_watchdog(w, &timing).map_err(anyhow::Error::msg)? {
            tracing::warn!("{warning}");
        }
    }
    Ok((cfg, group, watchdog))
}

/// `csv-node check-config`: loads and checks the file as `run` would (see
/// [`load_checked`]); prints `ok`, or returns what is wrong (field and reason).
pub fn check_config(args: CheckArgs) -> anyhow::Result<()> {
    load_checked(&args.config)?;
    println!("ok");
    Ok(())
}

/// Runs the node until SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, group, watchdog) = load_checked(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("csv-node")
        .build()
        .context("start runtime")?;
    let span = tracing::info_span!("node", node = cfg.node.id);
    rt.block_on(serve(cfg, group, watchdog).instrument(span))
}

async fn serve(
    cfg: NodeConfig,
    group: Option<u32>,
    watchdog: Option<Duration>,
) -> anyhow::Result<()> {
    let _lock = lock_data_dir(&cfg.paths.data_dir)?;
    let node = Node::new(cfg)?;
    if node.cfg.lease.watchdog {
        let w = lease::watchdog::Watchdog::spawn()?;
        tracing::info!(pid = w.pid(), "lease watchdog running");
        node.leases.set_watchdog(w);
    }
    node.data.start();
    node.start_member_tasks();
    let (found_tx, mut found_rx) = mpsc::channel(1);
    node.meta.start(found_tx).await?;
    let sock = node.cfg.admin_socket();
    let access = admin::Access::new(group);
    let listener = {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || admin::bind(&sock, group))
            .await
            .context("bind the admin socket")??
    };
    let listener = tokio::net::UnixListener::from_std(listener).context("admin socket")?;
    let admin_stop = node.tasks.token().child_token();
    node.tasks.spawn(admin::serve(
        listener,
        node.admin(),
        access,
        admin_stop.clone(),
    ));
    tracing::info!(admin = %sock.display(), read_only_group = ?group, "admin socket ready");
    if let Some(addr) = node.cfg.metrics.listen {
        let listener = crate::metrics::http::bind(addr).await?;
        let bound = listener.local_addr().context("metrics endpoint address")?;
        node.tasks.spawn(crate::metrics::http::serve(
            listener,
            node.collector.clone(),
            node.tasks.clone(),
            admin_stop.clone(),
        ));
        tracing::info!(metrics = %bound, "metrics endpoint ready: GET /metrics");
    }

    // The pings go on through the shutdown (systemd may still watch it) and end with
    // the process.
    let pings_stop = tokio_util::sync::CancellationToken::new();
    let _pings_stop_at_return = pings_stop.clone().drop_guard();
    if let Some(w) = watchdog {
        tracing::info!(watchdog = ?w, "systemd watchdog: pinging every {:?}", w / 2);
        tokio::spawn(systemd::watchdog_pings(w, node.leases.clone(), pings_stop));
    }
    // The handlers first: systemd may send SIGTERM as soon as it has READY=1.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    systemd::notify(systemd::Notice::Ready(format!(
        "node {} serving; admin socket {}",
        node.cfg.node.id,
        sock.display()
    )))
    .await;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(inv) = found_rx.recv() => {
                let cluster = inv.cluster;
                if let Err(e) = node.meta.join(inv).await {
                    tracing::error!(error = %format!("{e:#}"), "joining failed");
                    bail!("join cluster {cluster}: {e:#}");
                }
                systemd::notify(systemd::Notice::Status(format!(
                    "node {} serving, member of cluster {cluster}; admin socket {}",
                    node.cfg.node.id,
                    sock.display()
                )))
                .await;
            }
        }
    }
    tracing::info!("shutting down");
    systemd::notify(systemd::Notice::Stopping(format!(
        "node {} shutting down",
        node.cfg.node.id
    )))
    .await;
    // No new admin connections from here on (requests in progress go on until the
    // tasks stop).
    admin_stop.cancel();
    let _ = std::fs::remove_file(&sock);
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
