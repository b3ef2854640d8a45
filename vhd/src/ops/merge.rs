//! Merge a differencing child into its parent: every sector present in the child is
//! written into the parent (opened read-write, expanded first when the child is larger),
//! then the parent is flushed. [`merge_into`] works on two opened images over any
//! storage (the cluster volume merges extent files with it); [`merge`] is the file form,
//! which opens both from paths and removes the child file unless asked to keep it. The
//! parent keeps its unique id: children of the merged child are not relinked.
//!
//! Crash safety: only sectors the child has are written, with the bytes the child shows
//! there, so until the child is removed every reader of the child sees what it saw before
//! (the child's own sectors shadow the parent's).

use crate::error::{Error, Result};
use crate::footer::DiskType;
use crate::image::{Image, OpenOptions};
use crate::{Progress, bitmap};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    pub keep_child: bool,
    /// Parent path overriding the child's locators.
    pub parent: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    pub parent: PathBuf,
    pub blocks_merged: u64,
    pub bytes_merged: u64,
    pub child_removed: bool,
}

/// What [`merge_into`] copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeCount {
    pub blocks_merged: u64,
    pub bytes_merged: u64,
}

/// Merges the child image at `child_path` into its parent.
pub fn merge(child_path: &Path, opts: &MergeOptions, progress: Progress<'_>) -> Result<MergeStats> {
    let child = Image::open(
        child_path,
        &OpenOptions {
            read_only: true,
            parent: opts.parent.clone(),
        },
    )?;
    if child.disk_type() != DiskType::Differencing {
        return Err(Error::WrongDiskType {
            needed: "differencing",
            found: child.disk_type().name(),
        });
    }
    let parent_path = child
        .parent()
        .and_then(|p| p.path().map(Path::to_path_buf))
        .ok_or_else(|| Error::Invalid("parent has no file path".into()))?;
    let mut parent = Image::open(
        &parent_path,
        &OpenOptions {
            read_only: false,
            parent: None,
        },
    )?;
    let n = merge_into(&child, &mut parent, progress)?;
    parent.close()?;
    drop(child);
    let mut stats = MergeStats {
        parent: parent_path,
        blocks_merged: n.blocks_merged,
        bytes_merged: n.bytes_merged,
        child_removed: false,
    };
    if !opts.keep_child {
        std::fs::remove_file(child_path).map_err(|e| Error::Path(child_path.to_path_buf(), e))?;
        stats.child_removed = true;
    }
    Ok(stats)
}

/// A run of sectors the child has: (virtual offset, length, offset in its storage).
type Range = (u64, u64, u64);

/// The runs the child has, and its number of allocated blocks.
fn present_ranges(child: &Image) -> Result<(Vec<Range>, u64)> {
    let d = child.dyn_ref()?;
    let bms = d
        .bitmaps
        .as_ref()
        .ok_or_else(|| Error::Invalid("child has no bitmaps".into()))?;
    let spb = d.sectors_per_block();
    let mut out = Vec::new();
    let mut blocks = 0u64;
    for b in 0..d.bat.len() as u32 {
        let Some(data_off) = d.data_offset(b) else {
            continue;
        };
        blocks += 1;
        let bm = bms.get(b);
        let base = u64::from(b) << d.block_shift;
        for (s0, s1, present) in bitmap::runs(&bm, 0, spb) {
            let start = base + u64::from(s0) * 512;
            let end = (base + u64::from(s1) * 512).min(child.virtual_size());
            if present && start < end {
                out.push((start, end - start, data_off + (start - base)));
            }
        }
    }
    Ok((out, blocks))
}

/// Writes every sector present in `child` (a differencing image) into `parent` (its
/// parent, opened read-write), expanding the parent first when the child is larger, and
/// flushes the parent. The child is only read. Progress counts bytes.
pub fn merge_into(child: &Image, parent: &mut Image, progress: Progress<'_>) -> Result<MergeCount> {
    if child.disk_type() != DiskType::Differencing {
        return Err(Error::WrongDiskType {
            needed: "differencing",
            found: child.disk_type().name(),
        });
    }
    let d = child.dyn_ref()?;
    if d.header.parent_uuid != parent.footer().uuid {
        return Err(Error::Invalid(format!(
            "{} is not the parent of {}: its id {} is not the child's parent id {}",
            parent.identity(),
            child.identity(),
            parent.footer().uuid,
            d.header.parent_uuid
        )));
    }
    crate::check::ensure_sound(parent)?;
    if child.virtual_size() > parent.virtual_size() {
        parent.expand(child.virtual_size())?;
    }
    let (ranges, blocks) = present_ranges(child)?;
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let mut done = 0u64;
    let mut buf = Vec::new();
    for (at, len, src) in ranges {
        progress(done, total);
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(super::COPY_CHUNK as u64) as usize;
            buf.resize(n, 0);
            child.storage.read_at(&mut buf, src + off)?;
            parent.write_at(&buf, at + off)?;
            off += n as u64;
            done += n as u64;
        }
    }
    parent.flush()?;
    progress(total, total);
    Ok(MergeCount {
        blocks_merged: blocks,
        bytes_merged: total,
    })
}
