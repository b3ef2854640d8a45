//! The admin envelope. Requests and responses are one `oneof` each; every request has one
//! response kind (see each request's doc) or an [`ErrorReply`].

use super::messages::*;

/// A request to a node's daemon.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminRequest {
    /// [`super::PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(
        oneof = "Request",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 19, 40, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 78, 79, 80, 81, 90, 100"
    )]
    pub request: Option<Request>,
}

/// Requests. The answer of each is named in its doc.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    /// Create a new cluster with this node as its only voter → [`Response::ClusterInit`].
    #[prost(message, tag = "2")]
    ClusterInit(ClusterInit),
    /// The node's view of the cluster → [`Response::Status`].
    #[prost(message, tag = "3")]
    Status(StatusRequest),
    /// Add a node (learner, then promoted unless `learner`) → [`Response::Membership`].
    #[prost(message, tag = "4")]
    NodeAdd(NodeAdd),
    /// Promote a learner to voter → [`Response::Membership`].
    #[prost(message, tag = "5")]
    NodePromote(NodeRef),
    /// Remove a node for good (its id is never reused) → [`Response::Membership`].
    #[prost(message, tag = "6")]
    NodeRemove(NodeRef),
    /// Move the coordinator role to a voter → [`Response::Done`].
    #[prost(message, tag = "7")]
    LeaderTransfer(NodeRef),
    /// The volume record → [`Response::Volume`].
    #[prost(message, tag = "8")]
    VolumeGet(Empty),
    /// Create the volume record, or grow it → [`Response::Volume`].
    #[prost(message, tag = "9")]
    VolumeSet(Volume),
    /// Create a VHD record and allocate its initial extents → [`Response::Vhd`].
    #[prost(message, tag = "10")]
    VhdCreate(VhdCreate),
    /// Delete a VHD record and free its extents → [`Response::Vhd`] (the deleted record).
    #[prost(message, tag = "11")]
    VhdDelete(VhdRef),
    /// One VHD record by id or name → [`Response::Vhd`].
    #[prost(message, tag = "12")]
    VhdGet(VhdRef),
    /// A page of VHD records by id → [`Response::VhdList`].
    #[prost(message, tag = "13")]
    VhdList(VhdList),
    // Tags 14 to 18 (VhdSetState, ExtentsReserve, ExtentsRelease, ExtentsMap,
    // ExtentsUnmap) were raw state-machine mutations no client needs; the data path makes
    // them itself, fenced by the writer's generation (docs/design/042 §11). Never reuse
    // them: an old client's request decodes as no request and is refused.
    /// Free space and reservations → [`Response::Space`].
    #[prost(message, tag = "19")]
    SpaceGet(Empty),
    /// Ownership and liveness (issue 5) → [`Response::Owner`].
    #[prost(message, tag = "40")]
    Owner(super::owner::OwnerRequest),
    /// Cluster volume requests (`super::volume`).
    #[prost(message, tag = "60")]
    VolumeFormat(super::volume::VolumeFormat),
    /// → [`Response::VolumeStatus`].
    #[prost(message, tag = "61")]
    VolumeStatus(Empty),
    /// → [`Response::Vhd`].
    #[prost(message, tag = "62")]
    VhdNew(super::volume::VhdNew),
    /// → [`Response::Attachment`].
    #[prost(message, tag = "63")]
    VhdAttach(super::volume::VhdAttach),
    /// → [`Response::Done`].
    #[prost(message, tag = "64")]
    VhdDetach(super::volume::VhdDetach),
    /// → [`Response::Attachments`].
    #[prost(message, tag = "65")]
    Attachments(Empty),
    /// → [`Response::Vhd`].
    #[prost(message, tag = "66")]
    VhdImport(super::volume::VhdImport),
    /// → [`Response::Done`].
    #[prost(message, tag = "67")]
    VhdExport(super::volume::VhdExport),
    /// → [`Response::VolumeStatus`].
    #[prost(message, tag = "68")]
    VolumeRecover(super::volume::VolumeRecover),
    /// → [`Response::Vhd`].
    #[prost(message, tag = "69")]
    VhdMaintain(super::volume::VhdMaintain),
    /// → [`Response::Vhd`] (the parent).
    #[prost(message, tag = "78")]
    VhdMerge(super::volume::VhdMerge),
    /// → [`Response::Progress`].
    #[prost(message, tag = "79")]
    OperationProgress(super::volume::OperationProgress),
    /// → [`Response::VolumeStatus`].
    #[prost(message, tag = "80")]
    VolumeRedirect(super::volume::VolumeRedirect),
    /// → [`Response::PathEvents`].
    #[prost(message, tag = "81")]
    VolumeEvents(super::volume::VolumeEvents),
    /// VM requests (`super::vm`) → [`Response::Vm`].
    #[prost(message, tag = "90")]
    Vm(super::vm::VmRequest),
    /// The node's metrics, as its endpoint serves them (refused with `invalid_state`
    /// when `[metrics] listen` is not set) → [`Response::Metrics`].
    #[prost(message, tag = "100")]
    NodeMetrics(Empty),
}

/// A response from a node's daemon.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminResponse {
    /// [`super::PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(
        oneof = "Response",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 40, 60, 61, 62, 69, 70, 90, 100"
    )]
    pub response: Option<Response>,
}

/// Responses.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    /// The request failed.
    #[prost(message, tag = "2")]
    Error(ErrorReply),
    /// The request succeeded and has nothing to report.
    #[prost(message, tag = "3")]
    Done(Empty),
    /// `ClusterInit`.
    #[prost(message, tag = "4")]
    ClusterInit(ClusterInitReply),
    /// `Status`.
    #[prost(message, tag = "5")]
    Status(Status),
    /// Membership changes.
    #[prost(message, tag = "6")]
    Membership(Membership),
    /// Volume requests.
    #[prost(message, tag = "7")]
    Volume(VolumeReply),
    /// VHD requests.
    #[prost(message, tag = "8")]
    Vhd(Vhd),
    /// `VhdList`.
    #[prost(message, tag = "9")]
    VhdList(VhdPage),
    /// Extent reservations.
    #[prost(message, tag = "10")]
    Extents(Extents),
    /// `SpaceGet`.
    #[prost(message, tag = "11")]
    Space(Space),
    /// `Owner`.
    #[prost(message, tag = "40")]
    Owner(super::owner::OwnerReply),
    /// `VolumeFormat`, `VolumeStatus`.
    #[prost(message, tag = "60")]
    VolumeStatus(super::volume::VolumeStatus),
    /// `VhdAttach`.
    #[prost(message, tag = "61")]
    Attachment(super::volume::Attachment),
    /// `Attachments`.
    #[prost(message, tag = "62")]
    Attachments(super::volume::Attachments),
    /// `OperationProgress`.
    #[prost(message, tag = "69")]
    Progress(super::volume::Progress),
    /// `VolumeEvents`.
    #[prost(message, tag = "70")]
    PathEvents(super::volume::PathEvents),
    /// `Vm`.
    #[prost(message, tag = "90")]
    Vm(super::vm::VmReply),
    /// `NodeMetrics`.
    #[prost(message, tag = "100")]
    Metrics(MetricsReply),
}
