//! `vhd merge` and long-operation progress on the cluster volume (issue 6): a
//! differencing child written over NBD (aligned and unaligned writes, zero writes over
//! parent data, writes past the parent's data) is merged into its parent, and the parent
//! then reads exactly like a raw file that got the same writes through qemu-io (compared
//! by qemu-img over NBD and on the exported VHD); merges of an attached child, of a child
//! whose parent is attached, and of a child with a sibling are refused. An import polled
//! through `OperationProgress` on a second admin connection reports advancing progress,
//! and `csvadm` draws a bar when its stderr is a terminal (a pty from `script`), none
//! otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csv_api::admin::volume::{OperationProgress, VhdImport};
use csv_api::admin::{Request, Response};
use csv_tests::volume::{need, run, volume_cluster};

const GIB: u64 = 1 << 30;

/// Runs qemu-io commands on `target` (format `fmt`); a pattern mismatch fails.
fn qemu_io(fmt: &str, target: &str, cmds: &[&str]) -> String {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for x in cmds {
        c.args(["-c", x]);
    }
    c.arg(target);
    let out = run(&mut c);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    out
}

/// The parent's writes.
const BASE_WRITES: &[&str] = &[
    "write -P 0x11 0 8M",
    "write -P 0x12 20M 4M",
    "write -P 0x13 33M 512",
];

/// The child's writes: aligned, unaligned (start and length), zeroes over parent data,
/// and data where the parent has none.
const CHILD_WRITES: &[&str] = &[
    "write -P 0x21 1M 1M",
    "write -P 0x22 3146241 5000",
    "write -P 0x23 2097153 1",
    "write -z 21M 512K",
    "write -P 0x24 40M 2M",
    "write -P 0x25 63M 1M",
];

