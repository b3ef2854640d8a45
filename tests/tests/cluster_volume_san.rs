//! The cluster volume over a SAN target and under a zombie owner (issue 6):
//! * every node reaches the shared LUN through an NBD client to one nbdkit (file plugin)
//!   exporting the LUN file: create on node 1, attach on node 2 and fio-verify, move to
//!   node 3 and verify;
//! * a paused owner (SIGSTOP past its lease) is taken over by another node, which
//!   writes; after SIGCONT, none of the zombie's queued writes lands on the LUN;
//! * the LUN is a block device (a loop device): opened with O_DIRECT by default, create,
//!   attach, fio-verify, move, verify.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csv_tests::volume::{fio_verify, need, run, volume_cluster_on, volume_cluster_with};

const GIB: u64 = 1 << 30;

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_lun_is_opened_direct_and_serves_vhds() {
    need("losetup", "mount");
    let work = tempfile::tempdir().expect("work dir");
    let img = work.path().join("block.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(2 * GIB))
        .expect("backing file");
    let dev = run(Command::new("losetup").args(["--find", "--show"]).arg(&img));
    let dev = Loop(dev.trim().to_string());
    assert!(dev.0.starts_with("/dev/loop"), "losetup said {:?}", dev.0);
    let vc = volume_cluster_on(
        3,
        std::path::Path::new(&dev.0),
        "[volume]\nlun = \"{lun}\"\n",
    );
    let st = vc.ok(2, &["volume", "status", "--json"]);
    assert!(st.contains("\"ok\"") && st.contains("O_DIRECT"), "{st}");
    vc.ok(1, &["vhd", "create", "b1", "--size", "256M"]);
    vc.ok(
        1,
        &["vhd", "create", "b2", "--size", "64M", "--type", "fixed"],
    );
    for name in ["b1", "b2"] {
        vc.ok(2, &["vhd", "attach", name]);
        fio_verify(&vc.uri(2, name), "randwrite", "32M", false, work.path());
        vc.ok(2, &["vhd", "detach", name]);
        vc.ok(3, &["vhd", "attach", name]);
        fio_verify(&vc.uri(3, name), "randwrite", "32M", true, work.path());
        vc.ok(3, &["vhd", "detach", name]);
    }
}

#[test]
fn create_attach_verify_over_an_nbdkit_san_target() {
    need("nbdkit", "nbdkit");
    let work = tempfile::tempdir().expect("work dir");
    let sock = work.path().join("san.sock");
    // nbdkit serves a file that exists before the cluster starts; the fixture's own LUN
    // file is not used by the nodes (their path is the NBD URI).
    let lun = work.path().join("san.img");
    std::fs::File::create(&lun)
        .and_then(|f| f.set_len(4 * GIB))
        .expect("SAN file");
    let _nbdkit = Proc(
        Command::new("nbdkit")
            .args(["--foreground", "--exit-with-parent", "-U"])
            .arg(&sock)
            .arg("file")
            .arg(&lun)
            .stdout(Stdio::null())
            .spawn()
            .expect("start nbdkit"),
    );
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nbdkit did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let vc = volume_cluster_with(3, 1 << 20, &format!("[volume]\nlun = \"{uri}\"\n"));
    let st = vc.ok(2, &["volume", "status", "--json"]);
    assert!(st.contains("\"ok\"") && st.contains("nbd"), "{st}");
    vc.ok(1, &["vhd", "create", "s1", "--size", "512M"]);
    vc.ok(2, &["vhd", "attach", "s1"]);
    fio_verify(&vc.uri(2, "s1"), "randwrite", "48M", false, work.path());
    vc.ok(2, &["vhd", "detach", "s1"]);
    vc.ok(3, &["vhd", "attach", "s1", "--read-only"]);
    fio_verify(&vc.uri(3, "s1"), "randwrite", "48M", true, work.path());
    vc.ok(3, &["vhd", "detach", "s1"]);
}

fn qemu_io(uri: &str, cmd: &str) -> std::process::Output {
    Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .output()
        .expect("run qemu-io")
}

#[test]
fn a_paused_owner_never_writes_after_the_new_owner() {
    need("qemu-io", "qemu-utils");
    let vc = volume_cluster_with(
        3,
        2 * GIB,
        "[lease]\noutage_budget = \"6s\"\n[volume]\nlun = \"{lun}\"\nfence_wait = \"1s\"\n",
    );
    vc.ok(
        1,
        &["vhd", "create", "z", "--size", "128M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "z"]);
    let zombie_uri = vc.uri(2, "z");
    qemu_io(&zombie_uri, "write -P 0xaa 0 4M");
    // A writer keeps the zombie's export busy: its requests queue in node 2 while it is
    // stopped and reach the LUN path after SIGCONT, unless the fence stops them.
    let _writer = Proc(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while :; do qemu-io -f raw -c 'write -P 0xbb 0 4M' '{zombie_uri}' >/dev/null 2>&1; done"
            ))
            .spawn()
            .expect("start writer"),
    );
    std::thread::sleep(Duration::from_millis(500));
    vc.c.signal(2, "STOP");
    // Node 3 takes over once the coordinator expired node 2 (budget 6 s).
    let start = Instant::now();
    loop {
        let o = vc.csvadm(3, &["vhd", "attach", "z"]);
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no takeover: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = qemu_io(&vc.uri(3, "z"), "write -P 0xcc 0 4M");
    assert!(out.status.success(), "{out:?}");
    vc.c.signal(2, "CONT");
    // Give the zombie time to run everything it had queued.
    std::thread::sleep(Duration::from_secs(4));
    drop(_writer);
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-r",
        "-c",
        "read -P 0xcc 0 4M",
        &vc.uri(3, "z"),
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    // Straight from the LUN too: a fixed VHD's byte 0 is at the start of its first
    // extent.
    let info: serde_json::Value =
        serde_json::from_str(&vc.ok(1, &["vhd", "info", "z", "--json"])).expect("json");
    let st: serde_json::Value =
        serde_json::from_str(&vc.ok(1, &["volume", "status", "--json"])).expect("json");
    let first = info["runs"][0][0].as_u64().expect("first extent");
    let es = st["volume"]["extent_size"].as_u64().expect("extent size");
    let data = st["volume"]["data_offset"].as_u64().expect("data offset");
    let mut buf = vec![0u8; 4 << 20];
    use std::os::unix::fs::FileExt;
    std::fs::File::open(&vc.lun)
        .and_then(|f| f.read_exact_at(&mut buf, data + first * es))
        .expect("read the LUN");
    assert!(
        buf.iter().all(|b| *b == 0xcc),
        "a zombie write landed after the new owner's write"
    );
}
