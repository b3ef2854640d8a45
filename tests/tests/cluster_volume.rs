//! The cluster volume end to end (issue 6): three nodes on one shared sparse file LUN.
//! VHDs are created on one node, attached and written on another (fio crc32c verify over
//! NBD), moved to a third and verified there; exports are compared with qemu-img and
//! read by libvhdi; a qemu-img-made VHD is imported; differencing children over one
//! parent are served by two nodes; a restarted node serves its exports again; a stopped
//! node releases its VHDs and leaves.

use std::process::Command;

use csv_tests::leases::liveness;
use csv_tests::volume::{fio_verify, need, run, volume_cluster};

const GIB: u64 = 1 << 30;

#[test]
fn create_on_a_attach_on_b_move_to_c_and_export() {
    need("qemu-img", "qemu-utils");
    need("vhdiinfo", "libvhdi-utils");
    let vc = volume_cluster(3, 4 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    vc.ok(1, &["vhd", "create", "dyn", "--size", "1G"]);
    vc.ok(
        1,
        &["vhd", "create", "fix", "--size", "96M", "--type", "fixed"],
    );
    let list = vc.ok(3, &["vhd", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("list json");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    for (name, kind, size) in [("dyn", "Dynamic", "64M"), ("fix", "Fixed", "64M")] {
        vc.ok(2, &["vhd", "attach", name]);
        fio_verify(&vc.uri(2, name), "randwrite", size, false, work.path());
        // A second writer elsewhere is refused while node 2 owns it.
        vc.refused(3, &["vhd", "attach", name]);
        vc.ok(2, &["vhd", "detach", name]);
        vc.ok(3, &["vhd", "attach", name, "--read-only"]);
        fio_verify(&vc.uri(3, name), "randwrite", size, true, work.path());
        let file = work.path().join(format!("{name}.vhd"));
        vc.ok(
            3,
            &["vhd", "export", name, file.to_str().expect("utf-8 path")],
        );
        let cmp = run(Command::new("qemu-img").args([
            "compare",
            "-f",
            "vpc",
            "-F",
            "raw",
            file.to_str().expect("path"),
            &vc.uri(3, name),
        ]));
        assert!(cmp.contains("identical"), "{cmp}");
        let info = run(Command::new("vhdiinfo").arg(&file));
        assert!(info.contains(kind), "{info}");
        vc.ok(3, &["vhd", "detach", name]);
    }
    // Detached, the VHDs can be deleted; the space comes back.
    vc.ok(1, &["vhd", "delete", "fix"]);
    let st = vc.ok(1, &["volume", "status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&st).expect("status json");
    assert_eq!(st["state"], "ok", "{st}");
}

#[test]
fn import_and_differencing_children_on_two_nodes() {
    need("qemu-img", "qemu-utils");
    need("qemu-io", "qemu-utils");
    need("vhdiinfo", "libvhdi-utils");
    let py = run(Command::new("/usr/bin/python3").args(["-c", "import pyvhdi; print('ok')"]));
    assert!(
        py.contains("ok"),
        "python3-libvhdi (pyvhdi for /usr/bin/python3) is missing"
    );
    let vc = volume_cluster(3, 4 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    let src = work.path().join("src.vhd");
    let src_s = src.to_str().expect("path");
    run(Command::new("qemu-img").args([
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic",
        src_s,
        "64M",
    ]));
    run(Command::new("qemu-io").args([
        "-f",
        "vpc",
        "-c",
        "write -P 0x5a 1M 3M",
        "-c",
        "write -P 0xa5 40M 2M",
        src_s,
    ]));
    vc.ok(1, &["vhd", "import", src_s, "base"]);
    vc.ok(1, &["vhd", "attach", "base", "--read-only"]);
    let cmp =
        run(Command::new("qemu-img").args(["compare", "-f", "vpc", src_s, &vc.uri(1, "base")]));
    assert!(cmp.contains("identical"), "{cmp}");
    // Children while the parent is attached read-only are fine.
    vc.ok(1, &["vhd", "create", "c1", "--parent", "base"]);
    vc.ok(1, &["vhd", "create", "c2", "--parent", "base"]);
    vc.ok(1, &["vhd", "detach", "base"]);
    let e = vc.refused(1, &["vhd", "attach", "base"]);
    assert!(e.contains("parent"), "{e}");
    let e = vc.refused(1, &["vhd", "delete", "base"]);
    assert!(e.contains("parent"), "{e}");
    vc.ok(2, &["vhd", "attach", "c1"]);
    vc.ok(3, &["vhd", "attach", "c2"]);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x11 2M 1M", &vc.uri(2, "c1")]));
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x22 41M 1M",
        &vc.uri(3, "c2"),
    ]));
    // Each child sees the parent's data where it did not write, its own where it did.
    for (id, name, own, keep) in [
        (2, "c1", "read -P 0x11 2M 1M", "read -P 0xa5 40M 2M"),
        (3, "c2", "read -P 0x22 41M 1M", "read -P 0x5a 1M 3M"),
    ] {
        let out = run(Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            own,
            "-c",
            keep,
            &vc.uri(id, name),
        ]));
        assert!(!out.contains("Pattern verification failed"), "{out}");
    }
    vc.ok(2, &["vhd", "detach", "c1"]);
    // Exported next to its parent (the child's relative locator names base.vhd), the
    // chain opens in qemu-img and libvhdi sees a differencing image over base.
    let base = work.path().join("base.vhd");
    let c1 = work.path().join("c1.vhd");
    vc.ok(1, &["vhd", "export", "base", base.to_str().expect("path")]);
    vc.ok(1, &["vhd", "export", "c1", c1.to_str().expect("path")]);
    let info = run(Command::new("vhdiinfo").arg(&c1));
    assert!(info.contains("Differential"), "{info}");
    let base_info = run(Command::new("vhdiinfo").arg(&base));
    let base_id = base_info
        .lines()
        .find(|l| l.trim_start().starts_with("Identifier"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .expect("base identifier");
    assert!(
        info.contains(base_id),
        "child names parent {base_id}: {info}"
    );
    // qemu's vpc driver does not follow differencing parents: libvhdi reads the chain.
    let script = r#"
import sys, pyvhdi
base = pyvhdi.file(); base.open(sys.argv[1])
child = pyvhdi.file(); child.open(sys.argv[2]); child.set_parent(base)
M = 1 << 20
for off, ln, b in ((2*M, M, 0x11), (1*M, M, 0x5a), (40*M, 2*M, 0xa5), (10*M, M, 0)):
    d = child.read_buffer_at_offset(ln, off)
    assert d == bytes([b]) * ln, "offset %d: expected %#x" % (off, b)
print("chain ok")
"#;
    let out = run(Command::new("/usr/bin/python3").args([
        "-c",
        script,
        base.to_str().expect("path"),
        c1.to_str().expect("path"),
    ]));
    assert!(out.contains("chain ok"), "{out}");
}

#[test]
fn a_restarted_node_serves_its_exports_again() {
    need("qemu-io", "qemu-utils");
    let mut vc = volume_cluster(3, 2 * GIB);
    vc.ok(1, &["vhd", "create", "r1", "--size", "256M"]);
    vc.ok(2, &["vhd", "attach", "r1"]);
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x3c 100M 5M",
        &vc.uri(2, "r1"),
    ]));
    vc.c.stop(2);
    vc.c.start(2);
    vc.wait_export(2, "r1");
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x3c 100M 5M",
        "-c",
        "write -P 0x3d 0 1M",
        &vc.uri(2, "r1"),
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let st = vc.ok(2, &["volume", "status", "--json"]);
    assert!(st.contains("\"r1\""), "{st}");
}

