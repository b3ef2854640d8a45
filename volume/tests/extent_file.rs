//! Extent file behaviour on an in-memory LUN: the flush order (path flush, then commit,
//! then the VHD's BAT, then path flush), pending mappings kept on a failed commit, the
//! fence (writes wait, then fail, and nothing lands), read-only files, zeroing of new
//! and reused extents, crash leftovers past the length, shrinking, fragmented maps,
//! concurrent growth, and a property test against an in-memory model.
#![allow(clippy::unwrap_used)]

mod common;

use common::{MIB, pattern};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhd::Storage;
use vhd::chain::NoParents;
use vhd::create::{CreateOptions, create_dynamic};
use volume::layout::Layout;
use volume::path::{LunPath, Op, PathError, WriteGate};
use volume::testing::{ExtentPool, FaultyPath, MemPath, RecordingSink, SwitchFence};
use volume::{
    ErrorClass, ExtentError, ExtentFile, ExtentMap, ExtentMapSink, MapUpdate, OpenFence, SinkError,
    WriteAccess, WriteFence,
};

type Log = Arc<Mutex<Vec<(String, u64, u64)>>>;

/// A path that logs every write-like call (and a sink that logs into the same log).
#[derive(Debug)]
struct Recorder {
    inner: MemPath,
    log: Log,
}

impl LunPath for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        self.inner.read_at(buf, offset)
    }
    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        self.log
            .lock()
            .unwrap()
            .push(("write".into(), offset, buf.len() as u64));
        self.inner.write_at_gated(buf, offset, gate)
    }
    fn flush(&self) -> Result<(), PathError> {
        self.log.lock().unwrap().push(("flush".into(), 0, 0));
        self.inner.flush()
    }
    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        self.log.lock().unwrap().push(("zero".into(), offset, len));
        self.inner.write_zeroes_gated(offset, len, gate)
    }
    fn size(&self) -> Result<u64, PathError> {
        self.inner.size()
    }
    fn describe(&self) -> String {
        "recorder".into()
    }
}

#[derive(Debug)]
struct LogSink {
    log: Log,
    inner: RecordingSink,
}

impl ExtentMapSink for LogSink {
    fn commit(&self, u: &MapUpdate) -> Result<(), SinkError> {
        self.log.lock().unwrap().push(("commit".into(), u.len, 0));
        self.inner.commit(u)
    }
}

fn layout(lun_size: u64) -> Layout {
    Layout::plan(lun_size, MIB, MIB).unwrap()
}

struct Fixture {
    lun: Arc<dyn LunPath>,
    layout: Layout,
    pool: Arc<ExtentPool>,
    sink: Arc<RecordingSink>,
}

impl Fixture {
    fn new(lun: Arc<dyn LunPath>, clean: bool) -> Fixture {
        let layout = layout(lun.size().unwrap());
        let pool = Arc::new(ExtentPool::new(0..layout.extent_count, clean));
        let sink = Arc::new(RecordingSink::new(Some(pool.clone())));
        Fixture {
            lun,
            layout,
            pool,
            sink,
        }
    }

    fn mem(size: u64) -> Fixture {
        Fixture::new(Arc::new(MemPath::new(size).unwrap()), false)
    }

    fn access(&self, fence: Arc<dyn WriteFence>) -> WriteAccess {
        WriteAccess {
            source: self.pool.clone(),
            sink: self.sink.clone(),
            fence,
            fence_wait: Duration::from_millis(300),
        }
    }

    fn create(&self, fence: Arc<dyn WriteFence>) -> ExtentFile {
        ExtentFile::open(
            self.lun.clone(),
            self.layout,
            "f",
            ExtentMap::new(),
            0,
            Some(self.access(fence)),
        )
        .unwrap()
    }

    fn reopen(&self, writable: bool) -> ExtentFile {
        let u = self.sink.last().unwrap();
        self.open(u.len, &u.runs, writable)
    }

    fn open(&self, len: u64, runs: &[volume::ExtentRun], writable: bool) -> ExtentFile {
        ExtentFile::open(
            self.lun.clone(),
            self.layout,
            "f",
            ExtentMap::from_runs(runs).unwrap(),
            len,
            writable.then(|| self.access(Arc::new(OpenFence))),
        )
        .unwrap()
    }
}

