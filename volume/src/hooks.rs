//! The small traits an extent file is plugged into (docs/design/041 §4): where new
//! extents come from ([`ExtentSource`]: later the node's reservation), where committed
//! mappings go ([`ExtentMapSink`]: later a Raft proposal `MapExtents`), and who allows a
//! write ([`WriteFence`]: later the lock manager's fence guard for this VHD and
//! generation).

use crate::extent_map::ExtentRun;

/// Extents handed to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub run: ExtentRun,
    /// Known to read as zero on the LUN (never written since a zeroing format): the file
    /// skips zeroing them.
    pub clean: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("no free extents: {wanted} wanted, {available} available")]
    Exhausted { wanted: u64, available: u64 },
    #[error("extent source: {0}")]
    Other(String),
}

/// Where a growing file takes extents from. Taking is local and fast (no coordinator
/// round trip per block).
pub trait ExtentSource: Send + Sync + std::fmt::Debug {
    /// Exactly `count` extents, in as few runs as the source can; `after` is the file's
    /// last extent, so a source that can continue that run keeps the file contiguous.
    fn take(&self, count: u64, after: Option<u64>) -> Result<Vec<Grant>, SourceError>;
    /// Extents taken but never mapped (their zeroing failed): back to the source.
    fn put_back(&self, grants: &[Grant]);
}

/// A mapping change to commit: the file's whole map and length after the change, and the
/// runs it no longer maps (to be freed by whoever commits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUpdate {
    pub len: u64,
    pub runs: Vec<ExtentRun>,
    pub released: Vec<ExtentRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extent map commit failed: {0}")]
pub struct SinkError(pub String);

/// Where a flushed mapping change is committed. May block (a Raft round trip).
pub trait ExtentMapSink: Send + Sync + std::fmt::Debug {
    fn commit(&self, update: &MapUpdate) -> Result<(), SinkError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fence closed: {0}")]
pub struct FenceError(pub String);

/// Asked immediately before every LUN write of a file opened for writing
/// ([`WriteFence::check`]) and before every LUN read of a file it guards
/// ([`WriteFence::check_read`]).
pub trait WriteFence: Send + Sync + std::fmt::Debug {
    fn check(&self) -> Result<(), FenceError>;

    /// Who writes behind this fence (a VHD's write hold), for a peer that runs the
    /// write on this node's behalf and checks it against its own lock table
    /// (docs/design/070 §5). `None` for fences that stand for no hold.
    fn writer(&self) -> Option<crate::path::Writer> {
        None
    }

    /// May this node still read? (Any hold at a live lease: a node whose lease lapsed
    /// must not read extents that may be given to another VHD meanwhile.)
    fn check_read(&self) -> Result<(), FenceError> {
        self.check()
    }
}

/// A fence that is always open: offline tools holding the volume exclusively
/// (`csvadm volume format/recover`) and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenFence;

impl WriteFence for OpenFence {
    fn check(&self) -> Result<(), FenceError> {
        Ok(())
    }
}
