//! Image files as NBD block devices: format detection (VHD footer cookie vs raw) and
//! opening the matching [`BlockDevice`].

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use csv_node::data::file_device::{FileDevice, IoMode};
use nbd::BlockDevice;

use crate::vhd_device::VhdDevice;

/// The VHD footer cookie.
const VHD_COOKIE: &[u8; 8] = b"conectix";
const VHD_FOOTER_LEN: u64 = 512;

/// An image format, chosen on the command line or detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Detect: a VHD footer (cookie "conectix" in the last 512 bytes, or at offset 0
    /// for dynamic and differencing images) means vpc, anything else raw.
    Auto,
    /// The file's bytes are the disk.
    Raw,
    /// Microsoft VHD (fixed, dynamic, differencing), qemu's name for it.
    Vpc,
}

/// Looks for a VHD footer at the end of the file or its copy at the start.
pub fn detect(path: &Path) -> anyhow::Result<Format> {
    let f = File::open(path).with_context(|| format!("open image {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("stat image {}", path.display()))?
        .len();
    if len < VHD_FOOTER_LEN {
        return Ok(Format::Raw);
    }
    let mut cookie = [0u8; 8];
    f.read_exact_at(&mut cookie, len - VHD_FOOTER_LEN)
        .with_context(|| format!("read footer of {}", path.display()))?;
    if &cookie == VHD_COOKIE {
        return Ok(Format::Vpc);
    }
    let mut head = [0u8; 8];
    (&f).read_exact(&mut head)
        .with_context(|| format!("read header of {}", path.display()))?;
    if &head == VHD_COOKIE {
        return Ok(Format::Vpc);
    }
    Ok(Format::Raw)
}

/// Opens `path` as a block device of the given (or detected) format.
pub fn open(
    path: &Path,
    format: Format,
    read_only: bool,
    io_mode: IoMode,
) -> anyhow::Result<(Arc<dyn BlockDevice>, Format)> {
    let format = match format {
        Format::Auto => detect(path)?,
        f => f,
    };
    match format {
        Format::Raw | Format::Auto => {
            let dev = FileDevice::open(path, read_only)
                .with_context(|| format!("open image {}", path.display()))?
                .with_io_mode(io_mode);
            Ok((Arc::new(dev), Format::Raw))
        }
        Format::Vpc => {
            let dev = VhdDevice::open(path, read_only, io_mode)
                .with_context(|| format!("open VHD image {}", path.display()))?;
            tracing::info!(image = %path.display(), disk_type = ?dev.disk_type(), "VHD image");
            Ok((Arc::new(dev), Format::Vpc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_vhd_footer_and_raw() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raw = dir.path().join("raw");
        std::fs::write(&raw, vec![0u8; 4096]).expect("write");
        assert_eq!(detect(&raw).expect("detect"), Format::Raw);
        let fixed = dir.path().join("fixed");
        let mut b = vec![0u8; 4096];
        b[4096 - 512..4096 - 504].copy_from_slice(VHD_COOKIE);
        std::fs::write(&fixed, &b).expect("write");
        assert_eq!(detect(&fixed).expect("detect"), Format::Vpc);
        let dynamic = dir.path().join("dyn");
        let mut b = vec![0u8; 4096];
        b[..8].copy_from_slice(VHD_COOKIE);
        std::fs::write(&dynamic, &b).expect("write");
        assert_eq!(detect(&dynamic).expect("detect"), Format::Vpc);
        let tiny = dir.path().join("tiny");
        std::fs::write(&tiny, b"conectix").expect("write");
        assert_eq!(detect(&tiny).expect("detect"), Format::Raw);
        assert!(detect(&dir.path().join("missing")).is_err());
    }
}
