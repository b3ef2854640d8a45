//! Shared helpers of the integration tests: external tools (which fail the test, naming
//! the Debian package, when missing), sample images, patterns.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use vhd::{Image, OpenOptions};

/// Runs a tool and returns stdout; panics with the package name when it is missing and
/// with its stderr when it fails.
pub fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool} ({e}); install the Debian package {package} (scripts/install-deps)"
        )
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", "qemu-utils", args)
}

pub fn qemu_io(args: &[&str]) -> String {
    run("qemu-io", "qemu-utils", args)
}

/// `qemu-img info -f vpc --output=json` virtual size.
pub fn qemu_size(path: &Path) -> u64 {
    let out = qemu_img(&["info", "-f", "vpc", "--output=json", path.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Whole disk content as qemu reads it (`qemu-img convert -f vpc -O raw`).
pub fn qemu_raw(path: &Path, dir: &Path) -> Vec<u8> {
    let raw = dir.join(format!(
        "{}.qemu.raw",
        path.file_name().unwrap().to_str().unwrap()
    ));
    let _ = std::fs::remove_file(&raw);
    qemu_img(&[
        "convert",
        "-f",
        "vpc",
        "-O",
        "raw",
        path.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let d = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    d
}

const PYVHDI_READ: &str = r#"
import sys, pyvhdi
paths = sys.argv[3:]
files = []
for p in paths:
    f = pyvhdi.file()
    f.open(p)
    files.append(f)
for child, parent in zip(files, files[1:]):
    child.set_parent(parent)
top = files[0]
ranges = sys.argv[2]
out = open(sys.argv[1], "wb")
if ranges == "all":
    size = top.get_media_size()
    off = 0
    while off < size:
        n = min(1 << 20, size - off)
        out.write(top.read_buffer_at_offset(n, off))
        off += n
else:
    for r in ranges.split(","):
        o, n = r.split(":")
        out.write(top.read_buffer_at_offset(int(n), int(o)))
out.close()
"#;

/// Reads through libvhdi (python3-libvhdi, /usr/bin/python3): `chain` child first;
/// `ranges` None for the whole disk, else (offset, len) pairs concatenated.
pub fn pyvhdi_read(chain: &[&Path], ranges: Option<&[(u64, u64)]>, dir: &Path) -> Vec<u8> {
    let script = dir.join("pyvhdi_read.py");
    std::fs::write(&script, PYVHDI_READ).unwrap();
    let out = dir.join("pyvhdi.out");
    let r = match ranges {
        None => "all".to_string(),
        Some(rs) => rs
            .iter()
            .map(|(o, n)| format!("{o}:{n}"))
            .collect::<Vec<_>>()
            .join(","),
    };
    let mut args = vec![
        script.to_str().unwrap().to_string(),
        out.to_str().unwrap().to_string(),
        r,
    ];
    args.extend(chain.iter().map(|p| p.to_str().unwrap().to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run("/usr/bin/python3", "python3-libvhdi", &a);
    std::fs::read(&out).unwrap()
}

/// Decompresses a Microsoft-written sample from `tests/data` into `dir`.
pub fn sample(name: &str, dir: &Path) -> PathBuf {
    // kept in the repository (tests/data/README.md says where they come from)
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let src = root.join(format!("{name}.bz2"));
    assert!(src.exists(), "sample {} missing", src.display());
    let dst = dir.join(name);
    let out = Command::new("bzip2")
        .args(["-dc", src.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run bzip2 ({e}); install the Debian package bzip2"));
    assert!(out.status.success());
    std::fs::write(&dst, out.stdout).unwrap();
    dst
}

/// Deterministic non-zero pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 24) as u8 ^ seed | 1)
        .collect()
}

pub fn open_rw(p: &Path) -> Image {
    Image::open(
        p,
        &OpenOptions {
            read_only: false,
            parent: None,
        },
    )
    .unwrap()
}

pub fn open_ro(p: &Path) -> Image {
    Image::open(
        p,
        &OpenOptions {
            read_only: true,
            parent: None,
        },
    )
    .unwrap()
}

/// Our full read of an image.
pub fn read_all(img: &Image) -> Vec<u8> {
    let mut v = vec![0u8; img.virtual_size() as usize];
    img.read_at(&mut v, 0).unwrap();
    v
}

/// Bytes qemu's vpc driver reads at `off` (qemu-io `read -v` hex dump).
pub fn qemu_read(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let cmd = format!("read -v {off} {len}");
    let out = qemu_io(&["-f", "vpc", "-r", "-c", &cmd, path.to_str().unwrap()]);
    let mut v = Vec::with_capacity(len);
    for line in out.lines() {
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        if u64::from_str_radix(addr, 16).is_err() {
            continue;
        }
        for tok in rest.split(' ').take(16) {
            if tok.len() != 2 {
                break;
            }
            match u8::from_str_radix(tok, 16) {
                Ok(b) => v.push(b),
                Err(_) => break,
            }
        }
    }
    assert_eq!(v.len(), len, "parsed qemu-io dump:\n{out}");
    v
}
