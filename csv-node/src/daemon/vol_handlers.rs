//! Admin requests of the cluster volume and its VHD images (`csv_api::admin::volume`),
//! dispatched from `handlers.rs`.

use std::sync::Arc;

use csv_api::ErrorCode;
use csv_api::admin::{self as api, Request, Response};
use csv_api::error::ApiError;

use super::Daemon;
use super::convert::vhd_to_api;

/// Handles the requests `handlers::handle` does not know.
pub(super) async fn handle(d: &Arc<Daemon>, r: Request) -> Result<Response, ApiError> {
    match r {
        Request::VolumeFormat(f) => d.volume_format(f).await,
        Request::VolumeStatus(_) => d.volume_status().await.map(Response::VolumeStatus),
        Request::VhdNew(n) => d.vhd_new(n).await.map(|v| Response::Vhd(vhd_to_api(&v))),
        Request::VhdAttach(a) => d.attach_request(a).await.map(Response::Attachment),
        Request::VhdDetach(n) => d
            .detach_request(n)
            .await
            .map(|()| Response::Done(api::Empty {})),
        Request::Attachments(_) => Ok(Response::Attachments(api::volume::Attachments {
            attachments: d.attachments_list(),
        })),
        Request::VhdImport(i) => d.vhd_import(i).await.map(|v| Response::Vhd(vhd_to_api(&v))),
        Request::VhdExport(e) => d
            .vhd_export(e)
            .await
            .map(|()| Response::Done(api::Empty {})),
        Request::VolumeRecover(r) => d.volume_recover(r).await,
        Request::VhdMaintain(x) => d
            .vhd_maintain(x)
            .await
            .map(|v| Response::Vhd(vhd_to_api(&v))),
        Request::VhdMerge(x) => d.vhd_merge(x).await.map(|v| Response::Vhd(vhd_to_api(&v))),
        Request::OperationProgress(p) => d.ops.get(p.op_id).map(Response::Progress),
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!("no handler for {other:?}"),
        )),
    }
}
