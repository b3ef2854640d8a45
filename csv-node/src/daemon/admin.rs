//! The admin socket: a Unix socket (mode 0600) serving `csv_api::admin` requests, one task
//! per connection, at most `admin.max_connections` at once (more get a `busy` answer),
//! idle connections closed after `admin.idle_timeout`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use csv_api::ErrorCode;
use csv_api::admin::frame::nonblocking::{read_frame, write_frame};
use csv_api::admin::{AdminRequest, AdminResponse, ErrorReply, PROTOCOL_VERSION, Response};
use prost::Message as _;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::Daemon;

/// Binds the socket, replacing a stale socket file, and restricts it to the owner.
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
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

pub(super) fn error_response(code: ErrorCode, message: impl Into<String>) -> AdminResponse {
    AdminResponse {
        version: PROTOCOL_VERSION,
        response: Some(Response::Error(ErrorReply {
            code: code as u32,
            name: code.name().into(),
            message: message.into(),
        })),
    }
}

/// Accepts connections until aborted.
pub(super) async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    let sem = Arc::new(Semaphore::new(daemon.cfg.admin.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        match sem.clone().try_acquire_owned() {
            Ok(permit) => {
                let d = daemon.clone();
                tokio::spawn(
                    async move {
                        connection(stream, d).await;
                        drop(permit);
                    }
                    .in_current_span(),
                );
            }
            Err(_) => {
                tokio::spawn(async move {
                    let mut s = stream;
                    let r = error_response(ErrorCode::Busy, "too many admin connections");
                    let _ = write_frame(&mut s, &r.encode_to_vec()).await;
                });
            }
        }
    }
}

async fn connection(mut s: UnixStream, d: Arc<Daemon>) {
    let idle = d.cfg.admin.idle_timeout.0;
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
            }) => match super::handlers::handle(&d, r).await {
                Ok(r) => AdminResponse {
                    version: PROTOCOL_VERSION,
                    response: Some(r),
                },
                Err(e) => error_response(e.code(), e.message),
            },
        };
        if write_frame(&mut s, &resp.encode_to_vec()).await.is_err() {
            return;
        }
    }
}
