//! Raft's storage on a [`KvEngine`]: the `raft::Storage` read side that raft-rs calls, and
//! the write side the node's Ready loop drives (persist a Ready, persist an apply batch,
//! compact, build and install snapshots). Every write of a Ready is one atomic batch.

use std::cell::RefCell;
use std::collections::VecDeque;

use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use crate::config::{Config, PeerAddr};
use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::error::StoreError;
use crate::keys::{self, Pos};
use crate::wire::{KvPair, PeerEntry, SNAPSHOT_FORMAT, SnapshotPayload};

/// Index and term of the empty log a bootstrapped cluster starts from. Every initial node
/// writes the same initial state at this position, and a node added later (whose log is
/// empty) can only be brought up to date by a snapshot, which carries the membership.
pub const INIT_INDEX: u64 = 5;
/// See [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// Recent persisted entries, contiguous up to the last index.
#[derive(Debug, Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    cap: usize,
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else { return };
        match (self.first_index(), self.entries.back()) {
            (Some(f), Some(b)) if first.index >= f && first.index <= b.index + 1 => {
                let keep = (first.index - f) as usize;
                self.entries.truncate(keep);
            }
            _ => self.entries.clear(),
        }
        self.entries.extend(ents.iter().cloned());
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let f = self.first_index()?;
        if index < f {
            return None;
        }
        self.entries.get((index - f) as usize)
    }

    fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.entries.pop_front();
        }
    }
}

#[derive(Debug)]
struct LogState {
    hard_state: HardState,
    conf_state: ConfState,
    truncated: Pos,
    applied: Pos,
    last_index: u64,
    cache: EntryCache,
    snapshot: Option<Snapshot>,
}

/// What a store held when it was opened.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Applied position.
    pub applied: Pos,
    /// True when this open wrote the bootstrap state.
    pub bootstrapped: bool,
    /// The replicated address book.
    pub peers: Vec<PeerAddr>,
    /// Node ids removed from the cluster (they never rejoin under the same id).
    pub removed: Vec<u64>,
}

/// Raft storage on an engine. The node's driver is its only user.
pub struct RaftStorage<E: KvEngine> {
    engine: E,
    st: RefCell<LogState>,
    max_snapshot_bytes: usize,
}

impl<E: KvEngine> std::fmt::Debug for RaftStorage<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStorage")
            .field("state", &self.st)
            .finish()
    }
}

fn decode_pb<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    let mut m = M::new();
    m.merge_from_bytes(bytes)
        .map_err(|e| StoreError::corrupt(what, e))?;
    Ok(m)
}

fn encode_pb<M: protobuf::Message>(what: &str, m: &M) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes().map_err(|e| StoreError::corrupt(what, e))
}

/// Decodes and checks the payload of a snapshot.
pub fn decode_snapshot_payload(
    snap: &Snapshot,
    max_bytes: usize,
) -> Result<SnapshotPayload, StoreError> {
    let data = snap.get_data();
    if data.len() > max_bytes {
        return Err(StoreError::Invalid(format!(
            "snapshot of {} bytes exceeds the limit of {max_bytes}",
            data.len()
        )));
    }
    let p = SnapshotPayload::decode(data).map_err(|e| StoreError::corrupt("snapshot", e))?;
    if p.format != SNAPSHOT_FORMAT {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("format {} (want {SNAPSHOT_FORMAT})", p.format),
        ));
    }
    for w in p.kvs.windows(2) {
        if w[0].key >= w[1].key {
            return Err(StoreError::corrupt(
                "snapshot",
                "keys not strictly ascending",
            ));
        }
    }
    if p.peers.iter().any(|pe| pe.id == 0) {
        return Err(StoreError::corrupt("snapshot", "peer id 0"));
    }
    Ok(p)
}

