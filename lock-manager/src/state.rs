//! `LockState`: the replicated lock table (node liveness records and VHD ownership
//! records), its invariants, queries, canonical snapshot and stable hash.
//!
//! Transitions live in `apply.rs`. Everything here is deterministic: ordered maps only,
//! no clock, no randomness, so every replica that applies the same log holds the same
//! state and the same `state_hash()`.

use crate::command::{Mode, NodeStatus};
use crate::error::LockError;
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use crate::view::{HoldView, NodeView, OwnerView, ReaderView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most nodes the table accepts (the product targets 2 to 64).
pub const MAX_NODES: usize = 1024;
/// Most ownership records (VHDs with at least one hold).
pub const MAX_RECORDS: usize = 262_144;
/// Largest snapshot `restore` accepts.
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;
/// Version of the snapshot format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// A node's liveness record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Current epoch; holds granted under an older one are void.
    pub epoch: Epoch,
    /// Liveness status.
    pub status: NodeStatus,
    /// Successful renewals so far (makes `ExpireNode` conditional).
    pub renewals: u64,
}

/// The writer of a VHD, valid while `epoch` is its node's current epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// The writing node.
    pub node: NodeId,
    /// The epoch it was granted under.
    pub epoch: Epoch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadHold {
    /// The epoch it was granted under (always the node's current one).
    pub epoch: Epoch,
    /// `Read` or `ReadDenyWrite`.
    pub mode: Mode,
    /// The hold's grant number.
    pub generation: Generation,
}

/// One VHD's ownership record; dropped when it holds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VhdRecord {
    /// The writer, valid or stale.
    pub writer: Option<Writer>,
    /// The generation of the latest write grant (the fencing token); 0 if none yet.
    pub generation: Generation,
    /// Read holds, one per node.
    pub readers: BTreeMap<NodeId, ReadHold>,
}

impl VhdRecord {
    pub(crate) fn is_empty(&self) -> bool {
        self.writer.is_none() && self.readers.is_empty()
    }
}

/// The replicated lock table. Change it only through [`LockState::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    /// The next grant number (every grant takes one; never reused).
    pub(crate) next_generation: u64,
    pub(crate) nodes: BTreeMap<NodeId, NodeRecord>,
    pub(crate) vhds: BTreeMap<VhdId, VhdRecord>,
}

impl Default for LockState {
    fn default() -> Self {
        LockState {
            next_generation: 1,
            nodes: BTreeMap::new(),
            vhds: BTreeMap::new(),
        }
    }
}

/// Canonical snapshot form: sorted vectors, so the bytes are a function of the state.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    version: u32,
    next_generation: u64,
    nodes: Vec<(NodeId, NodeRecord)>,
    vhds: Vec<SnapshotVhd>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotVhd {
    vhd: VhdId,
    writer: Option<Writer>,
    generation: Generation,
    readers: Vec<(NodeId, ReadHold)>,
}

impl LockState {
    /// An empty table.
    pub fn new() -> LockState {
        LockState::default()
    }

