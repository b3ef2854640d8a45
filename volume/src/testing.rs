//! Test tooling (public so integration tests, fuzz targets and the later redirection
//! tests can use it; not for production paths): an in-memory LUN ([`MemPath`]), a
//! fault-injecting path wrapper ([`FaultyPath`]), a simple extent pool that is both
//! [`ExtentSource`] and the target of released extents ([`ExtentPool`]), a sink that
//! records commits ([`RecordingSink`]) and a fence that can be closed ([`SwitchFence`]).

use crate::extent_map::ExtentRun;
use crate::hooks::{
    ExtentMapSink, ExtentSource, FenceError, Grant, MapUpdate, SinkError, SourceError, WriteFence,
};
use crate::path::{LunPath, Op, PathError, WriteGate, check_range};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest in-memory LUN.
pub const MEM_PATH_LIMIT: u64 = 1 << 30;
/// Late writes in flight at once in a [`FaultyPath`]; more fail without landing.
pub const MAX_LATE_WRITES: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A LUN in memory, of fixed size.
#[derive(Debug)]
pub struct MemPath {
    data: RwLock<Vec<u8>>,
    flushes: AtomicU64,
}

impl MemPath {
    /// A zeroed LUN of `size` bytes (at most [`MEM_PATH_LIMIT`]).
    pub fn new(size: u64) -> Result<MemPath, PathError> {
        if size > MEM_PATH_LIMIT {
            return Err(PathError::Unsupported {
                target: "memory".into(),
                detail: format!("{size} bytes exceeds the in-memory limit {MEM_PATH_LIMIT}"),
            });
        }
        Ok(MemPath {
            data: RwLock::new(vec![0u8; size as usize]),
            flushes: AtomicU64::new(0),
        })
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl LunPath for MemPath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        check_range(self, Op::Read, offset, buf.len() as u64, d.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(self, Op::Write, offset, buf.len() as u64, d.len() as u64)?;
        gate.check()?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), PathError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        check_range(self, Op::WriteZeroes, offset, len, d.len() as u64)?;
        gate.check()?;
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn size(&self) -> Result<u64, PathError> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// A write that may run later on another thread.
type DeferredWrite = Box<dyn FnOnce(&dyn LunPath) -> Result<(), PathError> + Send>;

#[derive(Debug, Default)]
struct Faults {
    cut: bool,
    write_delay: Duration,
    late: Option<Duration>,
    media_reads: bool,
    media_writes: bool,
}

/// Wraps a path and injects faults: cut (every call fails as a path error and nothing
/// reaches the inner path), delayed writes, late writes (the call fails at once as a path
/// timeout; the write lands after the delay), media errors.
#[derive(Debug)]
pub struct FaultyPath {
    inner: Arc<dyn LunPath>,
    faults: Mutex<Faults>,
    landed: Arc<AtomicU64>,
    late_jobs: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultyPath {
    pub fn new(inner: Arc<dyn LunPath>) -> FaultyPath {
        FaultyPath {
            inner,
            faults: Mutex::new(Faults::default()),
            landed: Arc::new(AtomicU64::new(0)),
            late_jobs: Mutex::new(Vec::new()),
        }
    }

    /// Cuts (or restores) the path.
    pub fn cut(&self, cut: bool) {
        lock(&self.faults).cut = cut;
    }

    /// Every write (and zeroing) sleeps this long before reaching the inner path.
    pub fn delay_writes(&self, d: Duration) {
        lock(&self.faults).write_delay = d;
    }

    /// Writes fail at once as timeouts and land `d` later (None: off).
    pub fn late_writes(&self, d: Option<Duration>) {
        lock(&self.faults).late = d;
    }

    /// Reads and/or writes fail with media errors (EIO from the storage).
    pub fn media_errors(&self, reads: bool, writes: bool) {
        let mut f = lock(&self.faults);
        f.media_reads = reads;
        f.media_writes = writes;
    }

    /// Writes and zeroings that reached the inner path.
    pub fn writes_landed(&self) -> u64 {
        self.landed.load(Ordering::Acquire)
    }

    /// Waits until every late write has landed (or failed).
    pub fn wait_late_writes(&self) {
        let jobs = std::mem::take(&mut *lock(&self.late_jobs));
        for j in jobs {
            let _ = j.join();
        }
    }

    fn cut_err(&self, op: Op, offset: u64) -> PathError {
        PathError::path(&self.describe(), op, offset, "path cut (fault injection)")
    }

    fn media_err(&self, op: Op, offset: u64) -> PathError {
        PathError::Media {
            target: self.describe(),
            op,
            offset,
            errno: Some(libc::EIO),
            detail: "injected media error".into(),
        }
    }

    /// Applies the write faults; `Ok(None)` means the write was deferred (late).
    fn write_like(&self, op: Op, offset: u64, apply: DeferredWrite) -> Result<(), PathError> {
        let (delay, late) = {
            let f = lock(&self.faults);
            if f.cut {
                return Err(self.cut_err(op, offset));
            }
            if f.media_writes {
                return Err(self.media_err(op, offset));
            }
            (f.write_delay, f.late)
        };
        if let Some(after) = late {
            let mut jobs = lock(&self.late_jobs);
            jobs.retain(|j| !j.is_finished());
            if jobs.len() >= MAX_LATE_WRITES {
                return Err(self.cut_err(op, offset));
            }
            let inner = self.inner.clone();
            let landed = self.landed.clone();
            jobs.push(std::thread::spawn(move || {
                std::thread::sleep(after);
                if apply(inner.as_ref()).is_ok() {
                    landed.fetch_add(1, Ordering::AcqRel);
                }
            }));
            return Err(PathError::Timeout {
                target: self.describe(),
                op,
                offset,
                after: Duration::ZERO,
            });
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        apply(self.inner.as_ref())?;
        self.landed.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

impl Drop for FaultyPath {
    fn drop(&mut self) {
        self.wait_late_writes();
    }
}

impl LunPath for FaultyPath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), PathError> {
        {
            let f = lock(&self.faults);
            if f.cut {
                return Err(self.cut_err(Op::Read, offset));
            }
            if f.media_reads {
                return Err(self.media_err(Op::Read, offset));
            }
        }
        self.inner.read_at(buf, offset)
    }

    /// One check for the inner path's whole call: a late write is one deferred call.
    fn write_at_gated(
        &self,
        buf: &[u8],
        offset: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        gate.check()?;
        let data = buf.to_vec();
        self.write_like(
            Op::Write,
            offset,
            Box::new(move |p| p.write_at(&data, offset)),
        )
    }

    fn flush(&self) -> Result<(), PathError> {
        if lock(&self.faults).cut {
            return Err(self.cut_err(Op::Flush, 0));
        }
        self.inner.flush()
    }

    fn write_zeroes_gated(
        &self,
        offset: u64,
        len: u64,
        gate: &dyn WriteGate,
    ) -> Result<(), PathError> {
        gate.check()?;
        self.write_like(
            Op::WriteZeroes,
            offset,
            Box::new(move |p| p.write_zeroes(offset, len)),
        )
    }

    fn size(&self) -> Result<u64, PathError> {
        if lock(&self.faults).cut {
            return Err(self.cut_err(Op::Size, 0));
        }
        self.inner.size()
    }

    fn lost_writes(&self) -> u64 {
        self.inner.lost_writes()
    }

    /// Late writes still to land are in doubt: asked again shortly.
    fn quiet_at(&self) -> Option<std::time::Instant> {
        let pending = lock(&self.late_jobs).iter().any(|j| !j.is_finished());
        if pending {
            Some(std::time::Instant::now() + Duration::from_millis(20))
        } else {
            self.inner.quiet_at()
        }
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

/// A pool of free extents (a stand-in for a node's reservation). Extents released by a
/// committed map change come back as not clean.
#[derive(Debug)]
pub struct ExtentPool {
    /// Free extent → known clean.
    free: Mutex<BTreeMap<u64, bool>>,
}

impl ExtentPool {
    /// Extents `range` are free; `clean` says whether they are known to read as zero.
    pub fn new(range: std::ops::Range<u64>, clean: bool) -> ExtentPool {
        ExtentPool {
            free: Mutex::new(range.map(|e| (e, clean)).collect()),
        }
    }

    pub fn available(&self) -> u64 {
        lock(&self.free).len() as u64
    }

    /// Returns extents (a deleted file's, or ones a commit unmapped) as not clean.
    pub fn release(&self, runs: &[ExtentRun]) {
        let mut f = lock(&self.free);
        for r in runs {
            for e in r.start..r.start + r.count {
                f.insert(e, false);
            }
        }
    }
}

impl ExtentSource for ExtentPool {
    fn take(&self, count: u64, after: Option<u64>) -> Result<Vec<Grant>, SourceError> {
        let mut f = lock(&self.free);
        if (f.len() as u64) < count {
            return Err(SourceError::Exhausted {
                wanted: count,
                available: f.len() as u64,
            });
        }
        let mut grants: Vec<Grant> = Vec::new();
        let mut next = after.and_then(|a| a.checked_add(1));
        for _ in 0..count {
            let e = match next.and_then(|n| f.get(&n).map(|_| n)) {
                Some(n) => n,
                None => match f.keys().next() {
                    Some(&k) => k,
                    None => break,
                },
            };
            let clean = f.remove(&e).unwrap_or(false);
            match grants.last_mut() {
                Some(g) if g.clean == clean && g.run.start + g.run.count == e => g.run.count += 1,
                _ => grants.push(Grant {
                    run: ExtentRun::new(e, 1),
                    clean,
                }),
            }
            next = e.checked_add(1);
        }
        Ok(grants)
    }

    fn put_back(&self, grants: &[Grant]) {
        let mut f = lock(&self.free);
        for g in grants {
            for e in g.run.start..g.run.start + g.run.count {
                f.insert(e, g.clean);
            }
        }
    }
}

/// Records committed updates; released extents go back to the pool, if any.
#[derive(Debug, Default)]
pub struct RecordingSink {
    pool: Option<Arc<ExtentPool>>,
    last: Mutex<Option<MapUpdate>>,
    commits: AtomicU64,
    fail: AtomicBool,
}

impl RecordingSink {
    pub fn new(pool: Option<Arc<ExtentPool>>) -> RecordingSink {
        RecordingSink {
            pool,
            ..RecordingSink::default()
        }
    }

    /// The last committed update.
    pub fn last(&self) -> Option<MapUpdate> {
        lock(&self.last).clone()
    }

    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Makes commits fail (a coordinator that cannot be reached).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::Release);
    }
}

impl ExtentMapSink for RecordingSink {
    fn commit(&self, update: &MapUpdate) -> Result<(), SinkError> {
        if self.fail.load(Ordering::Acquire) {
            return Err(SinkError("coordinator unreachable (test)".into()));
        }
        if let Some(p) = &self.pool {
            p.release(&update.released);
        }
        *lock(&self.last) = Some(update.clone());
        self.commits.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A fence that tests open and close.
#[derive(Debug)]
pub struct SwitchFence {
    open: AtomicBool,
    checks: AtomicU64,
}

impl Default for SwitchFence {
    fn default() -> Self {
        SwitchFence {
            open: AtomicBool::new(true),
            checks: AtomicU64::new(0),
        }
    }
}

impl SwitchFence {
    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }

    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Acquire)
    }
}

impl WriteFence for SwitchFence {
    fn check(&self) -> Result<(), FenceError> {
        self.checks.fetch_add(1, Ordering::AcqRel);
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(FenceError("lease lapsed (test fence)".into()))
        }
    }
}
