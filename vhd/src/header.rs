//! The 1024-byte dynamic disk header (`cxsparse`) of dynamic and differencing images:
//! table offset, block size, max table entries, parent UUID/time stamp/name and the eight
//! parent locator entries. Pure parse/encode with validation of every field.

use crate::checksum::checksum;
use crate::error::{FormatError, Structure};
use crate::footer::{be32, be64};
use crate::locator::LocatorEntry;
pub use crate::locator::PARENT_NAME_BYTES;
use uuid::Uuid;

pub const HEADER_SIZE: usize = 1024;
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// Default block size (2 MiB) as Hyper-V and qemu write.
pub const DEFAULT_BLOCK_SIZE: u32 = 2 << 20;
/// Smallest block size accepted (one sector).
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size accepted (bounds the per-block bitmap and copy buffers).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
/// Largest BAT accepted: 8 Mi entries (32 MiB in memory), enough for 2040 GiB at 256 KiB
/// blocks. Larger counts are refused before anything is allocated.
pub const MAX_TABLE_ENTRIES: u64 = 8 << 20;
pub const LOCATOR_COUNT: usize = 8;
const CHECKSUM_AT: usize = 36;

/// A parsed dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    pub table_offset: u64,
    pub max_table_entries: u32,
    pub block_size: u32,
    pub parent_uuid: Uuid,
    pub parent_timestamp: u32,
    /// Raw UTF-16 code units of the parent name (big-endian on disk), trailing NULs cut.
    pub parent_name: Vec<u16>,
    pub locators: [LocatorEntry; LOCATOR_COUNT],
}

/// Validates a block size: power of two within the accepted range.
pub fn validate_block_size(block_size: u32) -> Result<(), FormatError> {
    if !block_size.is_power_of_two() {
        return Err(FormatError::BlockSizeNotPowerOfTwo(block_size));
    }
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(FormatError::BlockSizeOutOfRange {
            size: block_size,
            min: MIN_BLOCK_SIZE,
            max: MAX_BLOCK_SIZE,
        });
    }
    Ok(())
}

/// Size of a block's sector bitmap on disk: one bit per sector, padded to a sector.
pub fn bitmap_size(block_size: u32) -> u32 {
    let sectors = block_size / 512;
    sectors.div_ceil(8).div_ceil(512) * 512
}

impl DynamicHeader {
    /// A header for a new image.
    pub fn new(table_offset: u64, max_table_entries: u32, block_size: u32) -> DynamicHeader {
        DynamicHeader {
            table_offset,
            max_table_entries,
            block_size,
            parent_uuid: Uuid::nil(),
            parent_timestamp: 0,
            parent_name: Vec::new(),
            locators: Default::default(),
        }
    }

