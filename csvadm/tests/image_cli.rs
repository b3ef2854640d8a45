//! `csvadm image ...` end to end: each command runs the built binary on files in a temp
//! dir; results are judged by qemu-img (sizes, content) and exit codes.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

fn csvadm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_csvadm"))
        .args(args)
        .output()
        .expect("run csvadm")
}

fn ok(args: &[&str]) -> String {
    let o = csvadm(args);
    assert!(
        o.status.success(),
        "csvadm {args:?}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tool(bin: &str, args: &[&str]) -> String {
    let o = Command::new(bin).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {bin} ({e}); install the Debian package qemu-utils")
    });
    assert!(
        o.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn qemu_size(p: &Path) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&tool(
        "qemu-img",
        &["info", "-f", "vpc", "--output=json", p.to_str().unwrap()],
    ))
    .unwrap();
    v["virtual-size"].as_u64().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn create_info_check_expand() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d.vhd");
    let f = dir.path().join("f.vhd");
    let fp = dir.path().join("fp.vhd");
    ok(&["image", "create", s(&d), "--size", "100M"]);
    ok(&["image", "create", s(&f), "--size", "20M", "--type", "fixed"]);
    ok(&[
        "image",
        "create",
        s(&fp),
        "--size",
        "8M",
        "--type",
        "fixed",
        "--preallocate",
    ]);
    assert_eq!(qemu_size(&d), 100 << 20);
    assert_eq!(qemu_size(&f), 20 << 20);
    assert!(std::fs::metadata(&fp).unwrap().len() == (8 << 20) + 512);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["image", "info", s(&d), "--json"])).unwrap();
    assert_eq!(info["format"], "vpc");
    assert_eq!(info["type"], "dynamic");
    assert_eq!(info["virtual_size"], 100u64 << 20);
    assert_eq!(info["block_size"], 2u64 << 20);
    assert_eq!(info["allocated_blocks"], 0);
    assert!(info["parent"].is_null());
    assert_eq!(info["uuid"].as_str().unwrap().len(), 36);
    let text = ok(&["image", "info", s(&d)]);
    assert!(
        text.contains("dynamic") && text.contains("104857600 bytes"),
        "{text}"
    );
    tool(
        "qemu-io",
        &["-f", "vpc", "-c", "write -P 0x61 1M 3M", s(&d)],
    );
    ok(&["image", "check", s(&d)]);
    ok(&["image", "expand", s(&d), "--size", "300M"]);
    ok(&["image", "expand", s(&f), "--size", "30M"]);
    assert_eq!(qemu_size(&d), 300 << 20);
    assert_eq!(qemu_size(&f), 30 << 20);
    let out = tool(
        "qemu-io",
        &[
            "-f",
            "vpc",
            "-r",
            "-c",
            "read -P 0x61 1M 3M",
            "-c",
            "read -P 0 4M 296M",
            s(&d),
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    let out = tool(
        "qemu-io",
        &["-f", "vpc", "-r", "-c", "read -P 0 0 30M", s(&f)],
    );
    assert!(!out.contains("failed"), "{out}");
    ok(&["image", "check", s(&f)]);
    // shrinking and bad sizes are errors with messages, not panics
    let o = csvadm(&["image", "expand", s(&d), "--size", "1M"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("smaller"));
    let o = csvadm(&[
        "image",
        "create",
        s(&dir.path().join("x.vhd")),
        "--size",
        "3000G",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("too large"));
    let o = csvadm(&["image", "create", s(&d), "--size", "1M"]);
    assert_eq!(o.status.code(), Some(1), "refuses to overwrite");
    let o = csvadm(&["image", "info", s(&dir.path().join("missing.vhd"))]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn check_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d.vhd");
    ok(&["image", "create", s(&d), "--size", "16M"]);
    tool("qemu-io", &["-f", "vpc", "-c", "write -P 0x61 0 6M", s(&d)]);
    let o = csvadm(&["image", "check", s(&d)]);
    assert_eq!(o.status.code(), Some(0));
    // leak: a block copy past the BAT's knowledge; append garbage then a valid footer
    let mut bytes = std::fs::read(&d).unwrap();
    let footer = bytes[bytes.len() - 512..].to_vec();
    let n = bytes.len();
    bytes.truncate(n - 512);
    bytes.extend(std::iter::repeat_n(0x55u8, 3 << 20));
    bytes.extend_from_slice(&footer);
    std::fs::write(&d, &bytes).unwrap();
    let o = csvadm(&["image", "check", s(&d)]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    ok(&["image", "compact", s(&d)]);
    assert_eq!(csvadm(&["image", "check", s(&d)]).status.code(), Some(0));
    // corruption: break the header checksum
    let mut bytes = std::fs::read(&d).unwrap();
    bytes[600] ^= 1;
    std::fs::write(&d, &bytes).unwrap();
    let o = csvadm(&["image", "check", s(&d)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stdout).contains("checksum"));
}

#[test]
fn convert_round_trip_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q.vhd");
    tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vpc",
            "-o",
            "subformat=dynamic,force_size=on",
            s(&q),
            "32M",
        ],
    );
    tool(
        "qemu-io",
        &[
            "-f",
            "vpc",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 9M 5M",
            "-c",
            "write -P 0 20M 4M",
            s(&q),
        ],
    );
    let expect = dir.path().join("expect.raw");
    tool(
        "qemu-img",
        &["convert", "-f", "vpc", "-O", "raw", s(&q), s(&expect)],
    );
    let raw = dir.path().join("r.raw");
    let fixed = dir.path().join("f.vhd");
    let dynamic = dir.path().join("d.vhd");
    let back = dir.path().join("back.raw");
    ok(&["image", "convert", s(&q), s(&raw), "--to", "raw"]);
    ok(&["image", "convert", s(&raw), s(&fixed), "--to", "fixed"]);
    ok(&[
        "image",
        "convert",
        s(&fixed),
        s(&dynamic),
        "--to",
        "dynamic",
    ]);
    ok(&["image", "convert", s(&dynamic), s(&back), "--to", "raw"]);
    let e = std::fs::read(&expect).unwrap();
    assert!(std::fs::read(&raw).unwrap() == e);
    assert!(std::fs::read(&back).unwrap() == e);
    assert_eq!(qemu_size(&fixed), 32 << 20);
    tool(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", s(&fixed), s(&expect)],
    );
    tool(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", s(&dynamic), s(&expect)],
    );
    // dynamic output is sparse: only blocks with data (1M and 9M..14M => 4 blocks)
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["image", "info", s(&dynamic), "--json"])).unwrap();
    assert_eq!(info["allocated_blocks"], 4);
    // compact of qemu's image drops the zero-written blocks and keeps the content
    let before = std::fs::metadata(&q).unwrap().len();
    ok(&["image", "compact", s(&q)]);
    assert!(std::fs::metadata(&q).unwrap().len() < before);
    tool(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", s(&q), s(&expect)],
    );
}

