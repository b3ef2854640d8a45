//! The admin message bodies shared by the request and response oneofs (see
//! `envelope`) and by the [`owner`](super::owner) and [`volume`](super::volume) messages.

/// No fields.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Empty {}

/// A failure: stable code number and name (`crate::ErrorCode`) and a message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorReply {
    /// `ErrorCode as u32`.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// `ErrorCode::name()` (for tools that do not know a newer code).
    #[prost(string, tag = "2")]
    pub name: String,
    /// Human-readable detail.
    #[prost(string, tag = "3")]
    pub message: String,
}

/// `ClusterInit` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClusterInit {
    /// Cluster name (1–255 bytes; empty picks "csv").
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `ClusterInit` answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClusterInitReply {
    /// The new cluster's id (UUID).
    #[prost(string, tag = "1")]
    pub cluster_id: String,
    /// The node that was initialised.
    #[prost(uint64, tag = "2")]
    pub node_id: u64,
}

/// `Status` request.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct StatusRequest {}

/// A node's view of the cluster.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    /// The node answering.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// `uninitialized`, `starting`, `member`, `removed`.
    #[prost(string, tag = "2")]
    pub node_state: String,
    /// Cluster id (empty before init or join).
    #[prost(string, tag = "3")]
    pub cluster_id: String,
    /// Cluster name (empty until the init command is applied here).
    #[prost(string, tag = "4")]
    pub cluster_name: String,
    /// This node's raft role: `leader`, `follower`, `candidate`, `pre_candidate`.
    #[prost(string, tag = "5")]
    pub role: String,
    /// The coordinator (raft leader) this node knows, 0 when none.
    #[prost(uint64, tag = "6")]
    pub coordinator: u64,
    /// Current term.
    #[prost(uint64, tag = "7")]
    pub term: u64,
    #[prost(uint64, tag = "8")]
    pub commit_index: u64,
    #[prost(uint64, tag = "9")]
    pub applied_index: u64,
    /// First index kept in the log.
    #[prost(uint64, tag = "10")]
    pub first_index: u64,
    /// Last index in the log.
    #[prost(uint64, tag = "11")]
    pub last_index: u64,
    /// Members and known nodes, by id.
    #[prost(message, repeated, tag = "12")]
    pub members: Vec<Member>,
    /// True when `match_index`/`lag` of members are known (only the coordinator knows).
    #[prost(bool, tag = "13")]
    pub progress_known: bool,
    /// Hash of the state machine at `applied_index` (equal on replicas at equal index).
    #[prost(uint64, tag = "14")]
    pub state_hash: u64,
    /// Hash of the persisted state-machine data at `applied_index`.
    #[prost(uint64, tag = "15")]
    pub persisted_hash: u64,
    /// Proposals this node holds (local and forwarded).
    #[prost(uint64, tag = "16")]
    pub pending_requests: u64,
}

/// One node as a status sees it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Member {
    /// Node id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Cluster (raft) address.
    #[prost(string, tag = "2")]
    pub address: String,
    /// `voter` or `learner` (raft configuration), `none` when not in it.
    #[prost(string, tag = "3")]
    pub role: String,
    /// `joining`, `active`, `removed` (node record); `unknown` without a record.
    #[prost(string, tag = "4")]
    pub state: String,
    /// `up`, `down` (heard from within an election timeout by the coordinator), or
    /// `unknown` when the answering node is not the coordinator.
    #[prost(string, tag = "5")]
    pub health: String,
    /// Highest log index known replicated on it (coordinator only).
    #[prost(uint64, tag = "6")]
    pub match_index: u64,
    /// Entries it lacks (coordinator only).
    #[prost(uint64, tag = "7")]
    pub lag: u64,
    /// True for the coordinator.
    #[prost(bool, tag = "8")]
    pub coordinator: bool,
}

/// Names a node.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct NodeRef {
    /// Node id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

/// `NodeAdd` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeAdd {
    /// The new node's id (never used before in this cluster).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its cluster address `host:port` (its `cluster.advertise`).
    #[prost(string, tag = "2")]
    pub address: String,
    /// Stay a learner (no vote).
    #[prost(bool, tag = "3")]
    pub learner: bool,
}

/// The raft configuration after a change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Membership {
    #[prost(uint64, repeated, tag = "1")]
    pub voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub learners: Vec<u64>,
}

/// The volume record: the LUN formatted as the cluster volume.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Volume {
    /// Volume UUID (as in the LUN superblock).
    #[prost(string, tag = "1")]
    pub volume_id: String,
    /// LUN identity (device serial, WWN or path) as the operator named it.
    #[prost(string, tag = "2")]
    pub lun: String,
    /// Free-form description.
    #[prost(string, tag = "3")]
    pub description: String,
    /// LUN size in bytes.
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// Extent size in bytes (power of two, 1 MiB–4 GiB).
    #[prost(uint64, tag = "5")]
    pub extent_size: u64,
    /// Number of extents.
    #[prost(uint64, tag = "6")]
    pub extent_count: u64,
    /// Byte offset of extent 0 on the LUN.
    #[prost(uint64, tag = "7")]
    pub data_offset: u64,
}

