//! Metadata benchmark: a 3-node cluster on loopback TCP with RocksDB (every Raft write
//! fsynced), measuring
//!
//! 1. throughput and latency of proposals from N concurrent clients spread over all nodes
//!    (followers forward to the leader), next to a reference measured in slices interleaved
//!    with it: one writer doing fsynced RocksDB puts on the same disk (what one fsync per
//!    operation would allow), so the ratio shows what batching buys;
//! 2. coordinator failover: the leader is stopped abruptly (driver and sockets gone at
//!    once) and the time until the next proposal commits through a survivor is measured,
//!    over several runs.
//!
//! Targets (MISSION): at least 1,000 operations/s; failover under 3 s at p99. With
//! `--check`, missing a target exits with status 1.
//!
//! Run: `scripts/bench-meta [--clients 64] [--seconds 10] [--failovers 20] [--check]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use meta_store::engine::{Cf, KvEngine, RocksEngine, WriteBatch};
use meta_store::kvsm::{KvCommand, KvStateMachine};
use meta_store::{
    Config, MetaHandle, MetaNode, PeerAddr, Role, TcpConfig, TcpTransport, Transport,
};

#[derive(Parser, Debug)]
#[command(about = "Raft metadata store benchmark (3-node loopback cluster, fsync on)")]
struct Args {
    /// Concurrent proposing clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes of each value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Failover runs.
    #[arg(long, default_value_t = 20)]
    failovers: usize,
    /// Directory for the stores (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Exit with status 1 when a target is missed.
    #[arg(long)]
    check: bool,
}

struct Node {
    id: u64,
    addr: std::net::SocketAddr,
    dir: PathBuf,
    handle: Option<MetaHandle>,
    transport: Option<TcpTransport>,
}

struct Cluster {
    nodes: Vec<Node>,
}

impl Cluster {
    fn config(&self, id: u64) -> Config {
        let mut c = Config::new(id, "bench");
        c.initial_voters = self.nodes.iter().map(|n| n.id).collect();
        c.peers = self
            .nodes
            .iter()
            .map(|n| PeerAddr {
                id: n.id,
                addr: n.addr.to_string(),
            })
            .collect();
        c
    }

    async fn start(&mut self, i: usize) -> Result<()> {
        let cfg = self.config(self.nodes[i].id);
        let n = &mut self.nodes[i];
        let tcfg = TcpConfig::new(n.id, "bench", n.addr, cfg.required_frame_bytes());
        let t0 = Instant::now();
        let transport = loop {
            match TcpTransport::bind(tcfg.clone()).await {
                Ok(t) => break t,
                Err(e) if t0.elapsed() < Duration::from_secs(5) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context(format!("bind {}", n.addr)),
            }
        };
        let h = MetaNode::start(
            cfg,
            &n.dir,
            KvStateMachine::new(),
            Arc::new(transport.clone()),
        )
        .await
        .with_context(|| format!("start node {}", n.id))?;
        n.handle = Some(h);
        n.transport = Some(transport);
        Ok(())
    }

    async fn stop(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(h) = n.handle.take() {
            h.shutdown().await;
        }
        if let Some(t) = n.transport.take() {
            t.shutdown();
        }
    }

