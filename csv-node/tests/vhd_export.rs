//! `csv-node export` of VHD images: fixed and dynamic images made by qemu-img, a
//! differencing chain checked with libvhdi; data, holes (block status of unallocated
//! blocks), writes that land in the image, sparse copies that skip unallocated blocks.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn vhd_round_trip(subformat: &str) {
    require("qemu-img", "qemu-utils");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join(format!("{subformat}.vhd"));
    ok(cmd("qemu-img").args([
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        &format!("subformat={subformat},force_size=on"),
        s(&img),
        "64M",
    ]));
    ok(cmd("qemu-io").args([
        "-f",
        "vpc",
        "-c",
        "write -P 0x21 2M 1M",
        "-c",
        "write -P 0x22 40M 64k",
        s(&img),
    ]));
    let reference = dir.path().join("ref.raw");
    ok(cmd("qemu-img").args(["convert", "-f", "vpc", "-O", "raw", s(&img), s(&reference)]));

    let mut srv = ExportServer::unix(&[s(&img)]);
    let uri = srv.uri("");
    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &uri])).trim(),
        (64 * MIB).to_string()
    );
    ok(cmd("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &uri, s(&reference)]));
    if subformat == "dynamic" {
        // unallocated 2 MiB blocks are holes; the two written blocks are data
        let map = ok(cmd("nbdinfo").args(["--map", &uri]));
        let rows: Vec<Vec<&str>> = map
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let data: Vec<(&str, &str)> = rows
            .iter()
            .filter(|r| r[2] == "0")
            .map(|r| (r[0], r[1]))
            .collect();
        assert_eq!(
            data,
            [("2097152", "2097152"), ("41943040", "2097152")],
            "{map}"
        );
    }
    // writes through NBD, the same writes on the reference
    let writes = [
        "write -P 0x31 0 4k",
        "write -P 0x32 10M 3M",
        "write -z 2M 512k",
        "write -P 0x33 63M 1M",
    ];
    let mut c = cmd("qemu-io");
    c.args(["-f", "raw"]);
    for w in writes {
        c.args(["-c", w]);
    }
    c.arg(&uri);
    ok(&mut c);
    let mut c = cmd("qemu-io");
    c.args(["-f", "raw"]);
    for w in writes {
        c.args(["-c", w]);
    }
    c.arg(s(&reference));
    ok(&mut c);
    ok(cmd("qemu-img").args(["compare", "-f", "raw", "-F", "raw", &uri, s(&reference)]));
    assert!(srv.terminate().success(), "{}", srv.log());
    // the image file is a valid VHD holding the data, for qemu and for libvhdi
    ok(cmd("qemu-img").args(["compare", "-f", "vpc", "-F", "raw", s(&img), s(&reference)]));
    require("vhdiinfo", "libvhdi-utils");
    let info = ok(cmd("vhdiinfo").arg(s(&img)));
    assert!(info.to_lowercase().contains(subformat), "{info}");
}

#[test]
fn vhd_fixed_round_trip_qemu() {
    vhd_round_trip("fixed");
}

#[test]
fn vhd_dynamic_round_trip_qemu_and_holes() {
    vhd_round_trip("dynamic");
}

#[test]
fn vhd_differencing_chain_checked_with_libvhdi() {
    require("qemu-img", "qemu-utils");
    require("/usr/bin/python3", "python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = dir.path().join("parent.vhd");
    let child = dir.path().join("child.vhd");
    ok(cmd("qemu-img").args([
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        s(&parent),
        "32M",
    ]));
    ok(cmd("qemu-io").args([
        "-f",
        "vpc",
        "-c",
        "write -P 0x41 0 4M",
        "-c",
        "write -P 0x42 20M 2M",
        s(&parent),
    ]));
    vhd::create::create_differencing_file(&child, &parent, None).expect("differencing child");

    let mut srv = ExportServer::unix(&[s(&child)]);
    let uri = srv.uri("");
    // reads fall through to the parent; block status shows the parent's data
    let copy = dir.path().join("copy.raw");
    ok(cmd("nbdcopy").args([&uri, s(&copy)]));
    assert!(
        read_at(&copy, 0, 4 * MIB as usize)
            .iter()
            .all(|b| *b == 0x41)
    );
    assert!(
        read_at(&copy, 20 * MIB, 2 * MIB as usize)
            .iter()
            .all(|b| *b == 0x42)
    );
    assert!(
        read_at(&copy, 8 * MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0)
    );
    let map = ok(cmd("nbdinfo").args(["--map", &uri]));
    assert!(
        map.lines()
            .next()
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("0")),
        "{map}"
    );
    // writes go to the child only
    ok(cmd("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x51 1M 1M",
        "-c",
        "write -P 0x52 30M 64k",
        &uri,
    ]));
    assert!(srv.terminate().success(), "{}", srv.log());
    let parent_raw = dir.path().join("parent.raw");
    ok(cmd("qemu-img").args([
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        s(&parent),
        s(&parent_raw),
    ]));
    assert!(
        read_at(&parent_raw, MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0x41),
        "parent modified"
    );

    // libvhdi reads the chain: child over parent
    let script = r#"
import pyvhdi, sys
p = pyvhdi.file(); p.open(sys.argv[2])
c = pyvhdi.file(); c.open(sys.argv[1]); c.set_parent(p)
M = 1 << 20
def chk(off, n, val):
    b = c.read_buffer_at_offset(n, off)
    assert b == bytes([val]) * n, (off, n, val, b[:16])
chk(0, M, 0x41)
chk(M, M, 0x51)
chk(2 * M, 2 * M, 0x41)
chk(4 * M, M, 0)
chk(20 * M, 2 * M, 0x42)
chk(30 * M, 65536, 0x52)
print("LIBVHDI-OK", c.get_media_size())
"#;
    let out = ok(Command::new("/usr/bin/python3").args(["-c", script, s(&child), s(&parent)]));
    assert!(out.contains("LIBVHDI-OK 33554432"), "{out}");
}

#[test]
fn heavy_nbdcopy_of_sparse_dynamic_vhd_skips_unallocated_blocks() {
    require("qemu-img", "qemu-utils");
    require("nbdcopy", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("big.vhd");
    ok(cmd("qemu-img").args([
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        s(&img),
        "100G",
    ]));
    ok(cmd("qemu-io").args([
        "-f",
        "vpc",
        "-c",
        "write -P 0x61 0 16M",
        "-c",
        "write -P 0x62 90G 16M",
        s(&img),
    ]));
    let srv = ExportServer::unix(&["--read-only", s(&img)]);
    let t = Instant::now();
    ok(cmd("nbdcopy").args([&srv.uri(""), "null:"]));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "copy took {:?}",
        t.elapsed()
    );
    let map = ok(cmd("nbdinfo").args(["--map", "--totals", &srv.uri("")]));
    assert!(map.contains("33554432"), "{map}");
}
