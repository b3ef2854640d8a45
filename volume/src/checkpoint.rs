//! The checkpoint region (docs/design/040 §5, 041 §3): two slots, each a 4 KiB header and
//! an opaque payload (the state machine's catalog). Writes go to the slot not holding the
//! newest valid checkpoint, so a torn write never destroys the last good one.
//!
//! Header, little-endian: magic `CSVCKPT1` (0..8), version (8..12), flags (12..16, zero),
//! volume UUID (16..32), sequence (32), raft index (40), payload length (48), crc32c of the
//! payload (56..60), crc32c of bytes 0..60 (60..64); the rest of the 4 KiB is zero.

use crate::layout::CHECKPOINT_SLOTS;
use crate::le::{u32_at, u64_at};
use crate::path::{LunPath, PathError};
use crate::superblock::Superblock;
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"CSVCKPT1";
pub const VERSION: u32 = 1;
pub use crate::layout::CHECKPOINT_HEADER_SIZE as HEADER_SIZE;
/// Bytes of the header that carry fields (the rest is zero).
pub const HEADER_FIELDS: usize = 64;
/// Payload bytes read per request.
const READ_CHUNK: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("empty slot")]
    Empty,
    #[error("header needs {HEADER_FIELDS} bytes, got {0}")]
    Short(usize),
    #[error("bad magic")]
    BadMagic,
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unsupported checkpoint version {0}")]
    UnsupportedVersion(u32),
    #[error("unknown flags {0:#x}")]
    UnknownFlags(u32),
    #[error("checkpoint of volume {found}, not {expected}")]
    WrongVolume { expected: Uuid, found: Uuid },
    #[error("payload of {len} bytes does not fit a slot payload of {max}")]
    PayloadTooLong { len: u64, max: u64 },
    #[error("payload checksum mismatch (torn or corrupt write)")]
    PayloadChecksum,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("sequence {asked} is not above the newest valid checkpoint's {newest}")]
    StaleSequence { asked: u64, newest: u64 },
    #[error("payload of {len} bytes exceeds the slot payload limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A checkpoint slot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub volume: Uuid,
    pub sequence: u64,
    pub raft_index: u64,
    pub payload_len: u64,
    pub payload_crc: u32,
}