impl<E: KvEngine> RaftStorage<E> {
    /// Opens the store: checks that it belongs to this node and cluster, bootstraps an
    /// empty store of an initial member, and loads the Raft state.
    pub fn open(engine: E, cfg: &Config) -> Result<(Self, Recovered), StoreError> {
        let mut bootstrapped = false;
        match engine.get(Cf::Meta, keys::IDENTITY)? {
            Some(v) => {
                let (id, cluster) = keys::decode_identity(&v)?;
                if id != cfg.id || cluster != cfg.cluster_id {
                    return Err(StoreError::Invalid(format!(
                        "store belongs to node {id} of cluster {cluster:?}, not node {} of {:?}",
                        cfg.id, cfg.cluster_id
                    )));
                }
            }
            None => {
                if engine.last(Cf::Log)?.is_some()
                    || engine.get(Cf::Meta, keys::HARD_STATE)?.is_some()
                {
                    return Err(StoreError::Invalid("store has data but no identity".into()));
                }
                let mut b = WriteBatch::new();
                b.put(
                    Cf::Meta,
                    keys::IDENTITY,
                    keys::encode_identity(cfg.id, &cfg.cluster_id),
                );
                if !cfg.initial_voters.is_empty() {
                    let mut voters = cfg.initial_voters.clone();
                    voters.sort_unstable();
                    voters.dedup();
                    let cs = ConfState {
                        voters,
                        ..Default::default()
                    };
                    let hs = HardState {
                        term: INIT_TERM,
                        vote: 0,
                        commit: INIT_INDEX,
                        ..Default::default()
                    };
                    let pos = Pos::new(INIT_INDEX, INIT_TERM).encode();
                    b.put(Cf::Meta, keys::HARD_STATE, encode_pb("hard state", &hs)?);
                    b.put(Cf::Meta, keys::CONF_STATE, encode_pb("conf state", &cs)?);
                    b.put(Cf::Meta, keys::TRUNCATED, pos);
                    b.put(Cf::Meta, keys::APPLIED, pos);
                    for p in &cfg.peers {
                        if cs.voters.contains(&p.id) {
                            b.put(Cf::Peers, keys::peer_key(p.id), p.addr.as_bytes());
                        }
                    }
                    bootstrapped = true;
                }
                engine.write(b, true)?;
            }
        }

        let mut hard_state: HardState = match engine.get(Cf::Meta, keys::HARD_STATE)? {
            Some(v) => decode_pb("hard state", &v)?,
            None => HardState::default(),
        };
        let conf_state: ConfState = match engine.get(Cf::Meta, keys::CONF_STATE)? {
            Some(v) => decode_pb("conf state", &v)?,
            None => ConfState::default(),
        };
        let truncated = match engine.get(Cf::Meta, keys::TRUNCATED)? {
            Some(v) => Pos::decode("truncated", &v)?,
            None => Pos::default(),
        };
        let applied = match engine.get(Cf::Meta, keys::APPLIED)? {
            Some(v) => Pos::decode("applied", &v)?,
            None => truncated,
        };
        let last_index = match engine.last(Cf::Log)? {
            Some((k, _)) => keys::log_index(&k)?,
            None => truncated.index,
        };
        if applied.index < truncated.index || applied.index > last_index.max(truncated.index) {
            return Err(StoreError::corrupt(
                "raft meta",
                format!("applied {applied:?} outside [{truncated:?}, {last_index}]"),
            ));
        }
        // Apply batches are written without fsync; the hard state of the Ready that
        // delivered those entries may be older than the applied index that survived a
        // crash. Entries are only delivered for applying once committed, so the commit
        // index is at least the applied one.
        if hard_state.commit < applied.index {
            hard_state.commit = applied.index;
        }
        let mut peers = Vec::new();
        let mut removed = Vec::new();
        engine.scan(Cf::Peers, &[], None, &mut |k, v| {
            match (keys::peer_id(k), std::str::from_utf8(v)) {
                (Ok(id), Ok("")) => removed.push(id),
                (Ok(id), Ok(addr)) => peers.push(PeerAddr {
                    id,
                    addr: addr.to_string(),
                }),
                _ => {}
            }
            true
        })?;
        let st = LogState {
            hard_state,
            conf_state,
            truncated,
            applied,
            last_index,
            cache: EntryCache {
                entries: VecDeque::new(),
                cap: cfg.limits.entry_cache_entries,
            },
            snapshot: None,
        };
        let storage = RaftStorage {
            engine,
            st: RefCell::new(st),
            max_snapshot_bytes: cfg.limits.max_snapshot_bytes,
        };
        Ok((
            storage,
            Recovered {
                applied,
                bootstrapped,
                peers,
                removed,
            },
        ))
    }

    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// Applied position.
    pub fn applied(&self) -> Pos {
        self.st.borrow().applied
    }

