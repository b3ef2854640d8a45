//! The cluster volume's data plane (docs/design/040, 041): how a node touches the shared
//! LUN and how VHD files live on it. No Raft, no daemon: the metadata side plugs in
//! through small traits.
//!
//! * [`path`]: the [`LunPath`] trait and its backends ([`FilePath`], [`NbdPath`]), with
//!   [`PathError`] telling path failures from media errors and fencing.
//! * [`layout`], [`superblock`]: where things are on the LUN; `format` and `read`.
//! * [`checkpoint`]: the two-slot metadata checkpoint region.
//! * [`extent_map`], [`extent_file`]: VHD files as extent-mapped files implementing
//!   `vhd::Storage`, growing from an [`ExtentSource`], committing through an
//!   [`ExtentMapSink`], every write gated by a [`WriteFence`] ([`hooks`]).
//! * [`nonblocking`]: the scope in which an extent file never blocks its thread.
//! * [`failpoint`]: named cut points for the process-level safety tests.
//! * [`testing`]: test tooling (in-memory LUN, fault injection, a simple pool).
//! * [`fuzz`]: entry points of the fuzz targets.

pub mod checkpoint;
mod classify;
pub mod extent_file;
pub mod extent_map;
pub mod failpoint;
pub mod fuzz;
pub mod hooks;
pub mod layout;
mod le;
pub mod nonblocking;
pub mod path;
pub mod superblock;
mod sys;
pub mod testing;

pub use extent_file::{
    DEFAULT_FENCE_WAIT, ExtentError, ExtentFile, ReadAccess, WriteAccess, is_would_block,
};
pub use extent_map::{ExtentMap, ExtentRun};
pub use hooks::{
    ExtentMapSink, ExtentSource, FenceError, Grant, MapUpdate, OpenFence, SinkError, SourceError,
    WriteFence,
};
pub use layout::Layout;
pub use path::{
    ErrorClass, FileOptions, FilePath, LunPath, NbdOptions, NbdPath, NbdTarget, NoGate, PathError,
    WriteGate, Writer, wait_quiet,
};
pub use superblock::{FormatParams, Superblock};

/// The class of an I/O error that came out of this crate (through `vhd::Storage`), if
/// it carries a [`PathError`] or [`ExtentError`].
pub fn error_class(e: &std::io::Error) -> Option<ErrorClass> {
    let inner = e.get_ref()?;
    if let Some(p) = inner.downcast_ref::<PathError>() {
        return Some(p.class());
    }
    inner.downcast_ref::<ExtentError>().map(ExtentError::class)
}

/// The errno an NBD server should answer for an I/O error of this crate (EIO for
/// anything it does not know).
pub fn errno(e: &std::io::Error) -> i32 {
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.get_ref() {
        Some(inner) => {
            if let Some(p) = inner.downcast_ref::<PathError>() {
                p.errno()
            } else if let Some(x) = inner.downcast_ref::<ExtentError>() {
                x.errno()
            } else {
                libc::EIO
            }
        }
        None => libc::EIO,
    }
}