    async fn leader(&self, timeout: Duration) -> Result<usize> {
        let t0 = Instant::now();
        loop {
            for (i, n) in self.nodes.iter().enumerate() {
                if let Some(h) = &n.handle
                    && let Ok(st) = h.status().await
                    && st.role == Role::Leader
                {
                    return Ok(i);
                }
            }
            if t0.elapsed() > timeout {
                bail!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn converged(&self, timeout: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let mut hs = Vec::new();
            for n in &self.nodes {
                if let Some(h) = &n.handle {
                    hs.push(h.hashes().await?);
                }
            }
            if hs.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if t0.elapsed() > timeout {
                bail!("replicas did not converge within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One writer doing fsynced puts for `dur` on a fresh RocksDB in `dir`: (puts, seconds).
fn reference_fsync_puts(dir: &Path, dur: Duration, value_bytes: usize) -> Result<(f64, f64)> {
    let e = RocksEngine::open(dir).context("open reference store")?;
    let value = vec![7u8; value_bytes];
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < dur {
        let mut b = WriteBatch::new();
        b.put(Cf::Sm, n.to_be_bytes().to_vec(), value.clone());
        e.write(b, true)?;
        n += 1;
    }
    Ok((n as f64, t0.elapsed().as_secs_f64()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,raft=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let tmp = tempfile::tempdir().context("temp dir")?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;

    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("reserve port")?;
        nodes.push(Node {
            id,
            addr: l.local_addr()?,
            dir: root.join(format!("node{id}")),
            handle: None,
            transport: None,
        });
    }
    let mut c = Cluster { nodes };
    for i in 0..3 {
        c.start(i).await?;
    }
    c.leader(Duration::from_secs(30)).await?;

    // Phase 1: throughput and latency, in slices alternating with the reference (one
    // writer doing fsynced puts on the same disk), so both see the same disk conditions on
    // this shared machine. Clients pause while the reference runs.
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let value = "v".repeat(args.value_bytes);
    let before = {
        let l = c.leader(Duration::from_secs(30)).await?;
        c.nodes[l]
            .handle
            .as_ref()
            .context("leader")?
            .status()
            .await?
    };
    let mut tasks = Vec::new();
    for k in 0..args.clients {
        let h = c.nodes[k % 3].handle.clone().context("node running")?;
        let stop = stop.clone();
        let running = running.clone();
        let errors = errors.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut j = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !running.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let cmd = KvCommand::Put {
                    key: format!("c{k}-{j}").into_bytes(),
                    value: value.clone().into_bytes(),
                }
                .encode();
                let t = Instant::now();
                match h.propose(cmd).await {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                j += 1;
            }
            lat
        }));
    }
    const SLICES: u32 = 5;
    let slice = Duration::from_secs(args.seconds.max(1)) / SLICES;
    let mut elapsed = Duration::ZERO;
    let mut reference_puts = 0.0;
    let mut reference_time = 0.0;
    for n in 0..SLICES {
        let dir = root.join(format!("reference{n}"));
        let vb = args.value_bytes;
        let (puts, secs) = tokio::task::spawn_blocking(move || {
            reference_fsync_puts(&dir, Duration::from_millis(500), vb)
        })
        .await??;
        reference_puts += puts;
        reference_time += secs;
        let t = Instant::now();
        running.store(true, Ordering::Relaxed);
        tokio::time::sleep(slice).await;
        running.store(false, Ordering::Relaxed);
        elapsed += t.elapsed();
        // Let the requests in flight finish before the disk goes to the reference.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let reference = reference_puts / reference_time;
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    lat.sort();
    let ops = lat.len() as f64 / elapsed.as_secs_f64();
    let after = {
        let l = c.leader(Duration::from_secs(30)).await?;
        c.nodes[l]
            .handle
            .as_ref()
            .context("leader")?
            .status()
            .await?
    };
    let fsyncs = after
        .stats
        .synced_writes
        .saturating_sub(before.stats.synced_writes);
    let per_fsync = lat.len() as f64 / fsyncs.max(1) as f64;
    println!("== metadata throughput: 3 nodes, loopback TCP, RocksDB fsync on ==");
    println!(
        "clients {}  value {} B  duration {:.1} s  committed {}  errors {}",
        args.clients,
        args.value_bytes,
        elapsed.as_secs_f64(),
        lat.len(),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "ops/s {ops:.0}  latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&lat, 1.0))
    );
    println!(
        "reference: one writer, fsynced RocksDB puts {reference:.0}/s; ratio ops/s : reference = {:.2}; \
         operations per leader fsync {per_fsync:.1}",
        ops / reference
    );
    c.converged(Duration::from_secs(30)).await?;

    // Phase 2: failover.
    let mut fo = Vec::new();
    for run in 0..args.failovers {
        let l = c.leader(Duration::from_secs(30)).await?;
        let survivor = (l + 1) % 3;
        let h = c.nodes[survivor].handle.clone().context("survivor")?;
        // Warm: a commit through the survivor before the cut.
        h.propose(
            KvCommand::Put {
                key: format!("warm{run}").into_bytes(),
                value: b"1".to_vec(),
            }
            .encode(),
        )
        .await
        .context("warm-up commit")?;
        let t = Instant::now();
        c.stop(l).await;
        loop {
            let cmd = KvCommand::Put {
                key: format!("fo{run}").into_bytes(),
                value: b"1".to_vec(),
            }
            .encode();
            match h.propose(cmd).await {
                Ok(_) => break,
                Err(e) if t.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                }
                Err(e) => bail!("no commit within 30 s of the leader stopping: {e}"),
            }
        }
        let took = t.elapsed();
        println!(
            "failover run {:2}: leader {} stopped, next commit after {:.0} ms",
            run + 1,
            l + 1,
            ms(took)
        );
        fo.push(took);
        c.start(l).await?;
        c.converged(Duration::from_secs(30)).await?;
    }
    fo.sort();
    let (p50, p99, max) = (pct(&fo, 0.5), pct(&fo, 0.99), pct(&fo, 1.0));
    if !fo.is_empty() {
        println!(
            "== coordinator failover (leader stopped abruptly -> next commit), {} runs ==",
            fo.len()
        );
        println!(
            "p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    let ops_ok = ops >= 1000.0;
    let fo_ok = fo.is_empty() || p99 < Duration::from_secs(3);
    println!(
        "targets: ops/s >= 1000: {}; failover p99 < 3 s: {}",
        if ops_ok { "met" } else { "MISSED" },
        if fo.is_empty() {
            "not measured"
        } else if fo_ok {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "{}",
        serde_json::json!({
            "clients": args.clients,
            "value_bytes": args.value_bytes,
            "ops_per_s": ops.round(),
            "latency_ms": {"p50": ms(pct(&lat, 0.5)), "p99": ms(pct(&lat, 0.99)), "max": ms(pct(&lat, 1.0))},
            "reference_fsync_puts_per_s": reference.round(),
            "ops_per_leader_fsync": per_fsync,
            "failover_ms": {"runs": fo.len(), "p50": ms(p50), "p99": ms(p99), "max": ms(max)},
        })
    );
    for i in 0..3 {
        c.stop(i).await;
    }
    if args.check && !(ops_ok && fo_ok) {
        std::process::exit(1);
    }
    Ok(())
}
