//! Property tests: structure round trips, checksum, CHS, bitmap and sector arithmetic,
//! the fuzz entry points on random bytes (stable stand-in for cargo-fuzz), and a
//! model-based test of random operations on images against a plain byte vector,
//! including reopen, for dynamic and differencing images.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use proptest::prelude::*;
use std::sync::Arc;
use vhd::chain::{FnResolver, NoParents, ParentCandidate};
use vhd::create::{CreateOptions, ParentInfo, create_differencing, create_dynamic, create_fixed};
use vhd::footer::{DiskType, Footer};
use vhd::geometry::Geometry;
use vhd::header::DynamicHeader;
use vhd::locator::LocatorEntry;
use vhd::{Image, MemStorage, bitmap};

fn disk_type() -> impl Strategy<Value = DiskType> {
    prop_oneof![
        Just(DiskType::Fixed),
        Just(DiskType::Dynamic),
        Just(DiskType::Differencing)
    ]
}

proptest! {
    #[test]
    fn footer_round_trip(t in disk_type(), size in 0..=vhd::MAX_VIRTUAL_SIZE, ts: u32, id: u128, orig: u64, ver: u32, app: [u8; 4]) {
        let mut f = Footer::new(t, size, ts, uuid::Uuid::from_u128(id));
        f.original_size = orig;
        f.creator_version = ver;
        f.creator_app = app;
        let b = f.encode();
        prop_assert_eq!(Footer::parse(&b).unwrap(), f);
    }

    #[test]
    fn any_flipped_bit_breaks_the_footer_checksum(at in 0usize..512, bit in 0u8..8) {
        prop_assume!(!(64..68).contains(&at));
        let f = Footer::new(DiskType::Dynamic, 1 << 30, 1, uuid::Uuid::from_u128(3));
        let mut b = f.encode();
        b[at] ^= 1 << bit;
        prop_assert!(Footer::parse(&b).is_err());
    }

    #[test]
    fn header_round_trip(entries in 0u32..=(8 << 20), shift in 9u32..=28, off in 1u64..1_000_000, name in "[a-zA-Z0-9 ._-]{0,200}", pid: u128, pts: u32, locs in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u32>(), any::<u64>()), 8)) {
        let mut h = DynamicHeader::new(off * 512, entries, 1 << shift);
        h.parent_uuid = uuid::Uuid::from_u128(pid);
        h.parent_timestamp = pts;
        h.parent_name = name.encode_utf16().collect();
        for (i, (c, s, l, o)) in locs.into_iter().enumerate() {
            h.locators[i] = LocatorEntry { platform_code: c, data_space: s, data_length: l, data_offset: o };
        }
        prop_assert_eq!(DynamicHeader::parse(&h.encode()).unwrap(), h);
    }

    #[test]
    fn chs_rounds_down_and_stays_in_range(size in 0u64..=vhd::MAX_VIRTUAL_SIZE) {
        let g = Geometry::for_size(size);
        prop_assert!(g.capacity() <= size.max(g.capacity().min(size)));
        prop_assert!(g.heads <= 16 && g.sectors_per_track >= 17 || g.capacity() == 0);
        prop_assert_eq!(Geometry::from_u32(g.to_u32()), g);
        if size / 512 < 65535 * 16 * 255 {
            prop_assert!(g.capacity() <= size);
        }
    }

    #[test]
    fn bitmap_matches_a_bool_model(ops in proptest::collection::vec((0u32..4096, 0u32..600), 0..20)) {
        let mut bm = vec![0u8; 512];
        let mut model = vec![false; 4096];
        for (s, n) in ops {
            let e = (s + n).min(4096);
            bitmap::set_range(&mut bm, s, e);
            model[s as usize..e as usize].fill(true);
        }
        for (i, &m) in model.iter().enumerate() {
            prop_assert_eq!(bitmap::get(&bm, i as u32), m);
        }
        let mut at = 0;
        for (a, b, v) in bitmap::runs(&bm, 0, 4096) {
            prop_assert_eq!(a, at);
            prop_assert!(model[a as usize..b as usize].iter().all(|&x| x == v));
            at = b;
        }
        prop_assert_eq!(at, 4096);
        prop_assert_eq!(bitmap::is_full(&bm, 4096), model.iter().all(|&x| x));
        prop_assert_eq!(bitmap::is_empty(&bm, 4096), model.iter().all(|&x| !x));
    }

    #[test]
    fn placement_aligns_data(pos in 0u64..(1 << 40), shift in 9u32..=28) {
        let bs = 1u64 << shift;
        let bm = u64::from(vhd::header::bitmap_size(bs as u32));
        let align = 4096u64.min(bs);
        let p = vhd::image::place_block(pos, bm, align);
        prop_assert!(p >= pos && p < pos + align);
        prop_assert_eq!((p + bm) % align, 0);
    }

    #[test]
    fn fuzz_entry_points_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        vhd::fuzz::footer(&data);
        vhd::fuzz::header(&data);
        vhd::fuzz::locators(&data);
        vhd::fuzz::bat_bitmap(&data);
        vhd::fuzz::open_image(&data);
    }
}

