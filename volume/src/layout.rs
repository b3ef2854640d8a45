//! The LUN layout as pure arithmetic (docs/design/040 §2, 041 §2): where the superblock
//! copies, the checkpoint slots and the extents are, with the limits every field must
//! respect. No I/O.

/// Size of one superblock copy.
pub const SUPERBLOCK_SIZE: u64 = 4096;
/// The checkpoint region starts here.
pub const CHECKPOINT_OFFSET: u64 = 1 << 20;
/// The data area starts at a multiple of this.
pub const DATA_ALIGN: u64 = 1 << 20;
pub const MIN_EXTENT_SIZE: u64 = 1 << 20;
pub const MAX_EXTENT_SIZE: u64 = 4 << 30;
pub const DEFAULT_EXTENT_SIZE: u64 = 64 << 20;
pub const MIN_SLOT_SIZE: u64 = 1 << 20;
pub const MAX_SLOT_SIZE: u64 = 1 << 30;
pub const DEFAULT_SLOT_SIZE: u64 = 64 << 20;
/// Most extents a volume may have (keeps every extent index a valid u32 for catalogs).
pub const MAX_EXTENT_COUNT: u64 = 1 << 32;
/// Number of checkpoint slots.
pub const CHECKPOINT_SLOTS: usize = 2;
/// Bytes a checkpoint header takes at the start of its slot (the payload follows,
/// 4 KiB-aligned).
pub const CHECKPOINT_HEADER_SIZE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("extent size {0} is not a power of two between 1 MiB and 4 GiB")]
    ExtentSize(u64),
    #[error("checkpoint slot size {0} is not a multiple of 1 MiB between 1 MiB and 1 GiB")]
    SlotSize(u64),
    #[error("LUN of {size} bytes is too small: this layout needs at least {need}")]
    LunTooSmall { size: u64, need: u64 },
    #[error("checkpoint region at {0} is not 4 KiB-aligned after the superblock")]
    CheckpointOffset(u64),
    #[error(
        "data offset {data_offset} is not 1 MiB-aligned at or after the checkpoint end {checkpoint_end}"
    )]
    DataOffset {
        data_offset: u64,
        checkpoint_end: u64,
    },
    #[error("extent count {0} is zero or above the limit")]
    ExtentCount(u64),
    #[error("extents end at {end}, past the backup superblock at {backup}")]
    ExtentsOverlapBackup { end: u64, backup: u64 },
}

/// Where everything is on a formatted LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    /// LUN size at format.
    pub lun_size: u64,
    pub extent_size: u64,
    pub extent_count: u64,
    pub data_offset: u64,
    pub checkpoint_offset: u64,
    pub checkpoint_slot_size: u64,
}

/// Offset of the backup superblock of a LUN of `lun_size` bytes.
pub fn backup_offset(lun_size: u64) -> Option<u64> {
    (lun_size - lun_size % SUPERBLOCK_SIZE).checked_sub(SUPERBLOCK_SIZE)
}

pub fn validate_extent_size(extent_size: u64) -> Result<(), LayoutError> {
    if extent_size.is_power_of_two() && (MIN_EXTENT_SIZE..=MAX_EXTENT_SIZE).contains(&extent_size) {
        Ok(())
    } else {
        Err(LayoutError::ExtentSize(extent_size))
    }
}

pub fn validate_slot_size(slot: u64) -> Result<(), LayoutError> {
    if slot.is_multiple_of(MIN_SLOT_SIZE) && (MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&slot) {
        Ok(())
    } else {
        Err(LayoutError::SlotSize(slot))
    }
}

impl Layout {
    /// The layout `format` writes on a LUN of `lun_size` bytes: as many whole extents as
    /// fit between the data offset and the backup superblock.
    pub fn plan(lun_size: u64, extent_size: u64, slot_size: u64) -> Result<Layout, LayoutError> {
        validate_extent_size(extent_size)?;
        validate_slot_size(slot_size)?;
        let checkpoint_end = CHECKPOINT_OFFSET + 2 * slot_size;
        let data_offset = checkpoint_end.next_multiple_of(DATA_ALIGN);
        let need = data_offset + extent_size + SUPERBLOCK_SIZE;
        let backup = backup_offset(lun_size).ok_or(LayoutError::LunTooSmall {
            size: lun_size,
            need,
        })?;
        if backup < data_offset + extent_size {
            return Err(LayoutError::LunTooSmall {
                size: lun_size,
                need,
            });
        }
        let extent_count = ((backup - data_offset) / extent_size).min(MAX_EXTENT_COUNT);
        let l = Layout {
            lun_size,
            extent_size,
            extent_count,
            data_offset,
            checkpoint_offset: CHECKPOINT_OFFSET,
            checkpoint_slot_size: slot_size,
        };
        l.validate()?;
        Ok(l)
    }

