//! The admin socket: accept, frame, decode, dispatch, answer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use csv_api::ErrorCode;
use csv_api::admin::frame::nonblocking::{read_frame, write_frame};
use csv_api::admin::{
    AdminRequest, AdminResponse, ErrorReply, PROTOCOL_VERSION, Request, Response,
};
use prost::Message as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Admin, dispatch};

/// Binds the socket, replacing a stale socket file, and restricts it to the owner.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(l)
}

fn error_response(code: ErrorCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse {
        version: PROTOCOL_VERSION,
        response: Some(Response::Error(ErrorReply {
            code: code as u32,
            name: code.name().into(),
            message: message.into(),
        })),
    }
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(listener: UnixListener, admin: Admin, stop: CancellationToken) {
    let sem = Arc::new(Semaphore::new(admin.cfg.admin.max_connections));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => {
                let a = admin.clone();
                admin.tasks.spawn(async move {
                    connection(stream, a).await;
                    drop(permit);
                });
            }
            Err(_) => {
                admin.tasks.spawn(async move {
                    let mut s = stream;
                    let r = error_response(ErrorCode::Busy, "too many admin connections");
                    let _ = write_frame(&mut s, &r.encode_to_vec()).await;
                });
            }
        }
    }
}

async fn connection(mut s: UnixStream, a: Admin) {
    let idle = a.cfg.admin.idle_timeout.0;
    loop {
        let frame = match tokio::time::timeout(idle, read_frame(&mut s)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                let r = error_response(ErrorCode::Malformed, e.to_string());
                let _ = write_frame(&mut s, &r.encode_to_vec()).await;
                return;
            }
        };
        let resp = match AdminRequest::decode(frame.as_slice()) {
            Err(e) => error_response(ErrorCode::Malformed, format!("undecodable request: {e}")),
            Ok(req) if req.version != PROTOCOL_VERSION => error_response(
                ErrorCode::UnsupportedVersion,
                format!(
                    "admin protocol version {} (this node speaks {PROTOCOL_VERSION})",
                    req.version
                ),
            ),
            Ok(AdminRequest { request: None, .. }) => {
                error_response(ErrorCode::Malformed, "empty request")
            }
            Ok(AdminRequest {
                request: Some(r), ..
            }) => {
                let span = tracing::info_span!("request", request = request_name(&r));
                match dispatch::handle(&a, r).instrument(span).await {
                    Ok(r) => AdminResponse {
                        version: PROTOCOL_VERSION,
                        response: Some(r),
                    },
                    Err(e) => error_response(e.code(), e.message),
                }
            }
        };
        if write_frame(&mut s, &resp.encode_to_vec()).await.is_err() {
            return;
        }
    }
}

/// The request's name in logs (the span field `request`).
fn request_name(r: &Request) -> &'static str {
    match r {
        Request::ClusterInit(_) => "cluster_init",
        Request::Status(_) => "status",
        Request::NodeAdd(_) => "node_add",
        Request::NodePromote(_) => "node_promote",
        Request::NodeRemove(_) => "node_remove",
        Request::LeaderTransfer(_) => "leader_transfer",
        Request::VolumeGet(_) => "volume_get",
        Request::VolumeSet(_) => "volume_set",
        Request::VhdCreate(_) => "vhd_create",
        Request::VhdDelete(_) => "vhd_delete",
        Request::VhdGet(_) => "vhd_get",
        Request::VhdList(_) => "vhd_list",
        Request::SpaceGet(_) => "space_get",
        Request::Owner(_) => "owner",
        Request::VolumeFormat(_) => "volume_format",
        Request::VolumeStatus(_) => "volume_status",
        Request::VhdNew(_) => "vhd_new",
        Request::VhdAttach(_) => "vhd_attach",
        Request::VhdDetach(_) => "vhd_detach",
        Request::Attachments(_) => "attachments",
        Request::VhdImport(_) => "vhd_import",
        Request::VhdExport(_) => "vhd_export",
        Request::VolumeRecover(_) => "volume_recover",
        Request::VhdMaintain(_) => "vhd_maintain",
        Request::VhdMerge(_) => "vhd_merge",
        Request::OperationProgress(_) => "operation_progress",
        Request::VolumeRedirect(_) => "volume_redirect",
        Request::VolumeEvents(_) => "volume_events",
        Request::Vm(_) => "vm",
        Request::NodeMetrics(_) => "node_metrics",
    }
}
