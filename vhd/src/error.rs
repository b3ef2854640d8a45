//! Error types: `FormatError` for the pure on-disk structure parsers and `Error` for
//! everything that touches storage (open, I/O, chains, operations). Variants are typed so
//! callers and tests can match on the exact failure.

use std::path::PathBuf;

/// Which on-disk structure a format error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    Footer,
    DynamicHeader,
    ParentLocator,
    Bat,
    Bitmap,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Structure::Footer => "footer",
            Structure::DynamicHeader => "dynamic disk header",
            Structure::ParentLocator => "parent locator",
            Structure::Bat => "block allocation table",
            Structure::Bitmap => "sector bitmap",
        })
    }
}

/// A malformed on-disk structure (pure parse and validation functions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("{structure}: need {need} bytes, got {got}")]
    Truncated {
        structure: Structure,
        need: usize,
        got: usize,
    },
    #[error("{structure}: bad cookie {found:?}")]
    BadCookie {
        structure: Structure,
        found: [u8; 8],
    },
    #[error("{structure}: bad checksum (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        structure: Structure,
        stored: u32,
        computed: u32,
    },
    #[error("{structure}: unsupported version {version:#010x}")]
    UnsupportedVersion { structure: Structure, version: u32 },
    #[error("footer: unsupported disk type {0}")]
    BadDiskType(u32),
    #[error("footer: data offset {0:#x} is invalid for this disk type")]
    BadDataOffset(u64),
    #[error("virtual size {size} is too large (limit {limit} bytes)")]
    SizeTooLarge { size: u64, limit: u64 },
    #[error("virtual size {0} is not a multiple of 512")]
    SizeNotSectorAligned(u64),
    #[error("dynamic header: block size {0} is not a power of two")]
    BlockSizeNotPowerOfTwo(u32),
    #[error("dynamic header: block size {size} outside {min}..={max}")]
    BlockSizeOutOfRange { size: u32, min: u32, max: u32 },
    #[error("dynamic header: {entries} table entries exceed the limit {limit}")]
    TableTooLarge { entries: u64, limit: u64 },
    #[error("dynamic header: {entries} blocks of {block_size} bytes cannot hold {size} bytes")]
    TableTooSmall {
        entries: u32,
        block_size: u32,
        size: u64,
    },
    #[error("dynamic header: table offset {0:#x} is invalid")]
    BadTableOffset(u64),
    #[error("parent locator {index}: {reason}")]
    BadLocator { index: usize, reason: &'static str },
    #[error("parent name is not valid UTF-16")]
    BadParentName,
}

/// Any failure of the image layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{context}: {source}")]
    IoAt {
        context: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("file is truncated: {what} needs {need} bytes, file has {len}")]
    Truncated {
        what: &'static str,
        need: u64,
        len: u64,
    },
    #[error("file has no valid footer at its end ({0}) nor a usable copy at offset 0")]
    NoFooter(FormatError),
    #[error("BAT entry {block} points at sector {sector:#x}, past the data end {end:#x}")]
    BatEntryOutOfRange { block: u32, sector: u32, end: u64 },
    #[error("BAT entry {block} (offset {offset:#x}) overlaps {what}")]
    BatOverlapsMetadata {
        block: u32,
        offset: u64,
        what: &'static str,
    },
    #[error("parent chain loops back to {0}")]
    ParentLoop(String),
    #[error("parent chain is deeper than {0} images")]
    ChainTooDeep(usize),
    #[error("parent {path}: unique id {found} does not match the child's parent id {expected}")]
    ParentUuidMismatch {
        path: String,
        expected: uuid::Uuid,
        found: uuid::Uuid,
    },
    #[error("parent of differencing image not found (tried: {0})")]
    ParentNotFound(String),
    #[error("image is read-only")]
    ReadOnly,
    #[error("request {offset}+{len} is past the virtual size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("image file would exceed the 32-bit sector offsets of the BAT")]
    ImageFull,
    #[error("operation needs a {needed} image, this one is {found}")]
    WrongDiskType {
        needed: &'static str,
        found: &'static str,
    },
    #[error("new size {new} is smaller than the current size {current}")]
    Shrink { new: u64, current: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("image is corrupt ({0}); `csvadm image check` lists the findings")]
    Corrupt(String),
    #[error("image is unusable after an earlier metadata write failure")]
    Poisoned,
    #[error("image {0} is already open for writing (another export or csvadm command)")]
    Locked(PathBuf),
    #[error("path {0}: {1}")]
    Path(PathBuf, std::io::Error),
}

impl Error {
    /// Wraps an I/O error with a short context ("write BAT sector 3").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::IoAt {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
