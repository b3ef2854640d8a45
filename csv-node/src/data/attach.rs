//! Attached VHDs: `vhd attach` takes ownership (a write hold, or a shared read hold that
//! excludes writers), reads the VHD's record *under* that hold, holds every differencing
//! ancestor read-deny-write, opens the image on the LUN over `volume::ExtentFile`
//! (growth from the node's reservation, map commits at the hold's generation, every LUN
//! write and read behind the hold's fence) and adds an NBD export named after the VHD on
//! the node's Unix socket `<data_dir>/nbd.sock` (and TCP with `volume.nbd_listen`).
//! Detach, hand-off and shutdown are in `detach.rs`. The set of attachments is kept in
//! `<data_dir>/attachments.json`, so a restarted node brings its exports back.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use csv_api::admin::volume::{Attachment, VhdAttach};
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::Mode;
use nbd::server::{ExportOptions, ListenerTls, Server, ServerConfig, TlsPolicy, listener};
use volume::{Layout, LunPath, ReadAccess, WriteAccess};

use super::attachments::{Attached, STATE_FILE, Saved, drop_device};
use super::core::Data;
use super::error::DataError;
use super::extents::{self, CatalogSink, NodeReservation};
use super::vhd_device::VhdDevice;
use crate::error::Coded as _;
use crate::lease::VhdHold;
use crate::meta::Member;
use crate::meta::unexpected;
use crate::state::types::{Query, QueryReply, VhdRecord, VhdState};
use crate::sync::lock;

/// Catalog page size when looking for children.
const PAGE: u32 = 1_000;
/// How long a restarted node keeps trying to bring an attachment back.
const RESTORE_PATIENCE: Duration = Duration::from_secs(120);
/// Pause between those attempts.
const RESTORE_RETRY: Duration = Duration::from_secs(1);

/// What opening an image needs, gathered under the holds.
pub(super) struct OpenPlan {
    pub(super) lun: Arc<dyn LunPath>,
    pub(super) layout: Layout,
    pub(super) rec: VhdRecord,
    pub(super) chain: Vec<VhdRecord>,
    pub(super) parents: Vec<ReadAccess>,
    pub(super) access: Option<WriteAccess>,
    pub(super) read: Option<ReadAccess>,
}

impl OpenPlan {
    /// Opens the image and makes the NBD device (blocking: run in the pool).
    pub(crate) fn open(self) -> Result<VhdDevice, DataError> {
        let ro = self.access.is_none();
        let file = Arc::new(extents::open_file(
            &self.lun,
            &self.layout,
            &self.rec,
            self.access,
            self.read,
        )?);
        let image = extents::open_image(
            &self.lun,
            &self.layout,
            file,
            &self.rec,
            &self.chain,
            &self.parents,
            ro,
        )?;
        Ok(VhdDevice::on_volume(image, ro, self.lun.may_block()))
    }
}

impl Data {
    pub(crate) fn nbd_socket(&self) -> PathBuf {
        self.cfg
            .volume
            .as_ref()
            .and_then(|v| v.nbd_socket.clone())
            .unwrap_or_else(|| self.cfg.paths.data_dir.join("nbd.sock"))
    }

    fn uri(&self, name: &str) -> String {
        format!("nbd+unix:///{name}?socket={}", self.nbd_socket().display())
    }

    pub(crate) async fn nbd_server(&self) -> Result<Server, DataError> {
        let s = self
            .att
            .server
            .get_or_try_init(|| async {
                let s = Server::new(ServerConfig::default())
                    .map_err(|e| DataError::Internal(e.to_string()))?;
                let sock = self.nbd_socket();
                let l = listener::bind_unix(&sock, 0o660).map_err(|source| DataError::Listen {
                    addr: sock.display().to_string(),
                    source,
                })?;
                s.spawn_listener(l);
                if let Some(a) = self.cfg.volume.as_ref().and_then(|v| v.nbd_listen) {
                    let l = listener::bind_tcp(a)
                        .await
                        .map_err(|source| DataError::Listen {
                            addr: a.to_string(),
                            source,
                        })?;
                    // TCP: TLS with a client certificate of the cluster CA unless
                    // `[tls] nbd = "off"` (config validation allows nothing else).
                    let tls = self.cfg.loaded_tls.nbd.clone();
                    let policy = if tls.is_some() {
                        TlsPolicy::Required
                    } else {
                        TlsPolicy::Off
                    };
                    s.spawn_listener_with_tls(
                        l,
                        ListenerTls {
                            config: tls,
                            policy,
                        },
                    );
                }
                tracing::info!(socket = %sock.display(), "NBD server listening");
                Ok::<Server, DataError>(s)
            })
            .await?;
        Ok(s.clone())
    }

