//! The stamped block: every write of the workload fills a whole block with who wrote it
//! and a CRC, so any read tells which write it sees.
//!
//! Layout (little-endian), [`BLOCK`] bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `CSVCHAOS` |
//! | 8..16 | VHD id |
//! | 16..24 | block number |
//! | 24..32 | client |
//! | 32..40 | write id (unique in a run, never 0) |
//! | 40..48 | generation of the owner the client wrote through |
//! | 48..56 | node the client wrote through |
//! | 56..BLOCK-4 | filler derived from the write id (a torn mix of two writes fails the CRC) |
//! | BLOCK-4..BLOCK | CRC-32C of everything before |

use serde::{Deserialize, Serialize};

/// Block size of the workload (a page: what a guest file system writes).
pub const BLOCK: usize = 4096;

const MAGIC: &[u8; 8] = b"CSVCHAOS";
const CRC_AT: usize = BLOCK - 4;

/// Who wrote a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// VHD id.
    pub vhd: u64,
    /// Block number in the VHD.
    pub block: u64,
    /// The writing client.
    pub client: u64,
    /// The write (unique in a run; 0 is the block's initial zeroes).
    pub id: u64,
    /// The owner's generation the client wrote through.
    pub generation: u64,
    /// The node the client wrote through.
    pub node: u64,
}

/// What a read of a block found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Seen {
    /// A whole stamp of this block.
    Stamp(Stamp),
    /// All zeroes: never written.
    Zero,
    /// A stamp of another block or VHD (a misdirected write).
    Misplaced(Stamp),
    /// Neither zeroes nor a whole stamp.
    Torn {
        /// Why.
        detail: String,
    },
}

fn put(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Stamp {
    /// The block's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK];
        b[..8].copy_from_slice(MAGIC);
        for (i, v) in [
            self.vhd,
            self.block,
            self.client,
            self.id,
            self.generation,
            self.node,
        ]
        .into_iter()
        .enumerate()
        {
            put(&mut b, 8 + 8 * i, v);
        }
        let mut x = self.id ^ 0x5851_f42d_4c95_7f2d;
        for chunk in b[56..CRC_AT].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Reads a block of VHD `vhd` at `block`.
pub fn decode(bytes: &[u8], vhd: u64, block: u64) -> Seen {
    if bytes.len() != BLOCK {
        return Seen::Torn {
            detail: format!("{} bytes, not {BLOCK}", bytes.len()),
        };
    }
    if bytes.iter().all(|b| *b == 0) {
        return Seen::Zero;
    }
    if &bytes[..8] != MAGIC {
        let zero_from = bytes.iter().position(|b| *b == 0);
        return Seen::Torn {
            detail: format!(
                "no stamp: first bytes {:02x?}, first zero byte at {zero_from:?}",
                &bytes[..8]
            ),
        };
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[CRC_AT..]);
    let want = u32::from_le_bytes(crc);
    let got = crc32c::crc32c(&bytes[..CRC_AT]);
    let s = Stamp {
        vhd: get(bytes, 8),
        block: get(bytes, 16),
        client: get(bytes, 24),
        id: get(bytes, 32),
        generation: get(bytes, 40),
        node: get(bytes, 48),
    };
    if want != got {
        // Where the bytes stop matching the stamp's own filler: the torn boundary.
        let whole = s.encode();
        let at = bytes.iter().zip(&whole).position(|(a, b)| a != b);
        return Seen::Torn {
            detail: format!(
                "CRC {got:08x}, stamped {want:08x} (write {} gen {}; differs from it at byte {at:?})",
                s.id, s.generation
            ),
        };
    }
    if s.vhd != vhd || s.block != block {
        return Seen::Misplaced(s);
    }
    Seen::Stamp(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(id: u64) -> Stamp {
        Stamp {
            vhd: 3,
            block: 9,
            client: 1,
            id,
            generation: 12,
            node: 2,
        }
    }

    #[test]
    fn a_stamp_reads_back_and_zeroes_are_zero() {
        assert_eq!(decode(&stamp(5).encode(), 3, 9), Seen::Stamp(stamp(5)));
        assert_eq!(decode(&vec![0; BLOCK], 3, 9), Seen::Zero);
        assert!(matches!(
            decode(&stamp(5).encode(), 3, 10),
            Seen::Misplaced(_)
        ));
        assert!(matches!(decode(&[1, 2, 3], 3, 9), Seen::Torn { .. }));
    }

    #[test]
    fn a_mix_of_two_writes_is_torn() {
        let (a, b) = (stamp(5).encode(), stamp(6).encode());
        for cut in [512, 2048, 4092] {
            let mut m = a.clone();
            m[cut..].copy_from_slice(&b[cut..]);
            assert!(matches!(decode(&m, 3, 9), Seen::Torn { .. }), "cut {cut}");
        }
        let mut half = a.clone();
        half[2048..].fill(0);
        assert!(matches!(decode(&half, 3, 9), Seen::Torn { .. }));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode(&bytes, 1, 1);
        }

        #[test]
        fn any_stamp_round_trips(vhd: u64, block: u64, client: u64, id: u64, generation: u64, node: u64) {
            let s = Stamp { vhd, block, client, id, generation, node };
            prop_assert_eq!(decode(&s.encode(), vhd, block), Seen::Stamp(s));
        }

        #[test]
        fn one_flipped_byte_is_never_a_valid_other_stamp(at in 0usize..BLOCK, bit in 0u8..8) {
            let mut b = stamp(77).encode();
            b[at] ^= 1 << bit;
            let seen = decode(&b, 3, 9);
            prop_assert!(matches!(seen, Seen::Torn { .. }), "{:?}", seen);
        }
    }
}
