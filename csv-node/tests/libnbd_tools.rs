//! `csv-node export` judged by libnbd's tools: nbdinfo (--list, --map, --can, ...),
//! nbdcopy both ways (sparse copies skip holes), systemd socket activation through
//! `nbdinfo -- [ csv-node export FILE ]`, several named exports.

mod common;

use common::*;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

#[test]
fn nbdinfo_list_map_and_capabilities() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.raw");
    let b = dir.path().join("b.raw");
    sparse_file(&a, 16 * MIB);
    sparse_file(&b, 4 * MIB);
    write_at(&a, 2 * MIB, &pattern(MIB as usize, 9));
    let srv = ExportServer::unix(&[
        &format!("{}=alpha", a.display()),
        &format!("{}=beta", b.display()),
    ]);

    let list = ok(cmd("nbdinfo").args(["--list", "--json", &srv.uri("")]));
    assert!(list.contains("\"export-name\": \"alpha\""), "{list}");
    assert!(list.contains("\"export-name\": \"beta\""), "{list}");
    // two named files: no default export
    let o = run(
        cmd("nbdinfo").args(["--size", &srv.uri("")]),
        Duration::from_secs(20),
    );
    assert!(!o.status.success());

    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &srv.uri("alpha")])).trim(),
        "16777216"
    );
    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &srv.uri("beta")])).trim(),
        "4194304"
    );

    let map = ok(cmd("nbdinfo").args(["--map", &srv.uri("alpha")]));
    let rows: Vec<Vec<&str>> = map
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["0", "2097152", "3"], "{map}");
    assert_eq!(rows[1][..3], ["2097152", "1048576", "0"], "{map}");
    assert_eq!(rows[2][..3], ["3145728", "13631488", "3"], "{map}");

    for can in [
        "flush",
        "fua",
        "trim",
        "zero",
        "fast-zero",
        "multi-conn",
        "df",
        "cache",
        "structured-reply",
    ] {
        let o = run(
            cmd("nbdinfo").args(["--can", can, &srv.uri("alpha")]),
            Duration::from_secs(20),
        );
        assert!(o.status.success(), "--can {can}: {o:?}");
    }
    let info = ok(cmd("nbdinfo").args(["--json", &srv.uri("alpha")]));
    assert!(info.contains("\"base:allocation\""), "{info}");
    let o = run(
        cmd("nbdinfo").args(["--is", "read-only", &srv.uri("alpha")]),
        Duration::from_secs(20),
    );
    assert!(!o.status.success(), "writable export reported read-only");

    let ro = ExportServer::unix(&["--read-only", a.to_str().expect("utf8")]);
    let o = run(
        cmd("nbdinfo").args(["--is", "read-only", &ro.uri("")]),
        Duration::from_secs(20),
    );
    assert!(o.status.success());
    for cannot in ["trim", "zero"] {
        let o = run(
            cmd("nbdinfo").args(["--can", cannot, &ro.uri("")]),
            Duration::from_secs(20),
        );
        assert!(!o.status.success(), "read-only export can {cannot}");
    }
    let info = ok(cmd("nbdinfo").args(["--json", &ro.uri("")]));
    assert!(info.contains("\"block_size_minimum\": 512"), "{info}");
    assert!(info.contains("\"block_size_preferred\": 4096"), "{info}");
    assert!(info.contains("\"block_size_maximum\": 33554432"), "{info}");
}

#[test]
fn nbdcopy_both_ways_and_sparse() {
    require("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_file(&img, 64 * MIB);
    let srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    let uri = srv.uri("");

    // file -> export
    let src = dir.path().join("src.raw");
    sparse_file(&src, 64 * MIB);
    write_at(&src, 0, &pattern(5 * MIB as usize, 5));
    write_at(&src, 50 * MIB, &pattern(3 * MIB as usize, 6));
    ok(cmd("nbdcopy").args(["--flush", src.to_str().expect("utf8"), &uri]));
    assert_eq!(
        read_at(&img, 0, 5 * MIB as usize),
        pattern(5 * MIB as usize, 5)
    );
    assert_eq!(
        read_at(&img, 50 * MIB, 3 * MIB as usize),
        pattern(3 * MIB as usize, 6)
    );

    // export -> file: the copy is sparse (holes skipped), equal to the source
    let back = dir.path().join("back.raw");
    ok(cmd("nbdcopy").args([&uri, back.to_str().expect("utf8")]));
    assert_eq!(
        std::fs::read(&back).expect("read"),
        std::fs::read(&src).expect("read")
    );
    assert!(
        allocated(&back) < 16 * MIB,
        "nbdcopy wrote holes: {} bytes allocated",
        allocated(&back)
    );
}

#[test]
fn heavy_nbdcopy_of_a_mostly_empty_export_costs_its_data_not_its_size() {
    require("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.raw");
    sparse_file(&big, 100 * 1024 * MIB);
    write_at(&big, 0, &pattern(16 * MIB as usize, 1));
    write_at(&big, 77 * 1024 * MIB, &pattern(16 * MIB as usize, 2));
    let srv = ExportServer::unix(&[big.to_str().expect("utf8")]);
    let t = Instant::now();
    ok(cmd("nbdcopy").args([&srv.uri(""), "null:"]));
    // 100 GiB of holes must not be transferred; a generous bound for a loaded machine
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "copy took {:?}",
        t.elapsed()
    );
}

#[test]
fn socket_activation_through_nbdinfo() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("act.raw");
    sparse_file(&img, 3 * MIB);
    let out = ok(cmd("nbdinfo").args([
        "--size",
        "--",
        "[",
        bin(),
        "export",
        img.to_str().expect("utf8"),
        "]",
    ]));
    assert_eq!(out.trim(), "3145728");
    // and writes through an activated server reach the file
    ok(cmd("nbdcopy").args([
        "--",
        "[",
        "nbdkit",
        "pattern",
        "size=1M",
        "]",
        "[",
        bin(),
        "export",
        img.to_str().expect("utf8"),
        "]",
    ]));
    let b = read_at(&img, 8, 8);
    assert_eq!(b, 8u64.to_be_bytes());
}

#[test]
fn single_file_is_also_the_default_export() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("one.raw");
    sparse_file(&img, MIB);
    let srv = ExportServer::tcp(&[img.to_str().expect("utf8")]);
    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &srv.uri("")])).trim(),
        "1048576"
    );
    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &srv.uri("one.raw")])).trim(),
        "1048576"
    );
}
