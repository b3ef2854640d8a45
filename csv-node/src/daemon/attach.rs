//! Attached VHDs: `vhd attach` takes ownership (a write hold, or a shared read hold that
//! excludes writers), opens the image on the LUN over `volume::ExtentFile` (growth from
//! the node's reservation, mappings committed to the catalog at the hold's generation,
//! every LUN write behind the hold's fence) and adds an NBD export named after the VHD on
//! the node's Unix socket `<data_dir>/nbd.sock` (and TCP with `volume.nbd_listen`).
//! `vhd detach` removes the export, flushes, releases. The set of attachments is kept in
//! `<data_dir>/attachments.json`, so a restarted node brings its exports back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use csv_api::admin::volume::{Attachment, VhdAttach};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::Mode;
use nbd::device::BlockDevice;
use nbd::file::IoMode;
use nbd::server::{ExportOptions, Server, ServerConfig, listener};
use serde::{Deserialize, Serialize};
use volume::WriteAccess;

use super::Daemon;
use super::extents::{self, CatalogSink, NodeReservation};
use super::handlers::query;
use super::volume::lock;
use crate::state::types::{Query, QueryReply, VhdRecord, VhdState};
use crate::vhd_device::VhdDevice;

/// How long a detach waits for the export's connections to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Catalog page size when looking for children.
const PAGE: u32 = 1_000;
/// How long a restarted node keeps trying to bring an attachment back.
const RESTORE_PATIENCE: Duration = Duration::from_secs(120);
/// Pause between those attempts.
const RESTORE_RETRY: Duration = Duration::from_secs(1);
/// File of the attachment set in the data dir.
const STATE_FILE: &str = "attachments.json";
/// Hold releases in flight at once during a graceful shutdown.
const SHUTDOWN_RELEASES: usize = 32;

struct Attached {
    vhd: VhdId,
    read_only: bool,
    generation: u64,
    device: Arc<VhdDevice>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    name: String,
    read_only: bool,
}

/// The node's attachments and its NBD server.
#[derive(Default)]
pub(crate) struct Attachments {
    server: tokio::sync::OnceCell<Server>,
    map: std::sync::Mutex<BTreeMap<String, Attached>>,
    /// Serialises attach and detach.
    op: tokio::sync::Mutex<()>,
    reservation: OnceLock<Arc<NodeReservation>>,
    /// Saved attachments not restored (yet): kept in the file.
    pending: std::sync::Mutex<Vec<Saved>>,
}

fn err(code: ErrorCode, m: impl Into<String>) -> ApiError {
    ApiError::new(code, m)
}

/// Registers the cooperative hand-off hook: before the lease layer hands a VHD this node
/// writes to another node, its export is removed and the image flushed and closed (the
/// lease layer then transfers the hold; this node keeps no attachment of it).
pub(crate) fn register_handoff(d: &Arc<Daemon>) -> anyhow::Result<()> {
    let weak = Arc::downgrade(d);
    d.on_handoff(Box::new(move |vhd: VhdId| {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(d) => d.close_for_handoff(vhd).await,
                None => Ok(()),
            }
        })
    }))
    .map_err(|e| anyhow::anyhow!("register the hand-off hook: {e}"))
}

impl Daemon {
    /// The hand-off hook: close `vhd`'s export here without releasing its hold.
    async fn close_for_handoff(&self, vhd: VhdId) -> Result<(), ApiError> {
        let _op = self.att.op.lock().await;
        let name = lock(&self.att.map)
            .iter()
            .find(|(_, a)| a.vhd == vhd)
            .map(|(n, _)| n.clone());
        let Some(name) = name else {
            return Ok(());
        };
        // A failed flush aborts the hand-off with the export still served.
        self.flush_attached(&name).await?;
        let closed = self.close_export(&name).await;
        self.save_attachments();
        closed.map_err(|(_, e)| e)?;
        tracing::info!(vhd = name, "closed for hand-off");
        Ok(())
    }

