//! Real-TCP, RocksDB-backed clusters inside the test process: each node has its own data
//! directory (temp dir), its own TCP transport on a loopback port (kept across restarts),
//! and runs its own driver thread.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meta_store::kvsm::{KvCommand, KvStateMachine};
use meta_store::{Config, Error, MetaHandle, MetaNode, PeerAddr, Role, TcpConfig, TcpTransport};

pub struct TestNode {
    pub id: u64,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub transport: Option<TcpTransport>,
    pub handle: Option<MetaHandle>,
}

pub struct TestCluster {
    _tmp: tempfile::TempDir,
    pub nodes: BTreeMap<u64, TestNode>,
    pub voters: Vec<u64>,
    pub tune: fn(&mut Config),
}

pub const CLUSTER: &str = "test-cluster";

/// How long tests wait for elections, commits and convergence. Generous: other work on
/// the machine can stall fsync for seconds, and a stalled fsync stalls Raft. Waits return
/// as soon as their condition holds.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn cmd_put(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
}

pub fn no_tune(_: &mut Config) {}

impl TestCluster {
    /// `n` nodes, voters `1..=voters`; nodes above that are prepared (address reserved) but
    /// not started.
    pub async fn start(n: u64, voters: u64, tune: fn(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        // Each cluster lives on its own loopback addresses (127.x.y.z, one per node), so
        // the ports it reserves are not handed out to other sockets, which use 127.0.0.1,
        // while a node is down.
        let base = loopback_base();
        for id in 1..=n {
            // Reserve a port: bind, read, release; the node rebinds it (also on restart).
            let ip = std::net::Ipv4Addr::new(127, base[0], base[1], base[2] + id as u8);
            let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
            let addr = l.local_addr().expect("addr");
            drop(l);
            let dir = tmp.path().join(format!("node{id}"));
            nodes.insert(
                id,
                TestNode {
                    id,
                    dir,
                    addr,
                    transport: None,
                    handle: None,
                },
            );
        }
        let mut c = TestCluster {
            _tmp: tmp,
            nodes,
            voters: (1..=voters).collect(),
            tune,
        };
        for id in 1..=voters {
            c.start_node(id).await;
        }
        c
    }

    pub fn config(&self, id: u64) -> Config {
        let mut cfg = Config::new(id, CLUSTER);
        cfg.initial_voters = self.voters.clone();
        cfg.peers = self
            .nodes
            .values()
            .map(|n| PeerAddr {
                id: n.id,
                addr: n.addr.to_string(),
            })
            .collect();
        (self.tune)(&mut cfg);
        cfg
    }

    /// Starts (or restarts) node `id` on its directory and address. A node outside the
    /// initial voters starts empty and waits to be added.
    pub async fn start_node(&mut self, id: u64) {
        let mut cfg = self.config(id);
        if !self.voters.contains(&id) {
            cfg.initial_voters.clear();
        }
        let node = self.nodes.get_mut(&id).expect("node");
        let tcfg = TcpConfig::new(id, CLUSTER, node.addr, cfg.required_frame_bytes());
        let transport = bind_retry(tcfg).await;
        let handle = MetaNode::start(
            cfg,
            &node.dir,
            KvStateMachine::new(),
            Arc::new(transport.clone()),
        )
        .await
        .expect("start node");
        node.transport = Some(transport);
        node.handle = Some(handle);
    }

    /// Stops node `id` abruptly: the driver stops between two Ready passes and every
    /// connection closes; only what was already written survives.
    pub async fn stop_node(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(h) = node.handle.take() {
            h.shutdown().await;
        }
        if let Some(t) = node.transport.take() {
            meta_store::Transport::shutdown(&t);
        }
    }

    pub async fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop_node(id).await;
        }
    }

    pub fn h(&self, id: u64) -> &MetaHandle {
        self.nodes[&id].handle.as_ref().expect("node running")
    }

    pub fn t(&self, id: u64) -> &TcpTransport {
        self.nodes[&id].transport.as_ref().expect("node running")
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.handle.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// The leader all running nodes among `among` agree on.
    pub async fn wait_leader_among(&self, among: &[u64], timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let mut leaders = Vec::new();
            let mut leader_role = None;
            for id in among {
                if let Some(h) = &self.nodes[id].handle
                    && let Ok(st) = h.status().await
                {
                    leaders.push(st.leader);
                    if st.role == Role::Leader {
                        leader_role = Some(*id);
                    }
                }
            }
            if let Some(l) = leader_role
                && leaders.len() == among.len()
                && leaders.iter().all(|x| *x == Some(l))
            {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no agreed leader among {among:?} within {timeout:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        let running = self.running();
        self.wait_leader_among(&running, timeout).await
    }

    /// Proposes through `via`, retrying until `timeout`: retry-safe errors, and timeouts
    /// too (the tests' puts are idempotent).
    pub async fn propose_retry(
        &self,
        via: u64,
        cmd: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let start = Instant::now();
        loop {
            match self.h(via).propose(cmd.clone()).await {
                Err(e)
                    if (e.is_retry_safe() || e == Error::Timeout) && start.elapsed() < timeout =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }

    /// Waits until every node in `ids` has applied the same index as the others and their
    /// persisted and in-memory hashes agree; returns that index.
    pub async fn wait_converged(&self, ids: &[u64], timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let mut hs = Vec::new();
            for id in ids {
                if let Ok(h) = self.h(*id).hashes().await {
                    hs.push(h);
                }
            }
            if hs.len() == ids.len() && hs.windows(2).all(|w| w[0] == w[1]) {
                return hs[0].applied;
            }
            assert!(
                start.elapsed() < timeout,
                "replicas {ids:?} did not converge: {hs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Linearizable read of `key` through `via`.
    pub async fn get(&self, via: u64, key: &str) -> Option<Vec<u8>> {
        let v = self
            .h(via)
            .query(key.as_bytes().to_vec())
            .await
            .expect("linearizable query");
        match v.split_first() {
            Some((1, rest)) => Some(rest.to_vec()),
            _ => None,
        }
    }
}

fn loopback_base() -> [u8; 3] {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    let h = mix.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    [
        1 + (h >> 8) as u8 % 250,
        (h >> 16) as u8,
        ((h >> 24) as u8 % 200) + 1,
    ]
}

async fn bind_retry(cfg: TcpConfig) -> TcpTransport {
    let start = Instant::now();
    loop {
        match TcpTransport::bind(cfg.clone()).await {
            Ok(t) => return t,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind {}: {e}", cfg.listen),
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,raft=error")),
        )
        .with_test_writer()
        .try_init();
}

impl Drop for TestCluster {
    /// A failing test still stops its nodes, so no driver thread touches RocksDB while
    /// the process exits.
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            n.handle.take();
            if let Some(t) = n.transport.take() {
                meta_store::Transport::shutdown(&t);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