/// A graceful stop (SIGTERM) closes the node's exports, releases their holds and leaves
/// the cluster: another node attaches at once (within the stopped node's lease, which
/// would refuse it otherwise) and reads the data; the restarted node rejoins without
/// taking the VHD back.
#[test]
fn a_gracefully_stopped_node_releases_its_vhds_and_leaves() {
    need("qemu-io", "qemu-utils");
    let mut vc = volume_cluster(3, 2 * GIB);
    vc.ok(1, &["vhd", "create", "g1", "--size", "128M"]);
    vc.ok(2, &["vhd", "attach", "g1"]);
    run(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x5a 7M 3M", &vc.uri(2, "g1")]));
    vc.c.stop(2);
    // No retry: node 2's lease is still valid, only its release lets this in.
    vc.ok(3, &["vhd", "attach", "g1"]);
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "read -P 0x5a 7M 3M",
        &vc.uri(3, "g1"),
    ]));
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let l = liveness(&vc.c, 1).expect("liveness");
    let n2 = l.nodes.iter().find(|n| n.node == 2).expect("node 2 listed");
    assert_eq!(n2.status, "left", "{l:?}");
    // Back again: registered, live, and node 3 keeps the VHD it attached.
    vc.c.start(2);
    let start = std::time::Instant::now();
    loop {
        let l = liveness(&vc.c, 1).expect("liveness");
        if l.nodes.iter().any(|n| n.node == 2 && n.status == "live") {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "node 2 never came back live: {l:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let owner = vc.ok(1, &["owner", "show", "g1", "--json"]);
    let owner: serde_json::Value = serde_json::from_str(&owner).expect("owner json");
    assert_eq!(owner["owner"], 3, "{owner}");
    vc.refused(2, &["vhd", "detach", "g1"]);
}

/// Runs qemu-io commands on an export (read-only with `-r` first); a pattern mismatch
/// fails.
fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    let cmds = match cmds.first() {
        Some(&"-r") => {
            c.arg("-r");
            &cmds[1..]
        }
        _ => cmds,
    };
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(uri);
    let out = run(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    out
}

#[test]
fn volume_recover_on_a_fresh_cluster_sees_every_vhd() {
    need("qemu-io", "qemu-utils");
    let mut vc = volume_cluster(2, 2 * GIB);
    vc.ok(1, &["vhd", "create", "a", "--size", "256M"]);
    vc.ok(
        1,
        &["vhd", "create", "f", "--size", "64M", "--type", "fixed"],
    );
    for (name, cmd) in [("a", "write -P 0x61 10M 2M"), ("f", "write -P 0x66 1M 1M")] {
        vc.ok(2, &["vhd", "attach", name]);
        qemu_io(&vc.uri(2, name), &[cmd]);
        vc.ok(2, &["vhd", "detach", name]);
    }
    vc.ok(1, &["vhd", "create", "c", "--parent", "a"]);
    vc.ok(1, &["vhd", "attach", "c"]);
    qemu_io(&vc.uri(1, "c"), &["write -P 0x63 20M 1M"]);
    vc.ok(1, &["vhd", "detach", "c"]);
    // The coordinator checkpoints the catalog within a second of a change: wait until
    // the newest checkpoint stays the same for three seconds.
    let start = std::time::Instant::now();
    let mut last = (0u64, std::time::Instant::now());
    loop {
        let st: serde_json::Value =
            serde_json::from_str(&vc.ok(1, &["volume", "status", "--json"])).expect("json");
        let seq = st["checkpoint"]["sequence"].as_u64().unwrap_or(0);
        if seq != last.0 {
            last = (seq, std::time::Instant::now());
        } else if seq != 0 && last.1.elapsed() > std::time::Duration::from_secs(3) {
            break;
        }
        assert!(
            start.elapsed() < csv_tests::PATIENCE,
            "checkpoints never settle: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The old cluster is gone for good; a new one knows nothing but the LUN.
    vc.c.kill(1);
    vc.c.kill(2);
    vc.c = csv_tests::volume::cluster_on_lun(2, &vc.lun, "[volume]\nlun = \"{lun}\"\n");
    let e = vc.refused(1, &["vhd", "info", "a"]);
    assert!(e.contains("not_found") || e.contains("no volume"), "{e}");
    vc.ok(1, &["volume", "recover"]);
    let list: serde_json::Value =
        serde_json::from_str(&vc.ok(2, &["vhd", "list", "--json"])).expect("json");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "f", "c"], "{list}");
    for (name, cmds) in [
        ("a", vec!["-r", "read -P 0x61 10M 2M", "read -P 0 0 1M"]),
        ("f", vec!["-r", "read -P 0x66 1M 1M"]),
        (
            "c",
            vec!["-r", "read -P 0x63 20M 1M", "read -P 0x61 10M 2M"],
        ),
    ] {
        vc.ok(2, &["vhd", "attach", name, "--read-only"]);
        qemu_io(&vc.uri(2, name), &cmds);
        vc.ok(2, &["vhd", "detach", name]);
    }
    // The recovered allocator knows which extents are in use.
    vc.ok(
        1,
        &["vhd", "create", "after", "--size", "64M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "c"]);
    qemu_io(&vc.uri(2, "c"), &["read -P 0x63 20M 1M"]);
}

#[test]
fn thirty_vhds_attached_across_three_nodes_under_fio_verify() {
    need("fio", "fio");
    let vc = volume_cluster(3, 4 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    let mut jobs = String::from(
        "[global]\nioengine=nbd\nrw=randwrite\nbs=64k\nsize=8M\niodepth=4\nverify=crc32c\nverify_fatal=1\nverify_state_save=0\n",
    );
    for i in 0..30u64 {
        let name = format!("m{i}");
        let node = i % 3 + 1;
        let kind = if i % 2 == 0 { "dynamic" } else { "fixed" };
        vc.ok(
            1,
            &["vhd", "create", &name, "--size", "64M", "--type", kind],
        );
        vc.ok(node, &["vhd", "attach", &name]);
        jobs.push_str(&format!("[{name}]\nuri={}\n", vc.uri(node, &name)));
    }
    let file = work.path().join("thirty.fio");
    std::fs::write(&file, jobs).expect("job file");
    run(Command::new("fio").current_dir(work.path()).arg(&file));
    for id in 1..=3u64 {
        let st: serde_json::Value =
            serde_json::from_str(&vc.ok(id, &["volume", "status", "--json"])).expect("json");
        assert_eq!(st["attachments"].as_array().map(Vec::len), Some(10), "{st}");
    }
}

#[test]
fn expand_and_compact_a_detached_vhd() {
    need("qemu-io", "qemu-utils");
    need("qemu-img", "qemu-utils");
    let vc = volume_cluster(2, 2 * GIB);
    vc.ok(1, &["vhd", "create", "e", "--size", "64M"]);
    vc.ok(2, &["vhd", "attach", "e"]);
    // Data, then zeros over a written region (a block compact can drop).
    qemu_io(
        &vc.uri(2, "e"),
        &[
            "write -P 0x45 10M 2M",
            "write -P 0x46 30M 2M",
            "write -z -u 30M 2M",
        ],
    );
    // Maintenance of an attached VHD is refused, on its node and elsewhere.
    vc.refused(2, &["vhd", "compact", "e"]);
    vc.refused(1, &["vhd", "expand", "e", "--size", "128M"]);
    vc.ok(2, &["vhd", "detach", "e"]);
    let before: serde_json::Value =
        serde_json::from_str(&vc.ok(1, &["vhd", "info", "e", "--json"])).expect("json");
    vc.ok(1, &["vhd", "expand", "e", "--size", "128M"]);
    vc.ok(1, &["vhd", "compact", "e"]);
    let after: serde_json::Value =
        serde_json::from_str(&vc.ok(1, &["vhd", "info", "e", "--json"])).expect("json");
    assert_eq!(after["virtual_size"], 128u64 << 20, "{after}");
    assert!(
        after["length"].as_u64() <= before["length"].as_u64(),
        "compact grew the file: {before} -> {after}"
    );
    vc.ok(2, &["vhd", "attach", "e"]);
    let info = run(Command::new("qemu-img").args(["info", &vc.uri(2, "e")]));
    assert!(info.contains("134217728"), "{info}");
    qemu_io(
        &vc.uri(2, "e"),
        &[
            "read -P 0x45 10M 2M",
            "read -P 0 30M 2M",
            "write -P 0x47 120M 1M",
            "read -P 0x47 120M 1M",
        ],
    );
}

#[test]
fn owner_move_hands_an_attached_vhd_off() {
    need("qemu-io", "qemu-utils");
    need("qemu-img", "qemu-utils");
    let vc = volume_cluster(3, 2 * GIB);
    vc.ok(1, &["vhd", "create", "h", "--size", "128M"]);
    vc.ok(2, &["vhd", "attach", "h"]);
    qemu_io(&vc.uri(2, "h"), &["write -P 0x48 5M 1M"]);
    // The owner flushes and closes its export before the hold moves.
    vc.ok(1, &["owner", "move", "h", "--to", "3"]);
    let st: serde_json::Value =
        serde_json::from_str(&vc.ok(2, &["volume", "status", "--json"])).expect("json");
    assert_eq!(st["attachments"].as_array().map(Vec::len), Some(0), "{st}");
    let gone = Command::new("qemu-img")
        .args(["info", &vc.uri(2, "h")])
        .output()
        .expect("run qemu-img");
    assert!(!gone.status.success(), "node 2 still serves h");
    // The new writer serves it on attach, with the old owner's data.
    vc.ok(3, &["vhd", "attach", "h"]);
    qemu_io(
        &vc.uri(3, "h"),
        &[
            "read -P 0x48 5M 1M",
            "write -P 0x49 6M 1M",
            "read -P 0x49 6M 1M",
        ],
    );
}