    /// Parses and validates 1024 header bytes. Does not check the table against a
    /// virtual size or file length (the image layer does, it knows both).
    pub fn parse(b: &[u8]) -> Result<DynamicHeader, FormatError> {
        if b.len() < HEADER_SIZE {
            return Err(FormatError::Truncated {
                structure: Structure::DynamicHeader,
                need: HEADER_SIZE,
                got: b.len(),
            });
        }
        let b = &b[..HEADER_SIZE];
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&b[0..8]);
        if cookie != HEADER_COOKIE {
            return Err(FormatError::BadCookie {
                structure: Structure::DynamicHeader,
                found: cookie,
            });
        }
        let stored = be32(b, CHECKSUM_AT);
        let computed = checksum(b, CHECKSUM_AT);
        if stored != computed {
            return Err(FormatError::BadChecksum {
                structure: Structure::DynamicHeader,
                stored,
                computed,
            });
        }
        let version = be32(b, 24);
        if version != HEADER_VERSION {
            return Err(FormatError::UnsupportedVersion {
                structure: Structure::DynamicHeader,
                version,
            });
        }
        let table_offset = be64(b, 16);
        if !table_offset.is_multiple_of(512) || table_offset < 512 || table_offset == u64::MAX {
            return Err(FormatError::BadTableOffset(table_offset));
        }
        let max_table_entries = be32(b, 28);
        if u64::from(max_table_entries) > MAX_TABLE_ENTRIES {
            return Err(FormatError::TableTooLarge {
                entries: u64::from(max_table_entries),
                limit: MAX_TABLE_ENTRIES,
            });
        }
        let block_size = be32(b, 32);
        validate_block_size(block_size)?;
        let mut parent_uuid = [0u8; 16];
        parent_uuid.copy_from_slice(&b[40..56]);
        let mut parent_name: Vec<u16> = b[64..64 + PARENT_NAME_BYTES]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect();
        while parent_name.last() == Some(&0) {
            parent_name.pop();
        }
        let mut locators: [LocatorEntry; LOCATOR_COUNT] = Default::default();
        for (i, loc) in locators.iter_mut().enumerate() {
            let at = 576 + i * 24;
            *loc = LocatorEntry::parse(&b[at..at + 24]);
        }
        Ok(DynamicHeader {
            table_offset,
            max_table_entries,
            block_size,
            parent_uuid: Uuid::from_bytes(parent_uuid),
            parent_timestamp: be32(b, 56),
            parent_name,
            locators,
        })
    }

    /// Encodes with a fresh checksum.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&HEADER_COOKIE);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        b[16..24].copy_from_slice(&self.table_offset.to_be_bytes());
        b[24..28].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        b[28..32].copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[32..36].copy_from_slice(&self.block_size.to_be_bytes());
        b[40..56].copy_from_slice(self.parent_uuid.as_bytes());
        b[56..60].copy_from_slice(&self.parent_timestamp.to_be_bytes());
        for (i, unit) in self
            .parent_name
            .iter()
            .take(PARENT_NAME_BYTES / 2)
            .enumerate()
        {
            b[64 + 2 * i..66 + 2 * i].copy_from_slice(&unit.to_be_bytes());
        }
        for (i, loc) in self.locators.iter().enumerate() {
            let at = 576 + i * 24;
            b[at..at + 24].copy_from_slice(&loc.encode());
        }
        let c = checksum(&b, CHECKSUM_AT);
        b[36..40].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Parent name decoded lossily (unpaired surrogates become U+FFFD).
    pub fn parent_name_string(&self) -> String {
        String::from_utf16_lossy(&self.parent_name)
    }

    /// Bytes of the BAT, rounded up to a sector.
    pub fn bat_bytes(&self) -> u64 {
        (u64::from(self.max_table_entries) * 4).div_ceil(512) * 512
    }

    /// Validates the table against a virtual size: enough entries to cover it.
    pub fn check_covers(&self, size: u64) -> Result<(), FormatError> {
        if u64::from(self.max_table_entries) * u64::from(self.block_size) < size {
            return Err(FormatError::TableTooSmall {
                entries: self.max_table_entries,
                block_size: self.block_size,
                size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut h = DynamicHeader::new(1536, 4, 2 << 20);
        h.parent_uuid = Uuid::from_u128(7);
        h.parent_name = "parent.vhd".encode_utf16().collect();
        let b = h.encode();
        assert_eq!(DynamicHeader::parse(&b).unwrap(), h);
    }

    #[test]
    fn rejects_bad_block_size_and_huge_table() {
        let mut h = DynamicHeader::new(1536, 4, 3 << 20);
        assert!(matches!(
            DynamicHeader::parse(&h.encode()),
            Err(FormatError::BlockSizeNotPowerOfTwo(_))
        ));
        h.block_size = 2 << 20;
        h.max_table_entries = u32::MAX;
        assert!(matches!(
            DynamicHeader::parse(&h.encode()),
            Err(FormatError::TableTooLarge { .. })
        ));
    }

    #[test]
    fn bitmap_sizes() {
        assert_eq!(bitmap_size(2 << 20), 512);
        assert_eq!(bitmap_size(512), 512);
        assert_eq!(bitmap_size(4 << 20), 1024);
    }
}
