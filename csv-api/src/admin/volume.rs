//! Admin messages of the cluster volume and of VHD images on it (issue 6): format and
//! status of the volume, creating VHD images, attaching them as NBD exports on a node,
//! import and export. Request tags 60–79 and response tags 60–79 of the admin oneofs.

use super::messages::{Space, Volume};

/// `csvadm volume format`: write the superblock on the LUN of the asked node, then record
/// the volume → `Response::VolumeStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeFormat {
    /// Extent size in bytes (0: the default).
    #[prost(uint64, tag = "1")]
    pub extent_size: u64,
    /// Label written in the superblock.
    #[prost(string, tag = "2")]
    pub label: String,
    /// Overwrite a LUN that holds a superblock already (never a recorded volume's).
    #[prost(bool, tag = "3")]
    pub force: bool,
}

/// The volume as this node sees it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeStatus {
    /// Answering node.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// The cluster's volume record.
    #[prost(message, optional, tag = "2")]
    pub volume: Option<Volume>,
    /// This node's LUN path (`describe()`), empty without `[volume]`.
    #[prost(string, tag = "3")]
    pub lun: String,
    /// `ok`, `unformatted`, `mismatch`, `unconfigured`, `error`.
    #[prost(string, tag = "4")]
    pub state: String,
    /// Detail of the state (what differs, the error).
    #[prost(string, tag = "5")]
    pub message: String,
    /// Superblock UUID read from the LUN, if any.
    #[prost(string, tag = "6")]
    pub superblock_uuid: String,
    /// Free space.
    #[prost(message, optional, tag = "7")]
    pub space: Option<Space>,
    /// VHDs attached on this node.
    #[prost(message, repeated, tag = "8")]
    pub attachments: Vec<Attachment>,
    /// Sequence of the newest valid metadata checkpoint on the LUN (0: none).
    #[prost(uint64, tag = "9")]
    pub checkpoint_sequence: u64,
    /// Raft index that checkpoint holds the catalog of.
    #[prost(uint64, tag = "10")]
    pub checkpoint_index: u64,
    /// Every node's LUN path state, as published in the cluster state (issue 13).
    #[prost(message, repeated, tag = "11")]
    pub paths: Vec<NodePath>,
    /// Bytes this node read and wrote through peers since it started.
    #[prost(uint64, tag = "12")]
    pub redirected_bytes: u64,
}

/// A node's LUN path state (docs/design/070 §6).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodePath {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    /// `direct`, `redirected`, `paused`, `quiescing`, `failing_back`; empty when the
    /// node published nothing (redirection off, or no volume yet).
    #[prost(string, tag = "2")]
    pub path: String,
    /// `healthy`, `io_errors`, `io_timeout`, `no_disk_connectivity`, `user_request`,
    /// `peer_lost`.
    #[prost(string, tag = "3")]
    pub reason: String,
    /// Since when (Unix ms, the node's clock).
    #[prost(uint64, tag = "4")]
    pub since_unix_ms: u64,
    /// The node its LUN calls go to (0: none).
    #[prost(uint64, tag = "5")]
    pub peer: u64,
    /// The operator asked for redirected access.
    #[prost(bool, tag = "6")]
    pub user_request: bool,
    /// Its node-to-node data address.
    #[prost(string, tag = "7")]
    pub data_addr: String,
    /// Redirected calls it served for others lately.
    #[prost(uint64, tag = "8")]
    pub load: u64,
}

/// `csvadm volume redirect --node N on|off` → `Response::VolumeStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeRedirect {
    #[prost(uint64, tag = "1")]
    pub node: u64,
    #[prost(bool, tag = "2")]
    pub on: bool,
}

/// `csvadm volume events`: path-state changes after `after` → `Response::PathEvents`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeEvents {
    #[prost(uint64, tag = "1")]
    pub after: u64,
    /// At most this many (0: 100; at most 1,000).
    #[prost(uint32, tag = "2")]
    pub limit: u32,
}

/// One recorded path-state change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathEvent {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The log index that recorded it.
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(uint64, tag = "3")]
    pub node: u64,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub reason: String,
    #[prost(uint64, tag = "6")]
    pub peer: u64,
    #[prost(uint64, tag = "7")]
    pub since_unix_ms: u64,
}

/// Path-state changes, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PathEvents {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<PathEvent>,
}

/// `csvadm vhd create`: record, allocate and write a VHD image → `Response::Vhd`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdNew {
    /// Unique name (also the NBD export name).
    #[prost(string, tag = "1")]
    pub name: String,
    /// `VhdKind` (differencing when `parent` is set).
    #[prost(enumeration = "super::VhdKind", tag = "2")]
    pub kind: i32,
    /// Virtual size in bytes (ignored for a differencing image: the parent's).
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Parent VHD name (differencing).
    #[prost(string, tag = "4")]
    pub parent: String,
}

/// `csvadm vhd attach` → `Response::Attachment`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdAttach {
    /// VHD name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Node that serves the export (0: the addressed node). Another node is asked
    /// through the replicated log (docs/design/040 §6.1).
    #[prost(uint64, tag = "2")]
    pub node: u64,
    /// Shared read-only hold and a read-only export.
    #[prost(bool, tag = "3")]
    pub read_only: bool,
}

