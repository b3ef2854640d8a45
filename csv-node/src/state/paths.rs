//! Path states of the nodes (records; their transitions are in `path_apply.rs`) (docs/design/070 §6): each node's published LUN path mode
//! with its reason, peer, load and data address; the operator's standing redirect
//! requests; and a bounded history of mode changes (`csvadm volume events`). Keys
//! `p/<node>` (record) and `e/<seq>` (history), JSON.

use std::collections::BTreeMap;

use csv_api::NodeId;
use meta_store::{KvRead, KvWrite};
use serde::{Deserialize, Serialize};

use super::keys::{ids_of, json, key, parse, scan_prefix};

const PATH: &[u8] = b"p/";
const EVENT: &[u8] = b"e/";
/// Path-state changes kept (oldest dropped first).
pub const MAX_PATH_EVENTS: usize = 512;

/// A node's published path state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRecord {
    pub node: NodeId,
    /// `direct`, `quiescing`, `redirected`, `paused`, `failing_back`
    /// (`redirector::health::Mode`); empty before the node published anything.
    pub mode: String,
    /// Why (`redirector::health::Reason`).
    pub reason: String,
    /// The peer its calls go to.
    pub peer: Option<NodeId>,
    /// When the mode began, by the node's wall clock (a value it proposes).
    pub since_unix_ms: u64,
    /// Redirected calls it serves for others (recent count): peers prefer low loads.
    pub load: u64,
    /// Its node-to-node data address (`ip:port`).
    pub data_addr: String,
    /// After how long without an answer its sessions are closed for sure (session
    /// lease plus twice its call bound), milliseconds.
    pub session_bound_ms: u64,
    /// The operator asked for redirected access (`csvadm volume redirect`).
    pub user_redirect: bool,
}

impl PathRecord {
    /// A node that published nothing yet.
    pub fn empty(node: NodeId) -> PathRecord {
        PathRecord {
            node,
            mode: String::new(),
            reason: String::new(),
            peer: None,
            since_unix_ms: 0,
            load: 0,
            data_addr: String::new(),
            session_bound_ms: 0,
            user_redirect: false,
        }
    }
}

/// One recorded change of a node's mode, reason or peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathEvent {
    pub seq: u64,
    /// The log index that recorded it.
    pub index: u64,
    pub node: NodeId,
    pub mode: String,
    pub reason: String,
    pub peer: Option<NodeId>,
    pub since_unix_ms: u64,
}

/// The nodes' path states and their history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathTable {
    records: BTreeMap<NodeId, PathRecord>,
    events: BTreeMap<u64, PathEvent>,
}

/// What a node publishes (`SetPathState`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathUpdate {
    pub mode: String,
    pub reason: String,
    pub peer: Option<NodeId>,
    pub since_unix_ms: u64,
    pub load: u64,
    pub data_addr: String,
    pub session_bound_ms: u64,
}

impl PathTable {
    pub fn records(&self) -> impl Iterator<Item = &PathRecord> {
        self.records.values()
    }

    pub fn get(&self, node: NodeId) -> Option<&PathRecord> {
        self.records.get(&node)
    }

    /// Events after `after`, at most `limit`.
    pub fn events(&self, after: u64, limit: usize) -> Vec<PathEvent> {
        self.events
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect()
    }

    pub(super) fn hash_into(&self, put: &mut dyn FnMut(&[u8], &[u8])) {
        for r in self.records.values() {
            put(PATH, &json(r));
        }
        for e in self.events.values() {
            put(EVENT, &json(e));
        }
    }

    pub(super) fn load(r: &dyn KvRead) -> Result<PathTable, String> {
        let mut t = PathTable::default();
        scan_prefix(r, PATH, |k, v| {
            let id = ids_of("path key", k, PATH, 1)?[0];
            let rec: PathRecord = parse("path", v)?;
            if rec.node.0 != id {
                return Err(format!("path record {id} names {}", rec.node));
            }
            t.records.insert(rec.node, rec);
            Ok(())
        })?;
        scan_prefix(r, EVENT, |k, v| {
            let seq = ids_of("path event key", k, EVENT, 1)?[0];
            let e: PathEvent = parse("path event", v)?;
            if e.seq != seq {
                return Err(format!("path event {seq} names {}", e.seq));
            }
            t.events.insert(seq, e);
            Ok(())
        })?;
        Ok(t)
    }

    pub(super) fn put(&mut self, rec: PathRecord, w: &mut dyn KvWrite) {
        w.put(&key(PATH, &[rec.node.0]), &json(&rec));
        self.records.insert(rec.node, rec);
    }

    pub(super) fn remove(&mut self, node: NodeId, w: &mut dyn KvWrite) {
        if self.records.remove(&node).is_some() {
            w.delete(&key(PATH, &[node.0]));
        }
    }

    pub(super) fn record_event(&mut self, e: PathEvent, w: &mut dyn KvWrite) {
        w.put(&key(EVENT, &[e.seq]), &json(&e));
        self.events.insert(e.seq, e);
        while self.events.len() > MAX_PATH_EVENTS {
            if let Some((seq, _)) = self.events.pop_first() {
                w.delete(&key(EVENT, &[seq]));
            }
        }
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.events.last_key_value().map_or(1, |(s, _)| s + 1)
    }
}
