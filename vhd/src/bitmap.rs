//! Sector bitmaps of blocks: bit for sector i of a block is byte i/8, mask 0x80 >> (i%8)
//! (most significant bit first). Pure bit arithmetic used by the differencing read/write
//! paths and by check/compact/merge.

/// True when sector `i` is marked present.
pub fn get(bm: &[u8], i: u32) -> bool {
    bm.get((i / 8) as usize)
        .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
}

/// Marks sectors `start..end` present (bits past the slice are ignored).
pub fn set_range(bm: &mut [u8], start: u32, end: u32) {
    let mut i = start;
    while i < end {
        let byte = (i / 8) as usize;
        if i.is_multiple_of(8) && end - i >= 8 {
            // whole bytes at a time for long runs
            let whole = ((end - i) / 8) as usize;
            let stop = (byte + whole).min(bm.len());
            if byte < stop {
                bm[byte..stop].fill(0xFF);
            }
            i += (whole * 8) as u32;
            continue;
        }
        if let Some(b) = bm.get_mut(byte) {
            *b |= 0x80 >> (i % 8);
        }
        i += 1;
    }
}

/// True when sectors `start..end` are all present.
pub fn all_set(bm: &[u8], start: u32, end: u32) -> bool {
    (start..end).all(|i| get(bm, i))
}

/// True when the first `sectors` bits are all set.
pub fn is_full(bm: &[u8], sectors: u32) -> bool {
    let whole = (sectors / 8) as usize;
    if bm.len() < sectors.div_ceil(8) as usize {
        return false;
    }
    bm[..whole].iter().all(|&b| b == 0xFF) && all_set(bm, (whole * 8) as u32, sectors)
}

/// True when none of the first `sectors` bits is set.
pub fn is_empty(bm: &[u8], sectors: u32) -> bool {
    (0..sectors).all(|i| !get(bm, i))
}

/// Splits sectors `start..end` into maximal runs of equal bits: (first, end, present).
pub fn runs(bm: &[u8], start: u32, end: u32) -> Vec<(u32, u32, bool)> {
    let mut out: Vec<(u32, u32, bool)> = Vec::new();
    let mut i = start;
    while i < end {
        let v = get(bm, i);
        let mut j = i + 1;
        while j < end && get(bm, j) == v {
            j += 1;
        }
        out.push((i, j, v));
        i = j;
    }
    out
}

/// A full bitmap (all sectors present) of `bytes` bytes for `sectors` sectors; bits past
/// `sectors` are set too, as Hyper-V and qemu write them.
pub fn full(bytes: usize) -> Vec<u8> {
    vec![0xFF; bytes]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msb_first() {
        let mut bm = vec![0u8; 4];
        set_range(&mut bm, 0, 1);
        assert_eq!(bm[0], 0x80);
        set_range(&mut bm, 9, 20);
        assert_eq!(bm[1], 0x7F);
        assert_eq!(bm[2], 0xF0);
        assert!(all_set(&bm, 9, 20));
        assert!(!all_set(&bm, 8, 20));
        assert_eq!(
            runs(&bm, 0, 24),
            vec![(0, 1, true), (1, 9, false), (9, 20, true), (20, 24, false)]
        );
    }

    #[test]
    fn full_and_empty() {
        let mut bm = vec![0u8; 512];
        assert!(is_empty(&bm, 4096));
        set_range(&mut bm, 0, 4096);
        assert!(is_full(&bm, 4096));
    }
}
