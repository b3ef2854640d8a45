//! Ownership and liveness messages (issue 5): `csvadm owner list|show|acquire|release|
//! move` and `csvadm node liveness`. One request ([`super::Request::Owner`]) and one
//! response ([`super::Response::Owner`]) of the admin oneofs carry them, each with its
//! own oneof, so the lock manager's protocol grows here without touching the others.

use super::messages::{Empty, VhdRef};

/// `Request::Owner`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerRequest {
    #[prost(oneof = "OwnerOp", tags = "1, 2, 3, 4, 5, 6")]
    pub op: Option<OwnerOp>,
}

/// Ownership operations; each names its answer.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OwnerOp {
    /// Every ownership record → [`OwnerAnswer::Owners`].
    #[prost(message, tag = "1")]
    List(Empty),
    /// One VHD's owner, plus the asked node's local fence → [`OwnerAnswer::Owner`].
    #[prost(message, tag = "2")]
    Show(VhdRef),
    /// Take a hold on the asked node (write: acquire, or take over an expired owner)
    /// → [`OwnerAnswer::Hold`].
    #[prost(message, tag = "3")]
    Acquire(OwnerAcquire),
    /// Drop the asked node's hold → [`OwnerAnswer::Owner`] (the record afterwards).
    #[prost(message, tag = "4")]
    Release(VhdRef),
    /// Cooperative hand-off of the write hold to another node → [`OwnerAnswer::Owner`].
    #[prost(message, tag = "5")]
    Move(OwnerMove),
    /// Node liveness records (with the coordinator's ages when asked on it) and the
    /// asked node's local fence → [`OwnerAnswer::Liveness`].
    #[prost(message, tag = "6")]
    Liveness(Empty),
}

/// `OwnerOp::Acquire`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerAcquire {
    #[prost(message, optional, tag = "1")]
    pub vhd: Option<VhdRef>,
    /// `write`, `read` or `read_deny_write` (empty: write).
    #[prost(string, tag = "2")]
    pub mode: String,
}

/// `OwnerOp::Move`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerMove {
    #[prost(message, optional, tag = "1")]
    pub vhd: Option<VhdRef>,
    /// The node that becomes the writer.
    #[prost(uint64, tag = "2")]
    pub to: u64,
}

/// `Response::Owner`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerReply {
    #[prost(oneof = "OwnerAnswer", tags = "1, 2, 3, 4")]
    pub answer: Option<OwnerAnswer>,
}

/// Ownership answers.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OwnerAnswer {
    /// `List`.
    #[prost(message, tag = "1")]
    Owners(OwnerList),
    /// `Show`, `Release`, `Move`.
    #[prost(message, tag = "2")]
    Owner(OwnerInfo),
    /// `Acquire`.
    #[prost(message, tag = "3")]
    Hold(HoldInfo),
    /// `Liveness`.
    #[prost(message, tag = "4")]
    Liveness(LivenessInfo),
}

/// Every ownership record.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerList {
    /// Ascending by VHD.
    #[prost(message, repeated, tag = "1")]
    pub owners: Vec<OwnerInfo>,
}

/// One VHD's ownership.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OwnerInfo {
    /// VHD id.
    #[prost(uint64, tag = "1")]
    pub vhd: u64,
    /// VHD name (empty when not in the catalog).
    #[prost(string, tag = "2")]
    pub name: String,
    /// The writer (0: none).
    #[prost(uint64, tag = "3")]
    pub owner: u64,
    /// The epoch it was granted under.
    #[prost(uint64, tag = "4")]
    pub owner_epoch: u64,
    /// False when the writer expired (takeover-able).
    #[prost(bool, tag = "5")]
    pub owner_valid: bool,
    /// The generation of the latest write grant.
    #[prost(uint64, tag = "6")]
    pub generation: u64,
    /// Read holds.
    #[prost(message, repeated, tag = "7")]
    pub readers: Vec<ReaderInfo>,
    /// The asked node's fence for this VHD (`Show` only).
    #[prost(message, optional, tag = "8")]
    pub local_fence: Option<LocalFence>,
}

/// One read hold.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReaderInfo {
    /// The reader.
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// Its epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// `read` or `read_deny_write`.
    #[prost(string, tag = "3")]
    pub mode: String,
    /// The hold's generation.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
}

