//! Superblock and checkpoint region on a LUN file: format/read, refusal to overwrite,
//! backup fallback, bad-input tables (magic, checksums, absurd sizes, truncated LUN),
//! checkpoint slot alternation, torn-slot fallback, stale sequences, and property tests
//! of both codecs (round trips; corrupted bytes never panic and are rejected).
#![allow(clippy::unwrap_used)]

mod common;

use common::{MIB, lun_file};
use proptest::prelude::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;
use volume::checkpoint::{self, CheckpointError, HeaderError};
use volume::layout::{Layout, LayoutError, SUPERBLOCK_SIZE};
use volume::path::{FileOptions, FilePath, LunPath};
use volume::superblock::{self, Copy, FormatParams, Superblock, SuperblockError};

fn open(p: &Path) -> Arc<FilePath> {
    Arc::new(FilePath::open(p, FileOptions::default()).unwrap())
}

fn params() -> FormatParams {
    FormatParams {
        extent_size: MIB,
        checkpoint_slot_size: MIB,
        label: "vol-a".into(),
        uuid: Some(Uuid::from_u128(0x1234)),
        created: Some(1_700_000_000),
        force: false,
    }
}

fn poke(p: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

#[test]
fn format_read_refuse_force_and_backup() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 32 * MIB + 1000);
    let path = open(&lun);
    let sb = superblock::format(path.as_ref(), &params()).unwrap();
    assert_eq!(sb.layout.data_offset, 3 * MIB);
    assert_eq!(sb.layout.extent_count, 28);
    let found = superblock::read(path.as_ref()).unwrap();
    assert_eq!(found.superblock, sb);
    assert_eq!(found.copy, Copy::Primary);
    assert!(found.warnings.is_empty(), "{:?}", found.warnings);

    let e = superblock::format(path.as_ref(), &params()).unwrap_err();
    assert!(
        matches!(
            e,
            SuperblockError::Exists {
                copy: Copy::Primary,
                ..
            }
        ),
        "{e}"
    );

    // Primary destroyed: the backup is used, with a warning, and still blocks format.
    poke(&lun, 0, &[0u8; 4096]);
    let found = superblock::read(path.as_ref()).unwrap();
    assert_eq!(found.copy, Copy::Backup);
    assert_eq!(found.superblock, sb);
    assert!(
        found.warnings[0].contains("primary"),
        "{:?}",
        found.warnings
    );
    let e = superblock::format(path.as_ref(), &params()).unwrap_err();
    assert!(
        matches!(
            e,
            SuperblockError::Exists {
                copy: Copy::Backup,
                ..
            }
        ),
        "{e}"
    );

    // Forced: a new volume; the old checkpoints are gone.
    checkpoint::write_checkpoint(path.as_ref(), &sb, 1, 10, b"old catalog").unwrap();
    let mut p2 = params();
    p2.force = true;
    p2.uuid = Some(Uuid::from_u128(0x5678));
    let sb2 = superblock::format(path.as_ref(), &p2).unwrap();
    assert_eq!(superblock::read(path.as_ref()).unwrap().superblock, sb2);
    let latest = checkpoint::read_latest(path.as_ref(), &sb2).unwrap();
    assert!(latest.checkpoint.is_none());
    assert!(
        latest
            .skipped
            .iter()
            .all(|s| s.problem == HeaderError::Empty)
    );

    // Both copies destroyed: not a volume.
    poke(&lun, 0, &[0u8; 4096]);
    poke(&lun, sb2.layout.backup_offset(), &[0xFFu8; 4096]);
    let e = superblock::read(path.as_ref()).unwrap_err();
    assert!(matches!(e, SuperblockError::NotFormatted { .. }), "{e}");
}

#[test]
fn truncated_and_grown_luns() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 32 * MIB);
    let sb = superblock::format(open(&lun).as_ref(), &params()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lun)
        .unwrap()
        .set_len(20 * MIB)
        .unwrap();
    let e = superblock::read(open(&lun).as_ref()).unwrap_err();
    assert!(
        matches!(e, SuperblockError::Truncated { recorded, actual } if recorded == 32 * MIB && actual == 20 * MIB),
        "{e}"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&lun)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let found = superblock::read(open(&lun).as_ref()).unwrap();
    assert_eq!(found.superblock.layout, sb.layout);
    assert!(
        found.warnings.iter().any(|w| w.contains("grew")),
        "{:?}",
        found.warnings
    );
    // Too small to format at all.
    let small = dir.path().join("small");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(3 * MIB)
        .unwrap();
    let e = superblock::format(open(&small).as_ref(), &params()).unwrap_err();
    assert!(
        matches!(e, SuperblockError::Layout(LayoutError::LunTooSmall { .. })),
        "{e}"
    );
}

fn sample_sb() -> Superblock {
    Superblock {
        uuid: Uuid::from_u128(42),
        layout: Layout::plan(1 << 30, 4 * MIB, MIB).unwrap(),
        created: 5,
        label: "lab".into(),
    }
}

