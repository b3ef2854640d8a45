//! The 512-byte hard disk footer: at the end of every image, plus a copy at offset 0 of
//! dynamic and differencing images. Pure parse/encode; every field validated before use.

use crate::checksum::checksum;
use crate::error::{FormatError, Structure};
use crate::geometry::Geometry;
use uuid::Uuid;

pub const FOOTER_SIZE: usize = 512;
pub const FOOTER_COOKIE: [u8; 8] = *b"conectix";
/// Features: bit 1 is reserved and always set.
pub const FEATURES_RESERVED: u32 = 0x2;
pub const FORMAT_VERSION: u32 = 0x0001_0000;
/// Largest virtual size: qemu's `VHD_MAX_SECTORS` (0xff000000 sectors, 2040 GiB).
pub const MAX_VIRTUAL_SIZE: u64 = 0xff00_0000 * 512;
/// Seconds between 1970-01-01 and the VHD epoch 2000-01-01 UTC.
pub const VHD_EPOCH_UNIX: u64 = 946_684_800;
/// Creator application we write (so every qemu version and Hyper-V use the current size).
pub const CREATOR_APP: [u8; 4] = *b"win ";
/// Creator version we write: 10.0, as Windows 10 and later.
pub const CREATOR_VERSION: u32 = 0x000A_0000;
/// Creator host OS: Windows.
pub const CREATOR_HOST_WINDOWS: [u8; 4] = *b"Wi2k";
const CHECKSUM_AT: usize = 64;