    /// Adds the NBD export of an attachment (or lets its standby export run on it).
    pub(crate) fn export(&self, s: &Server, name: &str, a: &Attached) -> Result<(), DataError> {
        if let Some(sb) = lock(&self.att.standby).remove(name) {
            use nbd::device::BlockDevice as _;
            if !a.read_only && sb.size() == a.device.size() {
                sb.activate(a.device.clone());
                tracing::info!(vhd = name, "standby export now served by the attachment");
                return Ok(());
            }
            sb.abandon("the VHD was attached in another mode or size");
            if let Some(r) = s.remove_export(name) {
                r.close_connections();
            }
        }
        s.add_export(
            name,
            a.device.clone(),
            ExportOptions {
                read_only: a.read_only,
                description: format!("csv VHD {name} ({})", a.kind),
                observer: Some(self.meta.metrics().nbd_observer(name)),
            },
        )
        .map(|_| ())
        .map_err(|e| DataError::Internal(e.to_string()))
    }

    fn attachment(&self, name: &str, a: &Attached) -> Attachment {
        Attachment {
            name: name.to_string(),
            vhd: a.vhd.0,
            node: self.id(),
            read_only: a.read_only,
            generation: a.hold.generation.0,
            socket: self.nbd_socket().display().to_string(),
            uri: self.uri(name),
            tcp: self
                .cfg
                .volume
                .as_ref()
                .and_then(|v| v.nbd_listen)
                .map(|a| a.to_string())
                .unwrap_or_default(),
            error: a.failed.clone().unwrap_or_default(),
            path: self.path_mode(),
        }
    }

    /// VHDs attached here.
    pub(crate) fn attachments_list(&self) -> Vec<Attachment> {
        lock(&self.att.map)
            .iter()
            .map(|(n, a)| self.attachment(n, a))
            .collect()
    }

    /// Whether an attachment named `name` exists on this node.
    pub(crate) fn is_attached_name(&self, name: &str) -> bool {
        lock(&self.att.map).contains_key(name)
    }

    /// Whether `vhd` is attached on this node.
    pub(crate) fn is_attached_here(&self, vhd: VhdId) -> bool {
        lock(&self.att.map).values().any(|a| a.vhd == vhd)
    }

    /// Writes `attachments.json` (in the blocking pool: it syncs).
    pub(crate) async fn save_attachments(&self) {
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
        let dir = self.cfg.paths.data_dir.clone();
        let write = move || -> anyhow::Result<()> {
            let bytes = serde_json::to_vec_pretty(&saved)?;
            crate::durable::replace(&dir, STATE_FILE, &bytes)
        };
        match tokio::task::spawn_blocking(write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("save {STATE_FILE}: {e:#}"),
            Err(e) => tracing::error!("save {STATE_FILE}: {e}"),
        }
    }

    pub(crate) fn reservation_source(&self, m: &Member) -> Arc<NodeReservation> {
        self.att
            .reservation
            .get_or_init(|| {
                Arc::new(NodeReservation::new(
                    m.clone(),
                    NodeId(self.id()),
                    tokio::runtime::Handle::current(),
                    self.leases.clone(),
                ))
            })
            .clone()
    }

