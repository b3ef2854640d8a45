//! The admin socket: accept, frame, decode, dispatch, answer.

use std::os::fd::AsFd as _;
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

/// Mode of the admin socket without a read-only group: the node's user only (root
/// passes file permissions anyway).
pub const OWNER_ONLY: u32 = 0o600;
/// Mode with `[admin] read_only_group`: that group may connect too.
pub const WITH_GROUP: u32 = 0o660;

/// Binds the socket (a blocking call: run it off the runtime's workers), replacing a
/// stale socket file, and restricts it to the owner ([`OWNER_ONLY`]), or to the owner
/// and the read-only group `group` ([`WITH_GROUP`]). The listener is non-blocking, for
/// `tokio::net::UnixListener::from_std`. Connections are checked again by their peer's
/// credentials ([`Access`]), so one that slipped in before the mode was set gains
/// nothing.
pub fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("bind {}", path.display()))?;
    l.set_nonblocking(true)
        .with_context(|| format!("make {} non-blocking", path.display()))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("chgrp {gid} {}", path.display()))?;
            WITH_GROUP
        }
        None => OWNER_ONLY,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(l)
}

/// Who may do what on the admin socket (docs/design/100 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The node's effective user.
    owner: u32,
    /// `[admin] read_only_group`, resolved.
    group: Option<u32>,
}

/// What one connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Root or the node's own user: every request.
    Full,
    /// A member of the read-only group: requests that only read
    /// (`csv_api::admin::Request::is_read_only`).
    ReadOnly,
    /// Anyone else: nothing (only possible in the instant before the socket's mode is
    /// set, or if an operator loosened it).
    Denied,
}

impl Access {
    /// The rules for a node running as this process's effective user, with the
    /// read-only group `group`.
    pub fn new(group: Option<u32>) -> Access {
        Access {
            owner: rustix::process::geteuid().as_raw(),
            group,
        }
    }

    /// What a peer with user `uid`, primary group `gid` and supplementary `groups` may
    /// do.
    pub fn classify(&self, uid: u32, gid: u32, groups: &[u32]) -> Peer {
        if uid == 0 || uid == self.owner {
            return Peer::Full;
        }
        match self.group {
            Some(g) if gid == g || groups.contains(&g) => Peer::ReadOnly,
            _ => Peer::Denied,
        }
    }

    /// What the peer of `s` may do, from its credentials at connect time
    /// (`SO_PEERCRED`, `SO_PEERGROUPS`). Unreadable credentials deny.
    fn peer(&self, s: &UnixStream) -> Peer {
        let cred = match s.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("admin peer credentials: {e}");
                return Peer::Denied;
            }
        };
        let groups = match self.group {
            Some(_) => crate::sys::peer_groups(s.as_fd()).unwrap_or_else(|e| {
                tracing::warn!("admin peer groups: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        self.classify(cred.uid(), cred.gid(), &groups)
    }
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
pub async fn serve(listener: UnixListener, admin: Admin, access: Access, stop: CancellationToken) {
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
                    connection(stream, a, access).await;
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

async fn connection(mut s: UnixStream, a: Admin, access: Access) {
    let peer = access.peer(&s);
    if peer == Peer::Denied {
        let r = error_response(
            ErrorCode::PermissionDenied,
            "permission denied: connect as root, the node's user, or a member of [admin] read_only_group",
        );
        let _ = write_frame(&mut s, &r.encode_to_vec()).await;
        return;
    }
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
            }) if peer == Peer::ReadOnly && !r.is_read_only() => error_response(
                ErrorCode::PermissionDenied,
                format!(
                    "permission denied: read-only: this connection is in the admin socket's \
                     read-only group, and {} changes state",
                    request_name(&r)
                ),
            ),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_owner_may_do_anything_the_group_only_read() {
        let a = Access {
            owner: 500,
            group: Some(990),
        };
        assert_eq!(a.classify(0, 0, &[]), Peer::Full);
        assert_eq!(a.classify(500, 500, &[]), Peer::Full);
        assert_eq!(a.classify(1000, 990, &[]), Peer::ReadOnly, "primary group");
        assert_eq!(
            a.classify(1000, 1000, &[27, 990]),
            Peer::ReadOnly,
            "supplementary"
        );
        assert_eq!(a.classify(1000, 1000, &[27]), Peer::Denied);
        let owner_only = Access {
            owner: 500,
            group: None,
        };
        assert_eq!(owner_only.classify(1000, 990, &[990]), Peer::Denied);
        assert_eq!(owner_only.classify(0, 0, &[]), Peer::Full);
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_or_group_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("admin.sock");
        let _l = bind(&p, None).expect("bind");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, OWNER_ONLY);
        let gid = rustix::process::getegid().as_raw();
        let _l = bind(&p, Some(gid)).expect("rebind with a group");
        let meta = std::fs::metadata(&p).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, WITH_GROUP);
        assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), gid);
        // Our own connection is the owner's.
        let l = tokio::net::UnixListener::from_std(_l).expect("tokio listener");
        let _c = UnixStream::connect(&p).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        assert_eq!(Access::new(Some(gid)).peer(&s), Peer::Full);
    }
}
