//! The cluster a chaos run drives: three csv-node processes (each in its own network
//! namespace when running as root), each with its own SAN port (nbdkit) on one LUN file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::san::{Listen, San};
use crate::volume::VolumeCluster;
use crate::{Cluster, Options};

/// The chaos VM's name.
pub const VM: &str = "chaosvm";

/// Lease outage budget of the chaos cluster.
pub const LEASE: Duration = Duration::from_secs(6);

fn lun_toml(dir: &Path, watchdog: bool) -> String {
    format!(
        "[lease]\noutage_budget = \"{}s\"\nwatchdog = {watchdog}\n\
         [redirect]\nprobe_interval = \"200ms\"\nsettle_time = \"1s\"\n\
         [volume]\nlun = \"nbd+unix:///?socket={}/san-{{id}}.sock\"\nfence_wait = \"1s\"\n\
         [hypervisor]\naccel = \"tcg\"\nstop_timeout = \"3s\"\nreconnect_delay = \"10s\"\n\
         resume_interval = \"500ms\"\n",
        LEASE.as_secs(),
        dir.display()
    )
}

/// The cluster under test.
pub struct Rig {
    /// The cluster.
    pub vc: VolumeCluster,
    /// Each node's SAN port.
    pub sans: BTreeMap<u64, San>,
    /// Nodes run in namespaces (partitions possible).
    pub netns: bool,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Rig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rig").field("netns", &self.netns).finish()
    }
}

impl Rig {
    /// Three nodes, namespaces when running as root.
    pub fn start(n: u64, node_env: &[(String, String)], watchdog: bool) -> Rig {
        let dir = tempfile::Builder::new()
            .prefix("csv-chaos-")
            .tempdir()
            .expect("dir");
        let lun = dir.path().join("lun.img");
        std::fs::File::create(&lun)
            .and_then(|f| f.set_len(2 << 30))
            .expect("LUN file");
        let sans = (1..=n)
            .map(|id| {
                let sock = dir.path().join(format!("san-{id}.sock"));
                (id, San::start(Listen::Unix(sock), &lun, &[], &[]))
            })
            .collect();
        let netns = rustix::process::geteuid().is_root();
        let opts = Options {
            netns,
            extra_config: lun_toml(dir.path(), watchdog),
            ..Options::default()
        };
        let mut c = Cluster::new(n, opts);
        for id in 1..=n {
            for (k, v) in node_env {
                c.set_env(id, k, v);
            }
        }
        c.bootstrap();
        c.wait_leader();
        let ids: Vec<u64> = (1..=n).collect();
        crate::leases::wait_leases(&c, &ids);
        let vc = VolumeCluster::format_on(c, lun, tempfile::tempdir().expect("dir"));
        Rig {
            vc,
            sans,
            netns,
            dir,
        }
    }

    /// Node `id`'s SAN socket.
    pub fn san_sock(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("san-{id}.sock"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // The VM's QEMU runs in its own process group: it outlives its nodes.
        for pid in crate::qemus_under(self.vc.c.dir()) {
            let _ = crate::send_signal(pid, "KILL");
        }
    }
}

/// The guest the `migrate` class boots (scripts/guest-image): `$CSV_GUEST_DIR`, else
/// `target/guest` beside the binaries, built there when the repository's script is at
/// hand. None when there is none (the class is then left out).
pub fn guest_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CSV_GUEST_DIR") {
        return Some(PathBuf::from(d));
    }
    let bin = crate::binary("csv-node");
    let target = bin.parent()?.parent()?.to_path_buf();
    let dir = target.join("guest");
    let script = target.parent()?.join("scripts/guest-image");
    if !dir.join("vmlinuz").exists() && script.exists() {
        let ok = std::process::Command::new(&script)
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
    }
    dir.join("vmlinuz").exists().then_some(dir)
}