/// Disk type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub fn code(self) -> u32 {
        match self {
            DiskType::Fixed => 2,
            DiskType::Dynamic => 3,
            DiskType::Differencing => 4,
        }
    }

    pub fn from_code(code: u32) -> Result<DiskType, FormatError> {
        match code {
            2 => Ok(DiskType::Fixed),
            3 => Ok(DiskType::Dynamic),
            4 => Ok(DiskType::Differencing),
            other => Err(FormatError::BadDiskType(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

impl std::fmt::Display for DiskType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed footer. `data_offset` is `None` for fixed disks (all ones on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footer {
    pub features: u32,
    pub data_offset: Option<u64>,
    pub timestamp: u32,
    pub creator_app: [u8; 4],
    pub creator_version: u32,
    pub creator_host_os: [u8; 4],
    pub original_size: u64,
    pub current_size: u64,
    pub geometry: Geometry,
    pub disk_type: DiskType,
    pub uuid: Uuid,
    pub saved_state: bool,
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

pub(crate) fn arr4(b: &[u8], at: usize) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    a
}

impl Footer {
    /// A new footer for an image we create (creator `win ` 10.0, host `Wi2k`).
    pub fn new(disk_type: DiskType, size: u64, timestamp: u32, uuid: Uuid) -> Footer {
        Footer {
            features: FEATURES_RESERVED,
            data_offset: match disk_type {
                DiskType::Fixed => None,
                _ => Some(512),
            },
            timestamp,
            creator_app: CREATOR_APP,
            creator_version: CREATOR_VERSION,
            creator_host_os: CREATOR_HOST_WINDOWS,
            original_size: size,
            current_size: size,
            geometry: Geometry::for_size(size),
            disk_type,
            uuid,
            saved_state: false,
        }
    }

    /// Parses and validates 512 footer bytes (cookie, checksum, version, type, sizes).
    pub fn parse(b: &[u8]) -> Result<Footer, FormatError> {
        if b.len() < FOOTER_SIZE {
            return Err(FormatError::Truncated {
                structure: Structure::Footer,
                need: FOOTER_SIZE,
                got: b.len(),
            });
        }
        let b = &b[..FOOTER_SIZE];
        let mut cookie = [0u8; 8];
        cookie.copy_from_slice(&b[0..8]);
        if cookie != FOOTER_COOKIE {
            return Err(FormatError::BadCookie {
                structure: Structure::Footer,
                found: cookie,
            });
        }
        let stored = be32(b, CHECKSUM_AT);
        let computed = checksum(b, CHECKSUM_AT);
        if stored != computed {
            return Err(FormatError::BadChecksum {
                structure: Structure::Footer,
                stored,
                computed,
            });
        }
        let version = be32(b, 12);
        if version >> 16 != 1 {
            return Err(FormatError::UnsupportedVersion {
                structure: Structure::Footer,
                version,
            });
        }
        let disk_type = DiskType::from_code(be32(b, 60))?;
        let raw_offset = be64(b, 16);
        let data_offset = match disk_type {
            // Fixed disks store all ones; the spec text says 0xFFFFFFFF, accept both.
            DiskType::Fixed => None,
            _ => {
                if raw_offset == u64::MAX || !raw_offset.is_multiple_of(512) || raw_offset < 512 {
                    return Err(FormatError::BadDataOffset(raw_offset));
                }
                Some(raw_offset)
            }
        };
        let current_size = be64(b, 48);
        if current_size > MAX_VIRTUAL_SIZE {
            return Err(FormatError::SizeTooLarge {
                size: current_size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[68..84]);
        Ok(Footer {
            features: be32(b, 8),
            data_offset,
            timestamp: be32(b, 24),
            creator_app: arr4(b, 28),
            creator_version: be32(b, 32),
            creator_host_os: arr4(b, 36),
            original_size: be64(b, 40),
            current_size,
            geometry: Geometry::from_u32(be32(b, 56)),
            disk_type,
            uuid: Uuid::from_bytes(uuid),
            saved_state: b[84] == 1,
        })
    }

    /// Encodes with a fresh checksum; reserved bytes zero.
    pub fn encode(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        b[0..8].copy_from_slice(&FOOTER_COOKIE);
        b[8..12].copy_from_slice(&self.features.to_be_bytes());
        b[12..16].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.unwrap_or(u64::MAX).to_be_bytes());
        b[24..28].copy_from_slice(&self.timestamp.to_be_bytes());
        b[28..32].copy_from_slice(&self.creator_app);
        b[32..36].copy_from_slice(&self.creator_version.to_be_bytes());
        b[36..40].copy_from_slice(&self.creator_host_os);
        b[40..48].copy_from_slice(&self.original_size.to_be_bytes());
        b[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        b[56..60].copy_from_slice(&self.geometry.to_u32().to_be_bytes());
        b[60..64].copy_from_slice(&self.disk_type.code().to_be_bytes());
        b[68..84].copy_from_slice(self.uuid.as_bytes());
        b[84] = u8::from(self.saved_state);
        let c = checksum(&b, CHECKSUM_AT);
        b[64..68].copy_from_slice(&c.to_be_bytes());
        b
    }

    /// Creator application as text, e.g. `win `, `vpc `, `qem2`.
    pub fn creator_app_str(&self) -> String {
        self.creator_app
            .iter()
            .map(|&c| {
                if c.is_ascii_graphic() || c == b' ' {
                    c as char
                } else {
                    '.'
                }
            })
            .collect()
    }

    /// The size qemu (>= 10) reports: the CHS capacity for creators `vpc ` and `qemu`
    /// unless the geometry is the maximum marker, the current size otherwise. Reported for
    /// information; this library always uses `current_size` (see docs/design/002).
    pub fn qemu_size(&self) -> u64 {
        let chs_creator = &self.creator_app == b"vpc " || &self.creator_app == b"qemu";
        if chs_creator && !self.geometry.is_max() {
            self.geometry.capacity()
        } else {
            self.current_size
        }
    }
}

/// Current time in the VHD epoch (seconds since 2000-01-01 UTC), saturating.
pub fn vhd_now() -> u32 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    unix_to_vhd(unix)
}

/// Unix seconds to VHD epoch seconds (clamped to the 32-bit field).
pub fn unix_to_vhd(unix: u64) -> u32 {
    u32::try_from(unix.saturating_sub(VHD_EPOCH_UNIX)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let f = Footer::new(DiskType::Dynamic, 8 << 20, 12345, Uuid::from_u128(42));
        let b = f.encode();
        assert_eq!(Footer::parse(&b).unwrap(), f);
        let mut bad = b;
        bad[100] ^= 1;
        assert!(matches!(
            Footer::parse(&bad),
            Err(FormatError::BadChecksum { .. })
        ));
    }

    #[test]
    fn fixed_has_all_ones_data_offset() {
        let f = Footer::new(DiskType::Fixed, 1 << 20, 0, Uuid::nil());
        let b = f.encode();
        assert_eq!(be64(&b, 16), u64::MAX);
    }
}