#[test]
fn differencing_create_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let child = dir.path().join("child.vhd");
    ok(&["image", "create", s(&base), "--size", "16M"]);
    tool(
        "qemu-io",
        &["-f", "vpc", "-c", "write -P 0x11 0 8M", s(&base)],
    );
    ok(&["image", "create", s(&child), "--parent", s(&base)]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["image", "info", s(&child), "--json"])).unwrap();
    assert_eq!(info["type"], "differencing");
    assert_eq!(info["virtual_size"], 16u64 << 20);
    assert!(info["parent"].as_str().unwrap().ends_with("base.vhd"));
    assert!(ok(&["image", "info", s(&child)]).contains("parent chain"));
    // write into the child through a raw copy round trip: convert flattens the chain
    let flat = dir.path().join("flat.raw");
    ok(&["image", "convert", s(&child), s(&flat), "--to", "raw"]);
    let expect_base = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0x11 0 8M",
            "-c",
            "read -P 0 8M 8M",
            s(&flat),
        ],
    );
    assert!(!expect_base.contains("failed"));
    ok(&["image", "check", s(&child)]);
    let out = ok(&["image", "merge", s(&child)]);
    assert!(out.contains("merged"), "{out}");
    assert!(!child.exists());
    let o = csvadm(&["image", "merge", s(&base)]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "merging a non-differencing image is an error"
    );
}

