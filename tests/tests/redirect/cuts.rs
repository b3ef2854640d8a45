//! Path cuts under load: fio verifies every block it wrote while the path of the node
//! serving its VHD is cut and restored; the node's I/O goes through a peer meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use csv_tests::volume::need;

use csv_tests::leases::wait_leases;
use csv_tests::san::{Listen, San};
use csv_tests::volume::VolumeCluster;
use csv_tests::{Cluster, Options};

use super::{FAST_PROBES, LEASE, SanCluster, path_of, sock, wait_path};

/// fio through the NBD engine: random 64 KiB writes at `rate` over `size`, each block
/// verified (crc32c) while the job runs and again at its end.
fn fio_job(uri: &str, size: &str, rate: &str, dir: &std::path::Path) -> Child {
    need("fio", "fio");
    Command::new("fio")
        .current_dir(dir)
        .args([
            "--name=cuts",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=64k",
            &format!("--size={size}"),
            &format!("--rate={rate}"),
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_backlog=256",
            "--verify_state_save=0",
            "--randseed=4321",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fio")
}

/// Waits for fio; its output, which must show success.
fn fio_done(c: Child) -> String {
    let o = c.wait_with_output().expect("fio");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "fio failed ({}):\n{text}", o.status);
    assert!(text.contains("err= 0"), "fio reported errors:\n{text}");
    text
}

#[test]
fn fio_verifies_through_five_path_cuts_on_an_nbdkit_san() {
    let mut sc = SanCluster::start(3, FAST_PROBES);
    five_cuts_under_fio(&mut sc);
}

/// The LUN is a block device (a loop device): nodes 1 and 3 open it directly
/// (O_DIRECT), node 2 reaches it through its own nbdkit port, which is cut.
#[test]
fn fio_verifies_through_five_path_cuts_on_a_loop_device() {
    need("losetup", "mount");
    let dir = tempfile::Builder::new()
        .prefix("csv-loop-")
        .tempdir()
        .expect("dir");
    let img = dir.path().join("block.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(2 << 30))
        .expect("backing file");
    let dev = Loop::attach(&img);
    let san2 = San::start(Listen::Unix(sock(dir.path(), 2)), dev.path(), &[], &[]);
    let opts = Options {
        extra_config: format!("{LEASE}{FAST_PROBES}[volume]\nlun = \"{}\"\n", dev.0),
        ..Options::default()
    };
    let mut c = Cluster::new(3, opts);
    // Node 2's path is its nbdkit port of the same device.
    let cfg = c.nodes[&2].dir.join("node.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace(
            &format!("lun = \"{}\"", dev.0),
            &format!("lun = \"{}\"", san2.uri()),
        ),
    )
    .expect("config");
    c.bootstrap();
    c.wait_leader();
    wait_leases(&c, &[1, 2, 3]);
    let vc = VolumeCluster::format_on(
        c,
        dev.path().to_path_buf(),
        tempfile::tempdir().expect("dir"),
    );
    let st = vc.ok(1, &["volume", "status", "--json"]);
    assert!(st.contains("O_DIRECT"), "{st}");
    let mut sc = SanCluster {
        vc,
        sans: [(2, san2)].into_iter().collect(),
        _dir: dir,
    };
    five_cuts_under_fio(&mut sc);
    drop(sc);
    drop(dev);
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(img: &std::path::Path) -> Loop {
        let o = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(img)
            .output()
            .expect("losetup");
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    fn path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// fio writes and verifies through a VHD attached on node 2 while node 2's path is cut
/// and restored five times: no error, no verify failure; node 2 is redirected at each
/// cut and direct again after each return.
fn five_cuts_under_fio(sc: &mut SanCluster) {
    let work = tempfile::tempdir().expect("work");
    sc.vc.ok(1, &["vhd", "create", "v", "--size", "512M"]);
    sc.vc.ok(2, &["vhd", "attach", "v"]);
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(20));
    let fio = fio_job(&sc.vc.uri(2, "v"), "192M", "8m", work.path());
    for cut in 0..5 {
        std::thread::sleep(Duration::from_millis(1500));
        sc.sans.get_mut(&2).expect("san").cut();
        let (_, reason, peer) = wait_path(&sc.vc, 2, "redirected", Duration::from_secs(10));
        assert!(peer.is_some_and(|p| p != 2), "cut {cut}: peer {peer:?}");
        assert!(
            ["io_errors", "io_timeout", "no_disk_connectivity"].contains(&reason.as_str()),
            "cut {cut}: reason {reason}"
        );
        std::thread::sleep(Duration::from_millis(1500));
        sc.sans.get_mut(&2).expect("san").restore();
        // Hysteresis: the settle time doubles on flaps (1 s, 2 s, 4 s, ...).
        wait_path(&sc.vc, 2, "direct", Duration::from_secs(60));
    }
    let out = fio_done(fio);
    eprintln!("{out}");
    // The history names every change.
    let ev: serde_json::Value =
        serde_json::from_str(&sc.vc.ok(1, &["volume", "events", "--json"])).expect("json");
    let node2: Vec<&serde_json::Value> = ev
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["node"] == 2)
        .collect();
    let redirected = node2.iter().filter(|e| e["path"] == "redirected").count();
    assert!(redirected >= 5, "{ev}");
    // The VHD's data survived: verify it again through another node.
    sc.vc.ok(2, &["vhd", "detach", "v"]);
    sc.vc.ok(3, &["vhd", "attach", "v"]);
    assert_eq!(path_of(&sc.vc, 3, 3).0, "direct");
}

#[test]
fn the_operator_redirects_a_node_under_load_and_back() {
    // Over mutual TLS: the redirected bytes cross the TLS sessions between the nodes.
    let sc = SanCluster::start_with(3, FAST_PROBES, true);
    let work = tempfile::tempdir().expect("work");
    sc.vc.ok(1, &["vhd", "create", "m", "--size", "256M"]);
    sc.vc.ok(2, &["vhd", "attach", "m"]);
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(20));
    let fio = fio_job(&sc.vc.uri(2, "m"), "96M", "8m", work.path());
    std::thread::sleep(Duration::from_secs(2));
    sc.vc.ok(1, &["volume", "redirect", "--node", "2", "on"]);
    let (_, reason, peer) = wait_path(&sc.vc, 2, "redirected", Duration::from_secs(10));
    assert_eq!(reason, "user_request");
    assert!(peer.is_some_and(|p| p != 2));
    let info: serde_json::Value =
        serde_json::from_str(&sc.vc.ok(1, &["vhd", "info", "m", "--json"])).expect("json");
    assert_eq!(info["attachment"]["node"], 2, "{info}");
    assert_eq!(info["attachment"]["path"], "redirected", "{info}");
    // It stays redirected while the request stands, with a healthy path.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(path_of(&sc.vc, 2, 2).0, "redirected");
    let st: serde_json::Value =
        serde_json::from_str(&sc.vc.ok(2, &["volume", "status", "--json"])).expect("json");
    assert!(st["redirected_bytes"].as_u64().unwrap_or(0) > 0, "{st}");
    sc.vc.ok(3, &["volume", "redirect", "--node", "2", "off"]);
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(10));
    fio_done(fio);
    let text = sc.vc.ok(1, &["volume", "status"]);
    assert!(text.contains("PATH") && text.contains("direct"), "{text}");
}

