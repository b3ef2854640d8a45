//! `csv-node export` of raw files judged by qemu's tools: qemu-img info/map/compare/
//! convert and qemu-io write/read/discard/zero with patterns, over Unix and TCP.

mod common;

use common::*;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut c = cmd("qemu-io");
    c.arg("-f").arg("raw");
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.arg(uri);
    ok(&mut c)
}

#[test]
fn qemu_img_info_map_compare_convert() {
    require("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_file(&img, 64 * MIB);
    write_at(&img, 4 * MIB, &pattern(MIB as usize, 1));
    write_at(&img, 40 * MIB, &pattern(2 * MIB as usize, 2));
    let srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    let uri = srv.uri("");

    let info = ok(cmd("qemu-img").args(["info", "--output=json", "-f", "raw", &uri]));
    assert!(info.contains("\"virtual-size\": 67108864"), "{info}");

    // map: holes where the file has holes, data where it has data
    let map = ok(cmd("qemu-img").args(["map", "--output=json", "-f", "raw", &uri]));
    let data: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .collect();
    assert_eq!(data.len(), 2, "{map}");
    assert!(data[0].contains("\"start\": 4194304") && data[0].contains("\"length\": 1048576"));
    assert!(data[1].contains("\"start\": 41943040") && data[1].contains("\"length\": 2097152"));

    ok(cmd("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &uri,
        img.to_str().expect("utf8"),
    ]));

    // export -> file, file -> export
    let copy = dir.path().join("copy.raw");
    ok(cmd("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        &uri,
        copy.to_str().expect("utf8"),
    ]));
    ok(cmd("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        copy.to_str().expect("utf8"),
        img.to_str().expect("utf8"),
    ]));

    let src = dir.path().join("src.raw");
    sparse_file(&src, 64 * MIB);
    write_at(&src, 0, &pattern(3 * MIB as usize, 3));
    write_at(&src, 60 * MIB, &pattern(MIB as usize, 4));
    ok(cmd("qemu-img").args([
        "convert",
        "-n",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().expect("utf8"),
        &uri,
    ]));
    ok(cmd("qemu-img").args([
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        &uri,
        src.to_str().expect("utf8"),
    ]));
    assert_eq!(
        read_at(&img, 60 * MIB, MIB as usize),
        pattern(MIB as usize, 4)
    );
    // the old data at 40 MiB was zeroed by convert (holes in src)
    assert!(
        read_at(&img, 40 * MIB, 2 * MIB as usize)
            .iter()
            .all(|b| *b == 0)
    );
}

fn qemu_io_patterns(srv: &ExportServer, img: &std::path::Path) {
    let uri = srv.uri("");
    let out = qemu_io(
        &uri,
        &[
            "write -P 0xa5 0 1M",
            "write -P 0x5a 1M 512",
            "write -P 0x11 8M 4M",
            "read -P 0xa5 0 1M",
            "read -P 0x5a 1M 512",
            "read -P 0x11 8M 4M",
            "discard 8M 1M",
            "read -P 0 8M 1M",
            "write -z 9M 1M",
            "write -z -u 10M 1M",
            "read -P 0 9M 2M",
            "read -P 0x11 11M 1M",
            "flush",
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    // the file itself holds what the client wrote
    assert!(read_at(img, 0, MIB as usize).iter().all(|b| *b == 0xa5));
    assert!(read_at(img, MIB, 512).iter().all(|b| *b == 0x5a));
    assert!(read_at(img, MIB + 512, 512).iter().all(|b| *b == 0));
    assert!(
        read_at(img, 8 * MIB, 3 * MIB as usize)
            .iter()
            .all(|b| *b == 0)
    );
    assert!(
        read_at(img, 11 * MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0x11)
    );
    // a pattern check that must fail does fail (the oracle is not blind)
    let bad = run(
        cmd("qemu-io").args(["-f", "raw", "-c", "read -P 0x77 0 4k", &uri]),
        Duration::from_secs(30),
    );
    let text =
        String::from_utf8_lossy(&bad.stdout).into_owned() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("Pattern verification failed"), "{text}");
}

#[test]
fn qemu_io_write_read_discard_zero_unix() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_file(&img, 32 * MIB);
    let srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    qemu_io_patterns(&srv, &img);
}

#[test]
fn qemu_io_write_read_discard_zero_tcp() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_file(&img, 32 * MIB);
    let srv = ExportServer::tcp(&[img.to_str().expect("utf8")]);
    qemu_io_patterns(&srv, &img);
}

#[test]
fn read_only_export_refuses_writes() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.raw");
    sparse_file(&img, 8 * MIB);
    write_at(&img, 0, &[0x42; 4096]);
    let srv = ExportServer::unix(&["--read-only", img.to_str().expect("utf8")]);
    let uri = srv.uri("");
    ok(cmd("qemu-io").args(["-r", "-f", "raw", "-c", "read -P 0x42 0 4k", &uri]));
    let o = run(
        cmd("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 4k", &uri]),
        Duration::from_secs(30),
    );
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains("Permission denied") || text.contains("Operation not permitted"),
        "{text}"
    );
    assert!(read_at(&img, 0, 4096).iter().all(|b| *b == 0x42));
}