    /// Truncated position (the log starts after it).
    pub fn truncated(&self) -> Pos {
        self.st.borrow().truncated
    }

    /// Last index in the log.
    pub fn last_index_now(&self) -> u64 {
        self.st.borrow().last_index
    }

    /// Conf state as of the applied index.
    pub fn conf_state(&self) -> ConfState {
        self.st.borrow().conf_state.clone()
    }

    /// Persists one Ready: an installed snapshot (state-machine data, address book, log
    /// reset), new entries (dropping a conflicting suffix) and the hard state, in one
    /// batch, with fsync when `sync`.
    pub fn persist_ready(
        &self,
        snapshot: Option<(&Snapshot, &SnapshotPayload)>,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let mut b = WriteBatch::new();
        let mut last_index = self.st.borrow().last_index;
        let mut new_snap_pos = None;
        if let Some((snap, payload)) = snapshot {
            let meta = snap.get_metadata();
            let pos = Pos::new(meta.index, meta.term);
            b.delete_range(Cf::Log, keys::log_key(0), keys::log_key(u64::MAX));
            b.delete(Cf::Log, keys::log_key(u64::MAX));
            for cf in [Cf::Sm, Cf::Peers, Cf::Sessions] {
                self.engine.scan(cf, &[], None, &mut |k, _| {
                    b.delete(cf, k.to_vec());
                    true
                })?;
            }
            for kv in &payload.kvs {
                b.put(Cf::Sm, kv.key.clone(), kv.value.clone());
            }
            for p in &payload.peers {
                b.put(Cf::Peers, keys::peer_key(p.id), p.addr.as_bytes());
            }
            for kv in &payload.sessions {
                b.put(Cf::Sessions, kv.key.clone(), kv.value.clone());
            }
            b.put(Cf::Meta, keys::TRUNCATED, pos.encode());
            b.put(Cf::Meta, keys::APPLIED, pos.encode());
            b.put(
                Cf::Meta,
                keys::CONF_STATE,
                encode_pb("conf state", meta.get_conf_state())?,
            );
            last_index = pos.index;
            new_snap_pos = Some((pos, meta.get_conf_state().clone()));
        }
        if let Some(first) = entries.first() {
            if first.index <= last_index {
                b.delete_range(
                    Cf::Log,
                    keys::log_key(first.index),
                    keys::log_key(last_index + 1),
                );
            }
            for e in entries {
                b.put(Cf::Log, keys::log_key(e.index), encode_pb("entry", e)?);
            }
        }
        if let Some(hs) = hs {
            b.put(Cf::Meta, keys::HARD_STATE, encode_pb("hard state", hs)?);
        }
        if b.is_empty() {
            return Ok(());
        }
        self.engine.write(b, sync)?;

        let mut st = self.st.borrow_mut();
        if let Some((pos, cs)) = new_snap_pos {
            st.truncated = pos;
            st.applied = pos;
            st.conf_state = cs;
            st.last_index = pos.index;
            st.cache.entries.clear();
            st.snapshot = None;
        }
        if let Some(last) = entries.last() {
            st.last_index = last.index;
            st.cache.append(entries);
        }
        if let Some(hs) = hs {
            st.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Persists a new commit index (no fsync: it can be recomputed).
    pub fn persist_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut hs = self.st.borrow().hard_state.clone();
        if hs.commit >= commit {
            return Ok(());
        }
        hs.commit = commit;
        let mut b = WriteBatch::new();
        b.put(Cf::Meta, keys::HARD_STATE, encode_pb("hard state", &hs)?);
        self.engine.write(b, false)?;
        self.st.borrow_mut().hard_state = hs;
        Ok(())
    }

    /// Writes the effects of applied entries together with the applied position and, when
    /// a configuration change was applied, the new conf state (no fsync: the log is
    /// durable and replays whatever a crash loses).
    pub fn persist_apply(
        &self,
        mut batch: WriteBatch,
        applied: Pos,
        conf_state: Option<&ConfState>,
    ) -> Result<(), StoreError> {
        batch.put(Cf::Meta, keys::APPLIED, applied.encode());
        if let Some(cs) = conf_state {
            batch.put(Cf::Meta, keys::CONF_STATE, encode_pb("conf state", cs)?);
        }
        self.engine.write(batch, false)?;
        let mut st = self.st.borrow_mut();
        st.applied = applied;
        if let Some(cs) = conf_state {
            st.conf_state = cs.clone();
        }
        st.snapshot = None;
        Ok(())
    }

    /// Removes log entries up to and including `to` (which must be applied).
    pub fn compact(&self, to: u64) -> Result<(), StoreError> {
        let (truncated, applied) = {
            let st = self.st.borrow();
            (st.truncated, st.applied)
        };
        if to <= truncated.index {
            return Ok(());
        }
        if to > applied.index {
            return Err(StoreError::Invalid(format!(
                "compact to {to} beyond applied {}",
                applied.index
            )));
        }
        let term = self.term_of(to)?;
        let pos = Pos::new(to, term);
        let mut b = WriteBatch::new();
        b.delete_range(Cf::Log, keys::log_key(0), keys::log_key(to + 1));
        b.put(Cf::Meta, keys::TRUNCATED, pos.encode());
        self.engine.write(b, false)?;
        let mut st = self.st.borrow_mut();
        st.truncated = pos;
        st.cache.compact_to(to);
        Ok(())
    }

    fn term_of(&self, idx: u64) -> Result<u64, StoreError> {
        {
            let st = self.st.borrow();
            if idx == st.truncated.index {
                return Ok(st.truncated.term);
            }
            if let Some(e) = st.cache.get(idx) {
                return Ok(e.term);
            }
        }
        match self.engine.get(Cf::Log, &keys::log_key(idx))? {
            Some(v) => Ok(decode_pb::<Entry>("entry", &v)?.term),
            None => Err(StoreError::Invalid(format!("log entry {idx} missing"))),
        }
    }

    /// Builds a snapshot of the applied state: state-machine data and address book read
    /// between two writes of the driver (so consistent), with applied index, term and conf
    /// state as metadata. Cached until the next apply.
    pub fn build_snapshot(&self) -> Result<Snapshot, StoreError> {
        if let Some(s) = &self.st.borrow().snapshot {
            return Ok(s.clone());
        }
        let (applied, cs) = {
            let st = self.st.borrow();
            (st.applied, st.conf_state.clone())
        };
        let mut payload = SnapshotPayload {
            format: SNAPSHOT_FORMAT,
            ..Default::default()
        };
        let mut size = 0usize;
        let max = self.max_snapshot_bytes;
        self.engine.scan(Cf::Sm, &[], None, &mut |k, v| {
            size += k.len() + v.len() + 8;
            payload.kvs.push(KvPair {
                key: k.to_vec(),
                value: v.to_vec(),
            });
            size <= max
        })?;
        self.engine.scan(Cf::Peers, &[], None, &mut |k, v| {
            if let (Ok(id), Ok(addr)) = (keys::peer_id(k), std::str::from_utf8(v)) {
                size += addr.len() + 16;
                payload.peers.push(PeerEntry {
                    id,
                    addr: addr.to_string(),
                });
            }
            true
        })?;
        self.engine.scan(Cf::Sessions, &[], None, &mut |k, v| {
            size += k.len() + v.len() + 8;
            payload.sessions.push(KvPair {
                key: k.to_vec(),
                value: v.to_vec(),
            });
            size <= max
        })?;
        let data = payload.encode_to_vec();
        if size > max || data.len() > max {
            return Err(StoreError::Invalid(format!(
                "snapshot exceeds the limit of {max} bytes"
            )));
        }
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied.index;
        meta.term = applied.term;
        meta.set_conf_state(cs);
        self.st.borrow_mut().snapshot = Some(snap.clone());
        Ok(snap)
    }

    fn read_entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        {
            // The cache, when it reaches back to `low`, holds every entry up to the last
            // index (it is contiguous and always ends at the last index).
            let st = self.st.borrow();
            if st.cache.first_index().is_some_and(|f| f <= low) {
                let mut size = 0u64;
                for i in low..high {
                    let Some(e) = st.cache.get(i) else { break };
                    size += u64::from(e.compute_size());
                    if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                        break;
                    }
                    out.push(e.clone());
                }
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        }
        let mut size = 0u64;
        let mut err = None;
        let mut expect = low;
        let mut stopped_by_size = false;
        let end = keys::log_key(high);
        self.engine
            .scan(Cf::Log, &keys::log_key(low), Some(&end), &mut |_, v| {
                size += v.len() as u64;
                if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                    stopped_by_size = true;
                    return false;
                }
                match decode_pb::<Entry>("entry", v) {
                    Ok(e) if e.index == expect => {
                        expect += 1;
                        out.push(e);
                        true
                    }
                    Ok(e) => {
                        err = Some(StoreError::corrupt(
                            "log",
                            format!("entry {} found where {expect} was expected", e.index),
                        ));
                        false
                    }
                    Err(e) => {
                        err = Some(e);
                        false
                    }
                }
            })?;
        if let Some(e) = err {
            return Err(e);
        }
        if out.is_empty() {
            return Err(StoreError::corrupt(
                "log",
                format!("entries [{low}, {high}) missing"),
            ));
        }
        if !stopped_by_size && out.len() as u64 != high - low {
            return Err(StoreError::corrupt(
                "log",
                format!("gap in entries [{low}, {high})"),
            ));
        }
        Ok(out)
    }
}

