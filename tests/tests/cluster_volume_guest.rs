//! The product's main job end to end (issue 6): a real Linux guest (Debian's kernel,
//! busybox initramfs) booted by qemu-system-x86_64 under TCG (scripts/guest-boot)
//! with its virtio disk on a VHD attached on node 2 of a 3-node cluster sharing one file
//! LUN. The guest writes a pattern, drops its caches, reads it back and reports; the VHD
//! then moves to node 3 (`owner move`, the cooperative hand-off) and the pattern is read
//! from node 3's export of the same VHD.

use std::path::Path;
use std::process::Command;

use csv_tests::volume::{need, run, volume_cluster};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `len` bytes at `offset` of the NBD export `uri`, read by qemu-img into a local file.
fn read_export(uri: &str, dir: &Path, offset: u64, len: usize) -> Vec<u8> {
    let out = dir.join("copy.raw");
    run(Command::new("qemu-img").args([
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        uri,
        out.to_str().expect("utf-8 path"),
    ]));
    let all = std::fs::read(&out).expect("read copy");
    let start = usize::try_from(offset).expect("offset");
    all[start..start + len].to_vec()
}

#[test]
fn heavy_qemu_guest_boots_on_an_attached_vhd_and_its_data_moves_with_it() {
    need("qemu-system-x86_64", "qemu-system-x86");
    need("qemu-img", "qemu-utils");
    need("busybox", "busybox-static");
    need("cpio", "cpio");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/guest");

    let vc = volume_cluster(3, 2 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    vc.ok(1, &["vhd", "create", "vm1", "--size", "64M"]);
    vc.ok(2, &["vhd", "attach", "vm1"]);
    let out = Command::new(root.join("scripts/guest-boot"))
        .args([&vc.uri(2, "vm1"), "240"])
        .output()
        .expect("run scripts/guest-boot");
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && console.contains("GUEST-NBD-OK"),
        "guest did not verify its disk:\n{console}\n{}\nnode 2 log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vc.c.log(2)
    );
    // The cooperative hand-off: node 2 flushes and closes, node 3 serves it.
    vc.ok(1, &["owner", "move", "vm1", "--to", "3"]);
    vc.ok(3, &["vhd", "attach", "vm1"]);
    let pattern = std::fs::read(guest.join("pattern.bin")).expect("pattern");
    for at in [MIB, 9 * MIB] {
        let got = read_export(&vc.uri(3, "vm1"), work.path(), at, pattern.len());
        assert!(got == pattern, "pattern at {at} differs on node 3");
    }
    // The VHD file itself is a valid dynamic VHD holding the same bytes.
    let file = work.path().join("vm1.vhd");
    vc.ok(
        3,
        &["vhd", "export", "vm1", file.to_str().expect("utf-8 path")],
    );
    let cmp = run(Command::new("qemu-img").args([
        "compare",
        "-f",
        "vpc",
        "-F",
        "raw",
        file.to_str().expect("path"),
        &vc.uri(3, "vm1"),
    ]));
    assert!(cmp.contains("identical"), "{cmp}");
}