    /// Checks every field and that the regions neither overlap nor leave the LUN.
    pub fn validate(&self) -> Result<(), LayoutError> {
        validate_extent_size(self.extent_size)?;
        validate_slot_size(self.checkpoint_slot_size)?;
        if self.checkpoint_offset < SUPERBLOCK_SIZE
            || !self.checkpoint_offset.is_multiple_of(SUPERBLOCK_SIZE)
            || self.checkpoint_offset > MAX_SLOT_SIZE
        {
            return Err(LayoutError::CheckpointOffset(self.checkpoint_offset));
        }
        // Bounded operands (slot ≤ 1 GiB, offset ≤ 1 GiB): no overflow.
        let checkpoint_end = self.checkpoint_offset + 2 * self.checkpoint_slot_size;
        if self.data_offset < checkpoint_end || !self.data_offset.is_multiple_of(DATA_ALIGN) {
            return Err(LayoutError::DataOffset {
                data_offset: self.data_offset,
                checkpoint_end,
            });
        }
        if self.extent_count == 0 || self.extent_count > MAX_EXTENT_COUNT {
            return Err(LayoutError::ExtentCount(self.extent_count));
        }
        let too_small = LayoutError::LunTooSmall {
            size: self.lun_size,
            need: self
                .data_offset
                .saturating_add(self.extent_size.saturating_mul(self.extent_count))
                .saturating_add(SUPERBLOCK_SIZE),
        };
        let backup = backup_offset(self.lun_size).ok_or(too_small.clone())?;
        let end = self
            .extent_count
            .checked_mul(self.extent_size)
            .and_then(|b| b.checked_add(self.data_offset))
            .ok_or(too_small)?;
        if end > backup {
            return Err(LayoutError::ExtentsOverlapBackup { end, backup });
        }
        Ok(())
    }

    /// LUN offset of extent `index`.
    pub fn extent_offset(&self, index: u64) -> Option<u64> {
        (index < self.extent_count).then(|| self.data_offset + index * self.extent_size)
    }

    /// The extent holding LUN offset `off`, and the offset within it.
    pub fn extent_at(&self, off: u64) -> Option<(u64, u64)> {
        let rel = off.checked_sub(self.data_offset)?;
        let index = rel / self.extent_size;
        (index < self.extent_count).then_some((index, rel % self.extent_size))
    }

    /// LUN offset of checkpoint slot `slot` (0 or 1).
    pub fn slot_offset(&self, slot: usize) -> u64 {
        self.checkpoint_offset + slot as u64 * self.checkpoint_slot_size
    }

    /// Offset of the backup superblock.
    pub fn backup_offset(&self) -> u64 {
        backup_offset(self.lun_size).unwrap_or(0)
    }

    /// End of the data area.
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.extent_count * self.extent_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plan_small_and_default() {
        let l = Layout::plan(8 << 20, 1 << 20, 1 << 20).unwrap();
        assert_eq!(l.data_offset, 3 << 20);
        assert_eq!(l.extent_count, 4);
        assert_eq!(l.extent_offset(0), Some(3 << 20));
        assert_eq!(l.extent_offset(4), None);
        assert_eq!(l.backup_offset(), (8 << 20) - 4096);
        let l = Layout::plan(1 << 40, DEFAULT_EXTENT_SIZE, DEFAULT_SLOT_SIZE).unwrap();
        assert_eq!(l.data_offset, 129 << 20);
        assert!(l.data_end() <= l.backup_offset());
        assert!(matches!(
            Layout::plan(4 << 20, 1 << 20, 1 << 20),
            Err(LayoutError::LunTooSmall { .. })
        ));
        assert!(Layout::plan(1 << 30, 3 << 20, 1 << 20).is_err());
        assert!(Layout::plan(1 << 30, 1 << 20, (1 << 20) + 1).is_err());
        assert!(Layout::plan(0, 1 << 20, 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn plan_is_valid_and_regions_disjoint(
            lun in 0u64..(1u64 << 50),
            es_shift in 18u32..34,
            slot_mib in 0u64..1100,
        ) {
            let es = 1u64 << es_shift;
            let slot = slot_mib << 20;
            match Layout::plan(lun, es, slot) {
                Ok(l) => {
                    prop_assert!(l.validate().is_ok());
                    prop_assert!(SUPERBLOCK_SIZE <= l.checkpoint_offset);
                    prop_assert!(l.slot_offset(1) + l.checkpoint_slot_size <= l.data_offset);
                    prop_assert!(l.data_end() <= l.backup_offset());
                    prop_assert!(l.backup_offset() + SUPERBLOCK_SIZE <= lun);
                    // Nothing useful is left: fewer than one more extent fits.
                    prop_assert!(l.backup_offset() - l.data_end() < es);
                }
                Err(_) => {
                    let ok_sizes = validate_extent_size(es).is_ok() && validate_slot_size(slot).is_ok();
                    if ok_sizes {
                        let need = (CHECKPOINT_OFFSET + 2 * slot).next_multiple_of(DATA_ALIGN) + es + SUPERBLOCK_SIZE;
                        prop_assert!(lun < need + SUPERBLOCK_SIZE);
                    }
                }
            }
        }

        #[test]
        fn extent_offsets_round_trip(
            lun in (64u64 << 20)..(1u64 << 44),
            es_shift in 20u32..27,
            idx in any::<u64>(),
            within in any::<u64>(),
        ) {
            let l = Layout::plan(lun, 1 << es_shift, 1 << 20).unwrap();
            match l.extent_offset(idx) {
                Some(off) => {
                    prop_assert!(idx < l.extent_count);
                    let w = within % l.extent_size;
                    prop_assert_eq!(l.extent_at(off + w), Some((idx, w)));
                    prop_assert!(off + l.extent_size <= l.data_end());
                }
                None => prop_assert!(idx >= l.extent_count),
            }
        }
    }
}