/// Mutations of a valid small image must never panic the opener.
fn small_image(t: DiskType) -> Vec<u8> {
    let m = Arc::new(MemStorage::new());
    let mut o = CreateOptions::new(t, 256 << 10);
    o.block_size = 64 << 10;
    match t {
        DiskType::Fixed => {
            create_fixed(m.as_ref(), &o).unwrap();
        }
        _ => {
            create_dynamic(m.as_ref(), &o).unwrap();
        }
    }
    let img = Image::open_storage(m.clone(), false, "m", &NoParents).unwrap();
    img.write_at(&[9u8; 5000], 70_000).unwrap();
    img.close().unwrap();
    m.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn mutated_images_never_panic(dynamic: bool, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut b = small_image(if dynamic { DiskType::Dynamic } else { DiskType::Fixed });
        for (i, v) in flips {
            let at = i.index(b.len());
            b[at] = v;
        }
        vhd::fuzz::open_image(&b);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write(u64, usize, u8),
    Zeroes(u64, u64, bool),
    Discard(u64, u64),
    Flush,
    Reopen,
}

const MSIZE: u64 = 1 << 20;
const MBS: u32 = 64 << 10;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..MSIZE, 1usize..150_000, any::<u8>()).prop_map(|(o, n, s)| Op::Write(o, n.min((MSIZE - o) as usize), s)),
        1 => (0..MSIZE, 1u64..300_000, any::<bool>()).prop_map(|(o, n, u)| Op::Zeroes(o, n.min(MSIZE - o), u)),
        1 => (0..16u64, 1..4u64).prop_map(|(b, n)| Op::Discard(b * u64::from(MBS), (n * u64::from(MBS)).min(MSIZE - b * u64::from(MBS)))),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn run_model(diff: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let parent = Arc::new(MemStorage::new());
    let mut o = CreateOptions::new(DiskType::Dynamic, MSIZE);
    o.block_size = 128 << 10;
    let pf = create_dynamic(parent.as_ref(), &o).unwrap();
    let mut model = vec![0u8; MSIZE as usize];
    {
        let p = Image::open_storage(parent.clone(), false, "p", &NoParents).unwrap();
        for i in 0..MSIZE / 4096 {
            if i % 3 != 0 {
                let v = vec![(i as u8) | 0x80; 4096];
                p.write_at(&v, i * 4096).unwrap();
            }
        }
        p.close().unwrap();
        if diff {
            let p = Image::open_storage(parent.clone(), true, "p", &NoParents).unwrap();
            p.read_at(&mut model, 0).unwrap();
        }
    }
    let pc = parent.clone();
    let resolver = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, _: &vhd::chain::ParentHints| {
            (
                vec![ParentCandidate {
                    storage: pc.clone(),
                    identity: "p".into(),
                    path: None,
                }],
                vec![],
            )
        },
    );
    let storage = Arc::new(MemStorage::new());
    if diff {
        let info = ParentInfo {
            uuid: pf.uuid,
            virtual_size: MSIZE,
            timestamp: 0,
            name: "p".into(),
            absolute: None,
            relative: None,
        };
        create_differencing(storage.as_ref(), &info, MBS, None).unwrap();
    } else {
        let mut o = CreateOptions::new(DiskType::Dynamic, MSIZE);
        o.block_size = MBS;
        create_dynamic(storage.as_ref(), &o).unwrap();
    }
    let open = || Image::open_storage(storage.clone(), false, "c", &resolver).unwrap();
    let mut img = open();
    for op in ops {
        match op {
            Op::Write(off, n, s) => {
                let d: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_add(s) | 1).collect();
                img.write_at(&d, off).unwrap();
                model[off as usize..off as usize + n].copy_from_slice(&d);
            }
            Op::Zeroes(off, n, unmap) => {
                img.write_zeroes(off, n, unmap).unwrap();
                model[off as usize..(off + n) as usize].fill(0);
            }
            Op::Discard(off, n) => {
                img.discard(off, n).unwrap();
                if !diff {
                    model[off as usize..(off + n) as usize].fill(0);
                }
            }
            Op::Flush => img.flush().unwrap(),
            Op::Reopen => {
                drop(img);
                img = open();
                prop_assert!(img.warnings().is_empty(), "{:?}", img.warnings());
            }
        }
        let mut all = vec![0u8; MSIZE as usize];
        img.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model, "content differs from the model");
    }
    drop(img);
    let img = open();
    let r = vhd::check::check_image(&img);
    prop_assert_eq!(r.corruptions(), 0, "{:?}", r.findings);
    let mut all = vec![0u8; MSIZE as usize];
    img.read_at(&mut all, 0).unwrap();
    prop_assert!(all == model);
    // block status: holes read as zero
    let mut at = 0u64;
    for e in img.block_status(0, MSIZE).unwrap() {
        if e.kind == vhd::ExtentKind::Hole {
            prop_assert!(
                model[at as usize..(at + e.length) as usize]
                    .iter()
                    .all(|&x| x == 0)
            );
        }
        at += e.length;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn model_dynamic(ops in proptest::collection::vec(op(), 1..25)) {
        run_model(false, ops)?;
    }

    #[test]
    fn model_differencing(ops in proptest::collection::vec(op(), 1..25)) {
        run_model(true, ops)?;
    }
}