/// A hold granted to the asked node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HoldInfo {
    /// VHD id.
    #[prost(uint64, tag = "1")]
    pub vhd: u64,
    #[prost(uint64, tag = "2")]
    pub node: u64,
    #[prost(string, tag = "3")]
    pub mode: String,
    /// The hold's generation.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
    /// Whether the node's write fence for it is open now.
    #[prost(bool, tag = "5")]
    pub fence_open: bool,
}

/// The asked node's local fence.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocalFence {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// Its epoch (0: not registered).
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// Whether the lease is valid now (the fence is open for held VHDs).
    #[prost(bool, tag = "3")]
    pub lease_valid: bool,
    /// Lease time left (ms).
    #[prost(uint64, tag = "4")]
    pub remaining_ms: u64,
    /// Holds of this node as its guard knows them.
    #[prost(message, repeated, tag = "5")]
    pub holds: Vec<LocalHoldInfo>,
    /// Holds lost with the epoch (oldest first, bounded).
    #[prost(message, repeated, tag = "6")]
    pub lost: Vec<LostHoldInfo>,
    /// Times the lease lapsed since the node started.
    #[prost(uint64, tag = "7")]
    pub lapses: u64,
    /// When the fence last closed by lapse (Unix ms; 0: never).
    #[prost(uint64, tag = "8")]
    pub last_lapse_unix_ms: u64,
    /// When it last reopened after a lapse (Unix ms; 0: never).
    #[prost(uint64, tag = "9")]
    pub last_reopen_unix_ms: u64,
    /// For `Show`: whether a write at the held generation would pass now.
    #[prost(bool, tag = "10")]
    pub write_open: bool,
    /// For `Show`: why not (empty when open).
    #[prost(string, tag = "11")]
    pub denied: String,
}

/// A hold in the local guard.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocalHoldInfo {
    /// VHD id.
    #[prost(uint64, tag = "1")]
    pub vhd: u64,
    #[prost(string, tag = "2")]
    pub mode: String,
    #[prost(uint64, tag = "3")]
    pub generation: u64,
    /// Its epoch.
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
    /// Closed for a hand-off in progress.
    #[prost(bool, tag = "5")]
    pub handing_off: bool,
}

/// A hold lost with the epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LostHoldInfo {
    /// VHD id.
    #[prost(uint64, tag = "1")]
    pub vhd: u64,
    #[prost(string, tag = "2")]
    pub mode: String,
    #[prost(uint64, tag = "3")]
    pub generation: u64,
    /// The epoch it was held under (0: none).
    #[prost(uint64, tag = "4")]
    pub old_epoch: u64,
    /// The node's epoch afterwards (0: must register).
    #[prost(uint64, tag = "5")]
    pub new_epoch: u64,
    /// When the loss was noticed (Unix ms).
    #[prost(uint64, tag = "6")]
    pub at_unix_ms: u64,
}

/// Liveness of every node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LivenessInfo {
    /// The asked node.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// Whether the asked node is the coordinator (ages are its tracker's).
    #[prost(bool, tag = "2")]
    pub coordinator: bool,
    /// Ascending by node.
    #[prost(message, repeated, tag = "3")]
    pub nodes: Vec<NodeLiveness>,
    /// The asked node's own fence.
    #[prost(message, optional, tag = "4")]
    pub local_fence: Option<LocalFence>,
    /// Outage budget (ms) and the derived lease, node lease and coordinator wait (ms).
    #[prost(uint64, repeated, tag = "5")]
    pub timing_ms: Vec<u64>,
}

/// One node's liveness.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeLiveness {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// Its epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// `live`, `expired` or `left`.
    #[prost(string, tag = "3")]
    pub status: String,
    /// Renewals applied so far.
    #[prost(uint64, tag = "4")]
    pub renewals: u64,
    /// Whether the coordinator's tracker follows it (the ages below are meaningful).
    #[prost(bool, tag = "5")]
    pub tracked: bool,
    /// Time since its last renewal was seen (or since the coordinator took over).
    #[prost(uint64, tag = "6")]
    pub since_renewal_ms: u64,
    /// Time before it may be expired (0: due).
    #[prost(uint64, tag = "7")]
    pub expires_in_ms: u64,
}

/// Names a VHD: digits are an id, anything else a name.
pub fn vhd_ref(s: &str) -> VhdRef {
    match s.parse::<u64>() {
        Ok(id) if id != 0 => VhdRef {
            id,
            name: String::new(),
        },
        _ => VhdRef {
            id: 0,
            name: s.to_string(),
        },
    }
}