    /// The write access of a file opened under write hold `hold`.
    pub(crate) fn write_access(
        &self,
        m: &Member,
        rec: &VhdRecord,
        hold: &VhdHold,
        lun: &Arc<dyn LunPath>,
    ) -> WriteAccess {
        WriteAccess {
            source: self.reservation_source(m),
            sink: Arc::new(CatalogSink::new(
                m.clone(),
                rec,
                NodeId(self.id()),
                hold.generation,
                lun.clone(),
                self.quiet_limit(),
                self.meta.events().clone(),
            )),
            fence: hold.fence.clone(),
            fence_wait: self.fence_wait(),
        }
    }

    /// The read access of a file read under `hold`.
    pub(crate) fn read_access(&self, hold: &VhdHold) -> ReadAccess {
        ReadAccess {
            fence: hold.fence.clone(),
            fence_wait: self.fence_wait(),
        }
    }

    /// A read-deny-write hold on `vhd`, shared by this node's users (refcounted).
    pub(crate) async fn hold_read(&self, vhd: VhdId) -> Result<VhdHold, DataError> {
        let mut reads = self.att.reads.lock().await;
        // Idempotent while held; after an epoch change (every hold lost) it takes a new
        // one, and the users counted before still drop theirs one by one.
        let hold = self.acquire_vhd(vhd, Mode::ReadDenyWrite).await?;
        let n = reads.entry(vhd).or_insert(0);
        *n += 1;
        Ok(hold)
    }

