//! The VM table (docs/design/080 §1): each VM's definition (changed only by the
//! operator), its placement (`node`, `want`) and the last report of the node that runs
//! it. Transitions are in `vm_apply.rs`. Keys `w/<id>` (record, JSON) and `c/next_vm`.

use std::collections::BTreeMap;

use csv_api::NodeId;
use meta_store::{KvRead, KvWrite};
use serde::{Deserialize, Serialize};

use super::keys::{ids_of, json, key, parse, scan_prefix, u64_of};

const VM: &[u8] = b"w/";
const NEXT_VM: &[u8] = b"c/next_vm";
/// Nodes drained for maintenance (no VM is placed there).
const DRAINED: &[u8] = b"u/";
/// Most VM records.
pub const MAX_VMS: usize = 4_096;
/// Most disks of one VM.
pub const MAX_VM_DISKS: usize = 16;
/// Most vCPUs of one VM.
pub const MAX_VM_CPUS: u32 = 256;
/// Smallest and largest memory of one VM, MiB.
pub const MIN_VM_MEMORY_MIB: u64 = 16;
pub const MAX_VM_MEMORY_MIB: u64 = 4 << 20;
/// Longest kernel, initrd path or kernel command line (bytes).
pub const MAX_BOOT_BYTES: usize = 4_096;
/// Longest report detail (bytes; longer ones are cut).
pub const MAX_DETAIL_BYTES: usize = 1_024;

/// What the operator defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// VHD names on the volume, in device order.
    pub disks: Vec<String>,
    /// A user-mode NIC.
    pub nic: bool,
    /// Direct kernel boot (paths valid on every node); empty: none.
    pub kernel: String,
    pub initrd: String,
    pub append: String,
    /// Nodes it prefers, in order.
    pub preferred: Vec<NodeId>,
    /// Restart priority after a node failure (0: never restarted elsewhere).
    pub priority: u32,
    /// Each disk's device slot (its PCIe root port), kept while the VM lives so a disk
    /// added or removed hot leaves the others where the guest found them (set by the
    /// state machine; empty in records older than hot-plug: the disks' indexes).
    #[serde(default)]
    pub slots: Vec<u32>,
}

impl VmDef {
    /// Each disk with its device slot.
    pub fn disk_slots(&self) -> Vec<(u32, &str)> {
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let slot = if self.slots.len() == self.disks.len() {
                    self.slots[i]
                } else {
                    i as u32
                };
                (slot, d.as_str())
            })
            .collect()
    }
}

/// Whether the VM should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Want {
    Running,
    Stopped,
}

/// What the node running a VM reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Never started, or stopped and reported so.
    Stopped,
    /// Placed; its node is attaching disks and starting QEMU.
    Starting,
    Running,
    /// QEMU runs, the guest is paused (the detail says why: an I/O error, ...).
    Paused,
    /// Its node is stopping it.
    Stopping,
    /// Its node could not start or keep it (the detail says why).
    Failed,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Failed => "failed",
        }
    }

    /// A QEMU process may exist for it.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }
}

/// A VM record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    pub id: u64,
    pub def: VmDef,
    /// Where it runs or should run (None: never placed).
    pub node: Option<NodeId>,
    pub want: Want,
    /// A stop kills QEMU instead of asking the guest to power off.
    pub kill: bool,
    /// Bumped at each placement: a report names the run it is about.
    pub incarnation: u64,
    /// The last report of its node.
    pub state: VmState,
    pub detail: String,
    /// Since when (Unix ms, the reporting node's clock).
    pub since_unix_ms: u64,
    /// When its guest last started running (Unix ms; 0: not running).
    pub started_unix_ms: u64,
    /// The log index of its creation.
    pub created_index: u64,
    /// The migration under way (docs/design/080 §4).
    #[serde(default)]
    pub migration: Option<Migration>,
    /// How the last migration ended.
    #[serde(default)]
    pub last_migration: Option<MigrationResult>,
}

/// Live (RAM copied while the guest runs) or quick (guest stopped, state saved and
/// restored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    Live,
    Quick,
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationStep {
    /// Recorded; the destination starts its QEMU waiting for the state.
    Prepared,
    /// Every disk's write hold is the destination's (recorded only when the lock table
    /// says so): the source never runs the guest again.
    Switched,
}

