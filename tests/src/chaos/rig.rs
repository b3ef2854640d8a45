//! The cluster a chaos run drives: three csv-node processes (each in its own network
//! namespace when running as root), each with its own SAN port (nbdkit) on one LUN file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::san::{Listen, San};
use crate::volume::VolumeCluster;
use crate::{Cluster, Options};

/// Lease outage budget of the chaos cluster.
pub const LEASE: Duration = Duration::from_secs(6);

fn lun_toml(dir: &Path, watchdog: bool) -> String {
    format!(
        "[lease]\noutage_budget = \"{}s\"\nwatchdog = {watchdog}\n\
         [redirect]\nprobe_interval = \"200ms\"\nsettle_time = \"1s\"\n\
         [volume]\nlun = \"nbd+unix:///?socket={}/san-{{id}}.sock\"\nfence_wait = \"1s\"\n",
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
