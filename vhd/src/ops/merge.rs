//! Merge a differencing child into its parent: every sector present in the child is
//! written into the parent (opened read-write, expanded first when the child is larger),
//! the parent is flushed, then the child file is removed unless asked to keep it. The
//! parent keeps its unique id: children of the merged child are not relinked.

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
    crate::check::ensure_sound(&parent)?;
    if child.virtual_size() > parent.virtual_size() {
        parent.expand(child.virtual_size())?;
    }
    let d = child.dyn_ref()?;
    let bms = d
        .bitmaps
        .as_ref()
        .ok_or_else(|| Error::Invalid("child has no bitmaps".into()))?;
    let spb = d.sectors_per_block();
    let allocated: Vec<u32> = (0..d.bat.len() as u32)
        .filter(|&b| d.data_offset(b).is_some())
        .collect();
    let mut stats = MergeStats {
        parent: parent_path.clone(),
        ..Default::default()
    };
    let mut buf = Vec::new();
    for (i, &b) in allocated.iter().enumerate() {
        progress(i as u64, allocated.len() as u64);
        let Some(data_off) = d.data_offset(b) else {
            continue;
        };
        let bm = bms.get(b);
        let base = u64::from(b) << d.block_shift;
        for (s0, s1, present) in bitmap::runs(&bm, 0, spb) {
            if !present {
                continue;
            }
            let start = base + u64::from(s0) * 512;
            let end = (base + u64::from(s1) * 512).min(child.virtual_size());
            let mut at = start;
            while at < end {
                let n = (end - at).min(super::COPY_CHUNK as u64) as usize;
                buf.resize(n, 0);
                child.storage.read_at(&mut buf, data_off + (at - base))?;
                parent.write_at(&buf, at)?;
                at += n as u64;
                stats.bytes_merged += n as u64;
            }
        }
        stats.blocks_merged += 1;
    }
    parent.flush()?;
    parent.close()?;
    progress(allocated.len() as u64, allocated.len() as u64);
    drop(child);
    if !opts.keep_child {
        std::fs::remove_file(child_path).map_err(|e| Error::Path(child_path.to_path_buf(), e))?;
        stats.child_removed = true;
    }
    Ok(stats)
}
