//! Convert between raw, fixed and dynamic: the source (a raw file or any VHD, chains
//! flattened) is copied chunk by chunk; holes (block status) and all-zero chunks are
//! skipped, so raw and fixed outputs are sparse files and dynamic outputs allocate only
//! blocks with data.

use crate::create::{CreateOptions, create_dynamic, create_fixed};
use crate::error::{Error, Result};
use crate::footer::{DiskType, FOOTER_COOKIE, FOOTER_SIZE, Footer};
use crate::image::{ExtentKind, Image, OpenOptions, is_zero};
use crate::storage::{FileStorage, Storage};
use crate::{Progress, ops::COPY_CHUNK};
use std::path::Path;
use std::sync::Arc;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertTarget {
    Raw,
    Fixed,
    Dynamic { block_size: u32 },
}

/// Input format (probed when not given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Raw,
    Vpc,
}

/// A convert source.
#[derive(Debug)]
pub enum Source {
    Vhd(Box<Image>),
    Raw { storage: FileStorage, size: u64 },
}

impl Source {
    pub fn size(&self) -> u64 {
        match self {
            Source::Vhd(i) => i.virtual_size(),
            Source::Raw { size, .. } => *size,
        }
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        match self {
            Source::Vhd(i) => i.read_at(buf, off),
            Source::Raw { storage, .. } => Ok(storage.read_at(buf, off)?),
        }
    }

    /// Data extents within `off..off+len`, as (offset, length).
    fn data_ranges(&self, off: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        match self {
            Source::Raw { .. } => Ok(vec![(off, len)]),
            Source::Vhd(i) => {
                let mut out = Vec::new();
                let mut at = off;
                for e in i.block_status(off, len)? {
                    if e.kind == ExtentKind::Data {
                        out.push((at, e.length));
                    }
                    at += e.length;
                }
                Ok(out)
            }
        }
    }
}

/// The format of the file at `path`: VHD when it has a valid footer at its end or a
/// dynamic/differencing footer copy at offset 0; raw when neither place holds the footer
/// cookie. A cookie with a footer that does not parse is an error (a damaged VHD must
/// not be copied as if its bytes were the disk; `SourceFormat::Raw` forces that).
pub fn probe(path: &Path) -> Result<SourceFormat> {
    let fs = FileStorage::open(path, true).map_err(|e| Error::Path(path.to_path_buf(), e))?;
    let len = fs.len()?;
    if len < FOOTER_SIZE as u64 {
        return Ok(SourceFormat::Raw);
    }
    let mut tail = [0u8; FOOTER_SIZE];
    fs.read_at(&mut tail, len - FOOTER_SIZE as u64)?;
    let tail_err = match Footer::parse(&tail) {
        Ok(_) => return Ok(SourceFormat::Vpc),
        Err(e) => e,
    };
    let mut head = [0u8; FOOTER_SIZE];
    fs.read_at(&mut head, 0)?;
    match Footer::parse(&head) {
        Ok(f) if f.disk_type != DiskType::Fixed => Ok(SourceFormat::Vpc),
        Ok(_) | Err(_) if tail[..8] == FOOTER_COOKIE => Err(Error::NoFooter(tail_err)),
        Err(e) if head[..8] == FOOTER_COOKIE => Err(Error::NoFooter(e)),
        _ => Ok(SourceFormat::Raw),
    }
}

/// Opens a convert source read-only.
pub fn open_source(
    path: &Path,
    format: Option<SourceFormat>,
    parent: Option<&Path>,
) -> Result<Source> {
    let format = match format {
        Some(f) => f,
        None => probe(path)?,
    };
    match format {
        SourceFormat::Vpc => {
            let opts = OpenOptions {
                read_only: true,
                parent: parent.map(Path::to_path_buf),
            };
            Ok(Source::Vhd(Box::new(Image::open(path, &opts)?)))
        }
        SourceFormat::Raw => {
            let storage =
                FileStorage::open(path, true).map_err(|e| Error::Path(path.to_path_buf(), e))?;
            let size = storage.len()?;
            Ok(Source::Raw { storage, size })
        }
    }
}

/// Copies `src` into a new file `dst` of the target format. `dst` must not exist; it is
/// removed again on failure.
pub fn convert(
    src: &Source,
    dst: &Path,
    target: ConvertTarget,
    progress: Progress<'_>,
) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::Path(dst.to_path_buf(), e))?;
    let r = convert_into(src, Arc::new(FileStorage::new(file)), dst, target, progress);
    if r.is_err() {
        let _ = std::fs::remove_file(dst);
    }
    r
}

fn convert_into(
    src: &Source,
    storage: Arc<FileStorage>,
    dst: &Path,
    target: ConvertTarget,
    progress: Progress<'_>,
) -> Result<()> {
    let size = src.size();
    // VHD sizes are whole sectors; a raw source of odd length is padded with zeros.
    let vhd_size = size.next_multiple_of(512);
    let image = match target {
        ConvertTarget::Raw => {
            storage.set_len(size)?;
            None
        }
        ConvertTarget::Fixed => {
            create_fixed(
                storage.as_ref(),
                &CreateOptions::new(DiskType::Fixed, vhd_size),
            )?;
            Some(Image::open_storage(
                storage.clone(),
                false,
                &dst.display().to_string(),
                &crate::chain::NoParents,
            )?)
        }
        ConvertTarget::Dynamic { block_size } => {
            let mut o = CreateOptions::new(DiskType::Dynamic, vhd_size);
            o.block_size = block_size;
            create_dynamic(storage.as_ref(), &o)?;
            Some(Image::open_storage(
                storage.clone(),
                false,
                &dst.display().to_string(),
                &crate::chain::NoParents,
            )?)
        }
    };
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(COPY_CHUNK as u64);
        for (at, len) in src.data_ranges(off, n)? {
            let b = &mut buf[..len as usize];
            src.read_at(b, at)?;
            if is_zero(b) {
                continue;
            }
            match &image {
                Some(img) => img.write_at(b, at)?,
                None => storage.write_at(b, at)?,
            }
        }
        off += n;
        progress(off, size);
    }
    match image {
        Some(img) => img.close()?,
        None => storage.flush()?,
    }
    progress(size, size);
    Ok(())
}