/// Re-seals a mutated copy with a correct checksum, so validation past the crc is hit.
fn reseal(mut b: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&b[..4092]);
    b[4092..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What a bad-input case must be refused with.
type Expect = fn(&SuperblockError) -> bool;

#[test]
fn superblock_bad_input_table() {
    let good = sample_sb().encode();
    assert_eq!(Superblock::parse(&good).unwrap(), sample_sb());
    let set = |at: usize, v: u64| {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        reseal(b)
    };
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_crc = good.clone();
    bad_crc[100] ^= 1;
    let mut version = good.clone();
    version[8] = 2;
    let mut flags = good.clone();
    flags[12] = 1;
    let mut label_len = good.clone();
    label_len[88..90].copy_from_slice(&500u16.to_le_bytes());
    let mut label_utf8 = good.clone();
    label_utf8[96] = 0xFF;
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("short", good[..100].to_vec(), |e| {
            matches!(e, SuperblockError::Short { .. })
        }),
        ("magic", bad_magic, |e| {
            matches!(e, SuperblockError::BadMagic)
        }),
        ("crc", bad_crc, |e| {
            matches!(e, SuperblockError::BadChecksum { .. })
        }),
        ("version", reseal(version), |e| {
            matches!(e, SuperblockError::UnsupportedVersion(2))
        }),
        ("flags", reseal(flags), |e| {
            matches!(e, SuperblockError::UnknownFlags(1))
        }),
        ("extent size 3 MiB", set(40, 3 * MIB), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::ExtentSize(_)))
        }),
        ("extent size 2^63", set(40, 1 << 63), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::ExtentSize(_)))
        }),
        ("extent count 0", set(48, 0), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::ExtentCount(0)))
        }),
        ("extent count huge", set(48, u64::MAX / 2), |e| {
            matches!(e, SuperblockError::Layout(_))
        }),
        ("extents past the LUN", set(48, 1000), |e| {
            matches!(
                e,
                SuperblockError::Layout(LayoutError::ExtentsOverlapBackup { .. })
            )
        }),
        ("data offset inside checkpoints", set(56, 2 * MIB), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::DataOffset { .. }))
        }),
        ("checkpoint at 0", set(64, 0), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::CheckpointOffset(0)))
        }),
        ("slot size absurd", set(72, u64::MAX), |e| {
            matches!(e, SuperblockError::Layout(LayoutError::SlotSize(_)))
        }),
        ("LUN size 0", set(32, 0), |e| {
            matches!(e, SuperblockError::Layout(_))
        }),
        ("label length", reseal(label_len), |e| {
            matches!(e, SuperblockError::BadLabel(_))
        }),
        ("label utf-8", reseal(label_utf8), |e| {
            matches!(e, SuperblockError::BadLabel(_))
        }),
    ];
    for (name, bytes, want) in cases {
        let e = Superblock::parse(&bytes).unwrap_err();
        assert!(want(&e), "{name}: unexpected {e}");
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn checkpoints_alternate_and_survive_torn_writes() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 16 * MIB);
    let path = open(&lun);
    let sb = superblock::format(path.as_ref(), &params()).unwrap();
    let l = checkpoint::read_latest(path.as_ref(), &sb).unwrap();
    assert_eq!(l.checkpoint, None);
    assert_eq!(l.skipped.len(), 2);

    assert_eq!(
        checkpoint::write_checkpoint(path.as_ref(), &sb, 1, 100, b"one").unwrap(),
        0
    );
    assert_eq!(
        checkpoint::write_checkpoint(path.as_ref(), &sb, 2, 200, b"two!").unwrap(),
        1
    );
    assert_eq!(
        checkpoint::write_checkpoint(path.as_ref(), &sb, 3, 300, &[]).unwrap(),
        0
    );
    let big = vec![0x5Au8; (MIB - 4096) as usize];
    assert_eq!(
        checkpoint::write_checkpoint(path.as_ref(), &sb, 4, 400, &big).unwrap(),
        1
    );
    let l = checkpoint::read_latest(path.as_ref(), &sb).unwrap();
    let c = l.checkpoint.unwrap();
    assert_eq!((c.sequence, c.raft_index, c.slot), (4, 400, 1));
    assert!(c.payload == big);
    assert!(l.skipped.is_empty());

    let e = checkpoint::write_checkpoint(path.as_ref(), &sb, 4, 1, b"again").unwrap_err();
    assert!(
        matches!(
            e,
            CheckpointError::StaleSequence {
                asked: 4,
                newest: 4
            }
        ),
        "{e}"
    );
    let e = checkpoint::write_checkpoint(path.as_ref(), &sb, 9, 1, &vec![0u8; MIB as usize])
        .unwrap_err();
    assert!(matches!(e, CheckpointError::TooLarge { .. }), "{e}");

    // A torn write of slot 1's payload: slot 0 (sequence 3) is used, slot 1 reported.
    poke(&lun, sb.layout.slot_offset(1) + 4096 + 1000, &[0u8; 512]);
    let l = checkpoint::read_latest(path.as_ref(), &sb).unwrap();
    assert_eq!(l.checkpoint.as_ref().unwrap().sequence, 3);
    assert_eq!(l.skipped.len(), 1);
    assert_eq!(l.skipped[0].slot, 1);
    assert_eq!(l.skipped[0].problem, HeaderError::PayloadChecksum);
    // The next write goes to the torn slot, never over the good one.
    assert_eq!(
        checkpoint::write_checkpoint(path.as_ref(), &sb, 5, 500, b"five").unwrap(),
        1
    );
    // A torn header in slot 0: slot 1 still wins.
    poke(&lun, sb.layout.slot_offset(0) + 40, &[0xFF; 4]);
    let l = checkpoint::read_latest(path.as_ref(), &sb).unwrap();
    assert_eq!(l.checkpoint.unwrap().payload, b"five");
    assert!(matches!(
        l.skipped[0].problem,
        HeaderError::BadChecksum { .. }
    ));

    // A checkpoint of another volume (same LUN reformatted elsewhere) is not taken.
    let mut other = sb.clone();
    other.uuid = Uuid::from_u128(9);
    let l = checkpoint::read_latest(path.as_ref(), &other).unwrap();
    assert!(l.checkpoint.is_none());
    assert!(
        l.skipped
            .iter()
            .any(|s| matches!(s.problem, HeaderError::WrongVolume { .. }))
    );
}

