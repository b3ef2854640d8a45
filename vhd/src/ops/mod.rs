//! Offline operations on images: expand (grow the virtual size, relocating the BAT when
//! its region is full), compact (deallocate zero blocks, reclaim leaked space in place),
//! merge (a differencing child into its parent) and convert (raw/fixed/dynamic, chains
//! flattened). Each writes in crash-safe order with flushes between the steps.

mod compact;
mod convert;
mod expand;
mod merge;

pub use compact::CompactStats;
pub use convert::{ConvertTarget, Source, SourceFormat, convert, open_source};
pub use merge::{MergeCount, MergeOptions, MergeStats, merge, merge_into};

/// Unit of copy loops (reads and writes of this many bytes at most).
pub const COPY_CHUNK: usize = 2 << 20;
