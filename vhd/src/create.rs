//! Creating images: fixed (sparse or preallocated), dynamic (BAT padded so block data is
//! 4 KiB-aligned) and differencing (parent UUID, time stamp, UTF-16BE name, `W2ku` and
//! `W2ru` locators whose data follows the BAT). Creator `win ` 10.0, host `Wi2k`, size
//! exact, CHS per the spec algorithm.

use crate::bat;
use crate::chain::relative_path;
use crate::error::{Error, FormatError, Result};
use crate::footer::{DiskType, Footer, MAX_VIRTUAL_SIZE, unix_to_vhd, vhd_now};
use crate::header::{
    DEFAULT_BLOCK_SIZE, DynamicHeader, HEADER_SIZE, bitmap_size, validate_block_size,
};
use crate::image::DATA_ALIGN;
use crate::image::{Image, OpenOptions};
use crate::locator::{
    LocatorEntry, PLATFORM_W2KU, PLATFORM_W2RU, encode_parent_name, encode_windows_path,
};
use crate::storage::{FileStorage, Storage};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// Offset of the dynamic header in images we create.
pub const HEADER_OFFSET: u64 = 512;
/// Offset of the BAT in images we create (as qemu and Hyper-V).
pub const TABLE_OFFSET: u64 = HEADER_OFFSET + HEADER_SIZE as u64;

/// Options for a new fixed or dynamic image.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub disk_type: DiskType,
    pub size: u64,
    pub block_size: u32,
    /// Fixed images: allocate the data on disk (fallocate) instead of a sparse file.
    pub preallocate: bool,
    pub uuid: Option<Uuid>,
    pub timestamp: Option<u32>,
}

impl CreateOptions {
    pub fn new(disk_type: DiskType, size: u64) -> CreateOptions {
        CreateOptions {
            disk_type,
            size,
            block_size: DEFAULT_BLOCK_SIZE,
            preallocate: false,
            uuid: None,
            timestamp: None,
        }
    }
}

/// What a differencing child records about its parent.
#[derive(Debug, Clone)]
pub struct ParentInfo {
    pub uuid: Uuid,
    pub virtual_size: u64,
    /// Parent modification time, VHD epoch.
    pub timestamp: u32,
    /// Parent unicode name (we store the file name).
    pub name: String,
    /// `W2ku` locator: absolute path.
    pub absolute: Option<String>,
    /// `W2ru` locator: path relative to the child (`.\name`).
    pub relative: Option<String>,
}

fn validate_size(size: u64) -> Result<()> {
    if size > MAX_VIRTUAL_SIZE {
        return Err(FormatError::SizeTooLarge {
            size,
            limit: MAX_VIRTUAL_SIZE,
        }
        .into());
    }
    if !size.is_multiple_of(512) {
        return Err(FormatError::SizeNotSectorAligned(size).into());
    }
    if size == 0 {
        return Err(Error::Invalid("size must be greater than zero".into()));
    }
    Ok(())
}

/// Writes a fixed image of `size` bytes (sparse: the data area is a hole).
pub fn create_fixed(storage: &dyn Storage, opts: &CreateOptions) -> Result<Footer> {
    validate_size(opts.size)?;
    let footer = Footer::new(
        DiskType::Fixed,
        opts.size,
        opts.timestamp.unwrap_or_else(vhd_now),
        opts.uuid.unwrap_or_else(Uuid::new_v4),
    );
    storage.set_len(opts.size)?;
    storage.write_at(&footer.encode(), opts.size)?;
    storage.flush()?;
    Ok(footer)
}

/// Writes the metadata of a dynamic or differencing image: footer copy, header, locator
/// data, then the BAT, whose entry count is raised so the BAT ends exactly where the
/// trailing footer (and so the first block) goes, at the position that makes block data
/// 4 KiB-aligned. qemu places new blocks at the BAT end, so it lands on the same aligned
/// position and never leaves our old footer inside a block (notes D.4 item 6).
fn write_sparse(
    storage: &dyn Storage,
    footer: &Footer,
    mut header: DynamicHeader,
    locators: &[(u32, Vec<u8>)],
) -> Result<()> {
    let mut pos = TABLE_OFFSET;
    let mut loc_writes = Vec::new();
    for (i, (code, data)) in locators.iter().enumerate() {
        let space = (data.len() as u64).next_multiple_of(512).max(512);
        header.locators[i] = LocatorEntry {
            platform_code: *code,
            data_space: (space / 512) as u32,
            data_length: data.len() as u32,
            data_offset: pos,
        };
        loc_writes.push((pos, data));
        pos += space;
    }
    header.table_offset = pos;
    let align = DATA_ALIGN.min(u64::from(header.block_size));
    let footer_pos = crate::image::place_block(
        pos + header.bat_bytes(),
        u64::from(bitmap_size(header.block_size)),
        align,
    );
    let padded = (footer_pos - pos) / 4;
    if padded <= crate::header::MAX_TABLE_ENTRIES {
        header.max_table_entries = padded as u32;
    }
    storage.set_len(0)?;
    storage.write_at(&footer.encode(), 0)?;
    storage.write_at(&header.encode(), HEADER_OFFSET)?;
    for (off, data) in loc_writes {
        let mut buf = data.clone();
        buf.resize(buf.len().next_multiple_of(512).max(512), 0);
        storage.write_at(&buf, off)?;
    }
    let entries = vec![bat::UNALLOCATED; header.max_table_entries as usize];
    storage.write_at(&bat::encode(&entries), header.table_offset)?;
    storage.write_at(&footer.encode(), footer_pos)?;
    storage.flush()?;
    Ok(())
}

