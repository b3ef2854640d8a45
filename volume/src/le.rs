//! Little-endian field readers shared by the on-LUN headers (superblock, checkpoint).
//! Callers check the buffer length against the header size first: an index past the end
//! is a bug in the caller, not bad input.

/// The `u32` at byte `at`.
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// The `u64` at byte `at`.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
