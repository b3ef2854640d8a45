//! Commands, replies, queries and records of the cluster state machine, with their
//! encoding. Commands travel in the Raft log as `Versioned{v, cmd}` in serde_json: the
//! output is a pure function of the value (fields in declaration order, ordered maps), so
//! every replica decodes the same command, and lock-manager's commands are serde types
//! already. Every variant says when it is legal; an illegal command changes nothing and
//! answers an [`ApiError`] with a stable code.

use csv_api::error::ApiError;
use csv_api::{ClusterId, Epoch, ErrorCode, Generation, NodeId, VhdId, VolumeId};
use serde::{Deserialize, Serialize};

pub use super::runs::Run;

/// Version of the command encoding written by this build.
pub const COMMAND_VERSION: u32 = 1;

/// Cluster identity, set once by `InitCluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub id: ClusterId,
    pub name: String,
    /// Creation time (Unix ms, read by the proposer).
    pub created_unix_ms: u64,
    /// The node that created it.
    pub first_node: NodeId,
}

/// Raft role of a node record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// Votes.
    Voter,
    /// Replicates without a vote.
    Learner,
}

/// Lifecycle of a node record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Recorded; its raft membership change is in progress.
    Joining,
    /// A member.
    Active,
    /// Removed for good (the id is never reused).
    Removed,
}

/// A node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (raft id).
    pub id: NodeId,
    pub address: String,
    pub role: NodeRole,
    pub state: NodeState,
}

/// The volume record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    /// Volume UUID (as in the superblock).
    pub id: VolumeId,
    pub lun: String,
    pub description: String,
    /// LUN size in bytes.
    pub size: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Number of extents.
    pub extent_count: u64,
    /// Offset of extent 0.
    pub data_offset: u64,
}

/// VHD types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VhdKind {
    Fixed,
    Dynamic,
    /// Differencing (has a parent).
    Differencing,
}

/// VHD lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VhdState {
    /// Created in the catalog; its header is not written yet.
    Creating,
    /// Usable.
    Ready,
    /// Being deleted.
    Deleting,
}

/// A VHD record of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VhdRecord {
    pub id: VhdId,
    pub name: String,
    /// Type.
    pub kind: VhdKind,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Parent (differencing).
    pub parent: Option<VhdId>,
    /// Extent runs in file order.
    pub runs: Vec<Run>,
    /// Logical length of the extent file.
    pub length: u64,
    pub state: VhdState,
    /// Log index of its creation.
    pub created_index: u64,
}

impl VhdRecord {
    /// Extents mapped.
    pub fn extents(&self) -> u64 {
        self.runs.iter().map(|r| r.count).sum()
    }
}

