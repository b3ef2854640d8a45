//! Differencing chains (two levels) against libvhdi (pyvhdi with `set_parent`): reads
//! equal for 4 KiB-aligned child writes; unaligned child writes are checked against an
//! in-memory model of the spec (libvhdi 20210425 returns zeros for clear sectors of a
//! partly set bitmap byte, see the samples README). Then merge, compact, and parent
//! resolution (relative locator after a move, explicit path, UUID mismatch, loops).
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use std::path::Path;
use vhd::create::{CreateOptions, create_differencing_file, create_file};
use vhd::ops::{MergeOptions, merge};
use vhd::{DiskType, Error, Image, OpenOptions};

const SIZE: u64 = 24 << 20;

fn write(img: &Image, model: &mut [u8], off: u64, data: &[u8]) {
    img.write_at(data, off).unwrap();
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

/// base (qemu-written dynamic) <- mid <- top, aligned writes; returns the models.
fn build_chain(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let base = dir.join("base.vhd");
    let bs = base.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=dynamic,force_size=on",
        bs,
        "24M",
    ]);
    qemu_io(&[
        "-f",
        "vpc",
        "-c",
        "write -P 0x11 0 3M",
        "-c",
        "write -P 0x22 8M 1M",
        "-c",
        "write -P 0x33 20M 4M",
        bs,
    ]);
    let base_model = qemu_raw(&base, dir);
    create_differencing_file(&dir.join("mid.vhd"), &base, Some(512 << 10)).unwrap();
    let mid = open_rw(&dir.join("mid.vhd"));
    let mut mid_model = base_model.clone();
    write(&mid, &mut mid_model, 4096, &pattern(8192, 1));
    write(&mid, &mut mid_model, 8 << 20, &vec![0u8; 64 << 10]); // zeros hide parent data
    write(&mid, &mut mid_model, 12 << 20, &pattern(1 << 20, 2)); // parent hole
    write(&mid, &mut mid_model, (21 << 20) - 4096, &pattern(12288, 3));
    mid.close().unwrap();
    create_differencing_file(&dir.join("top.vhd"), &dir.join("mid.vhd"), None).unwrap();
    let top = open_rw(&dir.join("top.vhd"));
    let mut top_model = mid_model.clone();
    write(&top, &mut top_model, 0, &pattern(4096, 4));
    write(&top, &mut top_model, 8192, &pattern(4096, 5));
    write(&top, &mut top_model, (12 << 20) + 65536, &vec![0u8; 4096]);
    write(&top, &mut top_model, 16 << 20, &pattern(2 << 20, 6));
    top.close().unwrap();
    (base_model, mid_model, top_model)
}

#[test]
fn two_level_chain_matches_libvhdi() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, mid_model, top_model) = build_chain(d);
    let (base, mid, top) = (d.join("base.vhd"), d.join("mid.vhd"), d.join("top.vhd"));
    let img = open_ro(&top);
    assert_eq!(img.chain().len(), 3);
    assert_eq!(read_all(&img), top_model);
    assert_eq!(vhd::check::check_image(&img).exit_code(), 0);
    assert!(
        pyvhdi_read(&[&top, &mid, &base], None, d) == top_model,
        "libvhdi reads the top of the chain"
    );
    assert!(
        pyvhdi_read(&[&mid, &base], None, d) == mid_model,
        "libvhdi reads the middle"
    );
    // block status merges the chain: base data at 0, holes where no image has data
    let ext = img.block_status(0, SIZE).unwrap();
    assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), SIZE);
    assert_eq!(ext[0].kind, vhd::ExtentKind::Data);
    assert!(ext.iter().any(|e| e.kind == vhd::ExtentKind::Hole));
    let info = run("vhdiinfo", "libvhdi-utils", &[top.to_str().unwrap()]);
    assert!(info.contains("mid.vhd"), "{info}");
}

#[test]
fn unaligned_child_writes_follow_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, mid_model, _) = build_chain(d);
    let top = d.join("top2.vhd");
    create_differencing_file(&top, &d.join("mid.vhd"), Some(64 << 10)).unwrap();
    let img = open_rw(&top);
    let mut model = mid_model.clone();
    for (i, (off, len)) in [
        (1u64, 10usize),
        (700, 300),
        (65536 - 3, 9),
        ((8 << 20) + 100, 1000),
        ((20 << 20) + 511, 2),
        (4095, 1),
    ]
    .into_iter()
    .enumerate()
    {
        write(&img, &mut model, off, &pattern(len, 40 + i as u8));
        let mut b = vec![0u8; 2048];
        let at = off.saturating_sub(700);
        img.read_at(&mut b, at).unwrap();
        assert_eq!(&b[..], &model[at as usize..at as usize + 2048]);
    }
    assert_eq!(read_all(&img), model);
    img.close().unwrap();
    assert_eq!(read_all(&open_ro(&top)), model, "after reopen");
}

