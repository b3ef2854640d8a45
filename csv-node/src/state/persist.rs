//! Keys and values of the cluster state in the state-machine column family, loading the
//! whole state back, and the state hash.
//!
//! Keys (integers big-endian so key order is numeric order): `c/identity`, `c/next_vhd`,
//! `c/checkpoint`,
//! `n/<node>`, `v/volume`, `h/<vhd>`, `f/<start>` (free run length), `r/<node><start>`
//! (reservation run length), `l/gen`, `l/n/<node>`, `l/v/<vhd>`, `q/<request id>`
//! (remote attach/detach requests). Records are JSON. A snapshot carries the whole
//! column family, so every prefix here travels with it and `load` rebuilds it.

use std::collections::BTreeMap;

use csv_api::{Generation, NodeId, VhdId};
use lock_manager::{LockState, NodeRecord, ReadHold, VhdRecord as LockVhd, Writer};
use meta_store::core::Fnv;
use meta_store::{KvRead, KvWrite};
use serde::{Deserialize, Serialize};

use super::alloc::Allocator;
use super::cluster::ClusterState;
use super::keys::{ids_of, json, key, parse, scan_prefix, u64_of};
use super::types::*;
use super::vhds::{NEXT_VHD, VHD, VhdTable};

const IDENTITY: &[u8] = b"c/identity";
const NODE: &[u8] = b"n/";
const VOLUME: &[u8] = b"v/volume";
const LOCK_GEN: &[u8] = b"l/gen";
const LOCK_NODE: &[u8] = b"l/n/";
const LOCK_VHD: &[u8] = b"l/v/";
const REMOTE: &[u8] = b"q/";
const CHECKPOINT: &[u8] = b"c/checkpoint";

/// A lock-table VHD record as persisted.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockVhdPersisted {
    writer: Option<Writer>,
    generation: Generation,
    readers: Vec<(NodeId, ReadHold)>,
}

pub(super) fn put_identity(w: &mut dyn KvWrite, v: &ClusterIdentity) {
    w.put(IDENTITY, &json(v));
}
pub(super) fn put_node(w: &mut dyn KvWrite, n: &NodeInfo) {
    w.put(&key(NODE, &[n.id.0]), &json(n));
}
pub(super) fn put_volume(w: &mut dyn KvWrite, v: &VolumeRecord) {
    w.put(VOLUME, &json(v));
}
pub(super) fn put_lock_generation(w: &mut dyn KvWrite, g: Generation) {
    w.put(LOCK_GEN, &g.0.to_be_bytes());
}
pub(super) fn put_lock_node(w: &mut dyn KvWrite, n: NodeId, rec: Option<&NodeRecord>) {
    match rec {
        Some(r) => w.put(&key(LOCK_NODE, &[n.0]), &json(r)),
        None => w.delete(&key(LOCK_NODE, &[n.0])),
    }
}
pub(super) fn put_lock_vhd(w: &mut dyn KvWrite, v: VhdId, rec: Option<&LockVhd>) {
    match rec {
        Some(r) => {
            let p = LockVhdPersisted {
                writer: r.writer,
                generation: r.generation,
                readers: r.readers.iter().map(|(k, v)| (*k, *v)).collect(),
            };
            w.put(&key(LOCK_VHD, &[v.0]), &json(&p));
        }
        None => w.delete(&key(LOCK_VHD, &[v.0])),
    }
}

pub(super) fn put_checkpoint(w: &mut dyn KvWrite, c: &CheckpointState) {
    w.put(CHECKPOINT, &json(c));
}

pub(super) fn put_remote(w: &mut dyn KvWrite, r: &super::remote::RemoteRecord) {
    w.put(&key(REMOTE, &[r.id]), &json(r));
}
pub(super) fn delete_remote(w: &mut dyn KvWrite, id: u64) {
    w.delete(&key(REMOTE, &[id]));
}

