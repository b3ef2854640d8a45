//! A real Linux guest (Debian's kernel, busybox initramfs from scripts/guest-image)
//! booted by qemu-system-x86_64 under TCG with its disk on `csv-node export`: the
//! guest writes a pattern through virtio-blk, reads it back and reports; the host then
//! finds the pattern in the exported file.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

#[test]
fn heavy_qemu_system_guest_writes_and_reads_its_nbd_disk() {
    require("qemu-system-x86_64", "qemu-system-x86");
    require("busybox", "busybox-static");
    require("cpio", "cpio");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let guest = root.join("target/guest");
    ok(Command::new(root.join("scripts/guest-image")).arg(&guest));

    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("guest.raw");
    sparse_file(&img, 64 * MIB);
    let srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    let drive = format!(
        "file=nbd+unix:///?socket={},format=raw,if=virtio,cache=none",
        srv.socket.display()
    );
    let out = run(
        Command::new("qemu-system-x86_64").args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-kernel",
            guest.join("vmlinuz").to_str().expect("utf8"),
            "-initrd",
            guest.join("initrd.img").to_str().expect("utf8"),
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-drive",
            &drive,
        ]),
        Duration::from_secs(180),
    );
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        console.contains("GUEST-NBD-OK"),
        "guest did not verify its disk:\n{console}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let pattern = std::fs::read(guest.join("pattern.bin")).expect("pattern");
    assert_eq!(read_at(&img, MIB, pattern.len()), pattern);
    assert_eq!(read_at(&img, 9 * MIB, pattern.len()), pattern);
}
