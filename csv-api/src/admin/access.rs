//! Which admin requests only read: what a peer of the admin socket's read-only group
//! (`[admin] read_only_group`, docs/design/100 §4) may send. Every request kind is
//! classified by an exhaustive match with no wildcard, so a new request cannot be added
//! without deciding. "Read-only" means the request changes nothing: no replicated
//! command, no hold, no attachment, no file written on the node's host, no LUN opened
//! from a path the caller names.

use super::envelope::Request;
use super::owner::{OwnerOp, OwnerRequest};
use super::vm::{VmOp, VmRequest};

impl Request {
    /// True when the request only reads state (allowed to read-only peers).
    pub fn is_read_only(&self) -> bool {
        match self {
            Request::Status(_)
            | Request::VolumeGet(_)
            | Request::VhdGet(_)
            | Request::VhdList(_)
            | Request::SpaceGet(_)
            | Request::VolumeStatus(_)
            | Request::Attachments(_)
            | Request::OperationProgress(_)
            | Request::VolumeEvents(_)
            | Request::NodeMetrics(_) => true,
            Request::Owner(o) => o.is_read_only(),
            Request::Vm(v) => v.is_read_only(),
            Request::ClusterInit(_)
            | Request::NodeAdd(_)
            | Request::NodePromote(_)
            | Request::NodeRemove(_)
            | Request::LeaderTransfer(_)
            | Request::VolumeSet(_)
            | Request::VhdCreate(_)
            | Request::VhdDelete(_)
            | Request::VolumeFormat(_)
            | Request::VhdNew(_)
            | Request::VhdAttach(_)
            | Request::VhdDetach(_)
            | Request::VhdImport(_)
            // Writes a file on the node's host, as the node's user.
            | Request::VhdExport(_)
            // Opens a LUN the caller names and rebuilds the catalog from it.
            | Request::VolumeRecover(_)
            | Request::VhdMaintain(_)
            | Request::VhdMerge(_)
            | Request::VolumeRedirect(_) => false,
        }
    }
}

impl OwnerRequest {
    /// True for `list`, `show` and `liveness`; an empty request (refused anyway) is not.
    pub fn is_read_only(&self) -> bool {
        match &self.op {
            Some(OwnerOp::List(_) | OwnerOp::Show(_) | OwnerOp::Liveness(_)) => true,
            Some(OwnerOp::Acquire(_) | OwnerOp::Release(_) | OwnerOp::Move(_)) | None => false,
        }
    }
}

impl VmRequest {
    /// True for `list` and `show`; an empty request (refused anyway) is not.
    pub fn is_read_only(&self) -> bool {
        match &self.op {
            Some(VmOp::List(_) | VmOp::Show(_)) => true,
            Some(
                VmOp::Create(_)
                | VmOp::Start(_)
                | VmOp::Stop(_)
                | VmOp::Delete(_)
                | VmOp::Migrate(_)
                | VmOp::Drain(_)
                | VmOp::DiskAdd(_)
                | VmOp::DiskRemove(_),
            )
            | None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{self as api, Empty, NodeRef, VhdRef};

    #[test]
    fn reads_are_read_only_and_changes_are_not() {
        let reads = [
            Request::Status(api::StatusRequest::default()),
            Request::VolumeGet(Empty {}),
            Request::VhdGet(VhdRef::default()),
            Request::VhdList(api::VhdList::default()),
            Request::SpaceGet(Empty {}),
            Request::VolumeStatus(Empty {}),
            Request::Attachments(Empty {}),
            Request::OperationProgress(Default::default()),
            Request::VolumeEvents(Default::default()),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::List(Empty {})),
            }),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::Show(VhdRef::default())),
            }),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::Liveness(Empty {})),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::List(Empty {})),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Show(Default::default())),
            }),
        ];
        for r in &reads {
            assert!(r.is_read_only(), "{r:?}");
        }
        let changes = [
            Request::ClusterInit(Default::default()),
            Request::NodeAdd(Default::default()),
            Request::NodePromote(NodeRef::default()),
            Request::NodeRemove(NodeRef::default()),
            Request::LeaderTransfer(NodeRef::default()),
            Request::VolumeSet(Default::default()),
            Request::VhdCreate(Default::default()),
            Request::VhdDelete(VhdRef::default()),
            Request::VolumeFormat(Default::default()),
            Request::VhdNew(Default::default()),
            Request::VhdAttach(Default::default()),
            Request::VhdDetach(Default::default()),
            Request::VhdImport(Default::default()),
            Request::VhdExport(Default::default()),
            Request::VolumeRecover(Default::default()),
            Request::VhdMaintain(Default::default()),
            Request::VhdMerge(Default::default()),
            Request::VolumeRedirect(Default::default()),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::Acquire(Default::default())),
            }),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::Release(VhdRef::default())),
            }),
            Request::Owner(OwnerRequest {
                op: Some(OwnerOp::Move(Default::default())),
            }),
            Request::Owner(OwnerRequest { op: None }),
            Request::Vm(VmRequest { op: None }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Create(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Start(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Stop(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Delete(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Migrate(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::Drain(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::DiskAdd(Default::default())),
            }),
            Request::Vm(VmRequest {
                op: Some(VmOp::DiskRemove(Default::default())),
            }),
        ];
        for r in &changes {
            assert!(!r.is_read_only(), "{r:?}");
        }
    }
}