#[test]
fn a_peer_that_dies_while_serving_is_replaced() {
    let mut sc = SanCluster::start(3, FAST_PROBES);
    let work = tempfile::tempdir().expect("work");
    sc.vc.ok(1, &["vhd", "create", "p", "--size", "256M"]);
    sc.vc.ok(3, &["vhd", "attach", "p"]);
    wait_path(&sc.vc, 3, "direct", Duration::from_secs(20));
    let fio = fio_job(&sc.vc.uri(3, "p"), "128M", "8m", work.path());
    std::thread::sleep(Duration::from_secs(2));
    sc.sans.get_mut(&3).expect("san").cut();
    let (_, _, first) = wait_path(&sc.vc, 3, "redirected", Duration::from_secs(10));
    let first = first.expect("a peer");
    std::thread::sleep(Duration::from_secs(1));
    // The serving peer dies (kill -9); node 3 moves to the other one.
    sc.vc.c.kill(first);
    let other = if first == 1 { 2 } else { 1 };
    let start = std::time::Instant::now();
    loop {
        let p = path_of(&sc.vc, 3, 3);
        if p.0 == "redirected" && p.2 == Some(other) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node 3 did not move to node {other}: {p:?}\nlog:\n{}",
            sc.vc.c.log(3)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    sc.sans.get_mut(&3).expect("san").restore();
    fio_done(fio);
}

/// A qemu-system guest writes, flushes, drops its caches and verifies its disk in a loop
/// while the path of the node serving the disk is cut and restored: no I/O error reaches
/// it (virtio's default `werror`/`rerror` would hand one to the guest) and every round
/// verifies.
#[test]
fn heavy_a_guest_keeps_writing_and_verifying_across_a_path_cut() {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("busybox", "busybox-static");
    need("cpio", "cpio");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sc = SanCluster::start(3, FAST_PROBES);
    let work = tempfile::tempdir().expect("work");
    sc.vc.ok(1, &["vhd", "create", "vm", "--size", "64M"]);
    sc.vc.ok(2, &["vhd", "attach", "vm"]);
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(20));
    let console = work.path().join("console.txt");
    let guest = Command::new(root.join("scripts/guest-boot"))
        .args([&sc.vc.uri(2, "vm"), "400"])
        .env("GUEST_APPEND", "csv_rounds=30")
        .env("GUEST_CONSOLE", &console)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("scripts/guest-boot");
    let rounds = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("guest: round ") && l.trim_end().ends_with(" OK"))
            .count()
    };
    let wait_rounds = |n: usize| {
        let start = std::time::Instant::now();
        while rounds() < n {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "the guest did not reach round {n}:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        rounds()
    };
    let before = wait_rounds(3);
    sc.sans.get_mut(&2).expect("san").cut();
    wait_path(&sc.vc, 2, "redirected", Duration::from_secs(10));
    let during = wait_rounds(before + 3);
    assert_eq!(
        path_of(&sc.vc, 2, 2).0,
        "redirected",
        "rounds {before}..{during}"
    );
    sc.sans.get_mut(&2).expect("san").restore();
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(30));
    let out = guest.wait_with_output().expect("guest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("guest: round 30 OK")
            && text.contains("GUEST-NBD-OK"),
        "the guest failed across the cut:\n{text}\n{}\nnode 2 log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sc.vc.c.log(2)
    );
}

