//! Extent files under the data-path safety rules (docs/design/042): every LUN write call
//! asks the fence (zeroing included), reads ask the read fence, a flush that cannot vouch
//! for the file's writes poisons the file until it is reopened, only an exhausted source
//! is ENOSPC, and inside a non-blocking scope nothing blocks (and nothing happens).
#![allow(clippy::unwrap_used)]

mod common;

use common::MIB;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use volume::layout::Layout;
use volume::path::{LunPath, PathError, WriteGate};
use volume::testing::{ExtentPool, MemPath, RecordingSink, SwitchFence};
use volume::{
    ExtentError, ExtentFile, ExtentMap, ExtentRun, FenceError, ReadAccess, SourceError,
    WriteAccess, WriteFence,
};

/// A memory LUN whose zeroing is written 64 KiB per call (a target without a zeroing
/// command), that counts its write calls, can report lost writes and can claim to be a
/// network path.
#[derive(Debug)]
struct Lun {
    mem: MemPath,
    writes: AtomicU64,
    lost: AtomicU64,
    network: AtomicBool,
}

impl Lun {
    fn new(size: u64) -> Arc<Lun> {
        Arc::new(Lun {
            mem: MemPath::new(size).unwrap(),
            writes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            network: AtomicBool::new(false),
        })
    }
}

impl LunPath for Lun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        self.mem.read_at(buf, offset)
    }
    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        gate.check()?;
        self.writes.fetch_add(1, Ordering::AcqRel);
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> Result<(), PathError> {
        self.mem.flush()
    }
    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        let chunk = vec![0u8; 65536];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(65536);
            self.write_at_gated(&chunk[..n as usize], offset + done, gate)?;
            done += n;
        }
        Ok(())
    }
    fn size(&self) -> Result<u64, PathError> {
        self.mem.size()
    }
    fn describe(&self) -> String {
        "test lun".into()
    }
    fn lost_writes(&self) -> u64 {
        self.lost.load(Ordering::Acquire)
    }
    fn may_block(&self) -> bool {
        self.network.load(Ordering::Acquire)
    }
}

/// Lets `n` checks pass, then stays closed.
#[derive(Debug)]
struct Countdown(AtomicI64);

impl WriteFence for Countdown {
    fn check(&self) -> Result<(), FenceError> {
        if self.0.fetch_sub(1, Ordering::AcqRel) > 0 {
            Ok(())
        } else {
            Err(FenceError("closed".into()))
        }
    }
}

fn layout() -> Layout {
    Layout::plan(32 * MIB, MIB, MIB).unwrap()
}

fn access(fence: Arc<dyn WriteFence>, pool: Arc<ExtentPool>) -> WriteAccess {
    WriteAccess {
        source: pool.clone(),
        sink: Arc::new(RecordingSink::new(Some(pool))),
        fence,
        fence_wait: Duration::from_millis(50),
    }
}

fn open(lun: &Arc<Lun>, len: u64, runs: &[ExtentRun], a: Option<WriteAccess>) -> ExtentFile {
    ExtentFile::open(
        lun.clone(),
        layout(),
        "f",
        ExtentMap::from_runs(runs).unwrap(),
        len,
        a,
    )
    .unwrap()
}

#[test]
fn zeroing_asks_the_fence_before_every_write_call() {
    let lun = Lun::new(32 * MIB);
    let pool = Arc::new(ExtentPool::new(4..20, false));
    // Opening for writing zeroes 2 MiB past the length: 32 calls of 64 KiB; the fence
    // closes after 3 checks.
    let fence = Arc::new(Countdown(AtomicI64::new(3)));
    let e = ExtentFile::open(
        lun.clone(),
        layout(),
        "f",
        ExtentMap::from_runs(&[ExtentRun::new(0, 2)]).unwrap(),
        0,
        Some(access(fence, pool)),
    )
    .unwrap_err();
    assert!(matches!(e, ExtentError::Fenced { .. }), "{e}");
    assert_eq!(lun.writes.load(Ordering::Acquire), 3);
}

#[test]
fn reads_ask_the_read_fence() {
    let lun = Lun::new(32 * MIB);
    let pool = Arc::new(ExtentPool::new(4..20, false));
    let fence = Arc::new(SwitchFence::default());
    let w = open(
        &lun,
        0,
        &[ExtentRun::new(0, 1)],
        Some(access(fence.clone(), pool)),
    );
    w.write(&[7u8; 4096], 0).unwrap();
    // A read-only file under a read hold: its reads follow that hold's fence.
    let ro = open(&lun, 4096, &[ExtentRun::new(0, 1)], None).with_read_access(ReadAccess {
        fence: fence.clone(),
        fence_wait: Duration::from_millis(30),
    });
    let mut b = [0u8; 4096];
    ro.read(&mut b, 0).unwrap();
    assert_eq!(b, [7u8; 4096]);
    fence.set_open(false);
    assert!(matches!(
        ro.read(&mut b, 0),
        Err(ExtentError::Fenced { .. })
    ));
    assert!(matches!(w.read(&mut b, 0), Err(ExtentError::Fenced { .. })));
    // Bytes past the end need no LUN read and no fence.
    ro.read(&mut b, 8192).unwrap();
    assert_eq!(b, [0u8; 4096]);
}