/// A migration under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// The log index that recorded it.
    pub id: u64,
    pub src: NodeId,
    pub dst: NodeId,
    pub kind: MigrationKind,
    pub step: MigrationStep,
    /// Where the destination QEMU listens (`tcp:host:port`); empty until it does.
    pub dst_uri: String,
    /// When it was asked for (Unix ms, the proposer's clock).
    pub started_unix_ms: u64,
    /// The disks' hand-off time inside the switch-over pause (µs, from the source).
    pub handoff_us: u64,
}

/// How a migration ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationResult {
    pub id: u64,
    pub src: NodeId,
    pub dst: NodeId,
    pub kind: MigrationKind,
    /// `completed`, or `aborted: <reason>`.
    pub outcome: String,
    /// The disks' hand-off inside the switch-over pause (µs).
    pub handoff_us: u64,
    /// Guest downtime and total time as the source QEMU reports them (ms; 0 until the
    /// source reported them).
    pub downtime_ms: u64,
    pub total_ms: u64,
    pub ended_unix_ms: u64,
}

/// The VM records, by id, with a name index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmTable {
    records: BTreeMap<u64, VmRecord>,
    by_name: BTreeMap<String, u64>,
    next_id: u64,
    drained: std::collections::BTreeSet<NodeId>,
}

impl VmTable {
    pub fn records(&self) -> impl Iterator<Item = &VmRecord> {
        self.records.values()
    }

