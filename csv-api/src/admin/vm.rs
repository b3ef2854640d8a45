//! VM messages (issue 14, docs/design/080): `csvadm vm create|list|show|start|stop|kill|
//! delete`. One request ([`super::Request::Vm`]) and one response
//! ([`super::Response::Vm`]) of the admin oneofs carry them, each with its own oneof.

use super::messages::Empty;

/// `Request::Vm`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmRequest {
    #[prost(oneof = "VmOp", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub op: Option<VmOp>,
}

/// VM operations; each names its answer.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum VmOp {
    /// Define a VM (stopped) → [`VmAnswer::Vm`].
    #[prost(message, tag = "1")]
    Create(VmDefinition),
    /// Every VM → [`VmAnswer::List`].
    #[prost(message, tag = "2")]
    List(Empty),
    /// One VM with its disks' owners → [`VmAnswer::Vm`].
    #[prost(message, tag = "3")]
    Show(VmName),
    /// Place and run it → [`VmAnswer::Vm`].
    #[prost(message, tag = "4")]
    Start(VmStart),
    /// Stop it (power-off request, or kill) → [`VmAnswer::Vm`].
    #[prost(message, tag = "5")]
    Stop(VmStop),
    /// Remove a stopped VM's definition (its VHDs stay) → [`VmAnswer::Vm`].
    #[prost(message, tag = "6")]
    Delete(VmName),
    /// Move a running VM to another node (live, or quick) → [`VmAnswer::Vm`] (the
    /// record with its migration under way).
    #[prost(message, tag = "7")]
    Migrate(VmMigrate),
    /// Mark a node unschedulable (`on`) or schedulable again → [`VmAnswer::List`]
    /// (every VM and the drained nodes after the change). Moving its VMs away is the
    /// caller's: `VmOp::Migrate` with `to` 0.
    #[prost(message, tag = "8")]
    Drain(VmDrain),
    /// Add a disk to a VM (hot when it runs) → [`VmAnswer::Vm`].
    #[prost(message, tag = "9")]
    DiskAdd(VmDiskChange),
    /// Remove a disk from a VM (hot when it runs) → [`VmAnswer::Vm`].
    #[prost(message, tag = "10")]
    DiskRemove(VmDiskChange),
}

/// `VmOp::Drain`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmDrain {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// Drained (unschedulable) or schedulable again.
    #[prost(bool, tag = "2")]
    pub on: bool,
}

/// `VmOp::DiskAdd`, `VmOp::DiskRemove`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmDiskChange {
    /// The VM.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The VHD.
    #[prost(string, tag = "2")]
    pub disk: String,
}

/// `VmOp::Migrate`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmMigrate {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    /// Stop the guest while its state moves (else live).
    #[prost(bool, tag = "3")]
    pub quick: bool,
}

/// A migration under way or ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmMigration {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub src: u64,
    #[prost(uint64, tag = "3")]
    pub dst: u64,
    /// `live` or `quick`.
    #[prost(string, tag = "4")]
    pub kind: String,
    /// Under way: `prepared` or `switched`; ended: `completed` or `aborted: <why>`.
    #[prost(string, tag = "5")]
    pub state: String,
    /// The disks' hand-off inside the switch-over pause (µs).
    #[prost(uint64, tag = "6")]
    pub handoff_us: u64,
    /// The guest's downtime and the total time as the source QEMU reported them (ms).
    #[prost(uint64, tag = "7")]
    pub downtime_ms: u64,
    #[prost(uint64, tag = "8")]
    pub total_ms: u64,
    /// Started (Unix ms) while under way; ended when over.
    #[prost(uint64, tag = "9")]
    pub at_unix_ms: u64,
}

/// What the operator defines.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmDefinition {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint32, tag = "2")]
    pub cpus: u32,
    #[prost(uint64, tag = "3")]
    pub memory_mib: u64,
    /// VHD names on the volume, in device order.
    #[prost(string, repeated, tag = "4")]
    pub disks: Vec<String>,
    /// A user-mode NIC.
    #[prost(bool, tag = "5")]
    pub nic: bool,
    /// Direct kernel boot (paths valid on every node); empty: none.
    #[prost(string, tag = "6")]
    pub kernel: String,
    #[prost(string, tag = "7")]
    pub initrd: String,
    #[prost(string, tag = "8")]
    pub append: String,
    /// Preferred nodes, in order.
    #[prost(uint64, repeated, tag = "9")]
    pub preferred: Vec<u64>,
    /// Restart priority after a node failure (0: never restarted elsewhere).
    #[prost(uint32, tag = "10")]
    pub priority: u32,
}

/// A VM by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmName {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `VmOp::Start`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmStart {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The node (0: the first schedulable preferred node, else the least loaded).
    #[prost(uint64, tag = "2")]
    pub node: u64,
}

/// `VmOp::Stop`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmStop {
    #[prost(string, tag = "1")]
    pub name: String,
    /// At once, without asking the guest.
    #[prost(bool, tag = "2")]
    pub kill: bool,
}

/// `Response::Vm`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmReply {
    #[prost(oneof = "VmAnswer", tags = "1, 2")]
    pub answer: Option<VmAnswer>,
}

/// VM answers.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum VmAnswer {
    #[prost(message, tag = "1")]
    Vm(Box<VmInfo>),
    #[prost(message, tag = "2")]
    List(VmList),
}

/// One VM.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, optional, tag = "2")]
    pub definition: Option<VmDefinition>,
    /// Where it runs or should run (0: never placed).
    #[prost(uint64, tag = "3")]
    pub node: u64,
    /// `running` or `stopped`.
    #[prost(string, tag = "4")]
    pub want: String,
    /// Its node's last report: `stopped`, `starting`, `running`, `paused`, `stopping`,
    /// `failed`.
    #[prost(string, tag = "5")]
    pub state: String,
    #[prost(string, tag = "6")]
    pub detail: String,
    /// Since when (Unix ms, the node's clock).
    #[prost(uint64, tag = "7")]
    pub since_unix_ms: u64,
    /// When its guest started running (Unix ms; 0: not running).
    #[prost(uint64, tag = "8")]
    pub started_unix_ms: u64,
    /// The run (bumped at each start).
    #[prost(uint64, tag = "9")]
    pub incarnation: u64,
    /// Its disks' owners (`Show` only).
    #[prost(message, repeated, tag = "10")]
    pub disks: Vec<VmDisk>,
    /// The migration under way.
    #[prost(message, optional, tag = "11")]
    pub migration: Option<VmMigration>,
    /// How the last one ended.
    #[prost(message, optional, tag = "12")]
    pub last_migration: Option<VmMigration>,
}

/// A disk of a VM and its writer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmDisk {
    #[prost(string, tag = "1")]
    pub name: String,
    /// The node holding its write hold (0: none).
    #[prost(uint64, tag = "2")]
    pub owner: u64,
    #[prost(bool, tag = "3")]
    pub owner_valid: bool,
    #[prost(uint64, tag = "4")]
    pub generation: u64,
}

/// Every VM, by id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmList {
    #[prost(message, repeated, tag = "1")]
    pub vms: Vec<VmInfo>,
    /// Nodes drained for maintenance (no VM is placed on them).
    #[prost(uint64, repeated, tag = "2")]
    pub drained: Vec<u64>,
}
