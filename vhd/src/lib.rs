//! VHD v1 format library: fixed, dynamic and differencing images as Hyper-V and
//! `qemu-img -f vpc` write and read them.
//!
//! * Pure on-disk structures, one module each: [`footer`], [`header`], [`locator`],
//!   [`bat`], [`bitmap`], [`geometry`], [`checksum`].
//! * [`storage`]: the byte store under an image (trait, local file, memory).
//! * [`Image`]: open/read/write/flush/block status, concurrent (`&self`) I/O, metadata kept
//!   in memory and written at flush in crash-safe order (docs/design/001).
//! * [`create`], [`chain`] (parent resolution), [`check`], [`ops`] (expand, compact,
//!   merge, convert), [`fuzz`] (entry points shared by cargo-fuzz and property tests).
//!
//! No async runtime: callers run I/O on their own threads.

pub mod bat;
pub mod bitmap;
pub mod chain;
pub mod check;
pub mod checksum;
pub mod create;
pub mod error;
pub mod footer;
pub mod fuzz;
pub mod geometry;
pub mod header;
pub mod image;
pub mod locator;
pub mod ops;
pub mod storage;

pub use chain::{MAX_CHAIN_DEPTH, ParentResolver, PathResolver};
pub use error::{Error, FormatError, Result};
pub use footer::{DiskType, Footer, MAX_VIRTUAL_SIZE};
pub use header::{DEFAULT_BLOCK_SIZE, DynamicHeader};
pub use image::{Extent, ExtentKind, Image, OpenOptions};
pub use storage::{FileStorage, MemStorage, Storage};

/// Progress callback of long operations: `(done, total)` in operation-specific units.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Sector size of the format.
pub const SECTOR: u64 = 512;