fn compare(a: &str, a_fmt: &str, b: &str, b_fmt: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_fmt, "-F", b_fmt, a, b])
        .output()
        .expect("run qemu-img compare");
    assert!(
        out.status.success(),
        "qemu-img compare {a} {b}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn merge_a_child_into_its_parent() {
    need("qemu-io", "qemu-utils");
    need("qemu-img", "qemu-utils");
    let vc = volume_cluster(2, 2 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    let expected = work.path().join("expected.raw");
    run(Command::new("qemu-img").args([
        "create",
        "-f",
        "raw",
        &expected.display().to_string(),
        "64M",
    ]));
    let exp = expected.display().to_string();

    vc.ok(1, &["vhd", "create", "base", "--size", "64M"]);
    vc.ok(2, &["vhd", "attach", "base"]);
    qemu_io("raw", &vc.uri(2, "base"), BASE_WRITES);
    qemu_io("raw", &exp, BASE_WRITES);
    vc.ok(2, &["vhd", "detach", "base"]);

    vc.ok(1, &["vhd", "create", "top", "--parent", "base"]);
    vc.ok(1, &["vhd", "attach", "top"]);
    qemu_io("raw", &vc.uri(1, "top"), CHILD_WRITES);
    qemu_io("raw", &exp, CHILD_WRITES);
    // An attached child: refused, on its node and elsewhere.
    let e = vc.refused(1, &["vhd", "merge", "top"]);
    assert!(e.contains("attached"), "{e}");
    vc.refused(2, &["vhd", "merge", "top"]);
    vc.ok(1, &["vhd", "detach", "top"]);
    // The child grows past its parent and is written there: the merge grows the parent.
    vc.ok(2, &["vhd", "expand", "top", "--size", "96M"]);
    run(Command::new("qemu-img").args(["resize", "-f", "raw", &exp, "96M"]));
    vc.ok(1, &["vhd", "attach", "top"]);
    qemu_io("raw", &vc.uri(1, "top"), &["write -P 0x26 80M 1M"]);
    qemu_io("raw", &exp, &["write -P 0x26 80M 1M"]);
    vc.ok(1, &["vhd", "detach", "top"]);
    // A parent attached (read-only, as a parent may be): refused.
    vc.ok(2, &["vhd", "attach", "base", "--read-only"]);
    vc.refused(1, &["vhd", "merge", "top"]);
    vc.refused(2, &["vhd", "merge", "top"]);
    vc.ok(2, &["vhd", "detach", "base"]);
    // A sibling would see the merged data: refused.
    vc.ok(1, &["vhd", "create", "sib", "--parent", "base"]);
    let e = vc.refused(2, &["vhd", "merge", "top"]);
    assert!(e.contains("sib"), "{e}");
    vc.ok(1, &["vhd", "delete", "sib"]);
    // A child with children of its own: refused (they are not relinked).
    vc.ok(1, &["vhd", "create", "gc", "--parent", "top"]);
    let e = vc.refused(1, &["vhd", "merge", "top"]);
    assert!(e.contains("gc"), "{e}");
    vc.ok(1, &["vhd", "delete", "gc"]);
    // Not a differencing VHD: refused.
    vc.refused(1, &["vhd", "merge", "base"]);

    let mapped = || -> u64 {
        let s: serde_json::Value =
            serde_json::from_str(&vc.ok(1, &["volume", "status", "--json"])).expect("json");
        s["space"]["mapped_extents"]
            .as_u64()
            .expect("mapped_extents")
    };
    let extents = |name: &str| -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&vc.ok(1, &["vhd", "info", name, "--json"])).expect("json");
        v["extents"].as_u64().expect("extents")
    };
    let (mapped_before, top_extents, base_before) = (mapped(), extents("top"), extents("base"));
    assert!(top_extents > 0);
    let out = vc.ok(2, &["vhd", "merge", "top", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("merge json");
    assert_eq!(v["merged"], "top", "{v}");
    assert_eq!(v["parent"]["name"], "base", "{v}");
    assert_eq!(v["parent"]["virtual_size"], 96u64 << 20, "{v}");
    // The child is gone, its extents are free again.
    let list = vc.ok(1, &["vhd", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("list json");
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["base"], "{list}");
    // The child's extents left the mapped set; the parent's growth joined it.
    let base_after = extents("base");
    assert!(base_after >= base_before);
    assert_eq!(
        mapped(),
        mapped_before - top_extents + (base_after - base_before),
        "the child's extents were not freed"
    );
    vc.refused(1, &["vhd", "info", "top"]);

    // The parent now reads as the raw file that got both sets of writes.
    vc.ok(1, &["vhd", "attach", "base"]);
    compare(&exp, "raw", &vc.uri(1, "base"), "raw");
    qemu_io(
        "raw",
        &vc.uri(1, "base"),
        &[
            "read -P 0x21 1M 1M",
            "read -P 0 21M 512K",
            "read -P 0x24 40M 2M",
        ],
    );
    vc.ok(1, &["vhd", "detach", "base"]);
    // And so does its exported VHD file, read by qemu's own VHD driver.
    let file = work.path().join("base.vhd");
    vc.ok(2, &["vhd", "export", "base", &file.display().to_string()]);
    compare(&exp, "raw", &file.display().to_string(), "vpc");
}

/// Polls `op_id` on node 1 until `running` is cleared; the progress seen.
fn poll(vc_admin: &Path, op_id: u64, running: &AtomicBool) -> Vec<(u64, u64)> {
    let mut c = csv_api::admin::Client::connect(vc_admin).expect("connect");
    let mut seen = Vec::new();
    while running.load(Ordering::Acquire) {
        match c.call(Request::OperationProgress(OperationProgress { op_id })) {
            Ok(Response::Progress(p)) => {
                assert_eq!(p.kind, "import");
                assert_eq!(p.name, "big");
                assert_eq!(p.unit, "bytes");
                seen.push((p.done, p.total));
            }
            Err(e) if e.code() == Some(csv_api::ErrorCode::NotFound) => {}
            other => panic!("progress: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    seen
}

#[test]
fn import_progress_advances() {
    need("qemu-img", "qemu-utils");
    need("qemu-io", "qemu-utils");
    let vc = volume_cluster(1, 4 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    let src = work.path().join("big.vhd");
    let srcs = src.display().to_string();
    run(Command::new("qemu-img").args([
        "create",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed,force_size=on",
        &srcs,
        "1G",
    ]));
    qemu_io(
        "vpc",
        &srcs,
        &["write -P 0x31 0 4M", "write -P 0x32 900M 4M"],
    );
    let len = std::fs::metadata(&src).expect("stat").len();
    let admin = vc.c.nodes[&1].admin.clone();
    let running = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let op_id = 0x5eed_u64;
    let poller = {
        let (running, seen, admin) = (running.clone(), seen.clone(), admin.clone());
        std::thread::spawn(move || {
            let s = poll(&admin, op_id, &running);
            *seen.lock().expect("lock") = s;
        })
    };
    let mut c = csv_api::admin::Client::connect(&admin).expect("connect");
    let r = c.call(Request::VhdImport(VhdImport {
        path: srcs.clone(),
        name: "big".into(),
        op_id,
    }));
    running.store(false, Ordering::Release);
    poller.join().expect("poller");
    assert!(matches!(r, Ok(Response::Vhd(_))), "{r:?}");
    // Ended: the entry is gone.
    let e = c
        .call(Request::OperationProgress(OperationProgress { op_id }))
        .expect_err("no entry after the end");
    assert_eq!(e.code(), Some(csv_api::ErrorCode::NotFound));
    let seen = seen.lock().expect("lock").clone();
    assert!(!seen.is_empty(), "no progress seen during the import");
    assert!(
        seen.iter().all(|&(_, t)| t == len),
        "{seen:?} (total {len})"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress went back: {seen:?}"
    );
    let distinct: std::collections::BTreeSet<u64> = seen.iter().map(|s| s.0).collect();
    assert!(
        distinct.len() >= 2 && distinct.iter().any(|&d| d > 0 && d < len),
        "progress did not advance: {distinct:?}"
    );
    // The imported VHD is the file.
    vc.ok(1, &["vhd", "attach", "big"]);
    qemu_io(
        "raw",
        &vc.uri(1, "big"),
        &[
            "read -P 0x31 0 4M",
            "read -P 0 4M 1M",
            "read -P 0x32 900M 4M",
        ],
    );
}

#[test]
fn csvadm_draws_a_progress_bar_on_a_terminal() {
    need("qemu-img", "qemu-utils");
    need("script", "bsdutils");
    let vc = volume_cluster(1, 4 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    let src = work.path().join("big.vhd");
    let srcs = src.display().to_string();
    run(Command::new("qemu-img").args([
        "create",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed,force_size=on",
        &srcs,
        "2G",
    ]));
    let admin = vc.c.nodes[&1].admin.display().to_string();
    let csvadm = csv_tests::binary("csvadm").display().to_string();
    // `script` gives csvadm a pseudo-terminal as stderr; its output is the terminal's.
    let cmd = format!("{csvadm} --admin {admin} vhd import {srcs} big");
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("import big ["),
        "no progress bar drawn: {text:?}"
    );
    assert!(text.contains('%'), "{text:?}");
    // Without a terminal: no bar on stderr, just the result on stdout.
    let out_file = work.path().join("out.vhd").display().to_string();
    let o = vc.csvadm(1, &["vhd", "export", "big", &out_file]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("big written to"));
}
