//! Process-level test fixture of csv: clusters of real `csv-node run` processes on
//! loopback (or each in its own network namespace), driven through the admin API
//! (`csv_api::admin::Client`). Nodes are killed when the fixture is dropped; namespaces
//! are deleted. The binaries come from the workspace target directory (`scripts/test`
//! builds them before the tests run).

pub mod bench;
pub mod chaos;
pub mod leases;
pub mod nbdpy;
pub mod netns;
pub mod san;
pub mod scale;
pub mod volume;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csv_api::admin::{Client, ClientError, Status, VhdCreate, VhdKind, Volume};

/// How long waits for elections, commits and convergence may take before a test fails
/// (generous: a stalled fsync on this shared machine stalls Raft for seconds). Waits end
/// as soon as their condition holds.
pub const PATIENCE: Duration = Duration::from_secs(45);

/// A workspace binary next to the test executable (`target/<profile>/<name>`), or in
/// `CSV_BIN_DIR` when set (to run these tests against another build, e.g. an older one).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CSV_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, \
         which scripts/test does)",
        p.display()
    );
    p
}

/// Settings of a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Log compaction threshold (entries) and entries kept.
    pub compact: Option<(u64, u64)>,
    /// Run every node in its own network namespace (root only).
    pub netns: bool,
    /// Extra `RUST_LOG`.
    pub log: String,
    /// Extra TOML appended to every node's config (e.g. a `[lease]` section); `{id}`
    /// stands for the node's id.
    pub extra_config: String,
    /// Mutual TLS between the nodes, with a CA made for the cluster ([`Cluster::pki`]);
    /// off, the configs say `[tls] plaintext = true` (and `nbd = "off"`).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compact: None,
            netns: false,
            log: "info,raft=warn".into(),
            extra_config: String::new(),
            tls: false,
        }
    }
}

/// One node process.
#[derive(Debug)]
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Its directory (config, data, log).
    pub dir: PathBuf,
    /// Cluster address.
    pub addr: SocketAddr,
    /// Admin socket.
    pub admin: PathBuf,
    /// Extra environment of its process (e.g. `FAILPOINTS`), set with [`Cluster::set_env`].
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of node processes.
#[derive(Debug)]
pub struct Cluster {
    tmp: tempfile::TempDir,
    /// Nodes by id.
    pub nodes: BTreeMap<u64, Node>,
    opts: Options,
    ns: Option<netns::Net>,
}

/// A TCP port that was free on `ip` a moment ago.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind a free port");
    l.local_addr().expect("addr").port()
}

/// A loopback base 127.a.b.0 unlikely to be used by another cluster of the same run.
fn loopback_base() -> [u8; 2] {
    let mut h = std::process::id() as u64;
    h ^= Instant::now().elapsed().as_nanos() as u64;
    h ^= std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    [10 + (h >> 56) as u8 % 200, (h >> 48) as u8]
}

