//! A hook for whoever serves an export to count its requests (metrics): each request a
//! device answered is reported once, with its kind, the bytes it covered, how long the
//! device took and whether it succeeded. The observer is per export and chosen when the
//! export is added, so an implementation can resolve its counters once up front; the
//! call is made on the connection's task, inline: it must be cheap and never block
//! (atomics, no lock, no allocation).

use std::fmt::Debug;
use std::time::Duration;

/// The kind of a request the device served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
}

impl RequestKind {
    /// Every kind, in the order of [`RequestKind::index`].
    pub const ALL: [RequestKind; 7] = [
        RequestKind::Read,
        RequestKind::Write,
        RequestKind::Flush,
        RequestKind::Trim,
        RequestKind::WriteZeroes,
        RequestKind::BlockStatus,
        RequestKind::Cache,
    ];

    /// A dense index (0..7) for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Flush => "flush",
            RequestKind::Trim => "trim",
            RequestKind::WriteZeroes => "write_zeroes",
            RequestKind::BlockStatus => "block_status",
            RequestKind::Cache => "cache",
        }
    }
}

/// Told of every request an export's device answered.
pub trait RequestObserver: Debug + Send + Sync {
    /// One request ended: `bytes` is the length it covered (read and written payload,
    /// trimmed, zeroed or cached range; 0 for flush and block status), `elapsed` the
    /// time from its dispatch to the device's answer.
    fn completed(&self, kind: RequestKind, bytes: u64, elapsed: Duration, ok: bool);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_names_distinct() {
        for (i, k) in RequestKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        let names: std::collections::HashSet<_> =
            RequestKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), RequestKind::ALL.len());
    }
}
