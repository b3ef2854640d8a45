//! Flushed data survives crashes, lost answers, coordinator loss and recovery (042 §2,
//! §6, §7 and the fault classes of issue 11).

use std::time::Duration;

use csv_tests::nbdpy::Script;
use csv_tests::volume::{cluster_on_lun, fio_verify};

use super::*;

/// Restarts node `id` with `FAILPOINTS` set to `points` (empty: none).
fn restart_with(vc: &mut VolumeCluster, id: u64, points: &str) {
    vc.c.set_env(id, "FAILPOINTS", points);
    vc.c.stop(id);
    vc.c.start(id);
    csv_tests::leases::wait_leases(&vc.c, &[id]);
}

/// Item 8: a map commit that applied but whose answer was lost (fail point) leaves the
/// outcome unknown to the node; the next flush sends it again and succeeds (the commit
/// is idempotent), so the VHD is not wedged.
#[test]
fn a_commit_whose_answer_was_lost_is_sent_again_and_succeeds() {
    let mut vc = fast_cluster(2, 2 * GIB, "");
    restart_with(&mut vc, 2, "catalog.commit.lost_reply=1*return");
    vc.ok(1, &["vhd", "create", "v", "--size", "1G"]);
    vc.ok(2, &["vhd", "attach", "v"]);
    // The first flush with a map change loses its answer.
    let o = qemu_io(&vc.uri(2, "v"), &["write -P 0xaa 0 40M", "flush"]);
    let out = both(&o);
    assert!(
        out.contains("wrote") && !o.status.success(),
        "the write should pass and its flush fail: {out}"
    );
    qemu_io_ok(&vc.uri(2, "v"), &["flush"]);
    vc.ok(2, &["vhd", "detach", "v"]);
    vc.ok(1, &["vhd", "attach", "v"]);
    qemu_io_ok(&vc.uri(1, "v"), &["read -P 0xaa 0 40M"]);
}

/// Item 10: `volume recover` keeps every flushed growth: a VHD grown and flushed right
/// before the whole cluster dies (no time for a periodic checkpoint) reads back whole from
/// a new cluster recovered from the LUN.
#[test]
fn a_recover_keeps_every_flushed_growth() {
    let mut vc = fast_cluster(1, 2 * GIB, "");
    vc.ok(1, &["vhd", "create", "v", "--size", "1G"]);
    vc.ok(1, &["vhd", "attach", "v"]);
    qemu_io_ok(&vc.uri(1, "v"), &["write -P 0xaa 0 40M", "flush"]);
    vc.c.kill(1);
    let fresh = cluster_on_lun(1, &vc.lun, &format!("{FAST}[volume]\nlun = \"{{lun}}\"\n"));
    let out = std::process::Command::new(csv_tests::binary("csvadm"))
        .arg("--admin")
        .arg(&fresh.nodes[&1].admin)
        .args(["volume", "recover"])
        .output()
        .expect("csvadm");
    assert!(
        out.status.success(),
        "recover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = |args: &[&str]| {
        let o = std::process::Command::new(csv_tests::binary("csvadm"))
            .arg("--admin")
            .arg(&fresh.nodes[&1].admin)
            .args(args)
            .output()
            .expect("csvadm");
        assert!(o.status.success(), "{args:?}: {o:?}");
    };
    run(&["vhd", "attach", "v"]);
    let uri = format!(
        "nbd+unix:///v?socket={}",
        fresh.nodes[&1].data_dir().join("nbd.sock").display()
    );
    qemu_io_ok(&uri, &["read -P 0xaa 0 40M"]);
}

