//! The Microsoft-written samples (Hyper-V 2012 R2 and Virtual PC dynamic disks): sizes as
//! each tool reports them, then blocks written through this library at several offsets,
//! read back by qemu-io, libvhdi (pyvhdi) and vhdiinfo; the old footer never shows.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;

const HYPERV: &str = "hyperv2012r2-dynamic.vhd";
const VPC: &str = "virtualpc-dynamic.vhd";
/// Footer current size of both samples (Hyper-V, libvhdi and this library).
const CURRENT_SIZE: u64 = 136_365_211_648;
/// qemu's size of the Virtual PC sample (CHS 65278/16/255).
const VPC_QEMU_SIZE: u64 = 136_363_130_880;

#[test]
fn sample_sizes_per_tool() {
    let dir = tempfile::tempdir().unwrap();
    for (name, qemu) in [(HYPERV, CURRENT_SIZE), (VPC, VPC_QEMU_SIZE)] {
        let p = sample(name, dir.path());
        let img = open_ro(&p);
        assert_eq!(img.virtual_size(), CURRENT_SIZE, "{name}");
        assert_eq!(img.footer().qemu_size(), qemu, "{name}");
        assert_eq!(qemu_size(&p), qemu, "{name}: qemu-img");
        let info = run("vhdiinfo", "libvhdi-utils", &[p.to_str().unwrap()]);
        assert!(
            info.contains(&CURRENT_SIZE.to_string()),
            "{name}: vhdiinfo says\n{info}"
        );
        assert_eq!(img.allocated_blocks(), Some(0));
        assert!(img.warnings().is_empty(), "{:?}", img.warnings());
        assert_eq!(vhd::check::check_image(&img).exit_code(), 0);
    }
}

#[test]
fn write_samples_then_other_readers_agree() {
    let dir = tempfile::tempdir().unwrap();
    for name in [HYPERV, VPC] {
        let p = sample(name, dir.path());
        let old_footer_pos = std::fs::metadata(&p).unwrap().len() - 512;
        // (offset, length, seed): first block only partly written, unaligned, far blocks
        let writes: [(u64, usize, u8); 5] = [
            (0, 512, 1),
            (8192 + 3, 5000, 2),
            (1 << 30, 1 << 20, 3),
            (100 << 30, 4096, 4),
            ((2 << 20) - 512, 1024, 5),
        ];
        let img = open_rw(&p);
        for &(off, len, seed) in &writes {
            img.write_at(&pattern(len, seed), off).unwrap();
        }
        img.close().unwrap();
        let img = open_ro(&p);
        assert_eq!(img.allocated_blocks(), Some(4), "{name}");
        // the first block went where the trailing footer was, data 4 KiB-aligned
        let first = u64::from(img.bat_entry(0).unwrap()) * 512;
        assert!(
            first >= old_footer_pos && first < old_footer_pos + 4096,
            "{name}: block 0 at {first:#x}"
        );
        assert_eq!((first + 512) % 4096, 0);
        assert_eq!(vhd::check::check_image(&img).exit_code(), 0, "{name}");
        let ps = p.to_str().unwrap();
        // qemu sees our data and zeros around it; the old footer bytes never show
        let mut cmds = Vec::new();
        let mut ranges = Vec::new();
        for &(off, len, _) in &writes {
            ranges.push((off, len as u64));
        }
        for (off, len) in [
            (512u64, 7680u64),
            (3584, 16),
            (8192 + 5003, 4096),
            ((1 << 30) + (1 << 20), 65536),
        ] {
            cmds.push(format!("read -P 0 {off} {len}"));
            ranges.push((off, len));
        }
        let mut args = vec!["-f", "vpc", "-r"];
        for c in &cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(ps);
        let out = qemu_io(&args);
        assert!(!out.contains("verification failed"), "{name}: {out}");
        let mut ours = Vec::new();
        for &(off, len) in &ranges {
            let mut b = vec![0u8; len as usize];
            img.read_at(&mut b, off).unwrap();
            ours.extend_from_slice(&b);
        }
        for &(off, len, seed) in &writes {
            let mut b = vec![0u8; len];
            img.read_at(&mut b, off).unwrap();
            assert_eq!(b, pattern(len, seed), "{name} at {off}");
            assert_eq!(qemu_read(&p, off, len), b, "{name}: qemu-io at {off}");
        }
        let lib = pyvhdi_read(&[&p], Some(&ranges), dir.path());
        assert!(lib == ours, "{name}: libvhdi reads the same bytes");
        let info = run("vhdiinfo", "libvhdi-utils", &[ps]);
        assert!(info.contains(&CURRENT_SIZE.to_string()), "{info}");
    }
}