#[test]
fn flush_order_is_path_flush_commit_bat_path_flush() {
    let log: Log = Arc::default();
    let lun = Arc::new(Recorder {
        inner: MemPath::new(32 * MIB).unwrap(),
        log: log.clone(),
    });
    let layout = layout(32 * MIB);
    let pool = Arc::new(ExtentPool::new(0..layout.extent_count, false));
    let sink = Arc::new(LogSink {
        log: log.clone(),
        inner: RecordingSink::new(None),
    });
    let f = Arc::new(
        ExtentFile::open(
            lun,
            layout,
            "dyn",
            ExtentMap::new(),
            0,
            Some(WriteAccess {
                source: pool,
                sink: sink.clone(),
                fence: Arc::new(OpenFence),
                fence_wait: Duration::from_millis(100),
            }),
        )
        .unwrap(),
    );
    create_dynamic(
        f.as_ref(),
        &CreateOptions::new(vhd::DiskType::Dynamic, 64 * MIB),
    )
    .unwrap();
    let img = vhd::Image::open_storage(f.clone(), false, "dyn", &NoParents).unwrap();
    log.lock().unwrap().clear();
    // A new 2 MiB block past the first extent: growth, zeroing, data, footer.
    img.write_at(&[7u8; 4096], 10 * MIB).unwrap();
    assert!(f.has_pending());
    img.flush().unwrap();
    let ops: Vec<(String, u64, u64)> = log.lock().unwrap().clone();
    let names: Vec<&str> = ops.iter().map(|(n, _, _)| n.as_str()).collect();
    let commit = names.iter().position(|&n| n == "commit").expect("a commit");
    assert_eq!(
        names[commit - 1],
        "flush",
        "path flush right before the commit: {names:?}"
    );
    assert!(
        names[..commit - 1].contains(&"zero"),
        "new extents zeroed before the commit: {names:?}"
    );
    // Every write into a newly zeroed range comes after its zeroing.
    for (zi, (_, zoff, zlen)) in ops.iter().enumerate().filter(|(_, o)| o.0 == "zero") {
        for (wi, (_, woff, wlen)) in ops.iter().enumerate().filter(|(_, o)| o.0 == "write") {
            if woff < &(zoff + zlen) && zoff < &(woff + wlen) {
                assert!(
                    zi < wi,
                    "write {wi} into zeroed range {zi} came first: {ops:?}"
                );
            }
        }
    }
    assert!(
        names[commit + 1..].contains(&"write"),
        "BAT written after the commit: {names:?}"
    );
    assert_eq!(*names.last().unwrap(), "flush", "{names:?}");
    assert!(!f.has_pending());
    assert_eq!(sink.inner.last().unwrap().len, f.logical_len());
}

#[test]
fn failed_commit_keeps_the_mapping_pending() {
    let fx = Fixture::mem(16 * MIB);
    let f = fx.create(Arc::new(OpenFence));
    f.write(b"first", 0).unwrap();
    f.flush().unwrap();
    let before = fx.sink.last().unwrap();
    f.write(&pattern(1, 0, 100), 3 * MIB).unwrap();
    fx.sink.set_failing(true);
    let e = f.flush().unwrap_err();
    assert!(matches!(e, ExtentError::Commit { .. }), "{e}");
    assert!(f.has_pending());
    assert_eq!(f.committed(), (before.len, before.runs.clone()));
    fx.sink.set_failing(false);
    f.flush().unwrap();
    assert!(!f.has_pending());
    let after = fx.sink.last().unwrap();
    assert_eq!(after.len, 3 * MIB + 100);
    assert_eq!(after.runs.iter().map(|r| r.count).sum::<u64>(), 4);
}