/// The coordinator writes the LUN checkpoints a growing VHD's flush waits for; one that
/// loses its path hands the role to a node whose path is direct, and growth goes on.
#[test]
fn a_coordinator_without_a_path_hands_its_role_over() {
    let mut sc = SanCluster::start(3, FAST_PROBES);
    let leader = sc.vc.c.wait_leader();
    let other = if leader == 1 { 2 } else { 1 };
    sc.vc.ok(1, &["vhd", "create", "grow", "--size", "1G"]);
    sc.vc.ok(other, &["vhd", "attach", "grow"]);
    sc.sans.get_mut(&leader).expect("san").cut();
    wait_path(&sc.vc, leader, "redirected", Duration::from_secs(10));
    let start = std::time::Instant::now();
    loop {
        let now = sc.vc.c.wait_leader();
        if now != leader {
            assert_eq!(path_of(&sc.vc, now, now).0, "direct");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "node {leader} kept the coordinator role without a path\nlog:\n{}",
            sc.vc.c.log(leader)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // New blocks of a dynamic VHD, flushed: the flush needs a checkpoint covering them.
    let work = tempfile::tempdir().expect("work");
    let o = Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "write -P 0x42 512M 4M", "-c", "flush"])
        .arg(sc.vc.uri(other, "grow"))
        .current_dir(work.path())
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && !text.contains("failed"), "{text}");
    sc.sans.get_mut(&leader).expect("san").restore();
}