/// Volume answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeReply {
    /// The record, absent before the volume is set.
    #[prost(message, optional, tag = "1")]
    pub volume: Option<Volume>,
}

/// VHD types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VhdKind {
    /// Not set (refused).
    Unspecified = 0,
    Fixed = 1,
    /// Dynamic (sparse).
    Dynamic = 2,
    /// Differencing (has a parent).
    Differencing = 3,
}

/// VHD lifecycle states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VhdState {
    /// Not set.
    Unspecified = 0,
    /// Being created (its header is not written yet).
    Creating = 1,
    /// Usable.
    Ready = 2,
    /// Being deleted.
    Deleting = 3,
}

/// A run of consecutive extents.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct ExtentRun {
    /// First extent.
    #[prost(uint64, tag = "1")]
    pub start: u64,
    /// Number of extents.
    #[prost(uint64, tag = "2")]
    pub count: u64,
}

/// `VhdCreate` request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdCreate {
    /// Unique name (1–255 bytes, no `/` or NUL).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(enumeration = "VhdKind", tag = "2")]
    pub kind: i32,
    /// Virtual disk size in bytes.
    #[prost(uint64, tag = "3")]
    pub virtual_size: u64,
    /// Parent VHD id (differencing only; 0 = none).
    #[prost(uint64, tag = "4")]
    pub parent: u64,
    /// Initial length of the extent file in bytes: ceil(length / extent size) extents are
    /// allocated (best-fit contiguous).
    #[prost(uint64, tag = "5")]
    pub length: u64,
}

/// Names a VHD by id (non-zero) or else by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdRef {
    /// Id, or 0.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Name when `id` is 0.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `VhdList` request: records with id > `after`, at most `limit` (≤ 1,000; 0 = 100).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct VhdList {
    /// Start after this id.
    #[prost(uint64, tag = "1")]
    pub after: u64,
    /// Page size.
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// A VHD record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Vhd {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Unique name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Type.
    #[prost(enumeration = "VhdKind", tag = "3")]
    pub kind: i32,
    #[prost(uint64, tag = "4")]
    pub virtual_size: u64,
    /// Parent id (0 = none).
    #[prost(uint64, tag = "5")]
    pub parent: u64,
    /// Extent runs in file order.
    #[prost(message, repeated, tag = "6")]
    pub runs: Vec<ExtentRun>,
    /// Logical length of the extent file in bytes.
    #[prost(uint64, tag = "7")]
    pub length: u64,
    #[prost(enumeration = "VhdState", tag = "8")]
    pub state: i32,
    /// Log index that created it.
    #[prost(uint64, tag = "9")]
    pub created_index: u64,
}

/// A page of VHD records.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdPage {
    /// Records, ascending by id.
    #[prost(message, repeated, tag = "1")]
    pub vhds: Vec<Vhd>,
    /// Id to pass as `after` for the next page; 0 when this was the last.
    #[prost(uint64, tag = "2")]
    pub next_after: u64,
    /// Number of VHDs in the catalog.
    #[prost(uint64, tag = "3")]
    pub total: u64,
}

/// Runs of extents.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extents {
    #[prost(message, repeated, tag = "1")]
    pub runs: Vec<ExtentRun>,
}

/// Free space and reservations.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Space {
    /// Extents in the volume.
    #[prost(uint64, tag = "1")]
    pub extent_count: u64,
    #[prost(uint64, tag = "2")]
    pub free_extents: u64,
    #[prost(uint64, tag = "3")]
    pub free_runs: u64,
    /// Longest free run.
    #[prost(uint64, tag = "4")]
    pub largest_free_run: u64,
    /// Reserved extents per node.
    #[prost(message, repeated, tag = "5")]
    pub reservations: Vec<Reservation>,
    /// Extents mapped to VHDs.
    #[prost(uint64, tag = "6")]
    pub mapped_extents: u64,
}

/// A node's reservation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reservation {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// Reserved extents.
    #[prost(uint64, tag = "2")]
    pub extents: u64,
    #[prost(message, repeated, tag = "3")]
    pub runs: Vec<ExtentRun>,
}

/// `NodeMetrics`: the node's metrics (issue 16).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricsReply {
    /// The address the node's endpoint listens on (`GET /metrics` there serves the same).
    #[prost(string, tag = "1")]
    pub listen: String,
    /// Every family in the OpenMetrics text format (ends with `# EOF`).
    #[prost(string, tag = "2")]
    pub text: String,
}