#[test]
fn closed_fence_fails_writes_after_fence_wait_and_nothing_lands() {
    let faulty = Arc::new(FaultyPath::new(Arc::new(MemPath::new(16 * MIB).unwrap())));
    let fx = Fixture::new(faulty.clone(), false);
    let fence = Arc::new(SwitchFence::default());
    let f = Arc::new(fx.create(fence.clone()));
    f.write(&[1u8; 4096], 0).unwrap();
    let landed = faulty.writes_landed();
    let free = fx.pool.available();
    fence.set_open(false);
    for (off, what) in [(0, "inside the mapped extents"), (5 * MIB, "growth")] {
        let start = Instant::now();
        let e = f.write(&[2u8; 4096], off).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, ExtentError::Fenced { .. }), "{what}: {e}");
        assert_eq!(e.class(), ErrorClass::Fenced);
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{what}: {took:?}"
        );
        assert_eq!(
            faulty.writes_landed(),
            landed,
            "{what}: nothing reached the LUN"
        );
    }
    assert_eq!(
        fx.pool.available(),
        free,
        "extents of a fenced growth go back"
    );
    // Through vhd::Storage the NBD layer sees EIO.
    let io = Storage::write_at(f.as_ref(), b"x", 0).unwrap_err();
    assert_eq!(volume::errno(&io), libc::EIO);
    assert_eq!(volume::error_class(&io), Some(ErrorClass::Fenced));
    // Reads are fenced too (042 §9): the node may have lost the VHD to another.
    let mut b = [0u8; 4096];
    let e = f.read(&mut b, 0).unwrap_err();
    assert!(matches!(e, ExtentError::Fenced { .. }), "{e}");
    // A fence that reopens within the wait: the write pauses, then goes through.
    let f2 = f.clone();
    let fence2 = fence.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        fence2.set_open(true);
    });
    let start = Instant::now();
    f2.write(&[3u8; 4096], 0).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(90));
    opener.join().unwrap();
    f.read(&mut b, 0).unwrap();
    assert_eq!(
        b, [3u8; 4096],
        "the old data stayed until the fence reopened"
    );
}

#[test]
fn read_only_files_refuse_changes() {
    let fx = Fixture::mem(16 * MIB);
    let f = fx.create(Arc::new(OpenFence));
    f.write(b"parent", 10).unwrap();
    f.flush().unwrap();
    let ro = fx.reopen(false);
    assert!(ro.is_read_only());
    for e in [
        ro.write(b"x", 0).unwrap_err(),
        ro.set_len(0).unwrap_err(),
        ro.discard(0, 10).unwrap_err(),
    ] {
        assert!(matches!(e, ExtentError::ReadOnly { .. }), "{e}");
        assert_eq!(e.errno(), libc::EROFS);
    }
    ro.flush().unwrap();
    let mut b = [0u8; 6];
    ro.read(&mut b, 10).unwrap();
    assert_eq!(&b, b"parent");
}

#[test]
fn known_clean_extents_are_not_zeroed_and_others_are() {
    for clean in [true, false] {
        let log: Log = Arc::default();
        let lun = Arc::new(Recorder {
            inner: MemPath::new(16 * MIB).unwrap(),
            log: log.clone(),
        });
        let fx = Fixture::new(lun, clean);
        let f = fx.create(Arc::new(OpenFence));
        f.set_len(3 * MIB).unwrap();
        let zeros = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _, _)| n == "zero")
            .count();
        assert_eq!(zeros == 0, clean, "clean={clean}: {zeros} zeroings");
    }
}

#[test]
fn reused_extents_never_show_old_data() {
    let fx = Fixture::mem(16 * MIB);
    let a = fx.create(Arc::new(OpenFence));
    a.write(&[0xAAu8; (3 * MIB) as usize], 0).unwrap();
    a.flush().unwrap();
    let runs = fx.sink.last().unwrap().runs;
    drop(a);
    fx.pool.release(&runs); // deleted
    let b = fx.create(Arc::new(OpenFence));
    // Growth by a small write far out, and by set_len.
    b.write(b"b", 2 * MIB + 5).unwrap();
    b.set_len(6 * MIB).unwrap();
    let mut all = vec![1u8; (6 * MIB) as usize];
    b.read(&mut all, 0).unwrap();
    for (i, &x) in all.iter().enumerate() {
        if i as u64 != 2 * MIB + 5 {
            assert_eq!(x, 0, "stale byte at {i}");
        }
    }
}