impl Cluster {
    /// Prepares `n` nodes (ids 1..=n, not started).
    pub fn new(n: u64, opts: Options) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("csv-cluster-")
            .tempdir()
            .expect("tempdir");
        let ns = opts.netns.then(|| netns::Net::create(n));
        let base = loopback_base();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let ip = match &ns {
                Some(net) => net.ip(id),
                None => Ipv4Addr::new(127, base[0], base[1], id as u8),
            };
            let port = if ns.is_some() { 7400 } else { free_port(ip) };
            let dir = tmp.path().join(id.to_string());
            fs::create_dir_all(&dir).expect("node dir");
            nodes.insert(
                id,
                Node {
                    id,
                    addr: SocketAddr::from((ip, port)),
                    admin: dir.join("data").join("admin.sock"),
                    dir,
                    env: Vec::new(),
                    child: None,
                },
            );
        }
        let c = Cluster {
            tmp,
            nodes,
            opts,
            ns,
        };
        if c.opts.tls {
            csv_tls::pki::init_ca(&c.pki(), "csv test cluster", 30).expect("cluster CA");
        }
        for id in 1..=n {
            c.write_config(id);
        }
        c
    }

    /// Adds node `id` (prepared, not started).
    pub fn prepare(&mut self, id: u64) {
        let base_ip = match self.nodes.values().next().map(|n| n.addr.ip()) {
            Some(std::net::IpAddr::V4(ip)) => ip.octets(),
            _ => panic!("no node to copy the address base from"),
        };
        assert!(
            self.ns.is_none(),
            "nodes cannot be added to a namespaced cluster"
        );
        let ip = Ipv4Addr::new(base_ip[0], base_ip[1], base_ip[2], id as u8);
        let dir = self.tmp.path().join(id.to_string());
        fs::create_dir_all(&dir).expect("node dir");
        self.nodes.insert(
            id,
            Node {
                id,
                addr: SocketAddr::from((ip, free_port(ip))),
                admin: dir.join("data").join("admin.sock"),
                dir,
                env: Vec::new(),
                child: None,
            },
        );
        self.write_config(id);
    }

    /// Sets (or with an empty value, removes) an environment variable of node `id`'s
    /// process from its next start on.
    pub fn set_env(&mut self, id: u64, key: &str, value: &str) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.env.retain(|(k, _)| k != key);
        if !value.is_empty() {
            n.env.push((key.to_string(), value.to_string()));
        }
    }

    /// The cluster CA's directory (`ca.pem`, `node-<id>.pem`/`.key`; with `Options::tls`).
    pub fn pki(&self) -> PathBuf {
        self.tmp.path().join("pki")
    }

    fn tls_config(&self, id: u64) -> String {
        if !self.opts.tls {
            return "[tls]\nplaintext = true\nnbd = \"off\"\n".into();
        }
        let dir = self.pki();
        let files = csv_tls::pki::node_paths(&dir, id);
        if !files.cert.exists() {
            // Valid for the node's address and loopback too: NBD clients check the
            // host they dial.
            let hosts = [self.nodes[&id].addr.ip().to_string(), "127.0.0.1".into()];
            csv_tls::pki::issue_node(&dir, id, &hosts, 30).expect("node certificate");
        }
        format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            csv_tls::pki::ca_cert_path(&dir).display(),
            files.cert.display(),
            files.key.display()
        )
    }

    fn write_config(&self, id: u64) {
        let n = &self.nodes[&id];
        let mut text = format!(
            "[node]\nid = {id}\n[cluster]\nlisten = \"{}\"\n[paths]\ndata_dir = \"{}\"\n[admin]\ncatch_up_timeout = \"40s\"\n",
            n.addr,
            n.data_dir().display()
        );
        if let Some((t, k)) = self.opts.compact {
            text.push_str(&format!(
                "[raft]\ncompact_threshold = {t}\nkeep_entries = {k}\n"
            ));
        }
        text.push_str(&self.tls_config(id));
        // `{id}` in the extra TOML is the node's id (a per-node LUN path, say).
        text.push_str(&self.opts.extra_config.replace("{id}", &id.to_string()));
        fs::write(n.dir.join("node.toml"), text).expect("write config");
    }

    /// Replaces the extra TOML of every node's config (from their next start on).
    pub fn set_extra_config(&mut self, extra: &str) {
        self.opts.extra_config = extra.to_string();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.write_config(id);
        }
    }

    /// The namespaces of a cluster made with `Options::netns`.
    pub fn net(&self) -> &netns::Net {
        self.ns.as_ref().expect("a namespaced cluster")
    }

    /// The fixture's temp directory.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Starts (or restarts) node `id` and waits until its admin socket answers.
    pub fn start(&mut self, id: u64) {
        let csv_node = binary("csv-node");
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.child.is_none(), "node {id} runs already");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let mut cmd = match &self.ns {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.ns_name(id)]).arg(&csv_node);
                c
            }
            None => Command::new(&csv_node),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(node.dir.join("node.toml"))
            .env("RUST_LOG", &self.opts.log)
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        node.child = Some(cmd.spawn().expect("spawn csv-node"));
        let admin = node.admin.clone();
        let start = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&admin)
                && c.status().is_ok()
            {
                return;
            }
            if let Some(ch) = self.nodes.get_mut(&id).and_then(|n| n.child.as_mut())
                && let Ok(Some(st)) = ch.try_wait()
            {
                panic!("node {id} exited with {st}; log:\n{}", self.log(id));
            }
            assert!(
                start.elapsed() < PATIENCE,
                "node {id} admin socket not answering; log:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The tail of a node's log (`CSV_LOG_LINES` lines, default 60).
    pub fn log(&self, id: u64) -> String {
        let s = fs::read_to_string(self.nodes[&id].log_path()).unwrap_or_default();
        let n = std::env::var("CSV_LOG_LINES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let tail: Vec<&str> = s.lines().rev().take(n).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut ch) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// The exit status of node `id` once its process ended (it is then not running);
    /// `None` while it runs.
    pub fn try_exit(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let n = self.nodes.get_mut(&id)?;
        let st = n.child.as_mut()?.try_wait().ok()??;
        n.child = None;
        Some(st)
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[&id].child.as_ref().map(Child::id)
    }

    /// Sends signal `sig` (a `kill` name such as "STOP" or "CONT") to node `id`.
    pub fn signal(&self, id: u64, sig: &str) {
        let pid = self.nodes[&id].child.as_ref().expect("node runs").id();
        if let Err(e) = send_signal(pid, sig) {
            panic!("kill -{sig} {pid}: {e}");
        }
    }

    /// Stops node `id` with SIGTERM and waits for it (SIGKILL after 20 s).
    pub fn stop(&mut self, id: u64) {
        if let Some(mut ch) = self.nodes.get_mut(&id).and_then(|n| n.child.take()) {
            let _ = send_signal(ch.id(), "TERM");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = ch.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    /// A client of node `id`.
    pub fn client(&self, id: u64) -> Client {
        let c = Client::connect(&self.nodes[&id].admin).expect("connect admin socket");
        c.set_timeout(Duration::from_secs(90)).expect("timeout");
        c
    }

    /// Status of node `id`, if it answers.
    pub fn status(&self, id: u64) -> Option<Status> {
        let mut c = Client::connect(&self.nodes[&id].admin).ok()?;
        c.set_timeout(Duration::from_secs(5)).ok()?;
        c.status().ok()
    }

    /// Ids of the running nodes.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.running())
            .map(|n| n.id)
            .collect()
    }

    /// Starts every node, creates the cluster on node 1 and adds the others as voters.
    pub fn bootstrap(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.start(*id);
        }
        self.client(1).cluster_init("test").expect("cluster init");
        for id in ids.iter().filter(|i| **i != 1) {
            let addr = self.nodes[id].addr.to_string();
            self.client(1)
                .node_add(*id, &addr, false)
                .unwrap_or_else(|e| panic!("add node {id}: {e}; log:\n{}", self.log(*id)));
        }
    }

    /// The coordinator every node of `among` agrees on.
    pub fn wait_leader_among(&self, among: &[u64], timeout: Duration) -> u64 {
        let start = Instant::now();
        loop {
            let st: Vec<Option<Status>> = among.iter().map(|id| self.status(*id)).collect();
            if let Some(Some(first)) = st.first() {
                let l = first.coordinator;
                if l != 0
                    && among.contains(&l)
                    && st
                        .iter()
                        .all(|s| s.as_ref().is_some_and(|s| s.coordinator == l))
                    && st
                        .iter()
                        .flatten()
                        .any(|s| s.node_id == l && s.role == "leader")
                {
                    return l;
                }
            }
            assert!(
                start.elapsed() < timeout,
                "no agreed coordinator among {among:?} within {timeout:?}: {:?}",
                st.iter()
                    .map(|s| s.as_ref().map(|s| (s.node_id, s.coordinator, s.term)))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The coordinator the running nodes agree on.
    pub fn wait_leader(&self) -> u64 {
        self.wait_leader_among(&self.running(), PATIENCE)
    }

    /// Waits until every node of `ids` is at the same applied index with equal state and
    /// persisted hashes; returns that index.
    pub fn wait_converged(&self, ids: &[u64]) -> u64 {
        let start = Instant::now();
        loop {
            let st: Vec<Option<Status>> = ids.iter().map(|id| self.status(*id)).collect();
            if st.iter().all(Option::is_some) {
                let st: Vec<Status> = st.into_iter().flatten().collect();
                let f = &st[0];
                if f.applied_index > 0
                    && st.iter().all(|s| {
                        s.applied_index == f.applied_index
                            && s.state_hash == f.state_hash
                            && s.persisted_hash == f.persisted_hash
                    })
                {
                    return f.applied_index;
                }
                if start.elapsed() > PATIENCE {
                    panic!(
                        "nodes {ids:?} did not converge: {:?}",
                        st.iter()
                            .map(|s| (s.node_id, s.applied_index, s.state_hash))
                            .collect::<Vec<_>>()
                    );
                }
            } else {
                assert!(
                    start.elapsed() < PATIENCE,
                    "a node of {ids:?} does not answer"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets a volume of `extents` extents of 1 MiB (a catalog for the tests to fill).
    pub fn set_volume(&self, via: u64, extents: u64) {
        let v = volume(extents);
        self.client(via).volume_set(v).expect("set volume");
    }
}

/// A volume record of `extents` 1-MiB extents.
pub fn volume(extents: u64) -> Volume {
    Volume {
        volume_id: "7d1b6a52-3c7e-4d8e-9f00-0000000000aa".into(),
        lun: "test-lun".into(),
        description: "csv-tests".into(),
        size: (1 << 20) + extents * (1 << 20),
        extent_size: 1 << 20,
        extent_count: extents,
        data_offset: 1 << 20,
    }
}

/// A dynamic VHD of one extent named `name`.
pub fn small_vhd(name: &str) -> VhdCreate {
    VhdCreate {
        name: name.into(),
        kind: VhdKind::Dynamic as i32,
        virtual_size: 1 << 30,
        parent: 0,
        length: 1 << 20,
    }
}

/// Creates VHD `name` through `c`, retrying while the cluster has no coordinator or the
/// outcome is unknown; a retry that finds the name taken is an earlier attempt that
/// applied. Returns the VHD id.
pub fn create_retry(c: &mut Client, name: &str, timeout: Duration) -> Result<u64, ClientError> {
    let start = Instant::now();
    loop {
        match c.vhd_create(small_vhd(name)) {
            Ok(v) => return Ok(v.id),
            Err(ClientError::Api(e)) if e.code() == csv_api::ErrorCode::AlreadyExists => {
                return c.vhd_get_by_name(name).map(|v| v.id);
            }
            Err(e) if start.elapsed() < timeout && retryable(&e) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors after which a request may simply be sent again (possibly on a new connection).
pub fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Api(a) => {
            a.code().is_retry_safe()
                || a.code() == csv_api::ErrorCode::Timeout
                || a.code() == csv_api::ErrorCode::Indeterminate
        }
        ClientError::Frame(_) | ClientError::Closed => true,
        _ => false,
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        if std::thread::panicking() || std::env::var_os("CSV_KEEP_LOGS").is_some() {
            for n in self.nodes.values() {
                eprintln!("---- node {} log (tail) ----\n{}", n.id, self.log(n.id));
            }
        }
        // The namespaces go when `ns` drops, after the processes inside are gone.
        self.ns.take();
    }
}

/// Sends the signal named `sig` ("STOP", "CONT", "TERM", "KILL", "INT") to process `pid`.
pub fn send_signal(pid: u32, sig: &str) -> std::io::Result<()> {
    use rustix::process::{Pid, Signal, kill_process};
    let s = match sig {
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "INT" => Signal::INT,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown signal name {other}"),
            ));
        }
    };
    let raw = i32::try_from(pid).unwrap_or(0);
    let pid = Pid::from_raw(raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad pid"))?;
    kill_process(pid, s)?;
    if sig == "STOP" {
        wait_stopped(raw);
    }
    Ok(())
}

/// Waits (at most 10 s) until every thread of `pid` is in the stopped state: `kill`
/// returns when the signal is queued, and a thread that is forking or in an
/// uninterruptible call stops only later. A test that freezes a node and then acts must
/// not race with the node's last steps (seen in CI: a node ran a request 2 ms after its
/// SIGSTOP was sent).
fn wait_stopped(pid: i32) {
    let start = Instant::now();
    let tasks = format!("/proc/{pid}/task");
    while start.elapsed() < Duration::from_secs(10) {
        let Ok(dir) = fs::read_dir(&tasks) else {
            return; // gone
        };
        let all = dir.flatten().all(|t| {
            fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                // The state follows the parenthesised command name.
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        });
        if all {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// QEMU processes whose command line names `dir` (a cluster fixture's directory): they
/// run in their own process groups, so killing the nodes leaves them.
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            out.push(pid);
        }
    }
    out
}
