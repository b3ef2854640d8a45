//! A real Linux guest (Debian's kernel, busybox initramfs from scripts/guest-image)
//! booted by qemu-system-x86_64 under TCG (scripts/guest-boot) with its disk on `csv-node export`: the
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

    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("guest.raw");
    sparse_file(&img, 64 * MIB);
    let srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    let drive = format!("nbd+unix:///?socket={}", srv.socket.display());
    let out = run(
        Command::new(root.join("scripts/guest-boot")).arg(&drive),
        Duration::from_secs(240),
    );
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && console.contains("GUEST-NBD-OK"),
        "guest did not verify its disk:\n{console}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        srv.log()
    );
    let pattern = std::fs::read(guest.join("pattern.bin")).expect("pattern");
    assert_eq!(read_at(&img, MIB, pattern.len()), pattern);
    assert_eq!(read_at(&img, 9 * MIB, pattern.len()), pattern);
}