    fn nbd_socket(&self) -> PathBuf {
        self.cfg
            .volume
            .as_ref()
            .and_then(|v| v.nbd_socket.clone())
            .unwrap_or_else(|| self.cfg.paths.data_dir.join("nbd.sock"))
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.nbd_socket().display())
    }

    async fn nbd_server(&self) -> Result<Server, ApiError> {
        let s = self
            .att
            .server
            .get_or_try_init(|| async {
                let s = Server::new(ServerConfig::default())
                    .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
                let sock = self.nbd_socket();
                let l = listener::bind_unix(&sock, 0o660).map_err(|e| {
                    err(
                        ErrorCode::Config,
                        format!("listen on {}: {e}", sock.display()),
                    )
                })?;
                s.spawn_listener(l);
                if let Some(a) = self.cfg.volume.as_ref().and_then(|v| v.nbd_listen) {
                    let l = listener::bind_tcp(a)
                        .await
                        .map_err(|e| err(ErrorCode::Config, format!("listen on {a}: {e}")))?;
                    s.spawn_listener(l);
                }
                tracing::info!(socket = %sock.display(), "NBD server listening");
                Ok::<Server, ApiError>(s)
            })
            .await?;
        Ok(s.clone())
    }

    fn attachment(&self, name: &str, a: &Attached) -> Attachment {
        Attachment {
            name: name.to_string(),
            vhd: a.vhd.0,
            node: self.id(),
            read_only: a.read_only,
            generation: a.generation,
            socket: self.nbd_socket().display().to_string(),
            uri: self.uri(name),
            tcp: self
                .cfg
                .volume
                .as_ref()
                .and_then(|v| v.nbd_listen)
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }
    }

    /// VHDs attached here.
    pub(crate) fn attachments_list(&self) -> Vec<Attachment> {
        lock(&self.att.map)
            .iter()
            .map(|(n, a)| self.attachment(n, a))
            .collect()
    }

    /// Whether `vhd` is attached on this node.
    pub(crate) fn is_attached_here(&self, vhd: VhdId) -> bool {
        lock(&self.att.map).values().any(|a| a.vhd == vhd)
    }

    fn save_attachments(&self) {
        let mut saved: Vec<Saved> = lock(&self.att.map)
            .iter()
            .map(|(n, a)| Saved {
                name: n.clone(),
                read_only: a.read_only,
            })
            .collect();
        for p in lock(&self.att.pending).iter() {
            if !saved.iter().any(|s| s.name == p.name) {
                saved.push(p.clone());
            }
        }
        let dir = &self.cfg.paths.data_dir;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, bytes)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, dir.join(STATE_FILE))?;
            std::fs::File::open(dir)?.sync_all()
        };
        if let Err(e) = write() {
            tracing::error!("save {}: {e}", dir.join(STATE_FILE).display());
        }
    }

    pub(crate) fn reservation_source(&self, m: &super::Member) -> Arc<NodeReservation> {
        self.att
            .reservation
            .get_or_init(|| {
                Arc::new(NodeReservation::new(
                    m.clone(),
                    NodeId(self.id()),
                    tokio::runtime::Handle::current(),
                ))
            })
            .clone()
    }

    /// A VHD record by name.
    pub(crate) async fn vhd_by_name(&self, name: &str) -> Result<VhdRecord, ApiError> {
        let m = self.member().await?;
        match query(&m, Query::VhdByName { name: name.into() }).await? {
            QueryReply::Vhd(v) => Ok(v),
            _ => Err(err(ErrorCode::Internal, "unexpected VHD reply")),
        }
    }

    /// The VHDs whose parent is `vhd`.
    pub(crate) async fn children_of(&self, vhd: VhdId) -> Result<Vec<VhdRecord>, ApiError> {
        let m = self.member().await?;
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            match query(&m, Query::VhdList { after, limit: PAGE }).await? {
                QueryReply::VhdPage {
                    vhds, next_after, ..
                } => {
                    out.extend(vhds.into_iter().filter(|v| v.parent == Some(vhd)));
                    if next_after == 0 {
                        return Ok(out);
                    }
                    after = next_after;
                }
                _ => return Err(err(ErrorCode::Internal, "unexpected list reply")),
            }
        }
    }

    /// `vhd attach` on this node (`a.node` is not looked at: `attach_request` in
    /// `remote_attach.rs` routes a request for another node through the log).
    pub(crate) async fn attach(&self, a: VhdAttach) -> Result<Attachment, ApiError> {
        let _op = self.att.op.lock().await;
        if let Some(x) = lock(&self.att.map).get(&a.name) {
            if x.read_only == a.read_only {
                return Ok(self.attachment(&a.name, x));
            }
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "{} is attached here in the other mode: detach it first",
                    a.name
                ),
            ));
        }
        let (lun, layout) = self.volume_ready().await?;
        let m = self.member().await?;
        let rec = self.vhd_by_name(&a.name).await?;
        if rec.state != VhdState::Ready {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{} is {:?}, not ready", rec.name, rec.state),
            ));
        }
        if !a.read_only {
            let kids = self.children_of(rec.id).await?;
            if let Some(k) = kids.first() {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!(
                        "{} is the parent of {} ({} children): a parent stays read-only (attach with --read-only)",
                        rec.name,
                        k.name,
                        kids.len()
                    ),
                ));
            }
        }
        let chain = extents::ancestors(&m, &rec).await?;
        if let Some(d) = volume::failpoint::delay("attach.before_hold") {
            tokio::time::sleep(d).await;
        }
        let mode = if a.read_only {
            Mode::ReadDenyWrite
        } else {
            Mode::Write
        };
        let hold = self.acquire_vhd(rec.id, mode).await?;
        let access = (!a.read_only).then(|| WriteAccess {
            source: self.reservation_source(&m),
            sink: Arc::new(CatalogSink::new(
                m.clone(),
                tokio::runtime::Handle::current(),
                &rec,
                NodeId(self.id()),
                Some(hold.generation),
                layout.extent_size,
            )),
            fence: hold.fence.clone(),
            fence_wait: self
                .cfg
                .volume
                .as_ref()
                .map_or(volume::DEFAULT_FENCE_WAIT, |v| v.fence_wait.0),
        });
        let ro = a.read_only;
        let r2 = rec.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let file = Arc::new(extents::open_file(&lun, &layout, &r2, access)?);
            let image = extents::open_image(&lun, &layout, file, &r2, &chain, ro)?;
            Ok::<_, ApiError>(VhdDevice::from_image(image, ro, IoMode::Auto))
        })
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))
        .and_then(|r| r);
        let added = match opened {
            Ok(dev) => {
                let dev = Arc::new(dev);
                match self.nbd_server().await {
                    Ok(s) => s
                        .add_export(
                            &rec.name,
                            dev.clone(),
                            ExportOptions {
                                read_only: ro,
                                description: format!("csv VHD {} ({:?})", rec.name, rec.kind),
                            },
                        )
                        .map(|_| dev)
                        .map_err(|e| err(ErrorCode::Internal, e.to_string())),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let dev = match added {
            Ok(d) => d,
            Err(e) => {
                if let Err(r) = self.release_vhd(rec.id).await {
                    tracing::warn!(vhd = %rec.name, "release after failed attach: {r}");
                }
                return Err(e);
            }
        };
        let att = Attached {
            vhd: hold.vhd,
            read_only: ro,
            generation: hold.generation.0,
            device: dev,
        };
        let out = self.attachment(&rec.name, &att);
        lock(&self.att.map).insert(rec.name.clone(), att);
        self.save_attachments();
        tracing::info!(vhd = %rec.name, read_only = ro, generation = hold.generation.0, kind = ?rec.kind, "attached");
        Ok(out)
    }

    /// `vhd detach`: remove the export, flush, release.
    pub(crate) async fn detach(&self, name: &str) -> Result<(), ApiError> {
        let _op = self.att.op.lock().await;
        self.detach_locked(name, true).await
    }

    async fn detach_locked(&self, name: &str, save: bool) -> Result<(), ApiError> {
        let was_pending = {
            let mut p = lock(&self.att.pending);
            let n = p.len();
            p.retain(|s| s.name != name);
            n != p.len()
        };
        if !lock(&self.att.map).contains_key(name) {
            if was_pending {
                self.save_attachments();
                return Ok(());
            }
            return Err(err(
                ErrorCode::NotFound,
                format!("{name} is not attached on node {}", self.id()),
            ));
        }
        let (vhd, flushed) = match self.close_export(name).await {
            Ok(v) => (v, Ok(())),
            Err((v, e)) => (v, Err(e)),
        };
        if save {
            self.save_attachments();
        }
        let released = self.release_vhd(vhd).await;
        flushed?;
        released?;
        tracing::info!(vhd = name, "detached");
        Ok(())
    }

    /// Removes the export of `name`, waits for its connections, flushes and closes the
    /// image. The VHD id comes back with the flush result.
    async fn close_export(&self, name: &str) -> Result<VhdId, (VhdId, ApiError)> {
        let Some(a) = lock(&self.att.map).remove(name) else {
            return Err((
                VhdId(0),
                err(ErrorCode::NotFound, format!("{name} is not attached")),
            ));
        };
        if let Some(s) = self.att.server.get()
            && let Some(r) = s.remove_export(name)
            && tokio::time::timeout(DRAIN_DEADLINE, async {
                if let Some(d) = volume::failpoint::delay("export.drain") {
                    tokio::time::sleep(d).await;
                }
                r.wait().await
            })
            .await
            .is_err()
        {
            tracing::warn!(
                vhd = name,
                "connections did not drain in {DRAIN_DEADLINE:?}"
            );
        }
        let flushed = if a.read_only {
            Ok(())
        } else {
            a.device.flush().await
        };
        let vhd = a.vhd;
        if let Err(e) = flushed {
            let e = err(
                ErrorCode::Storage,
                format!(
                    "{name}: final flush failed (writes since the last flush may be lost): {e}"
                ),
            );
            return Err((vhd, e));
        }
        drop(a);
        Ok(vhd)
    }

    /// Flushes an image attached here (the owner's export, import and maintenance).
    pub(crate) async fn flush_attached(&self, name: &str) -> Result<(), ApiError> {
        let dev = lock(&self.att.map).get(name).map(|a| a.device.clone());
        match dev {
            Some(d) => d
                .flush()
                .await
                .map_err(|e| err(ErrorCode::Storage, format!("flush {name}: {e}"))),
            None => Ok(()),
        }
    }

    /// Graceful shutdown: stops the NBD server, then closes every export (connections
    /// drained, image flushed) and releases its hold, so another node can attach the
    /// VHD at once instead of a lease later. The attachment set on disk is kept: the
    /// restart attaches them again unless another node took them meanwhile. A flush
    /// that fails keeps that hold (it expires with the node's lease) rather than let
    /// another writer in before the data is on the LUN.
    pub(crate) async fn release_at_shutdown(&self) {
        let _op = self.att.op.lock().await;
        if let Some(s) = self.att.server.get() {
            s.shutdown();
        }
        let names: Vec<String> = lock(&self.att.map).keys().cloned().collect();
        let mut closed = Vec::with_capacity(names.len());
        for n in names {
            match self.close_export(&n).await {
                Ok(vhd) => closed.push((n, vhd)),
                Err((_, e)) => tracing::error!(vhd = n, "close at shutdown failed: {e}"),
            }
        }
        use futures_util::StreamExt as _;
        futures_util::stream::iter(closed)
            .map(|(n, vhd)| async move {
                if let Err(e) = self.release_vhd(vhd).await {
                    tracing::warn!(
                        vhd = n,
                        "release at shutdown failed (the hold expires with the lease): {e}"
                    );
                }
            })
            .buffer_unordered(SHUTDOWN_RELEASES)
            .collect::<Vec<()>>()
            .await;
    }

    /// Re-attaches what `attachments.json` lists (after a restart).
    pub(crate) async fn restore_attachments(&self) {
        let p = self.cfg.paths.data_dir.join(STATE_FILE);
        let saved: Vec<Saved> = match std::fs::read(&p) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("{}: {e}; no attachment restored", p.display());
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!("read {}: {e}", p.display());
                return;
            }
        };
        *lock(&self.att.pending) = saved.clone();
        let deadline = tokio::time::Instant::now() + RESTORE_PATIENCE;
        let mut todo = saved;
        while !todo.is_empty() {
            let mut again = Vec::new();
            for s in todo {
                // Detached meanwhile (locally or by a remote request): not brought back.
                if !lock(&self.att.pending).iter().any(|p| p.name == s.name) {
                    continue;
                }
                let r = self
                    .attach(VhdAttach {
                        name: s.name.clone(),
                        node: 0,
                        read_only: s.read_only,
                    })
                    .await;
                match r {
                    Ok(_) => {
                        lock(&self.att.pending).retain(|p| p.name != s.name);
                        tracing::info!(vhd = s.name, "attachment restored");
                    }
                    // The lease shell registers this node shortly after start; the
                    // cluster may have no coordinator for a moment.
                    Err(e)
                        if matches!(
                            e.code(),
                            ErrorCode::Unavailable
                                | ErrorCode::NoLeader
                                | ErrorCode::NotLeader
                                | ErrorCode::Timeout
                                | ErrorCode::Dropped
                                | ErrorCode::InvalidState
                        ) && tokio::time::Instant::now() < deadline =>
                    {
                        tracing::debug!(vhd = s.name, "attachment not restored yet: {e}");
                        again.push(s);
                    }
                    Err(e) => tracing::error!(vhd = s.name, "attachment not restored: {e}"),
                }
            }
            if !again.is_empty() {
                tokio::time::sleep(RESTORE_RETRY).await;
            }
            todo = again;
        }
    }
}