fn table_entries(size: u64, block_size: u32) -> Result<u32> {
    let n = size.div_ceil(u64::from(block_size));
    if n > crate::header::MAX_TABLE_ENTRIES {
        return Err(FormatError::TableTooLarge {
            entries: n,
            limit: crate::header::MAX_TABLE_ENTRIES,
        }
        .into());
    }
    Ok(n as u32)
}

/// Writes an empty dynamic image.
pub fn create_dynamic(storage: &dyn Storage, opts: &CreateOptions) -> Result<Footer> {
    validate_size(opts.size)?;
    validate_block_size(opts.block_size)?;
    let footer = Footer::new(
        DiskType::Dynamic,
        opts.size,
        opts.timestamp.unwrap_or_else(vhd_now),
        opts.uuid.unwrap_or_else(Uuid::new_v4),
    );
    let header = DynamicHeader::new(
        TABLE_OFFSET,
        table_entries(opts.size, opts.block_size)?,
        opts.block_size,
    );
    write_sparse(storage, &footer, header, &[])?;
    Ok(footer)
}

/// Writes an empty differencing image over `parent`.
pub fn create_differencing(
    storage: &dyn Storage,
    parent: &ParentInfo,
    block_size: u32,
    uuid: Option<Uuid>,
) -> Result<Footer> {
    validate_size(parent.virtual_size)?;
    validate_block_size(block_size)?;
    let footer = Footer::new(
        DiskType::Differencing,
        parent.virtual_size,
        vhd_now(),
        uuid.unwrap_or_else(Uuid::new_v4),
    );
    let mut header = DynamicHeader::new(
        TABLE_OFFSET,
        table_entries(parent.virtual_size, block_size)?,
        block_size,
    );
    header.parent_uuid = parent.uuid;
    header.parent_timestamp = parent.timestamp;
    header.parent_name = encode_parent_name(&parent.name);
    let mut locs = Vec::new();
    if let Some(a) = &parent.absolute {
        locs.push((PLATFORM_W2KU, encode_windows_path(a)));
    }
    if let Some(r) = &parent.relative {
        locs.push((PLATFORM_W2RU, encode_windows_path(r)));
    }
    write_sparse(storage, &footer, header, &locs)?;
    Ok(footer)
}

/// Creates a fixed or dynamic image file (refuses to overwrite an existing file).
pub fn create_file(path: &Path, opts: &CreateOptions) -> Result<Footer> {
    let fs = create_new(path)?;
    let r = match opts.disk_type {
        DiskType::Fixed => {
            let r = create_fixed(&fs, opts);
            if r.is_ok() && opts.preallocate {
                fs.preallocate(0, opts.size + 512)
                    .map_err(|e| Error::io("preallocate", e))?;
                fs.flush()?;
            }
            r
        }
        DiskType::Dynamic => create_dynamic(&fs, opts),
        DiskType::Differencing => Err(Error::Invalid("use create_differencing_file".into())),
    };
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

fn create_new(path: &Path) -> Result<FileStorage> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::Path(path.to_path_buf(), e))?;
    Ok(FileStorage::new(f))
}

/// Creates a differencing image file over the image at `parent_path` (opened to check it,
/// chain included). Parent time stamp: the parent file's modification time, as the spec
/// asks and Windows and blktap record.
pub fn create_differencing_file(
    path: &Path,
    parent_path: &Path,
    block_size: Option<u32>,
) -> Result<Footer> {
    let parent = Image::open(
        parent_path,
        &OpenOptions {
            read_only: true,
            parent: None,
        },
    )?;
    let canon = std::fs::canonicalize(parent_path)
        .map_err(|e| Error::Path(parent_path.to_path_buf(), e))?;
    let mtime = std::fs::metadata(&canon)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(vhd_now, |d| unix_to_vhd(d.as_secs()));
    let name = canon
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let child_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| std::path::PathBuf::from("."), Path::to_path_buf);
    let child_dir =
        std::fs::canonicalize(&child_dir).map_err(|e| Error::Path(child_dir.clone(), e))?;
    let rel = relative_path(&child_dir, &canon);
    let rel = rel.to_string_lossy();
    let relative = if rel.starts_with("..") {
        rel.into_owned()
    } else {
        format!("./{rel}")
    };
    let info = ParentInfo {
        uuid: parent.footer().uuid,
        virtual_size: parent.virtual_size(),
        timestamp: mtime,
        name,
        absolute: Some(canon.to_string_lossy().into_owned()),
        relative: Some(relative),
    };
    let bs = block_size
        .or(parent.block_size())
        .unwrap_or(DEFAULT_BLOCK_SIZE);
    let fs = create_new(path)?;
    let r = create_differencing(&fs, &info, bs, None);
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Opens a freshly created in-memory image (tests and tools).
pub fn create_mem(opts: &CreateOptions) -> Result<Image> {
    let m = Arc::new(crate::storage::MemStorage::new());
    match opts.disk_type {
        DiskType::Fixed => create_fixed(m.as_ref(), opts)?,
        _ => create_dynamic(m.as_ref(), opts)?,
    };
    Image::open_storage(m, false, "memory", &crate::chain::NoParents)
}
