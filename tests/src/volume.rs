//! Cluster-volume fixtures (issue 6): a cluster whose nodes share one sparse file LUN
//! (formatted through node 1), `csvadm` runs against a node, NBD URIs of a node's
//! exports, and the external tools the tests judge with (each must be installed: a
//! missing tool fails the test naming its Debian package).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::leases::wait_leases;
use crate::{Cluster, Options, PATIENCE, binary};

/// Extent size the test volumes are formatted with (small: many extents on a small LUN).
pub const TEST_EXTENT: &str = "16M";

/// A cluster on a shared LUN (the LUN lives in its own temp dir, removed on drop).
#[derive(Debug)]
pub struct VolumeCluster {
    /// The cluster (processes are killed on drop).
    pub c: Cluster,
    /// The LUN file (or the file behind the SAN target).
    pub lun: PathBuf,
    _lun_dir: tempfile::TempDir,
}

/// Fails unless `tool` is on PATH, naming the package that provides it.
pub fn need(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{tool} is missing: install the Debian package {package} (scripts/install-deps)"
    );
}

/// `n` nodes whose `[volume]` is `volume_toml` (with `{lun}` replaced by the LUN file
/// path), bootstrapped, leases valid, the volume formatted through node 1.
pub fn volume_cluster_with(n: u64, lun_size: u64, volume_toml: &str) -> VolumeCluster {
    let dir = tempfile::Builder::new()
        .prefix("csv-lun-")
        .tempdir()
        .expect("lun dir");
    let lun = dir.path().join("lun.img");
    let f = std::fs::File::create(&lun).expect("create LUN file");
    f.set_len(lun_size).expect("size LUN file");
    let c = cluster_on_lun(n, &lun, volume_toml);
    let vc = VolumeCluster {
        c,
        lun,
        _lun_dir: dir,
    };
    vc.ok(1, &["volume", "format", "--extent-size", TEST_EXTENT]);
    vc
}

/// `n` nodes on an existing LUN (a block device, say), formatted through node 1.
pub fn volume_cluster_on(n: u64, lun: &Path, volume_toml: &str) -> VolumeCluster {
    let c = cluster_on_lun(n, lun, volume_toml);
    let vc = VolumeCluster {
        c,
        lun: lun.to_path_buf(),
        _lun_dir: tempfile::tempdir().expect("empty dir"),
    };
    vc.ok(1, &["volume", "format", "--extent-size", TEST_EXTENT]);
    vc
}

/// `n` new nodes whose `[volume]` is `volume_toml` with `{lun}` = `lun` (not formatted
/// here), bootstrapped, leases valid.
pub fn cluster_on_lun(n: u64, lun: &Path, volume_toml: &str) -> Cluster {
    cluster_on_lun_with(n, lun, volume_toml, false)
}

/// [`cluster_on_lun`], with mutual TLS between the nodes when `tls`.
pub fn cluster_on_lun_with(n: u64, lun: &Path, volume_toml: &str, tls: bool) -> Cluster {
    let opts = Options {
        extra_config: volume_toml.replace("{lun}", &lun.display().to_string()),
        tls,
        ..Options::default()
    };
    let mut c = Cluster::new(n, opts);
    c.bootstrap();
    c.wait_leader();
    let ids: Vec<u64> = (1..=n).collect();
    wait_leases(&c, &ids);
    c
}

impl VolumeCluster {
    /// A bootstrapped cluster whose nodes reach `lun` (a file, or the file behind a SAN
    /// target their config names), formatted through node 1; `dir` is kept until drop.
    pub fn format_on(c: Cluster, lun: PathBuf, dir: tempfile::TempDir) -> VolumeCluster {
        let vc = VolumeCluster {
            c,
            lun,
            _lun_dir: dir,
        };
        vc.ok(1, &["volume", "format", "--extent-size", TEST_EXTENT]);
        vc
    }
}

/// `n` nodes on one sparse file LUN of `lun_size` bytes.
pub fn volume_cluster(n: u64, lun_size: u64) -> VolumeCluster {
    volume_cluster_with(n, lun_size, "[volume]\nlun = \"{lun}\"\n")
}

impl VolumeCluster {
    /// Runs `csvadm --admin <node id's socket> args...`.
    pub fn csvadm(&self, id: u64, args: &[&str]) -> Output {
        Command::new(binary("csvadm"))
            .arg("--admin")
            .arg(&self.c.nodes[&id].admin)
            .args(args)
            .output()
            .expect("run csvadm")
    }

    /// [`Self::csvadm`] that must succeed; its stdout.
    pub fn ok(&self, id: u64, args: &[&str]) -> String {
        let o = self.csvadm(id, args);
        assert!(
            o.status.success(),
            "csvadm {args:?} on node {id} failed ({}): {}{}\nnode log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.c.log(id)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// [`Self::csvadm`] that must fail; its stderr.
    pub fn refused(&self, id: u64, args: &[&str]) -> String {
        let o = self.csvadm(id, args);
        assert!(
            !o.status.success(),
            "csvadm {args:?} on node {id} should have failed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// The NBD socket of node `id`.
    pub fn nbd_socket(&self, id: u64) -> PathBuf {
        self.c.nodes[&id].data_dir().join("nbd.sock")
    }

    /// The NBD URI of export `name` on node `id`.
    pub fn uri(&self, id: u64, name: &str) -> String {
        format!(
            "nbd+unix:///{name}?socket={}",
            self.nbd_socket(id).display()
        )
    }

    /// Waits until node `id` serves export `name` (after a restart).
    pub fn wait_export(&self, id: u64, name: &str) {
        let start = Instant::now();
        loop {
            let o = Command::new("qemu-img")
                .args(["info", &self.uri(id, name)])
                .output()
                .expect("run qemu-img");
            if o.status.success() {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "node {id} does not serve {name}: {}\nlog:\n{}",
                String::from_utf8_lossy(&o.stderr),
                self.c.log(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs a command that must succeed; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// fio through the NBD engine at `uri`: `rw` of `size` with crc32c verify; with
/// `verify_only`, reads and checks what an earlier run of the same job wrote.
pub fn fio_verify(uri: &str, rw: &str, size: &str, verify_only: bool, dir: &Path) {
    need("fio", "fio");
    let mut cmd = Command::new("fio");
    cmd.current_dir(dir).args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        &format!("--rw={rw}"),
        "--bs=64k",
        &format!("--size={size}"),
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--randseed=1234",
    ]);
    if verify_only {
        cmd.arg("--verify_only");
    }
    run(&mut cmd);
}
