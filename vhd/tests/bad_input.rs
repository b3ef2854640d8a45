//! Bad input: each corruption gets its typed error, never a panic. Images are built with
//! this library, then damaged byte by byte.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;
use vhd::chain::{FnResolver, NoParents, ParentCandidate};
use vhd::create::{CreateOptions, ParentInfo, create_differencing, create_dynamic, create_fixed};
use vhd::error::Structure;
use vhd::{DiskType, Error, FormatError, Image, MemStorage};

const SIZE: u64 = 8 << 20;

fn dynamic_with_block() -> Vec<u8> {
    let m = Arc::new(MemStorage::new());
    create_dynamic(m.as_ref(), &CreateOptions::new(DiskType::Dynamic, SIZE)).unwrap();
    let img = Image::open_storage(m.clone(), false, "t", &NoParents).unwrap();
    img.write_at(&[1u8; 4096], 0).unwrap();
    img.close().unwrap();
    m.to_vec()
}

fn open(bytes: Vec<u8>) -> Result<Image, Error> {
    Image::open_storage(Arc::new(MemStorage::from_vec(bytes)), true, "t", &NoParents)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Rewrites a header field and fixes the header checksum (so the field check is hit).
fn patch_header(b: &mut [u8], at: usize, val: &[u8]) {
    b[512 + at..512 + at + val.len()].copy_from_slice(val);
    b[512 + 36..512 + 40].fill(0);
    let c = vhd::checksum::checksum(&b[512..1536], 36);
    b[512 + 36..512 + 40].copy_from_slice(&c.to_be_bytes());
}

fn bat_offset(b: &[u8]) -> usize {
    u64::from_be_bytes(b[512 + 16..512 + 24].try_into().unwrap()) as usize
}

#[test]
fn corrupt_footer_checksum_both_copies() {
    let mut b = dynamic_with_block();
    let n = b.len();
    b[n - 512 + 100] ^= 0xFF;
    // trailing footer bad, copy at 0 good: opens with a warning
    let img = open(b.clone()).unwrap();
    assert!(!img.warnings().is_empty());
    b[100] ^= 0xFF;
    let e = open(b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Format(FormatError::BadChecksum {
                structure: Structure::Footer,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn corrupt_fixed_footer() {
    let m = MemStorage::new();
    create_fixed(&m, &CreateOptions::new(DiskType::Fixed, SIZE)).unwrap();
    let mut b = m.to_vec();
    let n = b.len();
    b[n - 512 + 70] ^= 1;
    assert!(matches!(
        open(b.clone()).unwrap_err(),
        Error::Format(FormatError::BadChecksum { .. })
    ));
    b[n - 512] = b'X';
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BadCookie { .. })
    ));
}

#[test]
fn corrupt_header_checksum() {
    let mut b = dynamic_with_block();
    b[512 + 200] ^= 1;
    let e = open(b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Format(FormatError::BadChecksum {
                structure: Structure::DynamicHeader,
                ..
            })
        ),
        "{e}"
    );
}

#[test]
fn bat_entry_past_the_end() {
    let mut b = dynamic_with_block();
    let bat = bat_offset(&b);
    b[bat + 4..bat + 8].copy_from_slice(&0x0010_0000u32.to_be_bytes());
    let e = open(b).unwrap_err();
    assert!(
        matches!(e, Error::BatEntryOutOfRange { block: 1, .. }),
        "{e}"
    );
}

#[test]
fn bat_entry_overlapping_metadata() {
    let mut b = dynamic_with_block();
    let bat = bat_offset(&b);
    b[bat + 4..bat + 8].copy_from_slice(&1u32.to_be_bytes()); // sector 1: the header
    let e = open(b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BatOverlapsMetadata {
                block: 1,
                what: "dynamic header",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn block_size_not_power_of_two() {
    let mut b = dynamic_with_block();
    patch_header(&mut b, 32, &(3u32 << 20).to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BlockSizeNotPowerOfTwo(_))
    ));
    let mut b = dynamic_with_block();
    patch_header(&mut b, 32, &1u32.to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BlockSizeOutOfRange { .. })
    ));
}