#[test]
fn crash_leftovers_past_the_length_are_zeroed_on_open_for_write() {
    let fx = Fixture::mem(16 * MIB);
    let f = fx.create(Arc::new(OpenFence));
    f.write(b"committed", 0).unwrap();
    f.flush().unwrap();
    // Unflushed growth inside the mapped extent, then a crash (no flush).
    f.write(&[0xEEu8; 1000], 500_000).unwrap();
    drop(f);
    let g = fx.reopen(true);
    assert_eq!(g.logical_len(), 9);
    g.set_len(MIB).unwrap();
    let mut b = vec![1u8; 1000];
    g.read(&mut b, 500_000).unwrap();
    assert!(
        b.iter().all(|&x| x == 0),
        "an old incarnation's unflushed bytes showed"
    );
}

#[test]
fn shrink_zeroes_the_cut_and_releases_extents_at_flush() {
    let fx = Fixture::mem(16 * MIB);
    let f = fx.create(Arc::new(OpenFence));
    f.write(&[9u8; (3 * MIB) as usize], 0).unwrap();
    f.flush().unwrap();
    let free = fx.pool.available();
    f.set_len(MIB + MIB / 2).unwrap();
    assert_eq!(f.map().extent_count(), 2);
    assert_eq!(fx.pool.available(), free, "released only when committed");
    f.flush().unwrap();
    let u = fx.sink.last().unwrap();
    assert_eq!(u.len, MIB + MIB / 2);
    assert_eq!(u.released.iter().map(|r| r.count).sum::<u64>(), 1);
    assert_eq!(fx.pool.available(), free + 1);
    f.set_len(3 * MIB).unwrap();
    let mut b = vec![1u8; (MIB + MIB / 2) as usize];
    f.read(&mut b, MIB + MIB / 2).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let mut b = vec![0u8; 10];
    f.read(&mut b, MIB + MIB / 2 - 10).unwrap();
    assert_eq!(b, [9u8; 10]);
}

#[test]
fn fragmented_files_read_and_write_across_runs() {
    let fx = Fixture::mem(32 * MIB);
    let a = fx.create(Arc::new(OpenFence));
    let b = fx.create(Arc::new(OpenFence));
    let mut ma = vec![0u8; (8 * MIB) as usize];
    let mut mb = vec![0u8; (8 * MIB) as usize];
    // Alternate growth: the pool hands out interleaved extents.
    for k in 0..8u64 {
        let da = pattern(1, k, MIB as usize);
        let db = pattern(2, k, MIB as usize);
        a.write(&da, k * MIB).unwrap();
        b.write(&db, k * MIB).unwrap();
        ma[(k * MIB) as usize..((k + 1) * MIB) as usize].copy_from_slice(&da);
        mb[(k * MIB) as usize..((k + 1) * MIB) as usize].copy_from_slice(&db);
    }
    assert!(a.map().runs().len() > 1, "{:?}", a.map().runs());
    // One request spanning every run.
    let span = pattern(3, 0, (6 * MIB) as usize);
    a.write(&span, MIB / 2).unwrap();
    ma[(MIB / 2) as usize..(MIB / 2 + 6 * MIB) as usize].copy_from_slice(&span);
    let mut got = vec![0u8; ma.len()];
    a.read(&mut got, 0).unwrap();
    assert!(got == ma);
    b.read(&mut got, 0).unwrap();
    assert!(got == mb);
}

#[test]
fn concurrent_writers_grow_one_file() {
    let fx = Fixture::mem(64 * MIB);
    let f = Arc::new(fx.create(Arc::new(OpenFence)));
    let threads = 6u64;
    let pieces = 40u64;
    let piece = 100_000u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = f.clone();
            s.spawn(move || {
                for i in 0..pieces {
                    let off = (i * threads + t) * piece;
                    f.write(&pattern(t as u8, off, piece as usize), off)
                        .unwrap();
                    if i % 10 == 0 {
                        f.flush().unwrap();
                    }
                }
            });
        }
    });
    f.flush().unwrap();
    let total = threads * pieces * piece;
    assert_eq!(f.logical_len(), total);
    let g = fx.reopen(false);
    let mut buf = vec![0u8; piece as usize];
    for k in 0..threads * pieces {
        g.read(&mut buf, k * piece).unwrap();
        assert!(
            buf == pattern((k % threads) as u8, k * piece, piece as usize),
            "piece {k}"
        );
    }
}