    pub fn by_name(&self, name: &str) -> Option<&VmRecord> {
        self.by_name.get(name).and_then(|id| self.records.get(id))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The VM whose definition names VHD `name`, if any.
    pub fn using_disk(&self, name: &str) -> Option<&VmRecord> {
        self.records
            .values()
            .find(|r| r.def.disks.iter().any(|d| d == name))
    }

    /// VMs that should run on `node`, or are migrating to it.
    pub fn placed_on(&self, node: NodeId) -> usize {
        self.records
            .values()
            .filter(|r| {
                r.want == Want::Running
                    && (r.node == Some(node) || r.migration.as_ref().is_some_and(|m| m.dst == node))
            })
            .count()
    }

    /// Whether `node` is drained (`csvadm node drain`).
    pub fn is_drained(&self, node: NodeId) -> bool {
        self.drained.contains(&node)
    }

    /// The drained nodes.
    pub fn drained(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.drained.iter().copied()
    }

    pub(super) fn set_drained(&mut self, node: NodeId, on: bool, w: &mut dyn KvWrite) {
        if on {
            w.put(&key(DRAINED, &[node.0]), b"1");
            self.drained.insert(node);
        } else {
            w.delete(&key(DRAINED, &[node.0]));
            self.drained.remove(&node);
        }
    }

    pub(super) fn take_id(&mut self, w: &mut dyn KvWrite) -> u64 {
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        w.put(NEXT_VM, &self.next_id.to_be_bytes());
        id
    }

    pub(super) fn put(&mut self, rec: VmRecord, w: &mut dyn KvWrite) {
        w.put(&key(VM, &[rec.id]), &json(&rec));
        self.by_name.insert(rec.def.name.clone(), rec.id);
        self.records.insert(rec.id, rec);
    }

    pub(super) fn remove(&mut self, id: u64, w: &mut dyn KvWrite) -> Option<VmRecord> {
        let r = self.records.remove(&id)?;
        self.by_name.remove(&r.def.name);
        w.delete(&key(VM, &[id]));
        Some(r)
    }

    pub(super) fn hash_into(&self, put: &mut dyn FnMut(&[u8], &[u8])) {
        put(NEXT_VM, &self.next_id.to_be_bytes());
        for r in self.records.values() {
            put(VM, &json(r));
        }
        for n in &self.drained {
            put(DRAINED, &n.0.to_be_bytes());
        }
    }

    pub(super) fn load(r: &dyn KvRead) -> Result<VmTable, String> {
        let mut t = VmTable::default();
        if let Some(v) = r.get(NEXT_VM).map_err(|e| e.to_string())? {
            t.next_id = u64_of("next vm", &v)?;
        }
        scan_prefix(r, VM, |k, v| {
            let id = ids_of("vm key", k, VM, 1)?[0];
            let rec: VmRecord = parse("vm", v)?;
            if rec.id != id {
                return Err(format!("vm record {id} names {}", rec.id));
            }
            if rec.id >= t.next_id.max(1) {
                return Err(format!(
                    "vm record {id} at or past the next id {}",
                    t.next_id
                ));
            }
            if t.by_name.insert(rec.def.name.clone(), id).is_some() {
                return Err(format!("two vm records named {:?}", rec.def.name));
            }
            t.records.insert(id, rec);
            Ok(())
        })?;
        scan_prefix(r, DRAINED, |k, _| {
            let id = ids_of("drained key", k, DRAINED, 1)?[0];
            t.drained.insert(NodeId(id));
            Ok(())
        })?;
        if t.records.len() > MAX_VMS {
            return Err(format!("{} vm records, at most {MAX_VMS}", t.records.len()));
        }
        Ok(t)
    }
}

/// A VM command (`Command::Vm`); each says when it is legal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "vm", rename_all = "snake_case", deny_unknown_fields)]
pub enum VmCommand {
    /// Defines a VM (stopped, not placed). Legal with a unique valid name, 1–256 vCPUs,
    /// 16 MiB–4 TiB memory, at most 16 distinct disks that are VHDs in the catalog and
    /// no other VM's, recorded preferred nodes, and below the VM limit.
    Create { def: VmDef },
    /// Removes a stopped VM's record (no process may exist for it). Its VHDs stay.
    Delete { name: String },
    /// Places the VM on `node` (or, when `None`, the first schedulable preferred node,
    /// else the schedulable node with the fewest VMs) and asks it to run there. Legal
    /// for a VM that is stopped or failed, or already running on that node (no-op); a
    /// node is schedulable when active, live in the lock table, and its published path
    /// is not `paused`.
    Start { name: String, node: Option<NodeId> },
    /// Asks the VM's node to stop it (`kill`: at once). Legal for any VM; a stopped VM
    /// stays stopped.
    Stop { name: String, kill: bool },
    /// The VM's node reports on run `incarnation`. Legal only from the node it is placed
    /// on, for its current incarnation. A report of `stopped` with `guest_off` (the guest
    /// powered itself off) also sets `want` to stopped.
    Report {
        name: String,
        node: NodeId,
        incarnation: u64,
        state: VmState,
        detail: String,
        since_unix_ms: u64,
        guest_off: bool,
    },
    /// Starts migrating a running VM to `to` (docs/design/080 §4). Legal for a VM that
    /// should run, runs (running or paused) on a node other than `to`, with no
    /// migration under way, to a schedulable node.
    Migrate {
        name: String,
        /// The destination (None: a preferred or the least loaded schedulable node
        /// other than the source).
        to: Option<NodeId>,
        kind: MigrationKind,
        started_unix_ms: u64,
    },
    /// The destination's QEMU listens at `uri`. Legal from the destination of
    /// migration `id` while it is prepared.
    MigrateReady {
        name: String,
        id: u64,
        node: NodeId,
        uri: String,
    },
    /// The source handed every disk to the destination. Legal from the source of
    /// migration `id` while it is prepared, and only when the lock table says the
    /// destination is the valid writer of every disk.
    MigrateSwitched {
        name: String,
        id: u64,
        node: NodeId,
        handoff_us: u64,
    },
    /// The destination runs the guest: the VM is placed there (a new incarnation,
    /// running). Legal from the destination of migration `id` once switched.
    MigrateCommit {
        name: String,
        id: u64,
        node: NodeId,
        ended_unix_ms: u64,
    },
    /// Ends migration `id` without moving the VM. Legal while it is prepared (after
    /// the switch the disks are the destination's: it completes or the VM is started
    /// there).
    MigrateAbort {
        name: String,
        id: u64,
        reason: String,
        ended_unix_ms: u64,
    },
    /// Adds (`add`) or removes a disk of a VM, hot when it runs (the runner plugs or
    /// unplugs the device). Legal with no migration under way; an added disk is a VHD
    /// of the catalog that no other VM names, in the lowest free slot.
    SetDisk {
        name: String,
        disk: String,
        add: bool,
    },
    /// Marks a node drained (no VM is placed there; `csvadm node drain`) or not
    /// (`node resume`). Legal for a recorded, not removed node.
    Drain { node: NodeId, on: bool },
    /// The source's figures of migration `id` (QEMU's downtime and total time). Legal
    /// while it is under way or just ended.
    MigrateStats {
        name: String,
        id: u64,
        downtime_ms: u64,
        total_ms: u64,
        handoff_us: u64,
    },
}