#[test]
fn merge_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, _, top_model) = build_chain(d);
    let (base, mid, top) = (d.join("base.vhd"), d.join("mid.vhd"), d.join("top.vhd"));
    let s = merge(&top, &MergeOptions::default(), &mut |_, _| {}).unwrap();
    assert!(s.child_removed && !top.exists());
    assert_eq!(
        read_all(&open_ro(&mid)),
        top_model,
        "merged parent has the child's content"
    );
    assert!(pyvhdi_read(&[&mid, &base], None, d) == top_model);
    // compact: a zero block over parent zeros goes, one hiding parent data stays
    let img = open_rw(&mid);
    img.write_at(&vec![0u8; 512 << 10], 6 << 20).unwrap(); // parent hole: droppable
    img.write_at(&vec![0u8; 512 << 10], 1 << 20).unwrap(); // hides 0x11: must stay
    img.close().unwrap();
    let before = std::fs::metadata(&mid).unwrap().len();
    let mut img = open_rw(&mid);
    let blocks = img.allocated_blocks().unwrap();
    let mut expect = top_model.clone();
    expect[(1 << 20)..(3 << 20) / 2].fill(0);
    expect[(6 << 20)..(6 << 20) + (512 << 10)].fill(0);
    assert_eq!(read_all(&img), expect);
    let st = img.compact(&mut |_, _| {}).unwrap();
    assert!(st.blocks_deallocated >= 1, "{st:?}");
    assert_eq!(
        img.allocated_blocks().unwrap(),
        blocks - st.blocks_deallocated
    );
    img.close().unwrap();
    let after = std::fs::metadata(&mid).unwrap().len();
    assert!(after < before, "{after} < {before}");
    let img = open_ro(&mid);
    assert_eq!(read_all(&img), expect, "compact keeps the content");
    assert_eq!(vhd::check::check_image(&img).exit_code(), 0);
    assert!(pyvhdi_read(&[&mid, &base], None, d) == expect);
}

#[test]
fn compact_dynamic_reclaims_zero_blocks_and_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.vhd");
    create_file(&p, &CreateOptions::new(DiskType::Dynamic, SIZE)).unwrap();
    let img = open_rw(&p);
    let mut model = vec![0u8; SIZE as usize];
    for b in 0..12u64 {
        write(
            &img,
            &mut model,
            b * (2 << 20) + 4096,
            &pattern(4096, b as u8),
        );
    }
    // zero some blocks again (stay allocated) and unmap others (leak until compact)
    img.write_zeroes(2 << 20, 2 << 20, false).unwrap();
    model[(2 << 20)..(4 << 20)].fill(0);
    img.write_zeroes(6 << 20, 4 << 20, true).unwrap();
    model[(6 << 20)..(10 << 20)].fill(0);
    img.close().unwrap();
    let r = vhd::check::check_path(&p, None).unwrap();
    assert_eq!(r.exit_code(), 3, "leaks reported: {:?}", r.findings);
    let before = std::fs::metadata(&p).unwrap().len();
    let mut img = open_rw(&p);
    let st = img.compact(&mut |_, _| {}).unwrap();
    assert_eq!(st.blocks_deallocated, 1);
    img.close().unwrap();
    let after = std::fs::metadata(&p).unwrap().len();
    assert!(after <= before - 3 * (2 << 20), "{before} -> {after}");
    let r = vhd::check::check_path(&p, None).unwrap();
    assert_eq!(r.exit_code(), 0, "{:?}", r.findings);
    assert_eq!(read_all(&open_ro(&p)), model);
    assert!(qemu_raw(&p, dir.path()) == model);
}

#[test]
fn parent_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    build_chain(d);
    // move the whole chain: the relative W2ru locator still finds the parents
    let moved = d.join("moved");
    std::fs::create_dir(&moved).unwrap();
    for f in ["base.vhd", "mid.vhd", "top.vhd"] {
        std::fs::rename(d.join(f), moved.join(f)).unwrap();
    }
    let img = open_ro(&moved.join("top.vhd"));
    assert_eq!(img.chain().len(), 3);
    drop(img);
    // a parent in another directory: found through the explicit path only
    let other = d.join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::rename(moved.join("mid.vhd"), other.join("renamed.vhd")).unwrap();
    let err = Image::open(
        &moved.join("top.vhd"),
        &OpenOptions {
            read_only: true,
            parent: None,
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::ParentNotFound(_)), "{err}");
    let opts = OpenOptions {
        read_only: true,
        parent: Some(other.join("renamed.vhd")),
    };
    assert!(
        Image::open(&moved.join("top.vhd"), &opts).is_err(),
        "renamed mid's own parent link is gone"
    );
    std::fs::rename(moved.join("base.vhd"), other.join("base.vhd")).unwrap();
    let img = Image::open(&moved.join("top.vhd"), &opts).unwrap();
    assert_eq!(img.chain().len(), 3);
    drop(img);
    // wrong parent: UUID mismatch is a typed error
    let wrong = d.join("wrong.vhd");
    create_file(&wrong, &CreateOptions::new(DiskType::Dynamic, SIZE)).unwrap();
    let opts = OpenOptions {
        read_only: true,
        parent: Some(wrong),
    };
    let err = Image::open(&moved.join("top.vhd"), &opts).unwrap_err();
    assert!(matches!(err, Error::ParentUuidMismatch { .. }), "{err}");
}
