//! Scale run of the cluster volume (issue 6): N nodes on one shared sparse file LUN, V
//! small dynamic VHDs created and attached spread over the nodes (VHD i on node
//! 1 + i mod N), then the memory each attached idle VHD costs (every node's RSS before
//! and after its attaches, divided by its VHD count), node RSS, the create and attach
//! times, and a check with libnbd (`/usr/bin/python3` module `nbd`) that exports answer.
//! Used by the `scale-volume` benchmark binary and the bounded `heavy_` process test.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use csv_api::admin::volume::{VhdAttach, VhdNew};
use csv_api::admin::{Client, ClientError, Request, Response, VhdKind};

use crate::retryable;
use crate::volume::{VolumeCluster, need, volume_cluster};

/// How long one create or attach may be retried (no coordinator, lease not yet valid).
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How long the nodes idle after the last attach before RSS is read (flush timers, the
/// blocking pool's idle threads exit after 10 s).
pub const SETTLE: Duration = Duration::from_secs(12);

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Nodes (1..=64).
    pub nodes: u64,
    /// VHDs created and attached.
    pub vhds: usize,
    /// Virtual size of each dynamic VHD in bytes.
    pub vhd_size: u64,
    /// Size of the sparse LUN file in bytes.
    pub lun_size: u64,
    /// Exports checked with libnbd after the attaches (0: all of them).
    pub sample: usize,
}

/// One node's share and memory.
#[derive(Debug, Clone)]
pub struct NodeScale {
    /// Node id.
    pub id: u64,
    /// VHDs attached on it.
    pub vhds: usize,
    /// RSS in bytes after the creates, before its attaches (idle).
    pub rss_before: u64,
    /// RSS in bytes after its attaches (idle).
    pub rss_after: u64,
}

impl NodeScale {
    /// RSS growth per attached VHD in bytes (0 when nothing was attached).
    pub fn per_vhd(&self) -> f64 {
        if self.vhds == 0 {
            return 0.0;
        }
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.vhds as f64
    }
}

/// Figures of one run.
#[derive(Debug, Clone)]
pub struct ScaleReport {
    /// Per node, by id.
    pub nodes: Vec<NodeScale>,
    /// Wall time of every create (nodes create in parallel).
    pub create: Duration,
    /// Wall time of every attach (nodes attach in parallel).
    pub attach: Duration,
    /// Exports checked with libnbd, and how many answered.
    pub checked: usize,
    /// Open file descriptors of each node after the attaches (max over nodes).
    pub max_fds: usize,
    /// Threads of each node after the attaches (max over nodes).
    pub max_threads: usize,
    /// Bytes the sparse LUN file occupies after the checks (`st_blocks`).
    pub lun_allocated: u64,
}

impl ScaleReport {
    /// Sum of the RSS growth over the sum of attached VHDs, in bytes.
    pub fn per_vhd_overall(&self) -> f64 {
        let grow: u64 = self
            .nodes
            .iter()
            .map(|n| n.rss_after.saturating_sub(n.rss_before))
            .sum();
        let count: usize = self.nodes.iter().map(|n| n.vhds).sum();
        if count == 0 {
            0.0
        } else {
            grow as f64 / count as f64
        }
    }

    /// The largest per-node growth per VHD, in bytes.
    pub fn per_vhd_max(&self) -> f64 {
        self.nodes
            .iter()
            .map(NodeScale::per_vhd)
            .fold(0.0, f64::max)
    }

    /// (min, median, max) of the nodes' RSS after the attaches, in bytes.
    pub fn rss_spread(&self) -> (u64, u64, u64) {
        let mut v: Vec<u64> = self.nodes.iter().map(|n| n.rss_after).collect();
        v.sort_unstable();
        match v.as_slice() {
            [] => (0, 0, 0),
            s => (s[0], s[s.len() / 2], s[s.len() - 1]),
        }
    }
}

/// Name of VHD `i`.
pub fn vhd_name(i: usize) -> String {
    format!("s{i:04}")
}

/// The node VHD `i` is attached on.
pub fn node_of(i: usize, nodes: u64) -> u64 {
    1 + (i as u64 % nodes)
}

/// Resident set size of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS without a value")?
        .parse()
        .context("VmRSS value")?;
    Ok(kb * 1024)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Sends `req` until it succeeds or fails with a non-retryable error; `done` tells an
/// error that means an earlier attempt applied (e.g. the name exists).
fn call_retry(
    admin: &std::path::Path,
    req: &Request,
    done: impl Fn(&ClientError) -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let r = Client::connect(admin).and_then(|mut c| {
            c.set_timeout(Duration::from_secs(90))?;
            c.call(req.clone())
        });
        match r {
            Ok(Response::Vhd(_) | Response::Attachment(_)) => return Ok(()),
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) if done(&e) => return Ok(()),
            Err(e) if retryable(&e) && start.elapsed() < RETRY_FOR => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        }
    }
}

fn exists(e: &ClientError) -> bool {
    matches!(e, ClientError::Api(a) if a.code() == csv_api::ErrorCode::AlreadyExists)
}

