//! The VHD scenario on a LUN file through `FilePath`, buffered and with O_DIRECT (on a
//! disk file system: tmpfs refuses O_DIRECT, which `FilePath` reports clearly), plus
//! O_DIRECT alignment handling (unaligned reads and read-modify-write of partial blocks
//! from many threads).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::Arc;
use volume::path::{FileOptions, FilePath, LunPath, PathError};

#[test]
fn vhd_scenario_on_a_lun_file() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 64 * MIB);
    let path = FilePath::open(&lun, FileOptions::default()).unwrap();
    let vol = Vol::format(Arc::new(path), MIB);
    scenario::vhd_on_volume(&vol, dir.path());
}

/// A directory on a disk file system (not tmpfs), for O_DIRECT.
fn disk_dir() -> tempfile::TempDir {
    for base in [
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        "/var/tmp".into(),
    ] {
        if let Ok(d) = tempfile::tempdir_in(&base) {
            let probe = d.path().join("probe");
            std::fs::File::create(&probe)
                .unwrap()
                .set_len(1 << 20)
                .unwrap();
            let opts = FileOptions {
                direct: true,
                ..FileOptions::default()
            };
            if FilePath::open(&probe, opts).is_ok() {
                return d;
            }
        }
    }
    panic!("no directory accepts O_DIRECT (target dir and /var/tmp tried)");
}

#[test]
fn vhd_scenario_with_o_direct() {
    let dir = disk_dir();
    let lun = lun_file(dir.path(), 64 * MIB);
    let opts = FileOptions {
        direct: true,
        ..FileOptions::default()
    };
    let path = FilePath::open(&lun, opts).unwrap();
    assert!(
        path.alignment() == 512 || path.alignment() == 4096,
        "{}",
        path.alignment()
    );
    let vol = Vol::format(Arc::new(path), MIB);
    scenario::vhd_on_volume(&vol, dir.path());
}

/// tmpfs refused O_DIRECT before Linux 6.6 and accepts it since: either it works, or
/// the refusal is a clear `Unsupported` error naming O_DIRECT (never a failure at the
/// first write).
#[test]
fn o_direct_on_tmpfs_works_or_is_refused_clearly() {
    assert!(
        std::path::Path::new("/dev/shm").is_dir(),
        "/dev/shm (tmpfs) missing: cannot check O_DIRECT there"
    );
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let lun = lun_file(dir.path(), MIB);
    let opts = FileOptions {
        direct: true,
        ..FileOptions::default()
    };
    match FilePath::open(&lun, opts) {
        Ok(p) => {
            p.write_at(b"direct", 4095).unwrap();
            let mut b = [0u8; 6];
            p.read_at(&mut b, 4095).unwrap();
            assert_eq!(&b, b"direct");
        }
        Err(e) => {
            assert!(matches!(e, PathError::Unsupported { .. }), "{e}");
            assert!(e.to_string().contains("O_DIRECT"), "{e}");
        }
    }
}

#[test]
fn o_direct_unaligned_io_and_concurrent_partial_writes() {
    let dir = disk_dir();
    let lun = lun_file(dir.path(), 4 * MIB);
    let p = Arc::new(
        FilePath::open(
            &lun,
            FileOptions {
                direct: true,
                ..FileOptions::default()
            },
        )
        .unwrap(),
    );
    let a = p.alignment() as u64;
    // Unaligned single writes and reads.
    p.write_at(b"abc", 1).unwrap();
    p.write_at(&pattern(1, 0, 10_000), a - 7).unwrap();
    let mut b = vec![0u8; 3];
    p.read_at(&mut b, 1).unwrap();
    assert_eq!(&b, b"abc");
    let mut b = vec![0u8; 10_000];
    p.read_at(&mut b, a - 7).unwrap();
    assert_eq!(b, pattern(1, 0, 10_000));
    // Many threads writing disjoint, unaligned 100-byte pieces that share blocks: the
    // read-modify-write lock keeps every piece.
    let threads = 8;
    let per = 200u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let p = p.clone();
            s.spawn(move || {
                for i in 0..per {
                    let off = MIB + (i * threads + t) * 100;
                    p.write_at(&[t as u8 + 1; 100], off).unwrap();
                }
            });
        }
    });
    let mut all = vec![0u8; (threads * per * 100) as usize];
    p.read_at(&mut all, MIB).unwrap();
    for (k, chunk) in all.chunks(100).enumerate() {
        let t = k as u64 % threads;
        assert!(chunk.iter().all(|&x| x == t as u8 + 1), "piece {k} lost");
    }
    p.write_zeroes(MIB + 3, 1000).unwrap();
    let mut z = vec![1u8; 1000];
    p.read_at(&mut z, MIB + 3).unwrap();
    assert!(z.iter().all(|&x| x == 0));
    p.flush().unwrap();
    // The same bytes through the page cache.
    let plain = std::fs::read(&lun).unwrap();
    assert_eq!(&plain[1..4], b"abc");
}

/// A gate that counts its checks and may refuse.
struct CountGate {
    checks: std::sync::atomic::AtomicU64,
    refuse: bool,
}

impl volume::WriteGate for CountGate {
    fn check(&self) -> Result<(), PathError> {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if self.refuse {
            Err(PathError::Fenced {
                detail: "test gate".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[test]
fn gated_writes_ask_once_per_write_call_and_a_refusal_writes_nothing() {
    let dir = disk_dir();
    let lun = lun_file(dir.path(), 4 * MIB);
    let p = FilePath::open(
        &lun,
        FileOptions {
            direct: true,
            ..FileOptions::default()
        },
    )
    .unwrap();
    let gate = |refuse| CountGate {
        checks: std::sync::atomic::AtomicU64::new(0),
        refuse,
    };
    // An unaligned O_DIRECT write: read-back of head and tail, then one pwrite, the gate
    // asked once, after the read-back.
    let g = gate(false);
    p.write_at_gated(&[5u8; 10_000], 100, &g).unwrap();
    assert_eq!(g.checks.load(std::sync::atomic::Ordering::Acquire), 1);
    let g = gate(true);
    let e = p.write_at_gated(&[6u8; 10_000], 100, &g).unwrap_err();
    assert!(matches!(e, PathError::Fenced { .. }), "{e}");
    let mut b = vec![0u8; 10_000];
    p.read_at(&mut b, 100).unwrap();
    assert_eq!(b, vec![5u8; 10_000], "a refused write wrote nothing");
    // Zeroing: one fallocate call, one check; refused, nothing zeroed.
    let g = gate(true);
    assert!(p.write_zeroes_gated(0, MIB, &g).is_err());
    p.read_at(&mut b, 100).unwrap();
    assert_eq!(b, vec![5u8; 10_000]);
    let g = gate(false);
    p.write_zeroes_gated(0, MIB, &g).unwrap();
    assert!(g.checks.load(std::sync::atomic::Ordering::Acquire) >= 1);
    p.read_at(&mut b, 100).unwrap();
    assert_eq!(b, vec![0u8; 10_000]);
}