impl Header {
    /// The full 4 KiB header block.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(self.volume.as_bytes());
        b[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        b[40..48].copy_from_slice(&self.raft_index.to_le_bytes());
        b[48..56].copy_from_slice(&self.payload_len.to_le_bytes());
        b[56..60].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header; `max_payload` is the slot's payload capacity.
    pub fn parse(b: &[u8], max_payload: u64) -> Result<Header, HeaderError> {
        if b.len() < HEADER_FIELDS {
            return Err(HeaderError::Short(b.len()));
        }
        if b[..HEADER_FIELDS].iter().all(|&x| x == 0) {
            return Err(HeaderError::Empty);
        }
        if &b[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let stored = u32_at(b, 60);
        let computed = crc32c::crc32c(&b[..60]);
        if stored != computed {
            return Err(HeaderError::BadChecksum { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u32_at(b, 12);
        if flags != 0 {
            return Err(HeaderError::UnknownFlags(flags));
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[16..32]);
        let h = Header {
            volume: Uuid::from_bytes(u),
            sequence: u64_at(b, 32),
            raft_index: u64_at(b, 40),
            payload_len: u64_at(b, 48),
            payload_crc: u32_at(b, 56),
        };
        if h.payload_len > max_payload {
            return Err(HeaderError::PayloadTooLong {
                len: h.payload_len,
                max: max_payload,
            });
        }
        Ok(h)
    }
}

/// A valid checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub slot: usize,
    pub sequence: u64,
    pub raft_index: u64,
    pub payload: Vec<u8>,
}

/// A slot `read_latest` did not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotProblem {
    pub slot: usize,
    pub problem: HeaderError,
}

/// The newest valid checkpoint (if any) and the slots skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub checkpoint: Option<Checkpoint>,
    pub skipped: Vec<SlotProblem>,
}

/// Payload capacity of one slot.
pub fn max_payload(sb: &Superblock) -> u64 {
    sb.layout.checkpoint_slot_size - HEADER_SIZE as u64
}

/// Reads and fully validates one slot (header, volume, payload checksum).
fn read_slot(
    path: &dyn LunPath,
    sb: &Superblock,
    slot: usize,
) -> Result<Result<Checkpoint, HeaderError>, PathError> {
    let base = sb.layout.slot_offset(slot);
    let mut hb = vec![0u8; HEADER_SIZE];
    path.read_at(&mut hb, base)?;
    let h = match Header::parse(&hb, max_payload(sb)) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if h.volume != sb.uuid {
        return Ok(Err(HeaderError::WrongVolume {
            expected: sb.uuid,
            found: h.volume,
        }));
    }
    // Bounded by the slot size (≤ 1 GiB) through `Header::parse`.
    let mut payload = vec![0u8; h.payload_len as usize];
    let mut done = 0usize;
    while done < payload.len() {
        let n = (payload.len() - done).min(READ_CHUNK);
        path.read_at(
            &mut payload[done..done + n],
            base + HEADER_SIZE as u64 + done as u64,
        )?;
        done += n;
    }
    if crc32c::crc32c(&payload) != h.payload_crc {
        return Ok(Err(HeaderError::PayloadChecksum));
    }
    Ok(Ok(Checkpoint {
        slot,
        sequence: h.sequence,
        raft_index: h.raft_index,
        payload,
    }))
}

/// The newest valid checkpoint; torn or corrupt slots are skipped and reported. Only a
/// path/media error reading the slots is an error.
pub fn read_latest(path: &dyn LunPath, sb: &Superblock) -> Result<Latest, CheckpointError> {
    let mut best: Option<Checkpoint> = None;
    let mut skipped = Vec::new();
    for slot in 0..CHECKPOINT_SLOTS {
        match read_slot(path, sb, slot)? {
            Ok(c) => {
                if best.as_ref().is_none_or(|b| c.sequence > b.sequence) {
                    best = Some(c);
                }
            }
            Err(problem) => skipped.push(SlotProblem { slot, problem }),
        }
    }
    Ok(Latest {
        checkpoint: best,
        skipped,
    })
}

/// Writes a checkpoint into the slot not holding the newest valid one, then flushes.
/// Returns the slot written.
pub fn write_checkpoint(
    path: &dyn LunPath,
    sb: &Superblock,
    sequence: u64,
    raft_index: u64,
    payload: &[u8],
) -> Result<usize, CheckpointError> {
    let max = max_payload(sb);
    if payload.len() as u64 > max {
        return Err(CheckpointError::TooLarge {
            len: payload.len() as u64,
            max,
        });
    }
    let latest = read_latest(path, sb)?;
    let slot = match &latest.checkpoint {
        Some(c) if sequence <= c.sequence => {
            return Err(CheckpointError::StaleSequence {
                asked: sequence,
                newest: c.sequence,
            });
        }
        Some(c) => 1 - c.slot,
        None => 0,
    };
    let base = sb.layout.slot_offset(slot);
    let header = Header {
        volume: sb.uuid,
        sequence,
        raft_index,
        payload_len: payload.len() as u64,
        payload_crc: crc32c::crc32c(payload),
    };
    // Payload padded to 4 KiB, so an O_DIRECT path needs no read-modify-write.
    let mut padded = payload.to_vec();
    padded.resize(payload.len().next_multiple_of(HEADER_SIZE), 0);
    let lost = path.lost_writes();
    if !padded.is_empty() {
        path.write_at(&padded, base + HEADER_SIZE as u64)?;
    }
    path.write_at(&header.encode(), base)?;
    path.flush()?;
    crate::path::check_no_loss(path, lost, base)?;
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let h = Header {
            volume: Uuid::from_u128(7),
            sequence: 3,
            raft_index: 99,
            payload_len: 10,
            payload_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(Header::parse(&b, 100), Ok(h));
        assert_eq!(
            Header::parse(&b, 5),
            Err(HeaderError::PayloadTooLong { len: 10, max: 5 })
        );
        assert_eq!(Header::parse(&b[..10], 100), Err(HeaderError::Short(10)));
        assert_eq!(
            Header::parse(&vec![0u8; HEADER_SIZE], 100),
            Err(HeaderError::Empty)
        );
        let mut bad = b.clone();
        bad[0] = b'X';
        assert_eq!(Header::parse(&bad, 100), Err(HeaderError::BadMagic));
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(matches!(
            Header::parse(&bad, 100),
            Err(HeaderError::BadChecksum { .. })
        ));
    }
}
