//! Interop with qemu's vpc driver: images we create and write are read identically by
//! `qemu-img convert -f vpc` with the exact size in `qemu-img info`; images qemu-img
//! creates and qemu-io writes (fixed, dynamic, with and without force_size) read the same
//! bytes through this library, also after we write into them.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use vhd::create::{CreateOptions, create_file};
use vhd::{DiskType, ExtentKind};

/// Writes a spread of aligned and unaligned patterns, returns the model.
fn write_patterns(img: &vhd::Image, model: &mut [u8]) {
    let size = model.len() as u64;
    let writes: [(u64, usize, u8); 7] = [
        (0, 4096, 1),
        (1000, 70_000, 2),
        (3 << 20, 1 << 20, 3),
        ((5 << 20) - 100, 300, 4), // crosses a block boundary
        (size - 4096, 4096, 5),
        (size / 2 + 7, 12_345, 6),
        (9 << 20, 3 << 20, 7), // several blocks
    ];
    for (off, len, seed) in writes {
        let p = pattern(len, seed);
        img.write_at(&p, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
    }
}

#[test]
fn our_images_read_by_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (t, size, bs) in [
        (DiskType::Dynamic, 48u64 << 20, 2u32 << 20),
        (DiskType::Dynamic, (40 << 20) + 3 * 512, 512 << 10),
        (DiskType::Fixed, (24 << 20) + 512, 0),
    ] {
        let p = dir.path().join(format!("{t}-{size}.vhd"));
        let mut o = CreateOptions::new(t, size);
        if bs > 0 {
            o.block_size = bs;
        }
        create_file(&p, &o).unwrap();
        assert_eq!(qemu_size(&p), size, "{t} {size}");
        let img = open_rw(&p);
        let mut model = vec![0u8; size as usize];
        write_patterns(&img, &mut model);
        assert_eq!(read_all(&img), model);
        img.close().unwrap();
        assert_eq!(qemu_size(&p), size);
        assert!(
            qemu_raw(&p, dir.path()) == model,
            "qemu reads what we wrote ({t}, {size})"
        );
        let r = vhd::check::check_path(&p, None).unwrap();
        assert_eq!(r.exit_code(), 0, "{:?}", r.findings);
        // data areas of dynamic blocks are 4 KiB-aligned
        let img = open_ro(&p);
        for b in 0..img.header().map_or(0, |h| h.max_table_entries) {
            if let Some(e) = img.bat_entry(b) {
                assert_eq!(
                    (u64::from(e) * 512 + 512) % 4096,
                    0,
                    "block {b} data aligned"
                );
            }
        }
    }
}

#[test]
fn qemu_images_read_by_us() {
    let dir = tempfile::tempdir().unwrap();
    for (sub, force) in [
        ("dynamic", false),
        ("dynamic", true),
        ("fixed", false),
        ("fixed", true),
    ] {
        let p = dir.path().join(format!("q-{sub}-{force}.vhd"));
        let ps = p.to_str().unwrap();
        let mut opts = format!("subformat={sub}");
        if force {
            opts.push_str(",force_size=on");
        }
        qemu_img(&["create", "-q", "-f", "vpc", "-o", &opts, ps, "40M"]);
        qemu_io(
            &[
                "-f",
                "vpc",
                "-c",
                "write -P 0x5a 0 4k",
                "-c",
                "write -P 0xa5 1000 70000",
                "-c",
                "write -P 0x33 3M 2M",
                "-c",
                "write -P 0x77 30M 512",
            ]
            .iter()
            .copied()
            .chain([ps])
            .collect::<Vec<_>>(),
        );
        let expect = qemu_raw(&p, dir.path());
        let img = open_ro(&p);
        assert_eq!(img.virtual_size(), qemu_size(&p), "{sub} force={force}");
        assert_eq!(read_all(&img), expect, "{sub} force={force}");
        if sub == "dynamic" {
            let ext = img.block_status(0, img.virtual_size()).unwrap();
            assert_eq!(ext[0].kind, ExtentKind::Data);
            assert!(ext.iter().any(|e| e.kind == ExtentKind::Hole));
        }
        drop(img);
        // our writes into qemu's image, then qemu reads them
        let img = open_rw(&p);
        let mut model = expect.clone();
        let w = pattern(9000, 9);
        img.write_at(&w, (20 << 20) + 11).unwrap();
        model[(20 << 20) + 11..(20 << 20) + 11 + 9000].copy_from_slice(&w);
        img.write_at(&w, 1).unwrap();
        model[1..9001].copy_from_slice(&w);
        img.close().unwrap();
        assert!(
            qemu_raw(&p, dir.path()) == model,
            "qemu reads our writes into its {sub} image"
        );
    }
}

#[test]
fn qemu_writes_into_our_dynamic_image_keep_old_footer_hidden() {
    // qemu places new blocks at the BAT end; our BAT ends where our footer is, so qemu's
    // first block covers the footer with its bitmap, never with data.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ours.vhd");
    create_file(&p, &CreateOptions::new(DiskType::Dynamic, 32 << 20)).unwrap();
    let ps = p.to_str().unwrap();
    qemu_io(&["-f", "vpc", "-c", "write -P 0x42 0 512", ps]);
    let out = qemu_io(&["-f", "vpc", "-c", "read -P 0 512 8192", ps]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let img = open_ro(&p);
    let mut b = vec![0u8; 8192];
    img.read_at(&mut b, 512).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    assert_eq!(
        (u64::from(img.bat_entry(0).unwrap()) * 512 + 512) % 4096,
        0,
        "qemu's block data aligned too"
    );
}