#[test]
fn path_errors_keep_their_class_through_vhd_storage() {
    let faulty = Arc::new(FaultyPath::new(Arc::new(MemPath::new(16 * MIB).unwrap())));
    let fx = Fixture::new(faulty.clone(), false);
    let f = fx.create(Arc::new(OpenFence));
    f.write(b"x", 0).unwrap();
    faulty.cut(true);
    let e = Storage::write_at(&f, b"y", 0).unwrap_err();
    assert_eq!(volume::error_class(&e), Some(ErrorClass::Path));
    // The flush fails with the path, after a write it covered: the file is poisoned, and
    // a later flush fails too although the path is back (042 §5).
    let e = Storage::flush(&f).unwrap_err();
    assert!(e.to_string().contains("reopened"), "{e}");
    faulty.cut(false);
    assert!(matches!(f.flush(), Err(ExtentError::Poisoned { .. })));
    assert!(f.poisoned().is_some());
    faulty.media_errors(true, false);
    let mut b = [0u8; 1];
    let e = Storage::read_at(&f, &mut b, 0).unwrap_err();
    assert_eq!(volume::error_class(&e), Some(ErrorClass::Media));
    faulty.media_errors(false, false);
    // A late write: fails now as a timeout, lands later.
    faulty.late_writes(Some(Duration::from_millis(50)));
    let e = f.write(b"L", 0).unwrap_err();
    assert!(
        matches!(
            e,
            ExtentError::Path {
                source: PathError::Timeout { op: Op::Write, .. },
                ..
            }
        ),
        "{e}"
    );
    faulty.wait_late_writes();
    faulty.late_writes(None);
    f.read(&mut b, 0).unwrap();
    assert_eq!(&b, b"L", "the late write landed");
}

#[derive(Debug, Clone)]
enum FileOp {
    Write { off: u64, len: usize, seed: u8 },
    SetLen(u64),
    Read { off: u64, len: usize },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = FileOp> {
    let off = 0u64..(6 * MIB);
    prop_oneof![
        4 => (off.clone(), 1usize..300_000, any::<u8>())
            .prop_map(|(off, len, seed)| FileOp::Write { off, len, seed }),
        1 => (0u64..(7 * MIB)).prop_map(FileOp::SetLen),
        2 => (off, 1usize..300_000).prop_map(|(off, len)| FileOp::Read { off, len }),
        1 => Just(FileOp::Flush),
        1 => Just(FileOp::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The extent file behaves like a plain in-memory store (zeros past the end, growth,
    /// truncation), and a reopen from the committed map after a flush sees the same.
    #[test]
    fn extent_file_matches_a_memory_model(ops in prop::collection::vec(op(), 1..30)) {
        let fx = Fixture::mem(24 * MIB);
        let mut f = fx.create(Arc::new(OpenFence));
        let model = vhd::MemStorage::new();
        for op in ops {
            match op {
                FileOp::Write { off, len, seed } => {
                    let d = pattern(seed, off, len);
                    f.write(&d, off).unwrap();
                    model.write_at(&d, off).unwrap();
                }
                FileOp::SetLen(n) => {
                    f.set_len(n).unwrap();
                    model.set_len(n).unwrap();
                }
                FileOp::Read { off, len } => {
                    let mut a = vec![1u8; len];
                    let mut b = vec![2u8; len];
                    f.read(&mut a, off).unwrap();
                    model.read_at(&mut b, off).unwrap();
                    prop_assert!(a == b, "read {}+{}", off, len);
                }
                FileOp::Flush => f.flush().unwrap(),
                FileOp::Reopen => {
                    f.flush().unwrap();
                    let (len, runs) = f.committed();
                    drop(f);
                    f = fx.open(len, &runs, true);
                }
            }
            prop_assert_eq!(f.logical_len(), model.len().unwrap());
            prop_assert!(
                f.map().extent_count() * MIB >= f.logical_len(),
                "capacity covers the length"
            );
        }
        f.flush().unwrap();
        let mut a = vec![0u8; model.len().unwrap() as usize];
        f.read(&mut a, 0).unwrap();
        prop_assert!(a == model.to_vec());
        // Every extent is either free or mapped by the file, never both, never lost.
        let mapped = f.map().extent_count();
        prop_assert_eq!(mapped + fx.pool.available(), fx.layout.extent_count);
    }
}
