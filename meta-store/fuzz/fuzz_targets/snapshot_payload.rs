//! Snapshot data arriving from the leader is checked before raft sees it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meta_store::storage::decode_snapshot_payload;

fuzz_target!(|data: &[u8]| {
    let mut snap = raft::prelude::Snapshot::default();
    snap.set_data(data.to_vec().into());
    snap.mut_metadata().index = 10;
    if let Ok(p) = decode_snapshot_payload(&snap, 1 << 20) {
        assert!(p.kvs.windows(2).all(|w| w[0].key < w[1].key));
    }
});