#[test]
fn convert_refuses_a_damaged_vhd_instead_of_copying_it_as_raw() {
    let dir = tempfile::tempdir().unwrap();
    for kind in ["dynamic", "fixed"] {
        let img = dir.path().join(format!("{kind}.vhd"));
        ok(&["image", "create", s(&img), "--size", "4M", "--type", kind]);
        // both footer copies damaged (a dynamic image has one at 0 too)
        let mut bytes = std::fs::read(&img).unwrap();
        let n = bytes.len();
        bytes[n - 512 + 48] ^= 0x40;
        if kind == "dynamic" {
            bytes[48] ^= 0x40;
        }
        std::fs::write(&img, &bytes).unwrap();
        let out = dir.path().join(format!("{kind}.raw"));
        let o = csvadm(&["image", "convert", s(&img), s(&out), "--to", "raw"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{kind}: {err}");
        assert!(err.contains("footer"), "{kind}: {err}");
        assert!(!out.exists(), "{kind}: output left behind");
        // asked for explicitly, the bytes are copied as they are
        ok(&[
            "image",
            "convert",
            s(&img),
            s(&out),
            "--to",
            "raw",
            "--from",
            "raw",
        ]);
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
    }
}

#[test]
fn merge_of_a_child_holding_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.vhd");
    let child = dir.path().join("child.vhd");
    ok(&["image", "create", s(&base), "--size", "16M"]);
    tool(
        "qemu-io",
        &[
            "-f",
            "vpc",
            "-c",
            "write -P 0x11 0 8M",
            "-c",
            "write -P 0x33 12M 1M",
            s(&base),
        ],
    );
    ok(&["image", "create", s(&child), "--parent", s(&base)]);
    {
        // the child gets data over the parent's, next to it, in a partly written block
        // (an unaligned write: the rest of its sectors come from the parent) and zeroes
        // over parent data
        let img = vhd::Image::open(&child, &vhd::OpenOptions::default()).unwrap();
        img.write_at(&[0x22; 1 << 20], 1 << 20).unwrap();
        img.write_at(&[0x44; 4096], 10 << 20).unwrap();
        img.write_at(&[0x55; 700], (4 << 20) + 100).unwrap();
        img.write_zeroes(12 << 20, 4096, false).unwrap();
        img.close().unwrap();
    }
    let expect = dir.path().join("expect.raw");
    ok(&["image", "convert", s(&child), s(&expect), "--to", "raw"]);
    let out = ok(&["image", "merge", s(&child)]);
    assert!(out.contains("child removed"), "{out}");
    assert!(!child.exists());
    // qemu reads the merged parent as the child read before the merge
    tool(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", s(&base), s(&expect)],
    );
    let e = std::fs::read(&expect).unwrap();
    assert!(e[(1 << 20)..(2 << 20)].iter().all(|b| *b == 0x22));
    assert!(e[(4 << 20)..(4 << 20) + 100].iter().all(|b| *b == 0x11));
    assert!(
        e[(4 << 20) + 100..(4 << 20) + 800]
            .iter()
            .all(|b| *b == 0x55)
    );
    assert!(e[(12 << 20)..(12 << 20) + 4096].iter().all(|b| *b == 0));
    assert!(e[(12 << 20) + 4096..(13 << 20)].iter().all(|b| *b == 0x33));
    ok(&["image", "check", s(&base)]);
}
