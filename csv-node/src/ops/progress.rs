//! Progress of long operations (import, export, merge, compact): the admin protocol is
//! one request, one answer, so a client that wants a progress bar picks an operation id,
//! sends it with the operation, and asks `OperationProgress` on a second connection. The
//! table holds at most [`MAX_OPERATIONS`] running operations; an entry lives as long as
//! its [`OpGuard`] (removed when the operation ends, however it ends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::error::OpsError;
use csv_api::admin::volume::Progress;

use crate::sync::lock;

/// Running operations tracked at once; more run untracked (their client sees no bar).
pub(crate) const MAX_OPERATIONS: usize = 64;

/// One operation's counters, shared with the blocking task that does the work.
#[derive(Debug)]
pub(crate) struct OpProgress {
    kind: &'static str,
    name: String,
    unit: &'static str,
    started: Instant,
    done: AtomicU64,
    total: AtomicU64,
}

impl OpProgress {
    /// Records `done` of `total` units.
    pub(crate) fn set(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.done.store(done.min(total), Ordering::Relaxed);
    }

    fn report(&self, op_id: u64) -> Progress {
        Progress {
            op_id,
            kind: self.kind.into(),
            name: self.name.clone(),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            unit: self.unit.into(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

type Table = Arc<Mutex<HashMap<u64, Arc<OpProgress>>>>;

/// The node's table of running operations.
#[derive(Default)]
pub(crate) struct Operations {
    table: Table,
}

/// Keeps an operation in the table; dropping it removes the entry.
pub(crate) struct OpGuard {
    table: Option<(Table, u64)>,
    progress: Arc<OpProgress>,
}

impl OpGuard {
    /// The counters to update.
    pub(crate) fn progress(&self) -> Arc<OpProgress> {
        self.progress.clone()
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if let Some((t, id)) = self.table.take() {
            lock(&t).remove(&id);
        }
    }
}

impl Operations {
    /// Starts tracking an operation under `op_id` (0: untracked). An id already running
    /// is refused (the client picks random ids); a full table leaves the operation
    /// untracked rather than failing it.
    pub(crate) fn start(
        &self,
        op_id: u64,
        kind: &'static str,
        name: &str,
        unit: &'static str,
    ) -> Result<OpGuard, OpsError> {
        let progress = Arc::new(OpProgress {
            kind,
            name: name.to_string(),
            unit,
            started: Instant::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        });
        if op_id == 0 {
            return Ok(OpGuard {
                table: None,
                progress,
            });
        }
        let mut t = lock(&self.table);
        if t.contains_key(&op_id) {
            return Err(OpsError::InvalidArgument(format!(
                "operation id {op_id} is in use"
            )));
        }
        if t.len() >= MAX_OPERATIONS {
            tracing::warn!(
                op_id,
                kind,
                "{MAX_OPERATIONS} operations tracked: this one runs without progress"
            );
            return Ok(OpGuard {
                table: None,
                progress,
            });
        }
        t.insert(op_id, progress.clone());
        Ok(OpGuard {
            table: Some((self.table.clone(), op_id)),
            progress,
        })
    }

    /// The progress of a running operation.
    pub(crate) fn get(&self, op_id: u64) -> Result<Progress, OpsError> {
        lock(&self.table)
            .get(&op_id)
            .map(|p| p.report(op_id))
            .ok_or_else(|| OpsError::NotFound(format!("no operation {op_id} runs on this node")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Coded as _;
    use csv_api::ErrorCode;

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let ops = Operations::default();
        assert_eq!(ops.get(7).unwrap_err().code(), ErrorCode::NotFound);
        let g = ops.start(7, "import", "a", "bytes").unwrap();
        let p = ops.get(7).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.name.as_str(), p.done, p.total),
            ("import", "a", 0, 0)
        );
        g.progress().set(10, 40);
        let p = ops.get(7).unwrap();
        assert_eq!((p.done, p.total, p.unit.as_str()), (10, 40, "bytes"));
        // done never exceeds total
        g.progress().set(50, 40);
        assert_eq!(ops.get(7).unwrap().done, 40);
        // a second operation under the same id is refused
        assert_eq!(
            ops.start(7, "export", "b", "bytes").err().map(|e| e.code()),
            Some(ErrorCode::InvalidArgument)
        );
        drop(g);
        assert_eq!(ops.get(7).unwrap_err().code(), ErrorCode::NotFound);
        // the id is free again
        let _g = ops.start(7, "export", "b", "bytes").unwrap();
        assert_eq!(ops.get(7).unwrap().kind, "export");
    }

    #[test]
    fn untracked_and_bounded() {
        let ops = Operations::default();
        let g0 = ops.start(0, "merge", "c", "bytes").unwrap();
        g0.progress().set(1, 2);
        assert_eq!(ops.get(0).unwrap_err().code(), ErrorCode::NotFound);
        let guards: Vec<_> = (1..=MAX_OPERATIONS as u64)
            .map(|i| ops.start(i, "import", "x", "bytes").unwrap())
            .collect();
        assert_eq!(lock(&ops.table).len(), MAX_OPERATIONS);
        // one more runs, untracked
        let extra = ops.start(1_000, "import", "y", "bytes").unwrap();
        extra.progress().set(5, 5);
        assert_eq!(ops.get(1_000).unwrap_err().code(), ErrorCode::NotFound);
        assert_eq!(lock(&ops.table).len(), MAX_OPERATIONS);
        drop(guards);
        assert!(lock(&ops.table).is_empty());
    }
}
