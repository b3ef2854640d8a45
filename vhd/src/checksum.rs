//! The VHD checksum: one's complement of the byte sum of a structure with its checksum
//! field taken as zero (footer and dynamic header use the same algorithm).

/// Checksum of `bytes`, treating the 4 bytes at `field` as zero.
pub fn checksum(bytes: &[u8], field: usize) -> u32 {
    let mut sum: u32 = 0;
    for (i, b) in bytes.iter().enumerate() {
        if !(field..field + 4).contains(&i) {
            sum = sum.wrapping_add(u32::from(*b));
        }
    }
    !sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_checksum_is_all_ones() {
        assert_eq!(checksum(&[0u8; 512], 64), u32::MAX);
    }

    #[test]
    fn checksum_field_is_ignored() {
        let mut a = [7u8; 512];
        let c1 = checksum(&a, 64);
        a[64..68].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(checksum(&a, 64), c1);
        assert_eq!(c1, !(7u32 * 508));
    }
}