#[test]
fn a_lost_write_poisons_every_later_flush_until_reopened() {
    let lun = Lun::new(32 * MIB);
    let pool = Arc::new(ExtentPool::new(4..20, false));
    let fence: Arc<dyn WriteFence> = Arc::new(SwitchFence::default());
    let f = open(
        &lun,
        0,
        &[ExtentRun::new(0, 1)],
        Some(access(fence.clone(), pool.clone())),
    );
    f.flush().unwrap();
    // Another file's connection loss while this one wrote nothing: no harm.
    lun.lost.fetch_add(1, Ordering::AcqRel);
    f.flush().unwrap();
    f.write(&[1u8; 512], 0).unwrap();
    lun.lost.fetch_add(1, Ordering::AcqRel);
    for _ in 0..3 {
        let e = f.flush().unwrap_err();
        assert!(matches!(e, ExtentError::Poisoned { .. }), "{e}");
    }
    // Reopened from what is committed: flushes work again.
    let g = open(
        &lun,
        f.committed().0,
        &f.committed().1,
        Some(access(fence, pool)),
    );
    g.write(&[2u8; 512], 0).unwrap();
    g.flush().unwrap();
}

#[test]
fn only_an_exhausted_source_is_enospc() {
    #[derive(Debug)]
    struct Broken;
    impl volume::ExtentSource for Broken {
        fn take(&self, _: u64, _: Option<u64>) -> Result<Vec<volume::Grant>, SourceError> {
            Err(SourceError::Other("no coordinator".into()))
        }
        fn put_back(&self, _: &[volume::Grant]) {}
    }
    let lun = Lun::new(32 * MIB);
    let empty = Arc::new(ExtentPool::new(0..0, false));
    let f = open(
        &lun,
        0,
        &[],
        Some(access(Arc::new(SwitchFence::default()), empty)),
    );
    let e = f.write(&[1u8; 512], 0).unwrap_err();
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    let f = open(
        &lun,
        0,
        &[],
        Some(WriteAccess {
            source: Arc::new(Broken),
            sink: Arc::new(RecordingSink::new(None)),
            fence: Arc::new(SwitchFence::default()),
            fence_wait: Duration::ZERO,
        }),
    );
    let e = f.write(&[1u8; 512], 0).unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e}");
}

#[test]
fn a_non_blocking_scope_never_waits_and_never_writes_half() {
    let lun = Lun::new(32 * MIB);
    let pool = Arc::new(ExtentPool::new(4..20, false));
    let fence = Arc::new(SwitchFence::default());
    let f = open(
        &lun,
        0,
        &[ExtentRun::new(0, 1)],
        Some(access(fence.clone(), pool.clone())),
    );
    let would_block = |r: Result<(), ExtentError>| matches!(r, Err(e) if e.is_would_block());
    // Inside the mapped capacity with the fence open: done inline.
    volume::nonblocking::run(|| f.write(&[1u8; 4096], 0)).unwrap();
    // Growth, a closed fence, a flush, a network path: refused at once, nothing done.
    let before = lun.writes.load(Ordering::Acquire);
    assert!(would_block(volume::nonblocking::run(|| {
        f.write(&[2u8; 4096], 3 * MIB)
    })));
    assert_eq!(pool.available(), 16, "growth took no extent");
    fence.set_open(false);
    let start = Instant::now();
    assert!(would_block(volume::nonblocking::run(|| {
        f.write(&[3u8; 4096], 0)
    })));
    let mut b = [0u8; 4096];
    assert!(would_block(volume::nonblocking::run(|| f.read(&mut b, 0))));
    assert!(start.elapsed() < Duration::from_millis(40), "it waited");
    fence.set_open(true);
    assert!(would_block(volume::nonblocking::run(|| f.flush())));
    lun.network.store(true, Ordering::Release);
    assert!(would_block(volume::nonblocking::run(|| f.read(&mut b, 0))));
    assert_eq!(lun.writes.load(Ordering::Acquire), before);
    // Outside the scope the same calls go through.
    f.read(&mut b, 0).unwrap();
    assert_eq!(b, [1u8; 4096]);
    f.write(&[2u8; 4096], 3 * MIB).unwrap();
    f.flush().unwrap();
}

#[test]
fn writes_that_timed_out_are_in_doubt_until_they_land() {
    use volume::testing::FaultyPath;
    let faulty = Arc::new(FaultyPath::new(Arc::new(MemPath::new(8 * MIB).unwrap())));
    assert!(faulty.quiet_at().is_none(), "nothing in doubt yet");
    faulty.late_writes(Some(Duration::from_millis(300)));
    assert!(faulty.write_at(&[1u8; 512], 0).is_err(), "times out now");
    faulty.late_writes(None);
    assert!(faulty.quiet_at().is_some(), "the late write may still land");
    let start = Instant::now();
    assert!(volume::wait_quiet(faulty.as_ref(), Duration::from_secs(5)));
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    let mut b = [0u8; 512];
    faulty.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [1u8; 512], "it landed before the path was quiet");
    // A bound that is too short says so.
    faulty.late_writes(Some(Duration::from_secs(2)));
    let _ = faulty.write_at(&[2u8; 512], 0);
    faulty.late_writes(None);
    assert!(!volume::wait_quiet(
        faulty.as_ref(),
        Duration::from_millis(100)
    ));
    faulty.wait_late_writes();
}