    /// Drops one user of a [`Self::hold_read`] hold; the last one releases it.
    pub(crate) async fn drop_read(&self, vhd: VhdId) {
        let mut reads = self.att.reads.lock().await;
        let last = match reads.get_mut(&vhd) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                reads.remove(&vhd);
                true
            }
            None => false,
        };
        if last && let Err(e) = self.release_vhd(vhd).await {
            tracing::warn!(%vhd, "release of a read hold: {e}");
        }
    }

    /// Read-deny-write holds on every ancestor of `rec` (parent first), with their read
    /// access; on failure the ones taken are dropped again.
    pub(crate) async fn hold_ancestors(
        &self,
        chain: &[VhdRecord],
    ) -> Result<(Vec<VhdId>, Vec<ReadAccess>), DataError> {
        let mut ids = Vec::new();
        let mut access = Vec::new();
        for p in chain {
            match self.hold_read(p.id).await {
                Ok(h) => {
                    ids.push(p.id);
                    access.push(self.read_access(&h));
                }
                Err(e) => {
                    for id in ids {
                        self.drop_read(id).await;
                    }
                    return Err(DataError::ParentHeld {
                        name: p.name.clone(),
                        source: Box::new(e),
                    });
                }
            }
        }
        Ok((ids, access))
    }

    /// A VHD record by name (linearizable).
    pub(crate) async fn vhd_by_name(&self, name: &str) -> Result<VhdRecord, DataError> {
        let m = self.member().await?;
        match m.query(Query::VhdByName { name: name.into() }).await? {
            QueryReply::Vhd(v) => Ok(v),
            _ => unexpected("a VHD query"),
        }
    }

    /// The VHDs whose parent is `vhd`.
    pub(crate) async fn children_of(&self, vhd: VhdId) -> Result<Vec<VhdRecord>, DataError> {
        let m = self.member().await?;
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            match m.query(Query::VhdList { after, limit: PAGE }).await? {
                QueryReply::VhdPage {
                    vhds, next_after, ..
                } => {
                    out.extend(vhds.into_iter().filter(|v| v.parent == Some(vhd)));
                    if next_after == 0 {
                        return Ok(out);
                    }
                    after = next_after;
                }
                _ => return unexpected("a VHD list"),
            }
        }
    }

    /// `vhd attach` on this node (`a.node` is not looked at: `attach_request` in
    /// `remote_attach.rs` routes a request for another node through the log).
    #[tracing::instrument(name = "attach", skip_all, fields(vhd = %a.name, read_only = a.read_only))]
    pub(crate) async fn attach(&self, a: VhdAttach) -> Result<Attachment, DataError> {
        let _op = self.att.op.lock().await;
        self.attach_locked(a).await
    }

    /// [`Self::attach`] with the attach/detach lock held.
    async fn attach_locked(&self, a: VhdAttach) -> Result<Attachment, DataError> {
        let reopen = {
            let map = lock(&self.att.map);
            match map.get(&a.name) {
                Some(x) if x.read_only != a.read_only => {
                    return Err(DataError::InvalidState(format!(
                        "{} is attached here in the other mode: detach it first",
                        a.name
                    )));
                }
                Some(x) if x.failed.is_none() => return Ok(self.attachment(&a.name, x)),
                Some(_) => true,
                None => false,
            }
        };
        if reopen {
            return self.reopen_failed(&a.name).await;
        }
        let (lun, layout) = self.volume_ready().await?;
        let m = self.member().await?;
        // The name says which VHD to hold; everything else is read under the hold.
        let id = self.vhd_by_name(&a.name).await?.id;
        if let Some(d) = volume::failpoint::delay("attach.before_hold") {
            tokio::time::sleep(d).await;
        }
        let ro = a.read_only;
        let hold = if ro {
            self.hold_read(id).await?
        } else {
            self.acquire_vhd(id, Mode::Write).await?
        };
        let opened = async {
            let rec = self.vhd_by_name(&a.name).await?;
            if rec.id != id {
                return Err(DataError::Busy(format!(
                    "{} was deleted and created again meanwhile: retry",
                    a.name
                )));
            }
            if rec.state != VhdState::Ready {
                return Err(DataError::InvalidState(format!(
                    "{} is {:?}, not ready",
                    rec.name, rec.state
                )));
            }
            if !ro && let Some(k) = self.children_of(rec.id).await?.first() {
                return Err(DataError::InvalidState(format!(
                    "{} is the parent of {}: a parent stays read-only (attach with --read-only)",
                    rec.name, k.name
                )));
            }
            let chain = extents::ancestors(&m, &rec).await?;
            let (parents, parent_access) = self.hold_ancestors(&chain).await?;
            let plan = OpenPlan {
                access: (!ro).then(|| self.write_access(&m, &rec, &hold, &lun)),
                read: ro.then(|| self.read_access(&hold)),
                lun: lun.clone(),
                layout,
                rec: rec.clone(),
                chain,
                parents: parent_access,
            };
            let dev = tokio::task::spawn_blocking(move || plan.open())
                .await
                .map_err(DataError::from)
                .and_then(|r| r);
            let dev = match dev {
                Ok(d) => Arc::new(d),
                Err(e) => {
                    for p in parents {
                        self.drop_read(p).await;
                    }
                    return Err(e);
                }
            };
            let att = Attached {
                vhd: id,
                read_only: ro,
                hold: hold.clone(),
                device: dev,
                kind: format!("{:?}", rec.kind),
                parents,
                failed: None,
            };
            if let Err(e) = self
                .nbd_server()
                .await
                .and_then(|s| self.export(&s, &rec.name, &att))
            {
                for p in &att.parents {
                    self.drop_read(*p).await;
                }
                return Err(e);
            }
            Ok((rec, att))
        }
        .await;
        let (rec, att) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.give_back(id, ro, &lun).await;
                return Err(e);
            }
        };
        let out = self.attachment(&rec.name, &att);
        lock(&self.att.map).insert(rec.name.clone(), att);
        self.save_attachments().await;
        tracing::info!(vhd = %rec.name, read_only = ro, generation = hold.generation.0, kind = ?rec.kind, "attached");
        Ok(out)
    }

    /// Gives back the hold of a VHD this node opened nothing of (a failed attach).
    pub(crate) async fn give_back(&self, vhd: VhdId, read_only: bool, lun: &Arc<dyn LunPath>) {
        if read_only {
            self.drop_read(vhd).await;
            return;
        }
        // A zeroing of the file's tail may have been issued: wait out its bound.
        if !self.wait_quiet(lun).await {
            tracing::warn!(%vhd, "writes still in doubt: the hold is kept");
            return;
        }
        if let Err(r) = self.release_vhd(vhd).await {
            tracing::warn!(%vhd, "release after failed attach: {r}");
        }
    }

    /// An attachment whose final flush failed, opened again from the LUN under the hold
    /// it kept, and exported again.
    async fn reopen_failed(&self, name: &str) -> Result<Attachment, DataError> {
        let dev = self.reopen_device(name).await?;
        let s = self.nbd_server().await?;
        let (old, out) = {
            let mut map = lock(&self.att.map);
            let Some(a) = map.get_mut(name) else {
                return Err(DataError::NotAttached { name: name.into() });
            };
            let old = std::mem::replace(&mut a.device, dev);
            a.failed = None;
            self.export(&s, name, a)?;
            (old, self.attachment(name, a))
        };
        drop_device(old).await;
        tracing::info!(vhd = name, "reopened and exported again");
        Ok(out)
    }

    /// Opens an attached VHD again from what the LUN and the catalog hold, under the
    /// holds it has (after its writes in doubt are past their bound).
    pub(crate) async fn reopen_device(&self, name: &str) -> Result<Arc<VhdDevice>, DataError> {
        let (lun, layout) = self.volume_ready().await?;
        let m = self.member().await?;
        let (hold, ro, parents) = {
            let map = lock(&self.att.map);
            let a = map
                .get(name)
                .ok_or_else(|| DataError::NotAttached { name: name.into() })?;
            // The old image writes nothing more (not even on drop): the new one starts
            // from what the LUN and the catalog hold.
            a.device.abandon();
            (a.hold.clone(), a.read_only, a.parents.clone())
        };
        if !self.wait_quiet(&lun).await {
            return Err(DataError::storage(
                name,
                "writes to the LUN are still in doubt; try again later",
            ));
        }
        let rec = self.vhd_by_name(name).await?;
        let chain = extents::ancestors(&m, &rec).await?;
        let mut parent_access = Vec::new();
        for p in &parents {
            let h = self.acquire_vhd(*p, Mode::ReadDenyWrite).await?;
            parent_access.push(self.read_access(&h));
        }
        let plan = OpenPlan {
            access: (!ro).then(|| self.write_access(&m, &rec, &hold, &lun)),
            read: ro.then(|| self.read_access(&hold)),
            lun,
            layout,
            rec,
            chain,
            parents: parent_access,
        };
        tokio::task::spawn_blocking(move || plan.open())
            .await
            .map_err(DataError::from)?
            .map(Arc::new)
    }

    /// Re-attaches what `attachments.json` lists (after a restart).
    pub(crate) async fn restore_attachments(&self) {
        let p = self.cfg.paths.data_dir.join(STATE_FILE);
        // Under the attach/detach lock: a detach between reading the file and listing
        // what is pending would be undone.
        let op = self.att.op.lock().await;
        let saved: Vec<Saved> = match tokio::fs::read(&p).await {
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
        // Attached since the start (by an operator): nothing to restore for those.
        let saved: Vec<Saved> = {
            let map = lock(&self.att.map);
            saved
                .into_iter()
                .filter(|s| !map.contains_key(&s.name))
                .collect()
        };
        *lock(&self.att.pending) = saved.clone();
        drop(op);
        let deadline = tokio::time::Instant::now() + RESTORE_PATIENCE;
        let mut todo = saved;
        while !todo.is_empty() {
            let mut again = Vec::new();
            for s in todo {
                let _op = self.att.op.lock().await;
                // Detached meanwhile (locally or by a remote request): not brought back.
                // Asked under the attach/detach lock, so a detach cannot slip in between.
                if !lock(&self.att.pending).iter().any(|p| p.name == s.name) {
                    continue;
                }
                let r = self
                    .attach_locked(VhdAttach {
                        name: s.name.clone(),
                        node: 0,
                        read_only: s.read_only,
                    })
                    .await;
                drop(_op);
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

    /// Removes `name` from the saved attachments still waiting to be restored; true if
    /// it was there.
    pub(crate) fn forget_pending(&self, name: &str) -> bool {
        let mut p = lock(&self.att.pending);
        let n = p.len();
        p.retain(|s| s.name != name);
        n != p.len()
    }
}