/// A state-machine command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Names the cluster and records its first node (voter, active). Legal once; the
    /// same command again (same id) answers the existing identity.
    InitCluster {
        /// Cluster id (the one meta-store runs under).
        id: ClusterId,
        /// Name (1–255 bytes).
        name: String,
        /// Creation time.
        created_unix_ms: u64,
        node: NodeId,
        address: String,
    },
    /// Records a node being added (state joining). Legal after init when the id is new,
    /// or is joining already (a retry: address and role are updated). A removed id is
    /// refused: ids never return.
    AddNode {
        node: NodeId,
        address: String,
        /// Role it will have.
        role: NodeRole,
    },
    /// Marks a node active with `role` once its raft change is applied. Legal for a
    /// joining or active node.
    SetNodeRole { node: NodeId, role: NodeRole },
    /// Marks a node removed and returns its extent reservation to the free pool. Legal
    /// for a joining or active node.
    RemoveNode { node: NodeId },
    /// A node publishes its LUN path state (docs/design/070 §6). Legal for a recorded,
    /// not removed node, with a known mode and reason and a peer other than itself.
    SetPathState {
        node: NodeId,
        update: super::paths::PathUpdate,
    },
    /// The operator's standing request for redirected access of a node (`csvadm volume
    /// redirect --node N on|off`). Legal for a recorded, not removed node.
    SetRedirect { node: NodeId, on: bool },
    /// Creates the volume record (all extents free), or grows it: same id, LUN,
    /// extent size and data offset, a larger size and extent count (new extents free).
    SetVolume {
        /// The record.
        volume: VolumeRecord,
    },
    /// Creates a VHD in state creating with ceil(length / extent size) extents,
    /// best-fit contiguous. Legal with a volume, a unique valid name, a virtual size in
    /// 1 B–2040 GiB, a parent exactly for differencing VHDs (existing, not deleting),
    /// free space, and below the VHD limit.
    CreateVhd {
        name: String,
        /// Type.
        kind: VhdKind,
        virtual_size: u64,
        parent: Option<VhdId>,
        /// Initial extent-file length.
        length: u64,
    },
    /// Moves a VHD: creating → ready | deleting, ready → deleting; the same state is a
    /// no-op. Legal only for the VHD's valid writer at `generation` (a create or import
    /// holds the new VHD for writing while it fills it).
    SetVhdState {
        vhd: VhdId,
        state: VhdState,
        /// The writer.
        node: NodeId,
        /// Its write hold's generation.
        generation: Generation,
    },
    /// Deletes a VHD and frees its extents. Legal when no VHD names it as parent and the
    /// lock table holds nothing on it.
    DeleteVhd { vhd: VhdId },
    /// Moves `count` free extents (best fit, else the longest runs) into the node's
    /// reservation. Legal for an active node that is live at `epoch` in the lock table,
    /// within the per-node reservation bound. The reservation belongs to that epoch: it
    /// returns to the free pool when the epoch ends (expiry, leave, removal).
    ReserveExtents {
        node: NodeId,
        /// The node's epoch as it believes it.
        epoch: Epoch,
        /// Extents.
        count: u64,
    },
    /// Sets a VHD's whole extent map and length, as its writer's flush commits them
    /// (docs/design/042 §2): `runs` must be the first extents of the current map followed
    /// by runs from `node`'s reservation (current extents past that prefix are freed);
    /// `length` must fit. Legal only for the VHD's valid writer at `generation` (else
    /// `fenced`) on a VHD not being deleted. Idempotent: the same map again changes
    /// nothing, so a commit whose answer was lost is simply sent again.
    SetExtents {
        vhd: VhdId,
        /// The writer (its reservation supplies new runs).
        node: NodeId,
        /// Its write hold's generation.
        generation: Generation,
        /// The whole map, in file order.
        runs: Vec<Run>,
        /// The extent file's length.
        length: u64,
    },
    /// Records that the coordinator wrote a LUN checkpoint covering every catalog change
    /// up to `index` (its `sequence` on the LUN). Legal when `index` is not below the one
    /// recorded.
    CheckpointWritten {
        /// Checkpoint sequence number on the LUN.
        sequence: u64,
        /// Catalog changes up to this log index are in it.
        index: u64,
    },
    /// Rebuilds the volume record and the catalog from a LUN checkpoint (recovery).
    /// Legal on an initialised cluster with no volume and no VHDs, when the records are
    /// consistent (unique names and ids, disjoint runs inside the volume, parents present).
    RestoreCatalog {
        volume: VolumeRecord,
        /// The VHD records.
        vhds: Vec<VhdRecord>,
    },
    /// Records a VHD's grown virtual size (`vhd expand`, `vhd merge`). Legal for the VHD's
    /// valid writer at `generation`, on a VHD not being deleted, without children, with a
    /// size not below the recorded one.
    SetVirtualSize {
        vhd: VhdId,
        virtual_size: u64,
        /// The writer.
        node: NodeId,
        /// Its write hold's generation.
        generation: Generation,
    },
    /// A lock-manager command (legality as in `lock_manager::Command`). An expiry or a
    /// leave also returns the node's extent reservation to the free pool.
    Lock { command: lock_manager::Command },
    /// An attach or detach request addressed to another node, its claim, outcome,
    /// cancellation or deletion (legality in `remote::RemoteCommand`).
    Remote {
        command: super::remote::RemoteCommand,
    },
    /// A VM definition, placement or report (legality in `vms::VmCommand`).
    Vm { command: super::vms::VmCommand },
}

