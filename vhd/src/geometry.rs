//! CHS geometry of the footer, computed with the algorithm of the VHD specification's
//! appendix (the same as qemu's and blktap's). It rounds down: the footer's current size
//! stays the authoritative disk size for our images.

/// Cylinders, heads, sectors per track as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

/// Largest CHS the format can express (65535 x 16 x 255 sectors).
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

impl Geometry {
    /// Spec algorithm for a disk of `size` bytes.
    pub fn for_size(size: u64) -> Geometry {
        let mut total = size / 512;
        if total > MAX_CHS_SECTORS {
            total = MAX_CHS_SECTORS;
        }
        let (spt, heads, cth);
        if total >= 65535 * 16 * 63 {
            spt = 255u64;
            heads = 16u64;
            cth = total / spt;
        } else {
            let mut s = 17u64;
            let mut c = total / s;
            let mut h = c.div_ceil(1024).max(4);
            if c >= h * 1024 || h > 16 {
                s = 31;
                h = 16;
                c = total / s;
            }
            if c >= h * 1024 {
                s = 63;
                h = 16;
                c = total / s;
            }
            spt = s;
            heads = h;
            cth = c;
        }
        let cylinders = (cth / heads).min(u64::from(u16::MAX));
        Geometry {
            cylinders: u16::try_from(cylinders).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(16),
            sectors_per_track: u8::try_from(spt).unwrap_or(255),
        }
    }

    /// Capacity in bytes the geometry describes.
    pub fn capacity(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track) * 512
    }

    pub fn from_u32(v: u32) -> Geometry {
        Geometry {
            cylinders: (v >> 16) as u16,
            heads: (v >> 8) as u8,
            sectors_per_track: v as u8,
        }
    }

    pub fn to_u32(self) -> u32 {
        (u32::from(self.cylinders) << 16)
            | (u32::from(self.heads) << 8)
            | u32::from(self.sectors_per_track)
    }

    /// True for the "use the current size" marker geometry 65535/16/255.
    pub fn is_max(&self) -> bool {
        self.cylinders == 65535 && self.heads == 16 && self.sectors_per_track == 255
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gib_rounds_down_like_the_spec() {
        let g = Geometry::for_size(1 << 30);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (2080, 16, 63));
        assert_eq!(g.capacity(), 1_073_479_680);
    }

    #[test]
    fn small_and_huge() {
        let g = Geometry::for_size(8 << 20);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (240, 4, 17));
        let g = Geometry::for_size(4 << 20);
        assert_eq!((g.cylinders, g.heads, g.sectors_per_track), (120, 4, 17));
        let g = Geometry::for_size(127 << 30);
        assert_eq!(
            (g.cylinders, g.heads, g.sectors_per_track),
            (65278, 16, 255)
        );
        let g = Geometry::for_size(2040 << 30);
        assert!(g.is_max());
    }

    #[test]
    fn u32_round_trip() {
        let g = Geometry {
            cylinders: 65278,
            heads: 16,
            sectors_per_track: 255,
        };
        assert_eq!(Geometry::from_u32(g.to_u32()), g);
    }
}
