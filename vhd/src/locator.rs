//! Parent locators of differencing images (the 8 entries of the dynamic header and the
//! path data they point at) and the UTF-16 name handling around them.
//!
//! Writers: we store `W2ku` (absolute path) and `W2ru` (relative `.\name`), UTF-16LE, with
//! the data space in sectors. Readers accept data space in sectors or bytes (blktap's
//! heuristic: below 512 means sectors, a multiple of 512 means bytes) and `MacX` file URLs.

use crate::error::FormatError;
use crate::footer::{be32, be64};

/// Length of the dynamic header's parent unicode name field in bytes (256 UTF-16 code
/// units).
pub const PARENT_NAME_BYTES: usize = 512;

/// Largest locator data we read (a path; Windows paths are far shorter).
pub const MAX_LOCATOR_DATA: u32 = 64 * 1024;

pub const PLATFORM_NONE: u32 = 0;
pub const PLATFORM_W2RU: u32 = u32::from_be_bytes(*b"W2ru");
pub const PLATFORM_W2KU: u32 = u32::from_be_bytes(*b"W2ku");
pub const PLATFORM_MACX: u32 = u32::from_be_bytes(*b"MacX");
pub const PLATFORM_WI2R: u32 = u32::from_be_bytes(*b"Wi2r");
pub const PLATFORM_WI2K: u32 = u32::from_be_bytes(*b"Wi2k");
pub const PLATFORM_MAC: u32 = u32::from_be_bytes(*b"Mac ");

/// One 24-byte parent locator entry of the dynamic header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocatorEntry {
    pub platform_code: u32,
    /// As stored: sectors by the spec, bytes for some Microsoft writers.
    pub data_space: u32,
    pub data_length: u32,
    pub data_offset: u64,
}

impl LocatorEntry {
    /// Parses the 24 raw bytes; no validation (see [`LocatorEntry::validate`]).
    pub fn parse(b: &[u8]) -> LocatorEntry {
        if b.len() < 24 {
            return LocatorEntry::default();
        }
        LocatorEntry {
            platform_code: be32(b, 0),
            data_space: be32(b, 4),
            data_length: be32(b, 8),
            data_offset: be64(b, 16),
        }
    }

    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.platform_code.to_be_bytes());
        b[4..8].copy_from_slice(&self.data_space.to_be_bytes());
        b[8..12].copy_from_slice(&self.data_length.to_be_bytes());
        b[16..24].copy_from_slice(&self.data_offset.to_be_bytes());
        b
    }

    pub fn is_used(&self) -> bool {
        self.platform_code != PLATFORM_NONE
    }

    /// Platform code as text (`W2ru`, ...).
    pub fn platform_str(&self) -> String {
        self.platform_code
            .to_be_bytes()
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

    /// Reserved space in bytes, interpreting the stored value with blktap's heuristic.
    pub fn data_space_bytes(&self) -> Option<u64> {
        let s = u64::from(self.data_space);
        if self.data_space < 512 {
            Some(s * 512)
        } else if self.data_space.is_multiple_of(512) {
            Some(s)
        } else {
            None
        }
    }

    /// Checks a used entry: sane length, sector-aligned offset, data inside `file_len`.
    /// Returns the byte range of the reserved space.
    pub fn validate(&self, index: usize, file_len: u64) -> Result<(u64, u64), FormatError> {
        let bad = |reason| FormatError::BadLocator { index, reason };
        if self.data_length > MAX_LOCATOR_DATA {
            return Err(bad("data length too large"));
        }
        let space = self
            .data_space_bytes()
            .ok_or(bad("data space neither sectors nor bytes"))?;
        let space = space.max(u64::from(self.data_length));
        if !self.data_offset.is_multiple_of(512) {
            return Err(bad("data offset not sector aligned"));
        }
        let end = self
            .data_offset
            .checked_add(space)
            .ok_or(bad("data offset overflows"))?;
        if self.data_offset < 512 || end > file_len {
            return Err(bad("data outside the file"));
        }
        Ok((self.data_offset, end))
    }
}

/// Decodes locator data to a path with `/` separators. `W2ru`/`W2ku`/`Wi2r`/`Wi2k` are
/// UTF-16LE (trailing NULs cut; a UTF-8/ASCII fallback for writers that stored bytes),
/// `MacX` is a UTF-8 `file://` URL.
pub fn decode_path(index: usize, platform: u32, data: &[u8]) -> Result<String, FormatError> {
    let bad = |reason| FormatError::BadLocator { index, reason };
    let text = match platform {
        PLATFORM_W2RU | PLATFORM_W2KU => {
            if !data.len().is_multiple_of(2) {
                return Err(bad("odd UTF-16 data length"));
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
            String::from_utf16(&units[..end]).map_err(|_| bad("invalid UTF-16"))?
        }
        PLATFORM_WI2R | PLATFORM_WI2K => {
            let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
            String::from_utf8(data[..end].to_vec()).map_err(|_| bad("invalid text"))?
        }
        PLATFORM_MACX => {
            let end = data.iter().position(|&c| c == 0).unwrap_or(data.len());
            let url = std::str::from_utf8(&data[..end]).map_err(|_| bad("invalid UTF-8"))?;
            let rest = url
                .strip_prefix("file://")
                .ok_or(bad("MacX locator is not a file URL"))?;
            // file://localhost/path and file:///path
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            percent_decode(rest).ok_or(bad("bad percent escape"))?
        }
        _ => return Err(bad("unsupported platform")),
    };
    if text.is_empty() {
        return Err(bad("empty path"));
    }
    Ok(text.replace('\\', "/"))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a path for a `W2ku`/`W2ru` locator: `/` becomes `\`, UTF-16LE, no NUL.
pub fn encode_windows_path(path: &str) -> Vec<u8> {
    path.replace('/', "\\")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect()
}

/// The parent unicode name field: UTF-16 code units of `name`, at most 256.
pub fn encode_parent_name(name: &str) -> Vec<u16> {
    name.encode_utf16().take(PARENT_NAME_BYTES / 2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_round_trip() {
        let d = encode_windows_path(".\\parent.vhd");
        assert_eq!(decode_path(0, PLATFORM_W2RU, &d).unwrap(), "./parent.vhd");
        let d = encode_windows_path("/tmp/x/p.vhd");
        assert_eq!(decode_path(0, PLATFORM_W2KU, &d).unwrap(), "/tmp/x/p.vhd");
    }

    #[test]
    fn macx_urls() {
        assert_eq!(
            decode_path(0, PLATFORM_MACX, b"file:///a%20b/p.vhd").unwrap(),
            "/a b/p.vhd"
        );
        assert!(decode_path(0, PLATFORM_MACX, b"http://x").is_err());
    }

    #[test]
    fn data_space_heuristic() {
        let mut e = LocatorEntry {
            platform_code: PLATFORM_W2RU,
            data_space: 1,
            ..Default::default()
        };
        assert_eq!(e.data_space_bytes(), Some(512));
        e.data_space = 1024;
        assert_eq!(e.data_space_bytes(), Some(1024));
        e.data_space = 1000;
        assert_eq!(e.data_space_bytes(), None);
    }
}
