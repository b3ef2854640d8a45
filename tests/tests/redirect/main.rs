//! Redirected I/O (issue 13, docs/design/070) with real processes and real tools: every
//! node reaches the shared LUN through its own path (one nbdkit per node on the same
//! LUN, a SAN with one port per host), and a test cuts one node's path (kills its nbdkit)
//! while fio, qemu-io or a guest writes through a VHD attached on that node.
//!
//! * `cuts`: fio verify across path cuts (file LUN behind nbdkit, a loop device), the
//!   operator's redirect under load, the peer dying, fail-back.
//! * `late`: a write delayed on the failed path never overwrites a newer redirected one;
//!   a stale generation is refused at the peer.

mod cuts;
mod late;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csv_tests::san::{Listen, San};
use csv_tests::volume::{VolumeCluster, cluster_on_lun_with};

const GIB: u64 = 1 << 30;

/// Short leases (the LUN call bound is then 0.68 s).
const LEASE: &str = "[lease]\noutage_budget = \"6s\"\n";
/// Fast probes and a short settle time, so cuts and returns take seconds.
const FAST_PROBES: &str = "[redirect]\nprobe_interval = \"200ms\"\nsettle_time = \"1s\"\n";

/// A cluster whose nodes each reach the LUN through their own nbdkit.
struct SanCluster {
    vc: VolumeCluster,
    sans: BTreeMap<u64, San>,
    _dir: tempfile::TempDir,
}

impl SanCluster {
    /// `n` nodes, each with its own nbdkit (file plugin) on one sparse LUN file, the
    /// volume formatted through node 1; `redirect` is the nodes' `[redirect]` section.
    fn start(n: u64, redirect: &str) -> SanCluster {
        Self::start_with(n, redirect, false)
    }

    /// [`SanCluster::start`] with mutual TLS between the nodes when `tls` (redirected
    /// I/O then crosses TLS sessions).
    fn start_with(n: u64, redirect: &str, tls: bool) -> SanCluster {
        let dir = tempfile::Builder::new()
            .prefix("csv-san-")
            .tempdir()
            .expect("dir");
        let lun = dir.path().join("lun.img");
        std::fs::File::create(&lun)
            .and_then(|f| f.set_len(4 * GIB))
            .expect("LUN file");
        let sans = (1..=n)
            .map(|id| {
                (
                    id,
                    San::start(Listen::Unix(sock(dir.path(), id)), &lun, &[], &[]),
                )
            })
            .collect();
        let toml = format!(
            "{LEASE}{redirect}[volume]\nlun = \"nbd+unix:///?socket={}/san-{{id}}.sock\"\n",
            dir.path().display()
        );
        let c = cluster_on_lun_with(n, &lun, &toml, tls);
        let vc = VolumeCluster::format_on(c, lun, tempfile::tempdir().expect("dir"));
        SanCluster {
            vc,
            sans,
            _dir: dir,
        }
    }
}

fn sock(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("san-{id}.sock"))
}

/// Node `node`'s path state as node `via` reports it: (path, reason, peer).
fn path_of(vc: &VolumeCluster, via: u64, node: u64) -> (String, String, Option<u64>) {
    let st: serde_json::Value =
        serde_json::from_str(&vc.ok(via, &["volume", "status", "--json"])).expect("json");
    let p = st["paths"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == node))
        .cloned()
        .unwrap_or_default();
    (
        p["path"].as_str().unwrap_or_default().to_string(),
        p["reason"].as_str().unwrap_or_default().to_string(),
        p["peer"].as_u64(),
    )
}

/// Waits until node `node` reports path `mode` (at most `limit`); the state then.
fn wait_path(
    vc: &VolumeCluster,
    node: u64,
    mode: &str,
    limit: Duration,
) -> (String, String, Option<u64>) {
    let start = Instant::now();
    loop {
        let p = path_of(vc, node, node);
        if p.0 == mode {
            return p;
        }
        assert!(
            start.elapsed() < limit,
            "node {node} did not become {mode} within {limit:?}: {p:?}\nlog:\n{}",
            vc.c.log(node)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