/// Runs `f(node, its VHD indices)` on one thread per node, in parallel.
fn per_node(
    vc: &VolumeCluster,
    o: &ScaleOptions,
    f: impl Fn(&std::path::Path, &[usize]) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..=o.nodes)
            .map(|id| {
                let admin = vc.c.nodes[&id].admin.clone();
                let mine: Vec<usize> = (0..o.vhds).filter(|i| node_of(*i, o.nodes) == id).collect();
                let f = &f;
                s.spawn(move || f(&admin, &mine).with_context(|| format!("node {id}")))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a node thread panicked"))??;
        }
        Ok(())
    })
}

/// Starts the cluster, creates and attaches, measures; the cluster is returned so the
/// caller can look further (it is killed on drop).
pub fn run(o: &ScaleOptions) -> Result<(VolumeCluster, ScaleReport)> {
    if o.nodes == 0 || o.nodes > 64 || o.vhds == 0 {
        bail!("nodes must be 1..=64 and vhds at least 1");
    }
    need("/usr/bin/python3", "python3-libnbd");
    let vc = volume_cluster(o.nodes, o.lun_size);
    let pid = |id: u64| vc.c.pid(id).context("node not running");

    let t = Instant::now();
    per_node(&vc, o, |admin, mine| {
        for &i in mine {
            let req = Request::VhdNew(VhdNew {
                name: vhd_name(i),
                kind: VhdKind::Dynamic as i32,
                size: o.vhd_size,
                parent: String::new(),
            });
            call_retry(admin, &req, exists).with_context(|| format!("create {}", vhd_name(i)))?;
        }
        Ok(())
    })?;
    let create = t.elapsed();

    std::thread::sleep(SETTLE);
    let mut before = Vec::new();
    for id in 1..=o.nodes {
        before.push(rss(pid(id)?)?);
    }

    let t = Instant::now();
    per_node(&vc, o, |admin, mine| {
        for &i in mine {
            let req = Request::VhdAttach(VhdAttach {
                name: vhd_name(i),
                node: 0,
                read_only: false,
            });
            call_retry(admin, &req, |_| false)
                .with_context(|| format!("attach {}", vhd_name(i)))?;
        }
        Ok(())
    })?;
    let attach = t.elapsed();

    std::thread::sleep(SETTLE);
    let mut nodes = Vec::new();
    let mut max_fds = 0;
    let mut max_threads = 0;
    for id in 1..=o.nodes {
        let p = pid(id)?;
        max_fds = max_fds.max(open_fds(p));
        max_threads = max_threads.max(threads(p));
        nodes.push(NodeScale {
            id,
            vhds: (0..o.vhds).filter(|i| node_of(*i, o.nodes) == id).count(),
            rss_before: before[(id - 1) as usize],
            rss_after: rss(p)?,
        });
    }

    let picks: Vec<usize> = if o.sample == 0 || o.sample >= o.vhds {
        (0..o.vhds).collect()
    } else {
        // Spread over every node and over the VHD range, deterministic per size.
        let step = o.vhds / o.sample;
        (0..o.sample).map(|k| (k * step + k) % o.vhds).collect()
    };
    let targets: Vec<(String, String)> = picks
        .iter()
        .map(|&i| {
            let id = node_of(i, o.nodes);
            (vc.nbd_socket(id).display().to_string(), vhd_name(i))
        })
        .collect();
    check_exports(&targets, o.vhd_size)?;
    let lun_allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&vc.lun).context("stat the LUN")?.blocks() * 512
    };
    Ok((
        vc,
        ScaleReport {
            nodes,
            create,
            attach,
            checked: targets.len(),
            max_fds,
            max_threads,
            lun_allocated,
        },
    ))
}

/// Connects to every `(socket, export)` with libnbd, checks the size, writes a 4 KiB
/// pattern at the export's last block and reads it back along with block 0 (zeros).
pub fn check_exports(targets: &[(String, String)], size: u64) -> Result<()> {
    const SCRIPT: &str = r#"
import nbd, sys
size = int(sys.argv[1])
bad = []
for arg in sys.argv[2:]:
    sock, name = arg.split("\n")
    try:
        h = nbd.NBD()
        h.set_export_name(name)
        h.connect_unix(sock)
        if h.get_size() != size:
            raise Exception("size %d, expected %d" % (h.get_size(), size))
        pat = (name.encode() * 4096)[:4096]
        h.pwrite(pat, size - 4096)
        h.flush()
        if h.pread(4096, size - 4096) != pat:
            raise Exception("read back differs")
        if h.pread(4096, 0) != bytes(4096):
            raise Exception("block 0 not zero")
        h.shutdown()
    except Exception as e:
        bad.append("%s on %s: %s" % (name, sock, e))
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
"#;
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(size.to_string())
        .args(targets.iter().map(|(s, n)| format!("{s}\n{n}")))
        .output()
        .context("run /usr/bin/python3 (package python3-libnbd)")?;
    if !out.status.success() {
        bail!(
            "exports did not answer:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Bytes as MiB with two decimals.
pub fn mib(b: f64) -> String {
    format!("{:.2} MiB", b / (1024.0 * 1024.0))
}
