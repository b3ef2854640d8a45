//! The LUN as the node holds it: the path opened from `[volume]` (a file or block device,
//! or an `nbd://` / `nbd+unix://` SAN target) and what the superblock check found.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use csv_api::VolumeId;
use volume::{FileOptions, FilePath, LunPath, NbdOptions, NbdPath, NbdTarget, Superblock};

use super::error::DataError;
use crate::config::VolumeSection;
use crate::state::types::VolumeRecord;

/// Opens the LUN path of `sec` (blocking); every call is bounded by `io_timeout`.
pub fn open_lun(sec: &VolumeSection, io_timeout: Duration) -> Result<Arc<dyn LunPath>, DataError> {
    open_path(sec, io_timeout).map_err(|e| DataError::storage("open LUN", e))
}

fn open_path(sec: &VolumeSection, io_timeout: Duration) -> Result<Arc<dyn LunPath>, String> {
    if sec.lun.starts_with("nbd:") || sec.lun.starts_with("nbd+") {
        let t = NbdTarget::parse(&sec.lun)?;
        let p = NbdPath::connect(
            t,
            NbdOptions {
                io_timeout,
                connections: sec.nbd_connections,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(p))
    } else {
        let path = std::path::Path::new(&sec.lun);
        let block = is_block_device(path);
        let direct = resolve_direct(sec.direct, block);
        if block && !direct {
            tracing::warn!(
                lun = %sec.lun,
                "block device LUN opened without O_DIRECT: another host's writes may be read stale from this host's page cache"
            );
        }
        let p = FilePath::open(
            path,
            FileOptions {
                direct,
                io_timeout,
                ..FileOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(p))
    }
}

/// Whether `path` is a block device (a symlink such as /dev/mapper/x is followed).
fn is_block_device(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// O_DIRECT as configured, else on exactly for block devices.
fn resolve_direct(configured: Option<bool>, block_device: bool) -> bool {
    configured.unwrap_or(block_device)
}

/// What the node knows about the volume.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// Not looked yet, or no record yet.
    Pending(String),
    /// The superblock matches the record.
    Ok(Superblock),
    /// Something is wrong (mismatch, unreadable): attaches are refused.
    Bad(String),
}

/// The open LUN and the check result.
#[derive(Default)]
pub(crate) struct VolumeRt {
    pub(super) lun: Mutex<Option<Arc<dyn LunPath>>>,
    pub(super) check: Mutex<Option<Check>>,
}

/// A volume record made from a superblock.
pub(crate) fn record_of(sb: &Superblock, lun: &str) -> Result<VolumeRecord, DataError> {
    Ok(VolumeRecord {
        id: sb
            .uuid
            .to_string()
            .parse::<VolumeId>()
            .map_err(|e| DataError::Internal(e.to_string()))?,
        lun: lun.chars().take(200).collect(),
        description: sb.label.clone(),
        size: sb.layout.lun_size,
        extent_size: sb.layout.extent_size,
        extent_count: sb.layout.extent_count,
        data_offset: sb.layout.data_offset,
    })
}

pub(super) fn differs(sb: &Superblock, rec: &VolumeRecord) -> Option<String> {
    if sb.uuid.to_string() != rec.id.to_string() {
        return Some(format!(
            "the LUN holds volume {}, the cluster records volume {}",
            sb.uuid, rec.id
        ));
    }
    let l = &sb.layout;
    if l.extent_size != rec.extent_size
        || l.data_offset != rec.data_offset
        || l.extent_count < rec.extent_count
    {
        return Some(format!(
            "superblock layout (extent size {}, data offset {}, {} extents) differs from the record ({}, {}, {})",
            l.extent_size,
            l.data_offset,
            l.extent_count,
            rec.extent_size,
            rec.data_offset,
            rec.extent_count
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_defaults_to_on_for_block_devices_only() {
        assert!(resolve_direct(None, true));
        assert!(!resolve_direct(None, false));
        assert!(resolve_direct(Some(true), false));
        assert!(!resolve_direct(Some(false), true));
        let f = tempfile::NamedTempFile::new().expect("temp file");
        assert!(!is_block_device(f.path()));
        assert!(!is_block_device(std::path::Path::new("/dev/null")));
        assert!(!is_block_device(std::path::Path::new("/nonexistent/lun")));
        // A block device of this host, where /dev shows one (VMs and hosts do).
        let dev = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::path::Path::new("/dev").join(e.file_name()))
            .find(|p| p.exists());
        if let Some(dev) = dev {
            assert!(is_block_device(&dev), "{}", dev.display());
        }
    }
}
