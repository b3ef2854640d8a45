//! Fuzz entry points shared by the cargo-fuzz targets (`volume/fuzz/`) and the property
//! tests: each takes arbitrary bytes, must never panic, and checks a round-trip property
//! on whatever parses.

use crate::checkpoint::{HEADER_SIZE, Header};
use crate::path::LunPath;
use crate::superblock::Superblock;
use crate::testing::MemPath;

/// Superblock parsing: accepted copies re-encode to a copy that parses to the same value.
pub fn superblock(data: &[u8]) {
    if let Ok(sb) = Superblock::parse(data) {
        let again = Superblock::parse(&sb.encode());
        assert_eq!(again.ok().as_ref(), Some(&sb), "superblock round trip");
    }
}

/// Checkpoint header parsing with a payload limit taken from the input's first bytes.
pub fn checkpoint_header(data: &[u8]) {
    let max = data
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if let Ok(h) = Header::parse(data, max) {
        assert!(h.payload_len <= max);
        let enc = h.encode();
        assert_eq!(enc.len(), HEADER_SIZE);
        assert_eq!(Header::parse(&enc, max), Ok(h), "header round trip");
    }
}

/// A whole (small) LUN image: superblock read, then both checkpoint slots. Errors are
/// fine; panics and hangs are not.
pub fn volume_image(data: &[u8]) {
    let Ok(lun) = MemPath::new(data.len() as u64) else {
        return;
    };
    if lun.write_at(data, 0).is_err() {
        return;
    }
    if let Ok(found) = crate::superblock::read(&lun) {
        let _ = crate::checkpoint::read_latest(&lun, &found.superblock);
    }
}
