//! Key layout of the column families and the fixed-width encodings of positions.
//!
//! * `raft_log`: key = entry index as 8 big-endian bytes (so key order is index order),
//!   value = the `eraftpb::Entry` in protobuf-2 encoding.
//! * `raft_meta`: the named keys below.
//! * `sm_data`: whatever keys the state machine writes.
//! * `sm_peers`: key = node id as 8 big-endian bytes, value = UTF-8 address; an empty value
//!   marks a removed node (its id is never reused).

use bytes::Buf;

use crate::error::StoreError;

/// `eraftpb::HardState` (term, vote, commit).
pub const HARD_STATE: &[u8] = b"hard_state";
/// `eraftpb::ConfState` as of the applied index.
pub const CONF_STATE: &[u8] = b"conf_state";
/// Index and term of the last entry removed from the log (compaction or snapshot).
pub const TRUNCATED: &[u8] = b"truncated";
/// Index and term of the last applied entry; written in the same batch as the state it
/// produced.
pub const APPLIED: &[u8] = b"applied";
/// Cluster id and node id this store belongs to.
pub const IDENTITY: &[u8] = b"identity";

/// Log key of `index`.
pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a log key.
pub fn log_index(key: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt("log key", format!("{} bytes, want 8", key.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// Address-book key of `id`.
pub fn peer_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Node id of an address-book key.
pub fn peer_id(key: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt("peer key", format!("{} bytes, want 8", key.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// A log position: index and term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Entry index.
    pub index: u64,
    /// Entry term.
    pub term: u64,
}

impl Pos {
    /// Position `(index, term)`.
    pub fn new(index: u64, term: u64) -> Self {
        Pos { index, term }
    }

    /// 16 bytes: index then term, big-endian.
    pub fn encode(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.index.to_be_bytes());
        b[8..].copy_from_slice(&self.term.to_be_bytes());
        b
    }

    /// Decodes [`Pos::encode`].
    pub fn decode(what: &str, v: &[u8]) -> Result<Self, StoreError> {
        if v.len() != 16 {
            return Err(StoreError::corrupt(
                what,
                format!("{} bytes, want 16", v.len()),
            ));
        }
        let mut v = v;
        let index = v.get_u64();
        Ok(Pos::new(index, v.get_u64()))
    }
}

/// Identity record: node id (8 bytes BE) then the cluster id bytes.
pub fn encode_identity(node_id: u64, cluster_id: &str) -> Vec<u8> {
    let mut v = node_id.to_be_bytes().to_vec();
    v.extend_from_slice(cluster_id.as_bytes());
    v
}

/// Decodes [`encode_identity`].
pub fn decode_identity(v: &[u8]) -> Result<(u64, String), StoreError> {
    if v.len() < 8 {
        return Err(StoreError::corrupt("identity", "shorter than 8 bytes"));
    }
    let mut v = v;
    let id = v.get_u64();
    let cluster = std::str::from_utf8(v)
        .map_err(|e| StoreError::corrupt("identity", e))?
        .to_string();
    Ok((id, cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        assert!(log_key(255) < log_key(256));
        assert!(log_key(1) < log_key(u64::MAX));
        assert_eq!(log_index(&log_key(77)).expect("decode"), 77);
        assert!(log_index(b"short").is_err());
    }

    #[test]
    fn pos_and_identity_round_trip() {
        let p = Pos::new(12, 3);
        assert_eq!(Pos::decode("p", &p.encode()).expect("decode"), p);
        assert!(Pos::decode("p", &[1, 2]).is_err());
        let id = encode_identity(9, "clu");
        assert_eq!(
            decode_identity(&id).expect("decode"),
            (9, "clu".to_string())
        );
        assert!(decode_identity(&[1]).is_err());
        assert!(decode_identity(&[0, 0, 0, 0, 0, 0, 0, 1, 0xff]).is_err());
    }
}
