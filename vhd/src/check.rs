//! Consistency check of an image (as `qemu-img check` reports for other formats):
//! structural corruption (what open refuses, overlapping blocks, footer copies), leaked
//! space (gaps between blocks larger than alignment padding, e.g. after a crash between
//! an allocation and the next flush, a deallocation or a BAT relocation) and warnings.

use crate::error::{Error, Result};
use crate::footer::DiskType;
use crate::image::{Image, OpenOptions, place_block};
use std::path::Path;

/// Exit status of `csvadm image check` (qemu-img's convention).
pub const EXIT_CLEAN: i32 = 0;
pub const EXIT_CORRUPT: i32 = 2;
pub const EXIT_LEAKS: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Corruption,
    Leak,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    pub leaked_bytes: u64,
    pub allocated_blocks: u64,
    pub total_blocks: u64,
}

impl CheckReport {
    fn add(&mut self, severity: Severity, message: impl Into<String>) {
        self.findings.push(Finding {
            severity,
            message: message.into(),
        });
    }

    pub fn corruptions(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Corruption)
            .count()
    }

    pub fn leaks(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Leak)
            .count()
    }

    /// 0 clean, 2 corruption, 3 leaks only.
    pub fn exit_code(&self) -> i32 {
        if self.corruptions() > 0 {
            EXIT_CORRUPT
        } else if self.leaks() > 0 {
            EXIT_LEAKS
        } else {
            EXIT_CLEAN
        }
    }
}

/// Checks the image file at `path`. Problems that prevent opening become corruption
/// findings; only failures to reach the file are errors.
pub fn check_path(path: &Path, parent: Option<&Path>) -> Result<CheckReport> {
    let opts = OpenOptions {
        read_only: true,
        parent: parent.map(Path::to_path_buf),
    };
    match Image::open(path, &opts) {
        Ok(img) => Ok(check_image(&img)),
        Err(e @ Error::Path(..)) => Err(e),
        Err(e) => {
            let mut r = CheckReport::default();
            r.add(Severity::Corruption, format!("cannot open: {e}"));
            Ok(r)
        }
    }
}

/// Checks an open image.
pub fn check_image(img: &Image) -> CheckReport {
    let mut r = CheckReport::default();
    for w in img.warnings() {
        let sev = if w.starts_with("no valid footer") {
            Severity::Corruption
        } else {
            Severity::Warning
        };
        r.add(sev, w.clone());
    }
    let Some(d) = img.dynamic.as_ref() else {
        return r;
    };
    if img.footer.disk_type == DiskType::Differencing && img.parent.is_none() {
        r.add(Severity::Corruption, "differencing image without parent");
    }
    let span = d.block_span();
    let mut blocks: Vec<(u64, u32)> = (0..d.bat.len() as u32)
        .filter_map(|b| d.data_offset(b).map(|o| (o - u64::from(d.bitmap_bytes), b)))
        .collect();
    r.total_blocks = d.bat.len() as u64;
    r.allocated_blocks = blocks.len() as u64;
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        if w[0].0 + span > w[1].0 {
            r.add(
                Severity::Corruption,
                format!(
                    "blocks {} and {} overlap (offsets {:#x}, {:#x})",
                    w[0].1, w[1].1, w[0].0, w[1].0
                ),
            );
        }
    }
    let footer_pos = d.lock_alloc().footer_pos;
    let leaked = leaked_space(d, &blocks, footer_pos);
    if leaked > 0 {
        r.leaked_bytes = leaked;
        r.add(
            Severity::Leak,
            format!("{leaked} bytes of leaked space (compact reclaims it)"),
        );
    }
    if let (Ok(len), true) = (img.storage.len(), footer_pos % 512 != 0) {
        r.add(
            Severity::Warning,
            format!("trailing footer at unaligned offset {footer_pos:#x} (file length {len})"),
        );
    }
    r
}

/// Fails with [`Error::Corrupt`] when a check of `img` finds corruption (blocks that
/// overlap each other, ...): operations that move or add blocks refuse such images, they
/// would spread the damage.
pub fn ensure_sound(img: &Image) -> Result<()> {
    let r = check_image(img);
    match r
        .findings
        .iter()
        .find(|f| f.severity == Severity::Corruption)
    {
        Some(f) => Err(Error::Corrupt(f.message.clone())),
        None => Ok(()),
    }
}

/// Bytes in gaps between used regions after the first block, beyond the padding block
/// placement would add. The gap between the metadata and the first block is the BAT's
/// reserve (Hyper-V pads its BAT this way), not a leak.
pub(crate) fn leaked_space(d: &crate::image::Dyn, blocks: &[(u64, u32)], footer_pos: u64) -> u64 {
    let span = d.block_span();
    let first = blocks.first().map_or(footer_pos, |b| b.0);
    let mut regions: Vec<(u64, u64)> = blocks.iter().map(|&(s, _)| (s, s + span)).collect();
    regions.extend(d.meta.iter().filter(|m| m.0 >= first).map(|m| (m.0, m.1)));
    regions.push((footer_pos, footer_pos + 512));
    regions.sort_unstable();
    let mut leaked = 0;
    let mut prev_end = first;
    for (s, e) in regions {
        if s > prev_end {
            let padding = place_block(prev_end, u64::from(d.bitmap_bytes), d.align) - prev_end;
            leaked += (s - prev_end).saturating_sub(padding);
        }
        prev_end = prev_end.max(e);
    }
    leaked
}
