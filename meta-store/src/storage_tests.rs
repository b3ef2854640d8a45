//! Unit tests of the Raft storage on the in-memory engine (the RocksDB engine shares the
//! code above the engine trait and has its own conformance test).

use std::sync::Arc;

use raft::Storage as _;
use raft::prelude::{Entry, HardState};

use super::*;
use crate::engine::MemEngine;

fn cfg(id: u64, voters: &[u64]) -> Config {
    let mut c = Config::new(id, "test-cluster");
    c.initial_voters = voters.to_vec();
    c.peers = voters
        .iter()
        .map(|v| PeerAddr {
            id: *v,
            addr: format!("127.0.0.1:{}", 7000 + v),
        })
        .collect();
    c.limits.entry_cache_entries = 4;
    c
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("e{index}t{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

#[test]
fn bootstrap_then_reopen_checks_identity() {
    let e = Arc::new(MemEngine::new());
    let (s, rec) = RaftStorage::open(e.clone(), &cfg(1, &[1, 2, 3])).expect("open");
    assert!(rec.bootstrapped);
    assert_eq!(rec.peers.len(), 3);
    let st = s.initial_state().expect("state");
    assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(st.hard_state.commit, INIT_INDEX);
    assert_eq!(s.first_index().expect("first"), INIT_INDEX + 1);
    assert_eq!(s.last_index().expect("last"), INIT_INDEX);
    assert_eq!(s.term(INIT_INDEX).expect("term"), INIT_TERM);
    assert!(matches!(
        s.term(INIT_INDEX - 1),
        Err(raft::Error::Store(RaftStorageError::Compacted))
    ));
    drop(s);
    let (_, rec) = RaftStorage::open(e.clone(), &cfg(1, &[1, 2, 3])).expect("reopen");
    assert!(!rec.bootstrapped);
    let err = RaftStorage::open(e.clone(), &cfg(2, &[1, 2, 3])).expect_err("other node id");
    assert!(err.to_string().contains("belongs to node 1"), "{err}");
    let mut other = cfg(1, &[1, 2, 3]);
    other.cluster_id = "other".into();
    assert!(RaftStorage::open(e, &other).is_err());
}

#[test]
fn joining_node_starts_empty() {
    let e = Arc::new(MemEngine::new());
    let (s, rec) = RaftStorage::open(e, &cfg(4, &[])).expect("open");
    assert!(!rec.bootstrapped);
    let st = s.initial_state().expect("state");
    assert!(!st.initialized());
    assert_eq!(s.first_index().expect("first"), 1);
    assert_eq!(s.last_index().expect("last"), 0);
}

#[test]
fn append_truncate_read_and_compact() {
    let e = Arc::new(MemEngine::new());
    let (s, _) = RaftStorage::open(e.clone(), &cfg(1, &[1])).expect("open");
    let ents: Vec<Entry> = (6..=15).map(|i| entry(i, 6)).collect();
    let hs = HardState {
        term: 6,
        vote: 1,
        commit: 5,
        ..Default::default()
    };
    s.persist_ready(None, &ents, Some(&hs), true)
        .expect("persist");
    assert_eq!(s.last_index().expect("last"), 15);
    // Old entries come from the engine, recent ones from the cache (4 entries).
    let got = s.entries(6, 16, None, ctx()).expect("entries");
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        (6..=15).collect::<Vec<_>>()
    );
    assert_eq!(s.entries(13, 16, None, ctx()).expect("cached").len(), 3);
    let one = entry(6, 6);
    let limited = s
        .entries(
            6,
            16,
            Some(u64::from(protobuf::Message::compute_size(&one)) + 1),
            ctx(),
        )
        .expect("limited");
    assert_eq!(limited.len(), 1, "size limit keeps at least one entry");
    assert!(matches!(
        s.entries(6, 17, None, ctx()),
        Err(raft::Error::Store(RaftStorageError::Unavailable))
    ));

    // A new leader overwrites from 12 on with a shorter suffix.
    let newer: Vec<Entry> = (12..=13).map(|i| entry(i, 7)).collect();
    s.persist_ready(None, &newer, None, true).expect("persist");
    assert_eq!(s.last_index().expect("last"), 13);
    assert_eq!(s.term(12).expect("term"), 7);
    assert_eq!(s.term(11).expect("term"), 6);
    assert!(
        e.get(Cf::Log, &keys::log_key(14)).expect("get").is_none(),
        "suffix deleted"
    );

    // Apply up to 11 and compact to 9.
    s.persist_apply(WriteBatch::new(), Pos::new(11, 6), None)
        .expect("apply");
    assert!(s.compact(12).is_err(), "cannot compact beyond applied");
    s.compact(9).expect("compact");
    assert_eq!(s.first_index().expect("first"), 10);
    assert_eq!(s.term(9).expect("term of truncated"), 6);
    assert!(matches!(
        s.entries(9, 12, None, ctx()),
        Err(raft::Error::Store(RaftStorageError::Compacted))
    ));
    assert_eq!(s.entries(10, 14, None, ctx()).expect("entries").len(), 4);

    // Everything survives a reopen.
    drop(s);
    let (s, rec) = RaftStorage::open(e, &cfg(1, &[1])).expect("reopen");
    assert_eq!(rec.applied, Pos::new(11, 6));
    assert_eq!(s.first_index().expect("first"), 10);
    assert_eq!(s.last_index().expect("last"), 13);
    let st = s.initial_state().expect("state");
    assert_eq!(st.hard_state.vote, 1);
    assert_eq!(
        st.hard_state.commit, 11,
        "commit raised to the applied index"
    );
}

#[test]
fn snapshot_build_and_install() {
    let leader_e = Arc::new(MemEngine::new());
    let (leader, _) = RaftStorage::open(leader_e, &cfg(1, &[1, 2])).expect("open");
    let ents: Vec<Entry> = (6..=8).map(|i| entry(i, 6)).collect();
    leader
        .persist_ready(None, &ents, None, true)
        .expect("persist");
    let mut b = WriteBatch::new();
    b.put(Cf::Sm, b"a".to_vec(), b"1".to_vec());
    b.put(Cf::Sm, b"b".to_vec(), b"2".to_vec());
    leader
        .persist_apply(b, Pos::new(8, 6), None)
        .expect("apply");
    let snap = leader.build_snapshot().expect("snapshot");
    assert_eq!(snap.get_metadata().index, 8);
    assert_eq!(snap.get_metadata().term, 6);
    assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
    assert!(matches!(
        leader.snapshot(9, 2),
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    let payload = decode_snapshot_payload(&snap, 1 << 20).expect("payload");
    assert_eq!(payload.kvs.len(), 2);
    assert!(decode_snapshot_payload(&snap, 4).is_err(), "size limit");

    // A follower with stale data installs it: data replaced, log reset.
    let fe = Arc::new(MemEngine::new());
    let (f, _) = RaftStorage::open(fe.clone(), &cfg(2, &[1, 2])).expect("open");
    let mut b = WriteBatch::new();
    b.put(Cf::Sm, b"stale".to_vec(), b"x".to_vec());
    f.persist_apply(b, Pos::new(5, 5), None).expect("apply");
    f.persist_ready(None, &[entry(6, 5)], None, true)
        .expect("persist");
    let hs = HardState {
        term: 6,
        vote: 0,
        commit: 8,
        ..Default::default()
    };
    f.persist_ready(Some((&snap, &payload)), &[entry(9, 6)], Some(&hs), true)
        .expect("install");
    assert_eq!(f.applied(), Pos::new(8, 6));
    assert_eq!(f.first_index().expect("first"), 9);
    assert_eq!(f.last_index().expect("last"), 9);
    assert_eq!(fe.get(Cf::Sm, b"stale").expect("get"), None);
    assert_eq!(fe.get(Cf::Sm, b"b").expect("get"), Some(b"2".to_vec()));
    assert!(fe.get(Cf::Log, &keys::log_key(6)).expect("get").is_none());
    assert_eq!(f.term(8).expect("term"), 6);
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let e = Arc::new(MemEngine::new());
    let (s, _) = RaftStorage::open(e.clone(), &cfg(1, &[1])).expect("open");
    s.persist_ready(None, &[entry(6, 6), entry(7, 6)], None, true)
        .expect("persist");
    drop(s);
    let mut b = WriteBatch::new();
    b.put(Cf::Log, keys::log_key(6).to_vec(), vec![0xff, 0xff, 0xff]);
    b.put(Cf::Log, keys::log_key(7).to_vec(), {
        // A valid entry that claims another index.
        protobuf::Message::write_to_bytes(&entry(9, 6)).expect("encode")
    });
    e.write(b, true).expect("write");
    let (s, _) = RaftStorage::open(e.clone(), &cfg(1, &[1])).expect("open");
    assert!(s.entries(6, 8, None, ctx()).is_err());
    assert!(s.entries(7, 8, None, ctx()).is_err());
    let mut b = WriteBatch::new();
    b.put(Cf::Meta, keys::APPLIED.to_vec(), vec![1, 2, 3]);
    e.write(b, true).expect("write");
    assert!(RaftStorage::open(e, &cfg(1, &[1])).is_err());
}