/// Item 11: a hand-off whose drain outlasts the lease layer's hook timeout (fail point:
/// the export's connections take 12 s to drain) never leaves the VHD held but unserved:
/// either the move completes within its bounds or the owner still serves it.
#[test]
fn a_slow_hand_off_never_leaves_the_vhd_held_but_unserved() {
    let mut vc = fast_cluster(3, 2 * GIB, "");
    restart_with(&mut vc, 2, "export.drain=return(12000)");
    vc.ok(
        1,
        &["vhd", "create", "v", "--size", "64M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "v"]);
    qemu_io_ok(&vc.uri(2, "v"), &["write -P 0x5a 0 4M", "flush"]);
    let _ = vc.csvadm(1, &["owner", "move", "v", "--to", "3"]);
    std::thread::sleep(Duration::from_secs(3));
    let o = owner(&vc, 1, "v");
    match o["owner"].as_u64() {
        Some(2) => {
            qemu_io_ok(&vc.uri(2, "v"), &["read -P 0x5a 0 4M"]);
        }
        Some(3) => {
            vc.ok(3, &["vhd", "attach", "v"]);
            qemu_io_ok(&vc.uri(3, "v"), &["read -P 0x5a 0 4M"]);
        }
        _ => panic!("nobody holds v after the move: {o}"),
    }
}

/// Fault class: kill -9 of a node while it writes a dynamic VHD (growing it); the new
/// owner reads every block whose flush was acknowledged, and fio's own verification of a
/// region written and flushed before the kill passes.
#[test]
fn a_killed_owner_loses_no_flushed_block() {
    let mut vc = fast_cluster(3, 4 * GIB, "");
    vc.ok(1, &["vhd", "create", "v", "--size", "2G"]);
    vc.ok(2, &["vhd", "attach", "v"]);
    let work = tempfile::tempdir().expect("work");
    fio_verify(&vc.uri(2, "v"), "randwrite", "32M", false, work.path());
    // 64 KiB blocks from 32 MiB on, each stamped with its number, a flush every 8.
    let mut w = Script::spawn(
        r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
base = 32 << 20
i = 0
try:
    while True:
        h.pwrite(i.to_bytes(8, "little") * 8192, base + i * 65536)
        i += 1
        if i % 8 == 0:
            h.flush()
            print("flushed", i, flush=True)
except nbd.Error as e:
    print("stopped", e, flush=True)
"#,
        &[&vc.uri(2, "v")],
    );
    loop {
        let l = w.expect("flushed");
        let n: u64 = l["flushed ".len()..].parse().expect("count");
        if n >= 400 {
            break;
        }
    }
    vc.c.kill(2);
    let rest = w.finish(Duration::from_secs(30));
    let flushed = rest
        .lines()
        .filter_map(|l| l.strip_prefix("flushed "))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(400)
        .max(400);
    attach_until(&vc, 3, "v", &[], Duration::from_secs(40));
    let check = csv_tests::nbdpy::run(
        r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = int(sys.argv[2])
base = 32 << 20
bad = [i for i in range(n) if h.pread(65536, base + i * 65536) != i.to_bytes(8, "little") * 8192]
print("bad", len(bad), bad[:10])
"#,
        &[&vc.uri(3, "v"), &flushed.to_string()],
    );
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("bad 0 "),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    fio_verify(&vc.uri(3, "v"), "randwrite", "32M", true, work.path());
}

/// Fault class: the coordinator is killed while the other nodes write: their I/O never
/// fails (data I/O does not go through the coordinator), and fio verifies it after.
#[test]
fn killing_the_coordinator_never_fails_io_on_other_nodes() {
    need("fio", "fio");
    let mut vc = fast_cluster(3, 4 * GIB, "");
    let leader = vc.c.wait_leader();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|i| *i != leader).collect();
    let work = tempfile::tempdir().expect("work");
    let mut fios = Vec::new();
    for id in &others {
        let name = format!("v{id}");
        vc.ok(
            *id,
            &["vhd", "create", &name, "--size", "64M", "--type", "fixed"],
        );
        vc.ok(*id, &["vhd", "attach", &name]);
        let d = work.path().join(&name);
        std::fs::create_dir_all(&d).expect("dir");
        fios.push(
            std::process::Command::new("fio")
                .current_dir(&d)
                .args([
                    "--name=c",
                    "--ioengine=nbd",
                    &format!("--uri={}", vc.uri(*id, &name)),
                    "--rw=randwrite",
                    "--bs=64k",
                    "--iodepth=8",
                    "--size=64M",
                    "--verify=crc32c",
                    "--verify_fatal=1",
                    "--loops=6",
                ])
                .output_async(),
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    vc.c.kill(leader);
    for f in fios {
        let o = f.wait_with_output().expect("fio");
        assert!(
            o.status.success(),
            "fio failed across the coordinator kill: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for std::process::Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    }
}

/// The growth of a dynamic VHD crashed at each cut point (fail points abort the node):
/// after growth zeroing, after the data flush, after the map commit, after the BAT write,
/// and with the BAT write torn. The node restarts; the exported VHD opens in qemu
/// (`qemu-img info`, `convert`), libvhdi and `csvadm image check` (no corruption), keeps
/// the data flushed before, and shows the new data whole or not at all, as qemu, libvhdi
/// and this project's own reader (`csvadm image convert`) agree.
#[test]
fn a_crash_at_any_growth_cut_point_leaves_a_consistent_vhd() {
    need("qemu-img", "qemu-utils");
    let mut vc = fast_cluster(2, 4 * GIB, "");
    let work = tempfile::tempdir().expect("work");
    let points = [
        "extent.grow.after_zero=return",
        "extent.flush.after_path_flush=return",
        "extent.flush.after_commit=return",
        "extent.flush.enter=1*off->return",
        "extent.write.torn=return(512-8192)",
    ];
    for (i, point) in points.iter().enumerate() {
        let name = format!("g{i}");
        vc.ok(1, &["vhd", "create", &name, "--size", "1G"]);
        vc.ok(2, &["vhd", "attach", &name]);
        qemu_io_ok(&vc.uri(2, &name), &["write -P 0x11 0 1M", "flush"]);
        vc.ok(2, &["vhd", "detach", &name]);
        restart_with(&mut vc, 2, point);
        vc.ok(2, &["vhd", "attach", &name]);
        let _ = qemu_io(&vc.uri(2, &name), &["write -P 0x22 16M 24M", "flush"]);
        let start = std::time::Instant::now();
        while vc.c.try_exit(2).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{point}: node 2 did not crash"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        vc.c.set_env(2, "FAILPOINTS", "");
        vc.c.start(2);
        csv_tests::leases::wait_leases(&vc.c, &[2]);
        vc.wait_export(2, &name);
        vc.ok(2, &["vhd", "detach", &name]);
        let file = work.path().join(format!("{name}.vhd"));
        vc.ok(1, &["vhd", "export", &name, file.to_str().expect("path")]);
        // qemu's vpc driver has no `check`: qemu judges by opening and converting below.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "-f", "vpc"])
            .arg(&file)
            .output()
            .expect("qemu-img info");
        assert!(info.status.success(), "{point}: qemu-img info: {info:?}");
        let ours = std::process::Command::new(csv_tests::binary("csvadm"))
            .args(["image", "check"])
            .arg(&file)
            .output()
            .expect("csvadm image check");
        assert!(ours.status.code() != Some(2), "{point}: {ours:?}");
        let judge = csv_tests::nbdpy::run(
            r#"
import pyvhdi, subprocess, sys
f = sys.argv[1]
def regions(read):
    base = read(0, 1 << 20)
    grown = read(16 << 20, 24 << 20)
    ok_base = base == b"\x11" * len(base)
    chunks = [grown[i:i + 65536] for i in range(0, len(grown), 65536)]
    whole = all(c == b"\x22" * 65536 or c == bytes(65536) for c in chunks)
    return ok_base, whole
v = pyvhdi.file()
v.open(f)
def lib(o, n):
    return v.read_buffer_at_offset(n, o)
print("libvhdi", *regions(lib))
def raw(name, path):
    with open(path, "rb") as r:
        def q(o, n):
            r.seek(o)
            return r.read(n)
        print(name, *regions(q))
subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", f, f + ".qemu.raw"], check=True)
raw("qemu", f + ".qemu.raw")
subprocess.run([sys.argv[2], "image", "convert", f, f + ".ours.raw", "--to", "raw"], check=True)
raw("ours", f + ".ours.raw")
"#,
            &[
                file.to_str().expect("path"),
                csv_tests::binary("csvadm").to_str().expect("path"),
            ],
        );
        let out = String::from_utf8_lossy(&judge.stdout);
        assert!(
            out.contains("libvhdi True True")
                && out.contains("qemu True True")
                && out.contains("ours True True"),
            "{point}: {out}{}",
            String::from_utf8_lossy(&judge.stderr)
        );
    }
}