/// `csvadm vhd detach` → `Response::Done`. Tag 1 is `VhdName`'s, so an older client's
/// `VhdName` decodes as a detach on the addressed node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdDetach {
    /// VHD name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Node that detaches it (0: the addressed node). Another node is asked through the
    /// replicated log.
    #[prost(uint64, tag = "2")]
    pub node: u64,
}

/// One attached VHD.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attachment {
    /// VHD name = export name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// VHD id.
    #[prost(uint64, tag = "2")]
    pub vhd: u64,
    /// Serving node.
    #[prost(uint64, tag = "3")]
    pub node: u64,
    /// Read-only.
    #[prost(bool, tag = "4")]
    pub read_only: bool,
    /// Hold generation (the fencing token of a writer).
    #[prost(uint64, tag = "5")]
    pub generation: u64,
    /// NBD Unix socket of the node.
    #[prost(string, tag = "6")]
    pub socket: String,
    /// NBD URI to connect to.
    #[prost(string, tag = "7")]
    pub uri: String,
    /// NBD TCP address, when configured.
    #[prost(string, tag = "8")]
    pub tcp: String,
    /// Set when the VHD is no longer exported because its final flush failed: the node
    /// keeps the hold (no other node may write it) until `vhd detach` succeeds or the
    /// VHD is attached again (docs/design/042 §8).
    #[prost(string, tag = "9")]
    pub error: String,
    /// How the serving node reaches the LUN now: `direct`, `redirected`, ... (empty:
    /// redirection off).
    #[prost(string, tag = "10")]
    pub path: String,
}

/// VHDs attached on the addressed node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attachments {
    /// Attachments by name.
    #[prost(message, repeated, tag = "1")]
    pub attachments: Vec<Attachment>,
}

/// A VHD by name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdName {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `csvadm vhd import FILE NAME`: copy a local VHD or raw file (on the node's host) into
/// a new VHD on the volume → `Response::Vhd`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdImport {
    /// Absolute path on the node's host.
    #[prost(string, tag = "1")]
    pub path: String,
    /// New VHD name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Progress id chosen by the client (0: not tracked), see [`OperationProgress`].
    #[prost(uint64, tag = "3")]
    pub op_id: u64,
}

/// `csvadm vhd export NAME FILE`: write the VHD's exact bytes to a new local file on the
/// node's host → `Response::Done`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdExport {
    /// VHD name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Absolute path of the new file.
    #[prost(string, tag = "2")]
    pub path: String,
    /// Progress id chosen by the client (0: not tracked), see [`OperationProgress`].
    #[prost(uint64, tag = "3")]
    pub op_id: u64,
}

/// `csvadm volume recover`: rebuild this (new, empty) cluster's volume record and VHD
/// catalog from the newest checkpoint on the LUN → `Response::VolumeStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VolumeRecover {
    /// LUN to read (a path or NBD URI on the node's host); empty: the node's `[volume]`.
    #[prost(string, tag = "1")]
    pub lun: String,
}

/// `csvadm vhd expand NAME --size SIZE` / `vhd compact NAME`: maintenance of a detached
/// VHD (the node takes the write hold for the operation) → `Response::Vhd`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdMaintain {
    /// VHD name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// New virtual size (expand); 0: compact.
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Progress id chosen by the client (0: not tracked), see [`OperationProgress`].
    #[prost(uint64, tag = "3")]
    pub op_id: u64,
}

/// `csvadm vhd merge CHILD`: write a detached differencing child's sectors into its
/// detached parent (which has no other child), then delete the child → `Response::Vhd`
/// (the parent's record).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VhdMerge {
    /// The child's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Progress id chosen by the client (0: not tracked), see [`OperationProgress`].
    #[prost(uint64, tag = "2")]
    pub op_id: u64,
}

/// How far a long operation (import, export, merge, compact) running on the addressed
/// node got → `Response::Progress`. The client picks a random non-zero `op_id`, sends it
/// with the operation on one connection and asks for it on another; the entry exists
/// while the operation runs (`NotFound` before it starts and after it ends).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperationProgress {
    /// The operation's id.
    #[prost(uint64, tag = "1")]
    pub op_id: u64,
}

/// A running operation's progress.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Progress {
    /// The operation's id.
    #[prost(uint64, tag = "1")]
    pub op_id: u64,
    /// `import`, `export`, `merge`, `compact`, `expand`.
    #[prost(string, tag = "2")]
    pub kind: String,
    /// The VHD it works on.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Units done.
    #[prost(uint64, tag = "4")]
    pub done: u64,
    /// Units in all (0: not known yet).
    #[prost(uint64, tag = "5")]
    pub total: u64,
    /// `bytes` or `blocks`.
    #[prost(string, tag = "6")]
    pub unit: String,
    /// Milliseconds since the operation started.
    #[prost(uint64, tag = "7")]
    pub elapsed_ms: u64,
}