impl ClusterState {
    /// FNV-1a over the canonical encoding of every record in key order, then the lock
    /// table's own hash.
    pub(super) fn hash(&self) -> u64 {
        let mut h = Fnv::new();
        let mut put = |tag: &[u8], bytes: &[u8]| {
            h.write(tag);
            h.write(&(bytes.len() as u64).to_be_bytes());
            h.write(bytes);
        };
        if let Some(i) = &self.identity {
            put(IDENTITY, &json(i));
        }
        put(NEXT_VHD, &self.vhds.next_id().to_be_bytes());
        put(CHECKPOINT, &json(&self.checkpoint));
        for n in self.nodes.values() {
            put(NODE, &json(n));
        }
        if let Some(v) = &self.volume {
            put(VOLUME, &json(v));
        }
        for v in self.vhds.records() {
            put(VHD, &json(v));
        }
        self.alloc.hash_into(&mut put);
        put(LOCK_GEN, &self.locks.state_hash().to_be_bytes());
        for r in self.remote.values() {
            put(REMOTE, &json(r));
        }
        self.paths.hash_into(&mut put);
        self.vms.hash_into(&mut put);
        h.finish()
    }
}

/// Rebuilds the whole state from the persisted keys.
pub(super) fn load(r: &dyn KvRead) -> Result<ClusterState, String> {
    let mut s = ClusterState::new();
    let get = |k: &[u8]| r.get(k).map_err(|e| e.to_string());
    if let Some(v) = get(IDENTITY)? {
        s.identity = Some(parse("identity", &v)?);
    }
    if let Some(v) = get(VOLUME)? {
        s.volume = Some(parse("volume", &v)?);
    }
    if let Some(v) = get(CHECKPOINT)? {
        s.checkpoint = parse("checkpoint", &v)?;
    }
    scan_prefix(r, NODE, |k, v| {
        let id = ids_of("node key", k, NODE, 1)?[0];
        let n: NodeInfo = parse("node", v)?;
        if n.id.0 != id {
            return Err(format!("node record {id} names {}", n.id));
        }
        s.nodes.insert(n.id, n);
        Ok(())
    })?;
    s.vhds = VhdTable::load(r)?;

    s.alloc = Allocator::load(r)?;
    s.paths = super::paths::PathTable::load(r)?;
    s.vms = super::vms::VmTable::load(r)?;
    let mut lock_nodes = Vec::new();
    scan_prefix(r, LOCK_NODE, |k, v| {
        let id = ids_of("lock node key", k, LOCK_NODE, 1)?[0];
        lock_nodes.push((NodeId(id), parse::<NodeRecord>("lock node", v)?));
        Ok(())
    })?;
    let mut lock_vhds = Vec::new();
    scan_prefix(r, LOCK_VHD, |k, v| {
        let id = ids_of("lock vhd key", k, LOCK_VHD, 1)?[0];
        let p: LockVhdPersisted = parse("lock vhd", v)?;
        lock_vhds.push((
            VhdId(id),
            LockVhd {
                writer: p.writer,
                generation: p.generation,
                readers: p.readers.into_iter().collect::<BTreeMap<_, _>>(),
            },
        ));
        Ok(())
    })?;
    scan_prefix(r, REMOTE, |k, v| {
        let id = ids_of("remote request key", k, REMOTE, 1)?[0];
        let rec: super::remote::RemoteRecord = parse("remote request", v)?;
        if rec.id != id {
            return Err(format!("remote request {id:#x} names {:#x}", rec.id));
        }
        s.remote.insert(id, rec);
        Ok(())
    })?;
    if s.remote.len() > super::remote::MAX_REMOTE_RECORDS {
        return Err(format!(
            "{} remote requests stored, at most {} allowed",
            s.remote.len(),
            super::remote::MAX_REMOTE_RECORDS
        ));
    }
    let next_gen = match get(LOCK_GEN)? {
        Some(v) => Generation(u64_of("lock generation", &v)?),
        None => LockState::new().next_generation(),
    };
    s.locks = LockState::from_parts(next_gen, lock_nodes, lock_vhds).map_err(|e| e.to_string())?;
    Ok(s)
}