    /// The node's record, if it ever registered.
    pub fn node_record(&self, node: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&node)
    }

    /// The VHD's ownership record, if anything holds it.
    pub fn vhd_record(&self, vhd: VhdId) -> Option<&VhdRecord> {
        self.vhds.get(&vhd)
    }

    /// Whether `writer` is valid: its epoch is its node's current epoch.
    pub fn writer_is_valid(&self, writer: &Writer) -> bool {
        self.nodes
            .get(&writer.node)
            .is_some_and(|n| n.epoch == writer.epoch)
    }

    /// The VHD's valid writer and generation, if any.
    pub fn valid_writer(&self, vhd: VhdId) -> Option<(NodeId, Epoch, Generation)> {
        let rec = self.vhds.get(&vhd)?;
        let w = rec.writer.as_ref()?;
        self.writer_is_valid(w)
            .then_some((w.node, w.epoch, rec.generation))
    }

    /// `csvadm owner show`: the VHD's owner, generation and readers.
    pub fn owner(&self, vhd: VhdId) -> Option<OwnerView> {
        let rec = self.vhds.get(&vhd)?;
        Some(OwnerView {
            vhd,
            owner: rec.writer.map(|w| w.node),
            owner_epoch: rec.writer.map(|w| w.epoch),
            owner_valid: rec.writer.as_ref().is_some_and(|w| self.writer_is_valid(w)),
            generation: rec.generation,
            readers: rec
                .readers
                .iter()
                .map(|(&node, r)| ReaderView {
                    node,
                    epoch: r.epoch,
                    mode: r.mode,
                    generation: r.generation,
                })
                .collect(),
        })
    }

    /// `csvadm owner list`: every VHD with a hold, ascending.
    pub fn owners(&self) -> Vec<OwnerView> {
        self.vhds
            .keys()
            .filter_map(|&vhd| self.owner(vhd))
            .collect()
    }

    /// Every node's liveness record, ascending.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .map(|(&node, r)| NodeView {
                node,
                epoch: r.epoch,
                status: r.status,
                renewals: r.renewals,
            })
            .collect()
    }

    /// Every hold of `node` (valid or stale), ascending by VHD: what a restarted node
    /// may re-adopt or release.
    pub fn holds_of(&self, node: NodeId) -> Vec<HoldView> {
        let current = self.nodes.get(&node).map(|n| n.epoch);
        let mut out = Vec::new();
        for (&vhd, rec) in &self.vhds {
            if let Some(w) = rec.writer.filter(|w| w.node == node) {
                out.push(HoldView {
                    vhd,
                    mode: Mode::Write,
                    epoch: w.epoch,
                    generation: rec.generation,
                    valid: current == Some(w.epoch),
                });
            }
            if let Some(r) = rec.readers.get(&node) {
                out.push(HoldView {
                    vhd,
                    mode: r.mode,
                    epoch: r.epoch,
                    generation: r.generation,
                    valid: current == Some(r.epoch),
                });
            }
        }
        out
    }

    /// The generation the next grant will take (persisted by the host state machine).
    pub fn next_generation(&self) -> Generation {
        Generation(self.next_generation)
    }

    /// Every ownership record, ascending by VHD (for hosts that persist per record).
    pub fn vhd_records(&self) -> impl Iterator<Item = (VhdId, &VhdRecord)> {
        self.vhds.iter().map(|(k, v)| (*k, v))
    }

    /// Every node record, ascending.
    pub fn node_records(&self) -> impl Iterator<Item = (NodeId, &NodeRecord)> {
        self.nodes.iter().map(|(k, v)| (*k, v))
    }

    /// Rebuilds a table from its parts as a host persisted them record by record,
    /// refusing a set that breaks an invariant (never panics on bad input).
    pub fn from_parts(
        next_generation: Generation,
        nodes: impl IntoIterator<Item = (NodeId, NodeRecord)>,
        vhds: impl IntoIterator<Item = (VhdId, VhdRecord)>,
    ) -> Result<LockState, LockError> {
        let bad = |reason: String| LockError::BadSnapshot { reason };
        let mut state = LockState {
            next_generation: next_generation.0,
            ..LockState::default()
        };
        for (node, rec) in nodes {
            if state.nodes.insert(node, rec).is_some() {
                return Err(bad(format!("{node} appears twice")));
            }
        }
        for (vhd, rec) in vhds {
            if state.vhds.insert(vhd, rec).is_some() {
                return Err(bad(format!("{vhd} appears twice")));
            }
        }
        state.check_invariants().map_err(bad)?;
        Ok(state)
    }

    /// Number of ownership records.
    pub fn record_count(&self) -> usize {
        self.vhds.len()
    }

    /// The canonical snapshot: equal states give equal bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            next_generation: self.next_generation,
            nodes: self.nodes.iter().map(|(k, v)| (*k, *v)).collect(),
            vhds: self
                .vhds
                .iter()
                .map(|(&vhd, r)| SnapshotVhd {
                    vhd,
                    writer: r.writer,
                    generation: r.generation,
                    readers: r.readers.iter().map(|(k, v)| (*k, *v)).collect(),
                })
                .collect(),
        };
        serde_json::to_vec(&snap)
            .expect("a snapshot of plain numbers and vectors always serializes")
    }

    /// Rebuilds a table from `snapshot()` bytes, refusing anything malformed or that
    /// breaks an invariant (never panics on bad input).
    pub fn restore(bytes: &[u8]) -> Result<LockState, LockError> {
        let bad = |reason: String| LockError::BadSnapshot { reason };
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(bad(format!(
                "{} bytes exceeds {MAX_SNAPSHOT_BYTES}",
                bytes.len()
            )));
        }
        let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if snap.version != SNAPSHOT_VERSION {
            return Err(bad(format!(
                "version {} is not {SNAPSHOT_VERSION}",
                snap.version
            )));
        }
        let mut state = LockState {
            next_generation: snap.next_generation,
            ..LockState::default()
        };
        for (node, rec) in snap.nodes {
            if state.nodes.insert(node, rec).is_some() {
                return Err(bad(format!("{node} appears twice")));
            }
        }
        for v in snap.vhds {
            let mut readers = BTreeMap::new();
            for (node, r) in v.readers {
                if readers.insert(node, r).is_some() {
                    return Err(bad(format!("{node} reads {} twice", v.vhd)));
                }
            }
            let rec = VhdRecord {
                writer: v.writer,
                generation: v.generation,
                readers,
            };
            if state.vhds.insert(v.vhd, rec).is_some() {
                return Err(bad(format!("{} appears twice", v.vhd)));
            }
        }
        state.check_invariants().map_err(bad)?;
        Ok(state)
    }

    /// A stable 64-bit hash of the state (FNV-1a of the canonical snapshot): equal on
    /// every replica that applied the same commands, on every build and platform.
    pub fn state_hash(&self) -> u64 {
        fnv1a64(&self.snapshot())
    }

    /// Checks every invariant of the table; `Err` names the first one broken.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.next_generation == 0 {
            return Err("next generation is 0".into());
        }
        if self.nodes.len() > MAX_NODES {
            return Err(format!("{} nodes exceed {MAX_NODES}", self.nodes.len()));
        }
        if self.vhds.len() > MAX_RECORDS {
            return Err(format!("{} records exceed {MAX_RECORDS}", self.vhds.len()));
        }
        for (node, n) in &self.nodes {
            if n.epoch.0 == 0 {
                return Err(format!("{node} has epoch 0"));
            }
        }
        for (vhd, rec) in &self.vhds {
            if rec.is_empty() {
                return Err(format!("{vhd} has an empty record"));
            }
            if rec.generation.0 >= self.next_generation {
                return Err(format!("{vhd} generation is not below the next one"));
            }
            if let Some(w) = &rec.writer {
                let n = self
                    .nodes
                    .get(&w.node)
                    .ok_or(format!("{vhd} writer {} unknown", w.node))?;
                if w.epoch > n.epoch || w.epoch.0 == 0 {
                    return Err(format!(
                        "{vhd} writer epoch {} is not a past or current epoch",
                        w.epoch
                    ));
                }
                if w.epoch == n.epoch && n.status != NodeStatus::Live {
                    return Err(format!("{vhd} has a valid writer on a non-live node"));
                }
                if n.status == NodeStatus::Left {
                    return Err(format!("{vhd} is written by {} which left", w.node));
                }
                if rec.generation.0 == 0 {
                    return Err(format!("{vhd} has a writer at generation 0"));
                }
                if rec.readers.contains_key(&w.node) {
                    return Err(format!("{vhd} writer {} also reads", w.node));
                }
            }
            for (node, r) in &rec.readers {
                let n = self
                    .nodes
                    .get(node)
                    .ok_or(format!("{vhd} reader {node} unknown"))?;
                if n.status != NodeStatus::Live || r.epoch != n.epoch {
                    return Err(format!("{vhd} reader {node} is not live at its epoch"));
                }
                if !r.mode.is_read() {
                    return Err(format!("{vhd} reader {node} has mode write"));
                }
                if r.generation.0 == 0 || r.generation.0 >= self.next_generation {
                    return Err(format!("{vhd} reader {node} has an impossible generation"));
                }
                if r.mode == Mode::ReadDenyWrite && rec.writer.is_some() {
                    return Err(format!("{vhd} has a writer and a deny-write reader {node}"));
                }
            }
        }
        Ok(())
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn empty_state_round_trips_and_has_a_fixed_hash() {
        let s = LockState::new();
        let bytes = s.snapshot();
        assert_eq!(
            std::str::from_utf8(&bytes).expect("json"),
            r#"{"version":1,"next_generation":1,"nodes":[],"vhds":[]}"#
        );
        assert_eq!(LockState::restore(&bytes).expect("restores"), s);
        assert_eq!(s.state_hash(), fnv1a64(&bytes));
    }

    #[test]
    fn restore_refuses_garbage_and_broken_invariants() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1,2]",
            br#"{"version":2,"next_generation":1,"nodes":[],"vhds":[]}"#,
            br#"{"version":1,"next_generation":0,"nodes":[],"vhds":[]}"#,
            br#"{"version":1,"next_generation":1,"nodes":[[1,{"epoch":1,"status":"live","renewals":0}],[1,{"epoch":1,"status":"live","renewals":0}]],"vhds":[]}"#,
            br#"{"version":1,"next_generation":5,"nodes":[],"vhds":[{"vhd":1,"writer":{"node":9,"epoch":1},"generation":2,"readers":[]}]}"#,
            br#"{"version":1,"next_generation":5,"nodes":[],"vhds":[{"vhd":1,"writer":null,"generation":2,"readers":[]}]}"#,
            br#"{"version":1,"next_generation":1,"nodes":[],"vhds":[],"extra":1}"#,
        ] {
            let err = LockState::restore(bad).expect_err("must refuse");
            assert_eq!(err.code(), "bad_snapshot", "{err}");
        }
    }
}