/// The versioned envelope of a command in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Versioned {
    /// [`COMMAND_VERSION`].
    pub v: u32,
    /// The command.
    pub cmd: Command,
}

impl Command {
    /// The log encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&Versioned {
            v: COMMAND_VERSION,
            cmd: self.clone(),
        })
        .expect("commands are plain data and always serialize")
    }

    /// Decodes [`Command::encode`]; any other input is a `malformed` error.
    pub fn decode(bytes: &[u8]) -> Result<Command, ApiError> {
        let v: Versioned = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::new(ErrorCode::Malformed, format!("command: {e}")))?;
        if v.v != COMMAND_VERSION {
            return Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "command version {} (this build applies {COMMAND_VERSION})",
                    v.v
                ),
            ));
        }
        Ok(v.cmd)
    }
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// `InitCluster`.
    Identity(ClusterIdentity),
    Node(NodeInfo),
    /// `SetVolume`.
    Volume(VolumeRecord),
    /// VHD and mapping commands (the record after the command; before it for a delete).
    Vhd(VhdRecord),
    /// Reservation commands: the runs moved.
    Runs {
        runs: Vec<Run>,
    },
    /// `SetExtents`: the record after it and the log index of the change (the flush
    /// waits for a checkpoint covering it).
    Extents {
        /// The record.
        vhd: VhdRecord,
        /// Log index of the command.
        index: u64,
    },
    /// `CheckpointWritten`: what is recorded now.
    Checkpoint(CheckpointState),
    Lock {
        /// The lock manager's outcome.
        outcome: lock_manager::Outcome,
    },
    /// Remote-request commands: the record after the command (before it for `Forget`).
    Remote {
        record: super::remote::RemoteRecord,
    },
    /// Path commands: the node's path record after the command.
    Path(super::paths::PathRecord),
    /// VM commands: the record after the command (before it for a delete).
    Vm(Box<super::vms::VmRecord>),
    /// A command with nothing to report.
    Done,
}

/// The encoded apply result.
pub type ApplyResult = Result<Reply, ApiError>;

/// Encodes an apply or query result.
pub fn encode_result<T: Serialize>(r: &Result<T, ApiError>) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_else(|e| {
        let err: Result<(), ApiError> = Err(ApiError::new(
            ErrorCode::Internal,
            format!("encode result: {e}"),
        ));
        serde_json::to_vec(&err).unwrap_or_default()
    })
}

/// Decodes an apply or query result.
pub fn decode_result<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ApiError> {
    match serde_json::from_slice::<Result<T, ApiError>>(bytes) {
        Ok(r) => r,
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("undecodable state-machine result: {e}"),
        )),
    }
}

/// Read-only queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Query {
    /// Identity and node records → [`QueryReply::Cluster`].
    Cluster,
    /// The volume → [`QueryReply::Volume`].
    Volume,
    /// A VHD → [`QueryReply::Vhd`].
    Vhd {
        /// Id.
        vhd: VhdId,
    },
    /// A VHD by name → [`QueryReply::Vhd`].
    VhdByName { name: String },
    /// A page of VHDs → [`QueryReply::VhdPage`].
    VhdList {
        /// Ids above this.
        after: u64,
        /// At most this many (1–1,000).
        limit: u32,
    },
    /// Free space and reservations → [`QueryReply::Space`].
    Space,
    /// The lock table's view of a VHD's owner → [`QueryReply::Owner`].
    Owner { vhd: VhdId },
    /// Lock-table queries (issue 5) → [`QueryReply::Locks`].
    Locks(super::locks::LockQuery),
    /// Remote attach/detach requests → [`QueryReply::Remote`].
    Remote(super::remote::RemoteQuery),
    /// The volume and every VHD record, one snapshot (the LUN checkpoint's payload) →
    /// [`QueryReply::Catalog`].
    Catalog,
    /// Catalog change and checkpoint indexes → [`QueryReply::Checkpoint`].
    Checkpoint,
    /// The nodes' path states and the path events after `after` (at most `limit`, up
    /// to 1,000) → [`QueryReply::Paths`].
    Paths { after: u64, limit: u32 },
    /// Every VM record, by id → [`QueryReply::Vms`].
    Vms,
    /// One VM by name → [`QueryReply::Vm`].
    Vm { name: String },
}