impl<E: KvEngine> raft::Storage for RaftStorage<E> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let st = self.st.borrow();
        Ok(RaftState::new(st.hard_state.clone(), st.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        {
            let st = self.st.borrow();
            if low <= st.truncated.index {
                return Err(raft::Error::Store(RaftStorageError::Compacted));
            }
            if high > st.last_index + 1 || low > high {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            }
        }
        if low == high {
            return Ok(Vec::new());
        }
        let mut ents = self.read_entries(low, high, max_size)?;
        raft::util::limit_size(&mut ents, max_size);
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        {
            let st = self.st.borrow();
            if idx == st.truncated.index {
                return Ok(st.truncated.term);
            }
            if idx < st.truncated.index {
                return Err(raft::Error::Store(RaftStorageError::Compacted));
            }
            if idx > st.last_index {
                return Err(raft::Error::Store(RaftStorageError::Unavailable));
            }
        }
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.st.borrow().truncated.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.st.borrow().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match self.build_snapshot() {
            Ok(s) if s.get_metadata().index >= request_index => Ok(s),
            Ok(_) => Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => {
                // raft-rs treats any other error as fatal; a snapshot that cannot be built
                // now is reported and retried later instead.
                tracing::error!(to, error = %e, "cannot build a snapshot");
                Err(raft::Error::Store(
                    RaftStorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
#[path = "storage_tests.rs"]
mod tests;
