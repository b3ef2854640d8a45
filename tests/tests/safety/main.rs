//! The data path's safety rules (issue 11, docs/design/042), one test per rule, each with
//! real processes and real tools: csv-node clusters, nbdkit SAN targets (paused, killed,
//! filtered), qemu-io, fio, libnbd scripts, network namespaces, and fail points that
//! crash or stall a node at an exact cut point (`FAILPOINTS`).
//!
//! * `fencing`: stale owners and stale nodes never change data or the catalog.
//! * `paths`: SAN connections, late writes, flushes and runtime threads.
//! * `durability`: flushed data survives crashes, lost answers and recovery.

mod durability;
mod fencing;
mod paths;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use csv_tests::volume::{VolumeCluster, need, volume_cluster_with};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A short outage budget (takeover in about 6 s; the lease margin io_timeout is 1.37 s).
const FAST: &str = "[lease]\noutage_budget = \"6s\"\n";

/// `n` nodes on a sparse file LUN of `lun_size` bytes with [`FAST`] leases; `volume_extra`
/// goes into `[volume]`.
fn fast_cluster(n: u64, lun_size: u64, volume_extra: &str) -> VolumeCluster {
    volume_cluster_with(
        n,
        lun_size,
        &format!("{FAST}[volume]\nlun = \"{{lun}}\"\nfence_wait = \"3s\"\n{volume_extra}"),
    )
}

/// qemu-io on an NBD URI (raw protocol, write-back cache: flushes only where a
/// command says `flush`, and once when it closes).
fn qemu_io(uri: &str, cmds: &[&str]) -> Output {
    need("qemu-io", "qemu-utils");
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "-t", "writeback"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri).output().expect("run qemu-io")
}

/// A command's stdout then stderr.
fn both(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// qemu-io that must succeed without a failed command or pattern.
fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let o = qemu_io(uri, cmds);
    let out = both(&o);
    assert!(
        o.status.success() && !out.contains("failed") && !out.contains("rror"),
        "qemu-io {cmds:?} on {uri}: {out}"
    );
    out
}

/// `csvadm vhd info NAME --json` on node `id`.
fn vhd_info(vc: &VolumeCluster, id: u64, name: &str) -> serde_json::Value {
    serde_json::from_str(&vc.ok(id, &["vhd", "info", name, "--json"])).expect("vhd info json")
}

/// `csvadm owner show NAME --json` on node `id`.
fn owner(vc: &VolumeCluster, id: u64, name: &str) -> serde_json::Value {
    serde_json::from_str(&vc.ok(id, &["owner", "show", name, "--json"])).expect("owner json")
}

/// `csvadm volume status --json` on node `id`.
fn volume_status(vc: &VolumeCluster, id: u64) -> serde_json::Value {
    serde_json::from_str(&vc.ok(id, &["volume", "status", "--json"])).expect("status json")
}

/// Attaches `name` on node `id`, retrying (a takeover waits for the old owner's expiry).
fn attach_until(vc: &VolumeCluster, id: u64, name: &str, extra: &[&str], timeout: Duration) {
    let start = Instant::now();
    let mut args = vec!["vhd", "attach", name];
    args.extend_from_slice(extra);
    loop {
        let o = vc.csvadm(id, &args);
        if o.status.success() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "attach {name} on node {id}: {}\nlog:\n{}",
            String::from_utf8_lossy(&o.stderr),
            vc.c.log(id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until node `id` is expired or left in node `via`'s liveness view.
fn wait_expired(vc: &VolumeCluster, via: u64, id: u64) {
    let start = Instant::now();
    loop {
        let o = vc.csvadm(via, &["node", "liveness", "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
        let gone = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["node"] == id && n["status"] != "live");
        if gone {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "node {id} not expired: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Reads `len` bytes of the LUN file at `off`.
fn read_lun(lun: &Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(lun)
        .and_then(|f| f.read_exact_at(&mut buf, off))
        .expect("read the LUN file");
    buf
}