/// Where the LUN checkpoint stands against the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Log index of the last command that changed the catalog (volume or VHD records).
    pub catalog_index: u64,
    /// Catalog changes up to this index are in a checkpoint on the LUN.
    pub checkpoint_index: u64,
    /// That checkpoint's sequence number.
    pub sequence: u64,
}

/// Space summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// Extents in the volume.
    pub extent_count: u64,
    pub free_extents: u64,
    pub free_runs: u64,
    /// Longest free run.
    pub largest_free_run: u64,
    /// Extents mapped to VHDs.
    pub mapped_extents: u64,
    /// Reservations by node.
    pub reservations: Vec<(NodeId, Vec<Run>)>,
}

/// Query answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum QueryReply {
    /// Identity and nodes.
    Cluster {
        /// Identity, once initialised.
        identity: Option<ClusterIdentity>,
        /// Node records by id.
        nodes: Vec<NodeInfo>,
    },
    Volume {
        /// The record, if set.
        volume: Option<VolumeRecord>,
    },
    Vhd(VhdRecord),
    /// A page.
    VhdPage {
        /// Records.
        vhds: Vec<VhdRecord>,
        /// Next `after`, 0 at the end.
        next_after: u64,
        /// Catalog size.
        total: u64,
    },
    Space(SpaceInfo),
    /// Ownership.
    Owner {
        /// The lock view, if anything holds the VHD.
        owner: Option<lock_manager::OwnerView>,
    },
    /// Lock-table answers.
    Locks(super::locks::LockReply),
    /// Remote-request answers.
    Remote(super::remote::RemoteReply),
    /// Every VM record, by id.
    Vms {
        vms: Vec<super::vms::VmRecord>,
        /// Nodes drained for maintenance.
        drained: Vec<NodeId>,
    },
    Vm(Box<super::vms::VmRecord>),
    Catalog {
        /// The volume record, if set.
        volume: Option<VolumeRecord>,
        /// Every VHD record, by id.
        vhds: Vec<VhdRecord>,
        /// Checkpoint state at that snapshot (`catalog_index` is what it covers).
        checkpoint: CheckpointState,
    },
    Checkpoint(CheckpointState),
    Paths {
        paths: Vec<super::paths::PathRecord>,
        events: Vec<super::paths::PathEvent>,
    },
}

impl Query {
    /// The query encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("queries are plain data and always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_malformed() {
        let cmds = vec![
            Command::CreateVhd {
                name: "a".into(),
                kind: VhdKind::Fixed,
                virtual_size: 1 << 30,
                parent: None,
                length: 1 << 30,
            },
            Command::Lock {
                command: lock_manager::Command::Register { node: NodeId(1) },
            },
            Command::SetExtents {
                vhd: VhdId(1),
                node: NodeId(2),
                generation: Generation(3),
                runs: vec![Run { start: 1, count: 2 }],
                length: 5,
            },
        ];
        for c in cmds {
            assert_eq!(Command::decode(&c.encode()).expect("decode"), c);
        }
        for bad in [
            &b""[..],
            b"{}",
            b"[]",
            br#"{"v":1,"cmd":{"op":"nope"}}"#,
            br#"{"v":1,"cmd":{"op":"delete_vhd","vhd":1,"x":2}}"#,
            br#"{"v":1,"cmd":{"op":"delete_vhd","vhd":-1}}"#,
        ] {
            let e = Command::decode(bad).expect_err("refused");
            assert_eq!(e.code(), ErrorCode::Malformed, "{e}");
        }
        let e = Command::decode(br#"{"v":2,"cmd":{"op":"delete_vhd","vhd":1}}"#)
            .expect_err("future version");
        assert_eq!(e.code(), ErrorCode::UnsupportedVersion);
    }
}