#[test]
fn huge_table_counts() {
    let mut b = dynamic_with_block();
    patch_header(&mut b, 28, &u32::MAX.to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::TableTooLarge { .. })
    ));
    // within the limit but past the end of the file
    let mut b = dynamic_with_block();
    patch_header(&mut b, 28, &(1u32 << 22).to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Truncated { what: "BAT", .. }
    ));
    // a table offset so close to 2^64 that offset + table length overflows
    let mut b = dynamic_with_block();
    patch_header(&mut b, 16, &0xFFFF_FFFF_FFFF_FE00u64.to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BadTableOffset(0xFFFF_FFFF_FFFF_FE00))
    ));
    // too few entries for the size
    let mut b = dynamic_with_block();
    patch_header(&mut b, 28, &1u32.to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::TableTooSmall { .. })
    ));
}

#[test]
fn truncated_files() {
    let b = dynamic_with_block();
    assert!(matches!(
        open(vec![]).unwrap_err(),
        Error::Truncated { what: "footer", .. }
    ));
    assert!(matches!(
        open(b[..100].to_vec()).unwrap_err(),
        Error::Truncated { .. }
    ));
    // cut inside the first block: trailing footer gone, copy at 0 used, block past the end
    let cut = b.len() - 4096;
    let e = open(b[..cut].to_vec()).unwrap_err();
    assert!(matches!(e, Error::BatEntryOutOfRange { .. }), "{e}");
    // cut in the BAT
    let e = open(b[..1600].to_vec()).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    // fixed image shorter than its size
    let m = MemStorage::new();
    create_fixed(&m, &CreateOptions::new(DiskType::Fixed, SIZE)).unwrap();
    let fb = m.to_vec();
    let mut short = fb[..(SIZE as usize) / 2].to_vec();
    short.extend_from_slice(&fb[fb.len() - 512..]);
    assert!(matches!(
        open(short).unwrap_err(),
        Error::Truncated {
            what: "fixed disk data",
            ..
        }
    ));
}

#[test]
fn bad_type_size_and_offsets() {
    let mut b = dynamic_with_block();
    let n = b.len();
    for at in [0usize, n - 512] {
        b[at + 60..at + 64].copy_from_slice(&9u32.to_be_bytes());
        b[at + 64..at + 68].fill(0);
        let c = vhd::checksum::checksum(&b[at..at + 512], 64);
        b[at + 64..at + 68].copy_from_slice(&c.to_be_bytes());
    }
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BadDiskType(9))
    ));
    let f = vhd::Footer::new(DiskType::Dynamic, 1 << 50, 0, uuid::Uuid::nil());
    assert!(matches!(
        vhd::Footer::parse(&f.encode()),
        Err(FormatError::SizeTooLarge { .. })
    ));
    let mut b = dynamic_with_block();
    patch_header(&mut b, 16, &3u64.to_be_bytes());
    assert!(matches!(
        open(b).unwrap_err(),
        Error::Format(FormatError::BadTableOffset(3))
    ));
    assert_eq!(be32(&dynamic_with_block(), 512 + 24), 0x0001_0000);
}

