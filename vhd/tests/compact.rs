//! Compact on images other tools wrote and on damaged ones: qemu packs blocks without
//! aligning their data, and compact must leave such packed blocks where they are (it
//! never grows a file); an image whose blocks overlap is refused (compact and merge
//! would spread the damage), untouched.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::path::Path;
use vhd::create::{CreateOptions, create_differencing_file, create_file};
use vhd::ops::{MergeOptions, merge};
use vhd::{DiskType, Error};

/// A qemu-written dynamic image: blocks 0, 5, 2 (in that order, so packed in the file
/// in write order) and, when `zero_block`, block 7 written with zeroes.
fn qemu_image(p: &Path, zero_block: bool) {
    let s = p.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        s,
        "24M",
    ]);
    let mut args = vec![
        "-f",
        "vpc",
        "-c",
        "write -P 0x11 0 2M",
        "-c",
        "write -P 0x55 10M 4k",
        "-c",
        "write -P 0x22 5M 1M",
    ];
    if zero_block {
        args.extend(["-c", "write -P 0 14M 2M"]);
    }
    args.push(s);
    qemu_io(&args);
}

#[test]
fn compact_leaves_packed_unaligned_blocks_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q.vhd");
    qemu_image(&p, false);
    let expect = qemu_raw(&p, dir.path());
    let before = std::fs::metadata(&p).unwrap().len();
    let mut img = open_rw(&p);
    let st = img.compact(&mut |_, _| {}).unwrap();
    img.close().unwrap();
    let after = std::fs::metadata(&p).unwrap().len();
    assert_eq!(st.blocks_moved, 0, "{st:?}");
    assert!(
        after <= before,
        "compact grew the file: {before} -> {after}"
    );
    assert!(qemu_raw(&p, dir.path()) == expect);
    assert_eq!(vhd::check::check_path(&p, None).unwrap().exit_code(), 0);
}

#[test]
fn compact_of_a_qemu_image_with_a_zero_block_shrinks_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q.vhd");
    qemu_image(&p, true);
    let expect = qemu_raw(&p, dir.path());
    let before = std::fs::metadata(&p).unwrap().len();
    let mut img = open_rw(&p);
    let st = img.compact(&mut |_, _| {}).unwrap();
    img.close().unwrap();
    let after = std::fs::metadata(&p).unwrap().len();
    assert_eq!(st.blocks_deallocated, 1, "{st:?}");
    assert!(after <= before - (2 << 20), "{before} -> {after}");
    assert!(qemu_raw(&p, dir.path()) == expect);
    assert_eq!(vhd::check::check_path(&p, None).unwrap().exit_code(), 0);
}

/// Points BAT entry 1 at block 0's bitmap (two blocks sharing one place).
fn alias_block_1_to_block_0(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let bat = u64::from_be_bytes(b[512 + 16..512 + 24].try_into().unwrap()) as usize;
    let e0: [u8; 4] = b[bat..bat + 4].try_into().unwrap();
    b[bat + 4..bat + 8].copy_from_slice(&e0);
    std::fs::write(p, b).unwrap();
}

#[test]
fn compact_and_merge_refuse_images_whose_blocks_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.vhd");
    create_file(&p, &CreateOptions::new(DiskType::Dynamic, 16 << 20)).unwrap();
    let img = open_rw(&p);
    img.write_at(&pattern(4096, 1), 0).unwrap();
    img.write_at(&pattern(4096, 2), 4 << 20).unwrap();
    img.close().unwrap();
    alias_block_1_to_block_0(&p);
    let damaged = std::fs::read(&p).unwrap();
    let mut img = open_rw(&p);
    let e = img.compact(&mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    drop(img);
    assert!(
        std::fs::read(&p).unwrap() == damaged,
        "compact changed a corrupt image"
    );

    // a child merged into that image as parent: refused, parent untouched
    let base = dir.path().join("base.vhd");
    create_file(&base, &CreateOptions::new(DiskType::Dynamic, 16 << 20)).unwrap();
    let img = open_rw(&base);
    img.write_at(&pattern(4096, 1), 0).unwrap();
    img.write_at(&pattern(4096, 2), 4 << 20).unwrap();
    img.close().unwrap();
    let child = dir.path().join("child.vhd");
    create_differencing_file(&child, &base, None).unwrap();
    let c = open_rw(&child);
    c.write_at(&pattern(8192, 3), 2 << 20).unwrap();
    c.close().unwrap();
    alias_block_1_to_block_0(&base);
    let damaged = std::fs::read(&base).unwrap();
    let e = merge(&child, &MergeOptions::default(), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
    assert!(std::fs::read(&base).unwrap() == damaged);
    assert!(child.exists());
}