#[test]
fn fuzz_entry_points_on_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 8 * MIB);
    let path = open(&lun);
    let sb = superblock::format(path.as_ref(), &params()).unwrap();
    checkpoint::write_checkpoint(path.as_ref(), &sb, 1, 1, b"payload").unwrap();
    let image = std::fs::read(&lun).unwrap();
    volume::fuzz::volume_image(&image);
    volume::fuzz::superblock(&image[..SUPERBLOCK_SIZE as usize]);
    let h = &image[sb.layout.slot_offset(0) as usize..][..4096];
    volume::fuzz::checkpoint_header(h);
}

proptest! {
    #[test]
    fn superblock_round_trips(
        uuid in any::<u128>(),
        es_shift in 20u32..33,
        slot_mib in 1u64..1025,
        lun in (1u64 << 32)..(1u64 << 52),
        created in any::<u64>(),
        label in "[a-zA-Z0-9 _-]{0,128}",
    ) {
        let layout = Layout::plan(lun, 1 << es_shift, slot_mib << 20).unwrap();
        let sb = Superblock { uuid: Uuid::from_u128(uuid), layout, created, label };
        let enc = sb.encode();
        prop_assert_eq!(enc.len(), 4096);
        prop_assert_eq!(Superblock::parse(&enc).unwrap(), sb);
    }

    #[test]
    fn corrupted_superblocks_are_rejected(pos in 0usize..4096, bit in 0u8..8) {
        let mut b = sample_sb().encode();
        b[pos] ^= 1 << bit;
        prop_assert!(Superblock::parse(&b).is_err());
    }

    #[test]
    fn superblock_parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..5000)) {
        volume::fuzz::superblock(&data);
    }

    #[test]
    fn checkpoint_header_round_trips_and_rejects_flips(
        uuid in any::<u128>(), seq in any::<u64>(), idx in any::<u64>(),
        len in 0u64..(1 << 30), crc in any::<u32>(), pos in 0usize..64, bit in 0u8..8,
    ) {
        let h = checkpoint::Header { volume: Uuid::from_u128(uuid), sequence: seq, raft_index: idx, payload_len: len, payload_crc: crc };
        let b = h.encode();
        prop_assert_eq!(checkpoint::Header::parse(&b, 1 << 30), Ok(h));
        let mut bad = b.clone();
        bad[pos] ^= 1 << bit;
        prop_assert!(checkpoint::Header::parse(&bad, 1 << 30).is_err());
    }

    #[test]
    fn checkpoint_parse_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
        volume::fuzz::checkpoint_header(&data);
    }

    #[test]
    fn small_volume_images_never_panic(data in prop::collection::vec(any::<u8>(), 0..20_000)) {
        volume::fuzz::volume_image(&data);
    }
}

#[test]
fn read_on_a_blank_lun_is_not_formatted() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 8 * MIB);
    let e = superblock::read(open(&lun).as_ref()).unwrap_err();
    assert!(matches!(e, SuperblockError::NotFormatted { .. }), "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");
    let tiny = dir.path().join("tiny");
    std::fs::File::create(&tiny).unwrap().set_len(100).unwrap();
    let e = superblock::read(open(&tiny).as_ref()).unwrap_err();
    assert!(matches!(e, SuperblockError::NotFormatted { .. }), "{e}");
    let _ = open(&tiny).size();
}