#[test]
fn out_of_range_requests_and_read_only() {
    let img = open(dynamic_with_block()).unwrap();
    let mut b = [0u8; 10];
    assert!(matches!(
        img.read_at(&mut b, SIZE - 5).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(
        img.read_at(&mut b, u64::MAX - 2).unwrap_err(),
        Error::OutOfRange { .. }
    ));
    assert!(matches!(img.write_at(&b, 0).unwrap_err(), Error::ReadOnly));
    assert!(matches!(
        img.block_status(SIZE, 1).unwrap_err(),
        Error::OutOfRange { .. }
    ));
}

#[test]
fn parent_loops_and_depth() {
    // a child whose parent resolves to itself
    let child = Arc::new(MemStorage::new());
    let info = ParentInfo {
        uuid: uuid::Uuid::from_u128(5),
        virtual_size: SIZE,
        timestamp: 0,
        name: "x".into(),
        absolute: None,
        relative: None,
    };
    create_differencing(
        child.as_ref(),
        &info,
        2 << 20,
        Some(uuid::Uuid::from_u128(5)),
    )
    .unwrap();
    let c2 = child.clone();
    let selfish = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, _: &vhd::chain::ParentHints| {
            (
                vec![ParentCandidate {
                    storage: c2.clone(),
                    identity: "t".into(),
                    path: None,
                }],
                vec![],
            )
        },
    );
    let e = Image::open_storage(child.clone(), true, "t", &selfish).unwrap_err();
    assert!(matches!(e, Error::ParentLoop(_)), "{e}");
    // same UUID under another identity is a loop too
    let c3 = child.clone();
    let copy = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, _: &vhd::chain::ParentHints| {
            (
                vec![ParentCandidate {
                    storage: c3.clone(),
                    identity: "copy".into(),
                    path: None,
                }],
                vec![],
            )
        },
    );
    let e = Image::open_storage(child.clone(), true, "t", &copy).unwrap_err();
    assert!(matches!(e, Error::ParentLoop(_)), "{e}");
    // an endless chain of distinct images stops at the depth limit
    let counter = std::sync::atomic::AtomicU32::new(0);
    let endless = FnResolver(
        move |_: vhd::chain::ChildRef<'_>, h: &vhd::chain::ParentHints| {
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let m = Arc::new(MemStorage::new());
            let info = ParentInfo {
                uuid: uuid::Uuid::from_u128(1000 + u128::from(i)),
                ..info_template()
            };
            create_differencing(m.as_ref(), &info, 2 << 20, Some(h.parent_uuid)).unwrap();
            (
                vec![ParentCandidate {
                    storage: m,
                    identity: format!("p{i}"),
                    path: None,
                }],
                vec![],
            )
        },
    );
    let start = Arc::new(MemStorage::new());
    create_differencing(
        start.as_ref(),
        &ParentInfo {
            uuid: uuid::Uuid::from_u128(999),
            ..info_template()
        },
        2 << 20,
        None,
    )
    .unwrap();
    let e = Image::open_storage(start, true, "start", &endless).unwrap_err();
    assert!(
        matches!(e, Error::ChainTooDeep(vhd::MAX_CHAIN_DEPTH)),
        "{e}"
    );
    // no parent at all
    let e = Image::open_storage(child, true, "t", &NoParents).unwrap_err();
    assert!(matches!(e, Error::ParentNotFound(_)), "{e}");
}

fn info_template() -> ParentInfo {
    ParentInfo {
        uuid: uuid::Uuid::nil(),
        virtual_size: SIZE,
        timestamp: 0,
        name: "p".into(),
        absolute: None,
        relative: None,
    }
}

#[test]
fn creation_limits() {
    let m = MemStorage::new();
    let e = create_dynamic(
        &m,
        &CreateOptions::new(DiskType::Dynamic, vhd::MAX_VIRTUAL_SIZE + 512),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Format(FormatError::SizeTooLarge { .. })));
    let e = create_dynamic(&m, &CreateOptions::new(DiskType::Dynamic, 1000)).unwrap_err();
    assert!(matches!(
        e,
        Error::Format(FormatError::SizeNotSectorAligned(1000))
    ));
    let mut o = CreateOptions::new(DiskType::Dynamic, SIZE);
    o.block_size = 3 << 20;
    assert!(matches!(
        create_dynamic(&m, &o).unwrap_err(),
        Error::Format(FormatError::BlockSizeNotPowerOfTwo(_))
    ));
    // the largest size is accepted and reads as zeros
    let img = vhd::create::create_mem(&CreateOptions::new(
        DiskType::Dynamic,
        vhd::MAX_VIRTUAL_SIZE,
    ))
    .unwrap();
    let mut b = [1u8; 512];
    img.read_at(&mut b, vhd::MAX_VIRTUAL_SIZE - 512).unwrap();
    assert_eq!(b, [0u8; 512]);
}

/// An abandoned image writes nothing more: its dirty BAT is not flushed on drop, and
/// writes and flushes fail (the node reopens the file from the storage instead).
#[test]
fn an_abandoned_image_writes_nothing_more() {
    let m = Arc::new(MemStorage::new());
    vhd::create::create_dynamic(
        m.as_ref(),
        &vhd::create::CreateOptions::new(vhd::DiskType::Dynamic, 64 << 20),
    )
    .unwrap();
    let before = m.to_vec();
    let img = Image::open_storage(m.clone(), false, "t", &NoParents).unwrap();
    img.write_at(&[7u8; 4096], 0).unwrap();
    assert!(img.is_dirty());
    img.abandon();
    assert!(img.write_at(&[8u8; 512], 0).is_err());
    assert!(img.flush().is_err());
    drop(img);
    let back = Image::open_storage(
        Arc::new(MemStorage::from_vec(m.to_vec())),
        true,
        "t",
        &NoParents,
    )
    .unwrap();
    assert_eq!(back.allocated_blocks(), Some(0), "the BAT was not written");
    assert_eq!(
        &m.to_vec()[..before.len() - 512],
        &before[..before.len() - 512]
    );
}
