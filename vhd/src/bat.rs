//! The block allocation table: `max_table_entries` big-endian u32 sector offsets of each
//! block's bitmap, `0xFFFFFFFF` for an unallocated block. Pure parse/encode plus the
//! sector arithmetic around BAT sectors.

use crate::error::{FormatError, Structure};

/// BAT value of an unallocated block.
pub const UNALLOCATED: u32 = 0xFFFF_FFFF;
/// Entries in one 512-byte BAT sector.
pub const ENTRIES_PER_SECTOR: u32 = 128;

/// Parses `entries` BAT values from `b` (which must hold at least `entries * 4` bytes).
pub fn parse(b: &[u8], entries: u32) -> Result<Vec<u32>, FormatError> {
    let need = entries as usize * 4;
    if b.len() < need {
        return Err(FormatError::Truncated {
            structure: Structure::Bat,
            need,
            got: b.len(),
        });
    }
    Ok(b[..need]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Encodes BAT values, padded with `0xFF` to a whole sector (as qemu and Hyper-V do).
pub fn encode(entries: &[u32]) -> Vec<u8> {
    let len = (entries.len() * 4).div_ceil(512) * 512;
    let mut b = vec![0xFFu8; len];
    for (i, e) in entries.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&e.to_be_bytes());
    }
    b
}

/// BAT sector index holding `block`'s entry.
pub fn sector_of(block: u32) -> u32 {
    block / ENTRIES_PER_SECTOR
}

/// Range of blocks whose entries live in BAT sector `sector`, clipped to `entries`.
pub fn blocks_in_sector(sector: u32, entries: u32) -> std::ops::Range<u32> {
    let start = sector.saturating_mul(ENTRIES_PER_SECTOR).min(entries);
    let end = start.saturating_add(ENTRIES_PER_SECTOR).min(entries);
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding() {
        let v = vec![1, UNALLOCATED, 0x1234_5678];
        let b = encode(&v);
        assert_eq!(b.len(), 512);
        assert!(b[12..].iter().all(|&x| x == 0xFF));
        assert_eq!(parse(&b, 3).unwrap(), v);
        assert!(parse(&b[..8], 3).is_err());
    }

    #[test]
    fn sectors() {
        assert_eq!(sector_of(127), 0);
        assert_eq!(sector_of(128), 1);
        assert_eq!(blocks_in_sector(1, 200), 128..200);
    }
}
