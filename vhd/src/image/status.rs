//! Block status: which ranges hold data and which are holes (read as zero, unallocated),
//! merged over a differencing chain (a sector absent from a child takes the parent's
//! status). Granularity: one block for dynamic images, one sector in differencing blocks.

use super::Image;
use crate::bat::UNALLOCATED;
use crate::error::Result;

/// Kind of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Allocated somewhere in the chain.
    Data,
    /// Unallocated in the whole chain: reads as zero.
    Hole,
    /// Allocated but known to be zero (not reported by this implementation today).
    Zero,
}

/// A run of bytes of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub kind: ExtentKind,
}

fn push(out: &mut Vec<Extent>, length: u64, kind: ExtentKind) {
    if length == 0 {
        return;
    }
    match out.last_mut() {
        Some(last) if last.kind == kind => last.length += length,
        _ => out.push(Extent { length, kind }),
    }
}

impl Image {
    /// Extents covering `offset..offset+len` exactly, adjacent extents of one kind merged.
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out = Vec::new();
        self.status_into(offset, len, &mut out)?;
        Ok(out)
    }

    fn status_into(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        let Some(d) = &self.dynamic else {
            push(out, len, ExtentKind::Data);
            return Ok(());
        };
        super::io::chunks(offset, len, d.block_shift, |block, in_block, pos, n| {
            let abs = offset + pos as u64;
            let n = n as u64;
            if d.entry(block) == UNALLOCATED {
                return self.parent_status(abs, n, out);
            }
            let runs = match &d.bitmaps {
                None => None,
                Some(bm) => bm.runs(
                    block,
                    (in_block / 512) as u32,
                    (in_block + n).div_ceil(512) as u32,
                ),
            };
            let Some(runs) = runs else {
                push(out, n, ExtentKind::Data);
                return Ok(());
            };
            for (s0, s1, present) in runs {
                let a = (u64::from(s0) * 512).max(in_block);
                let b = (u64::from(s1) * 512).min(in_block + n);
                if present {
                    push(out, b - a, ExtentKind::Data);
                } else {
                    self.parent_status(abs + (a - in_block), b - a, out)?;
                }
            }
            Ok(())
        })
    }

    fn parent_status(&self, offset: u64, len: u64, out: &mut Vec<Extent>) -> Result<()> {
        let Some(p) = &self.parent else {
            push(out, len, ExtentKind::Hole);
            return Ok(());
        };
        let inside = p.size.saturating_sub(offset).min(len);
        if inside > 0 {
            p.status_into(offset, inside, out)?;
        }
        push(out, len - inside, ExtentKind::Hole);
        Ok(())
    }
}
