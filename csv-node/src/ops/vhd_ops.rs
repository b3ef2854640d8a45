//! VHD images on the volume, node side: `vhd create` (a catalog record with its extents,
//! then the VHD structures written through `volume::ExtentFile`, then ready), `vhd
//! import` (a local VHD file's exact bytes, checked by opening it first) and `vhd export`
//! (the exact bytes to a new local file, sparse). A failed create or import deletes its
//! record again.

use std::io::{Read as _, Seek as _, Write as _};
use std::sync::Arc;

use csv_api::NodeId;
use csv_api::admin::volume::{VhdExport, VhdImport, VhdMaintain, VhdNew};
use csv_api::admin::{self as api};
use lock_manager::Mode;
use vhd::DiskType;
use volume::ExtentFile;

use super::core::Ops;
use super::error::OpsError;
use super::progress::OpProgress;
use crate::data::extents;
use crate::lease::VhdHold;
use crate::meta::unexpected;
use crate::state::types::{Command, Query, QueryReply, Reply, VhdKind, VhdRecord, VhdState};

/// Copy chunk of import and export.
const COPY_CHUNK: usize = 4 << 20;

fn vhd_reply(r: Reply) -> Result<VhdRecord, OpsError> {
    match r {
        Reply::Vhd(v) => Ok(v),
        _ => unexpected("a VHD command"),
    }
}

/// A VHD being created or imported: its write hold and its open file.
struct Filling {
    hold: VhdHold,
    file: Arc<ExtentFile>,
}

impl Ops {
    /// Opens `rec` (being created) for writing under a write hold of this node, like any
    /// writer: growth from the node's reservation, `SetExtents` at the hold's generation,
    /// the hold's fence (docs/design/042 §2). The file starts empty, so every mapped byte
    /// is zeroed (extents may hold old data).
    async fn open_for_fill(&self, rec: &VhdRecord) -> Result<Filling, OpsError> {
        let (lun, layout) = self.data.volume_ready().await?;
        let m = self.member().await?;
        let hold = self.data.acquire_vhd(rec.id, Mode::Write).await?;
        let access = self.data.write_access(&m, rec, &hold, &lun);
        let mut empty = rec.clone();
        empty.length = 0;
        let opened = tokio::task::spawn_blocking(move || {
            extents::open_file(&lun, &layout, &empty, Some(access), None)
        })
        .await
        .map_err(OpsError::from)
        .and_then(|r| Ok(r?));
        match opened {
            Ok(f) => Ok(Filling {
                hold,
                file: Arc::new(f),
            }),
            Err(e) => {
                self.give_back_fill(rec).await;
                Err(e)
            }
        }
    }

    /// Releases the write hold of a create or import (after this node's writes are past
    /// their bound: `give_back`).
    async fn give_back_fill(&self, rec: &VhdRecord) {
        if let Ok(lun) = self.data.lun().await {
            self.data.give_back(rec.id, false, &lun).await;
        }
    }

    /// Deletes a half-made VHD (logged on failure: the record stays `creating`).
    async fn undo_create(&self, rec: &VhdRecord) {
        self.give_back_fill(rec).await;
        if let Ok(m) = self.member().await
            && let Err(e) = m.propose(Command::DeleteVhd { vhd: rec.id }).await
        {
            tracing::warn!(vhd = %rec.name, "remove half-made VHD: {e}");
        }
    }

    /// Marks a filled VHD ready (under its write hold), waits until a LUN checkpoint
    /// has it (a recovery must not lose an acknowledged create), releases the hold.
    async fn mark_ready(&self, rec: &VhdRecord, hold: &VhdHold) -> Result<VhdRecord, OpsError> {
        let m = self.member().await?;
        let r = vhd_reply(
            m.propose(Command::SetVhdState {
                vhd: rec.id,
                state: VhdState::Ready,
                node: NodeId(self.id()),
                generation: hold.generation,
            })
            .await?,
        )?;
        self.wait_catalog_checkpoint(&m).await?;
        self.give_back_fill(rec).await;
        Ok(r)
    }

    /// Waits until a LUN checkpoint covers every catalog change applied so far.
    pub(crate) async fn wait_catalog_checkpoint(
        &self,
        m: &crate::meta::Member,
    ) -> Result<(), OpsError> {
        let QueryReply::Checkpoint(c) = m.query(Query::Checkpoint).await? else {
            return unexpected("a checkpoint query");
        };
        extents::wait_checkpoint(
            m,
            self.meta.events().catalog_changed(),
            c.catalog_index,
            extents::CHECKPOINT_WAIT,
        )
        .await?;
        Ok(())
    }

    /// `vhd create`.
    #[tracing::instrument(name = "vhd_new", skip_all, fields(vhd = %req.name))]
    pub(crate) async fn vhd_new(&self, req: VhdNew) -> Result<VhdRecord, OpsError> {
        let (lun, layout) = self.data.volume_ready().await?;
        let m = self.member().await?;
        let parent = if req.parent.is_empty() {
            None
        } else {
            Some(self.data.vhd_by_name(&req.parent).await?)
        };
        let kind = match (&parent, api::VhdKind::try_from(req.kind)) {
            (Some(_), _) => VhdKind::Differencing,
            (None, Ok(api::VhdKind::Fixed)) => VhdKind::Fixed,
            (None, Ok(api::VhdKind::Dynamic | api::VhdKind::Unspecified)) => VhdKind::Dynamic,
            (None, _) => {
                return Err(OpsError::InvalidArgument(
                    "a differencing VHD needs --parent".into(),
                ));
            }
        };
        // The metadata of dynamic and differencing images is made in memory first: its
        // size is the initial file length the catalog allocates for.
        let size = req.size;
        let (virtual_size, meta): (u64, Option<Vec<u8>>) = match (&kind, &parent) {
            (VhdKind::Fixed, _) => (size, None),
            (VhdKind::Dynamic, _) => {
                let mem = vhd::MemStorage::new();
                vhd::create::create_dynamic(
                    &mem,
                    &vhd::create::CreateOptions::new(DiskType::Dynamic, size),
                )
                .map_err(|e| OpsError::InvalidArgument(e.to_string()))?;
                (size, Some(mem.to_vec()))
            }
            (VhdKind::Differencing, Some(p)) => {
                // The parent must stay as it is while children exist: no writer now (the
                // attach of a parent with children is refused from here on).
                if let QueryReply::Owner { owner: Some(o) } =
                    m.query(Query::Owner { vhd: p.id }).await?
                    && let Some(w) = o.owner
                {
                    return Err(OpsError::InvalidState(format!(
                        "{} is written by {w}: detach it before creating a child",
                        p.name
                    )));
                }
                let chain = extents::ancestors(&m, p).await?;
                let (p2, l2) = (p.clone(), lun.clone());
                // The parent and its ancestors are read under read-deny-write holds.
                let mut all = vec![p.clone()];
                all.extend(chain.iter().cloned());
                let (held, mut access) = self.data.hold_ancestors(&all).await?;
                let own = access.remove(0);
                let info = tokio::task::spawn_blocking(move || {
                    let f = Arc::new(extents::open_file(&l2, &layout, &p2, None, Some(own))?);
                    let img = extents::open_image(&l2, &layout, f, &p2, &chain, &access, true)?;
                    let ft = img.footer();
                    Ok::<_, OpsError>(vhd::create::ParentInfo {
                        uuid: ft.uuid,
                        virtual_size: img.virtual_size(),
                        timestamp: ft.timestamp,
                        name: format!("{}.vhd", p2.name),
                        absolute: None,
                        relative: Some(format!(".\\{}.vhd", p2.name)),
                    })
                })
                .await
                .map_err(OpsError::from);
                for h in held {
                    self.data.drop_read(h).await;
                }
                let info = info??;
                let mem = vhd::MemStorage::new();
                vhd::create::create_differencing(&mem, &info, vhd::DEFAULT_BLOCK_SIZE, None)
                    .map_err(|e| OpsError::InvalidArgument(e.to_string()))?;
                (info.virtual_size, Some(mem.to_vec()))
            }
            (VhdKind::Differencing, None) => unreachable!("differencing only with a parent"),
        };
        if kind == VhdKind::Fixed
            && (size == 0 || !size.is_multiple_of(512) || size > vhd::MAX_VIRTUAL_SIZE)
        {
            return Err(OpsError::InvalidArgument(format!(
                "size {size}: a multiple of 512 from 512 to {}",
                vhd::MAX_VIRTUAL_SIZE
            )));
        }
        let length = match &meta {
            Some(b) => b.len() as u64,
            None => size + vhd::footer::FOOTER_SIZE as u64,
        };
        let rec = vhd_reply(
            m.propose(Command::CreateVhd {
                name: req.name.clone(),
                kind,
                virtual_size,
                parent: parent.as_ref().map(|p| p.id),
                length,
            })
            .await?,
        )?;
        let r = self.fill_new(&rec, size, meta).await;
        match r {
            Ok(hold) => self.mark_ready(&rec, &hold).await,
            Err(e) => {
                self.undo_create(&rec).await;
                Err(e)
            }
        }
    }

    async fn fill_new(
        &self,
        rec: &VhdRecord,
        size: u64,
        meta: Option<Vec<u8>>,
    ) -> Result<VhdHold, OpsError> {
        let Filling { hold, file } = self.open_for_fill(rec).await?;
        tokio::task::spawn_blocking(move || {
            match meta {
                None => {
                    vhd::create::create_fixed(
                        &*file,
                        &vhd::create::CreateOptions::new(DiskType::Fixed, size),
                    )
                    .map_err(|e| OpsError::storage("write VHD footer", e))?;
                }
                Some(b) => {
                    file.write(&b, 0)
                        .map_err(|e| OpsError::storage("write VHD metadata", e))?;
                    file.flush().map_err(|e| OpsError::storage("flush", e))?;
                }
            }
            Ok::<_, OpsError>(())
        })
        .await
        .map_err(OpsError::from)??;
        Ok(hold)
    }

    /// `vhd import FILE NAME`: a local VHD file's exact bytes.
    #[tracing::instrument(name = "vhd_import", skip_all, fields(vhd = %req.name))]
    pub(crate) async fn vhd_import(&self, req: VhdImport) -> Result<VhdRecord, OpsError> {
        let path = std::path::PathBuf::from(&req.path);
        let p2 = path.clone();
        let (kind, virtual_size, length) = tokio::task::spawn_blocking(move || {
            let img = vhd::Image::open(
                &p2,
                &vhd::OpenOptions {
                    read_only: true,
                    parent: None,
                },
            )
            .map_err(|e| OpsError::InvalidArgument(format!("{}: {e}", p2.display())))?;
            let kind = match img.disk_type() {
                DiskType::Fixed => VhdKind::Fixed,
                DiskType::Dynamic => VhdKind::Dynamic,
                _ => {
                    return Err(OpsError::InvalidArgument(
                        "differencing images are imported by creating the child on the volume"
                            .into(),
                    ));
                }
            };
            let len = img
                .storage()
                .len()
                .map_err(|e| OpsError::storage("import", e))?;
            Ok((kind, img.virtual_size(), len))
        })
        .await
        .map_err(OpsError::from)??;
        let m = self.member().await?;
        let guard = self
            .progress
            .start(req.op_id, "import", &req.name, "bytes")?;
        guard.progress().set(0, length);
        let rec = vhd_reply(
            m.propose(Command::CreateVhd {
                name: req.name.clone(),
                kind,
                virtual_size,
                parent: None,
                length,
            })
            .await?,
        )?;
        let r = async {
            let Filling { hold, file } = self.open_for_fill(&rec).await?;
            let progress = guard.progress();
            tokio::task::spawn_blocking(move || copy_in(&path, &file, length, &progress))
                .await
                .map_err(OpsError::from)??;
            Ok::<_, OpsError>(hold)
        }
        .await;
        match r {
            Ok(hold) => self.mark_ready(&rec, &hold).await,
            Err(e) => {
                self.undo_create(&rec).await;
                Err(e)
            }
        }
    }

    /// `vhd export NAME FILE`: the exact bytes to a new local file.
    #[tracing::instrument(name = "vhd_export", skip_all, fields(vhd = %req.name))]
    pub(crate) async fn vhd_export(&self, req: VhdExport) -> Result<(), OpsError> {
        let (lun, layout) = self.data.volume_ready().await?;
        let rec = self.data.vhd_by_name(&req.name).await?;
        let guard = self
            .progress
            .start(req.op_id, "export", &req.name, "bytes")?;
        let progress = guard.progress();
        let mine = self.data.is_attached_here(rec.id);
        let hold = if mine {
            self.data.flush_attached(&req.name).await?;
            None
        } else {
            Some(self.data.hold_read(rec.id).await?)
        };
        // Re-read: the flush may have mapped more.
        let rec = self.data.vhd_by_name(&req.name).await?;
        let vhd_id = rec.id;
        let path = std::path::PathBuf::from(&req.path);
        let read = hold.as_ref().map(|h| self.data.read_access(h));
        let r = tokio::task::spawn_blocking(move || {
            let f = extents::open_file(&lun, &layout, &rec, None, read)?;
            copy_out(&f, &path, &progress)
        })
        .await
        .map_err(OpsError::from)
        .and_then(|r| r);
        if hold.is_some() {
            self.data.drop_read(vhd_id).await;
        }
        r
    }
}

impl Ops {
    /// `vhd expand` (size > 0) and `vhd compact` (size 0) of a VHD attached nowhere: the
    /// node takes the write hold, opens the image read-write over its extent file
    /// (growth from the reservation, commits at the hold's generation, the hold's fence),
    /// runs the vhd crate's operation, flushes and releases.
    #[tracing::instrument(name = "vhd_maintain", skip_all, fields(vhd = %req.name))]
    pub(crate) async fn vhd_maintain(&self, req: VhdMaintain) -> Result<VhdRecord, OpsError> {
        let (lun, layout) = self.data.volume_ready().await?;
        let m = self.member().await?;
        let rec = self.data.vhd_by_name(&req.name).await?;
        if self.data.is_attached_here(rec.id) {
            return Err(OpsError::InvalidState(format!(
                "{} is attached here: detach it first",
                rec.name
            )));
        }
        if req.size > 0 && !self.data.children_of(rec.id).await?.is_empty() {
            return Err(OpsError::InvalidState(format!(
                "{} has children: a parent keeps its size",
                rec.name
            )));
        }
        let guard = if req.size > 0 {
            self.progress
                .start(req.op_id, "expand", &rec.name, "bytes")?
        } else {
            self.progress
                .start(req.op_id, "compact", &rec.name, "blocks")?
        };
        let hold = self.data.acquire_vhd(rec.id, Mode::Write).await?;
        // Re-read under the hold: the last writer's commits are in.
        let poisoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = async {
            let rec = self.data.vhd_by_name(&req.name).await?;
            if req.size == 0 && !self.data.children_of(rec.id).await?.is_empty() {
                return Err(OpsError::InvalidState(format!(
                    "{} has children: a parent is not compacted",
                    rec.name
                )));
            }
            let chain = extents::ancestors(&m, &rec).await?;
            let (parents, parent_access) = self.data.hold_ancestors(&chain).await?;
            let access = self.data.write_access(&m, &rec, &hold, &lun);
            let size = req.size;
            let r2 = rec.clone();
            let progress = guard.progress();
            let p2 = poisoned.clone();
            let r = tokio::task::spawn_blocking(move || {
                let file = Arc::new(extents::open_file(&lun, &layout, &r2, Some(access), None)?);
                let mut img = extents::open_image(
                    &lun,
                    &layout,
                    file.clone(),
                    &r2,
                    &chain,
                    &parent_access,
                    false,
                )?;
                let r = (|| {
                    if size > 0 {
                        img.expand(size)
                            .map_err(|e| OpsError::InvalidArgument(format!("expand: {e}")))?;
                    } else {
                        img.compact(&mut |d, t| progress.set(d, t))
                            .map_err(|e| OpsError::storage("compact", e))?;
                    }
                    img.flush().map_err(|e| OpsError::storage("flush", e))?;
                    Ok::<_, OpsError>(img.virtual_size())
                })();
                p2.store(
                    file.poisoned().is_some(),
                    std::sync::atomic::Ordering::Release,
                );
                r
            })
            .await
            .map_err(OpsError::from)
            .and_then(|r| r);
            for p in parents {
                self.data.drop_read(p).await;
            }
            let new_size = r?;
            // Recorded under the hold: only the writer may change the size (042 §2).
            let rec = if new_size != rec.virtual_size {
                vhd_reply(
                    m.propose(Command::SetVirtualSize {
                        vhd: rec.id,
                        virtual_size: new_size,
                        node: NodeId(self.id()),
                        generation: hold.generation,
                    })
                    .await?,
                )?
            } else {
                self.data.vhd_by_name(&req.name).await?
            };
            Ok(rec)
        }
        .await;
        if poisoned.load(std::sync::atomic::Ordering::Acquire) {
            // Writes of this node may be lost or still land: no other node may write it
            // before that is settled (042 §8). `vhd attach` then `vhd detach` here
            // reopens, flushes and releases it.
            let e = r.err().map(|e| e.to_string()).unwrap_or_default();
            return Err(OpsError::storage(
                req.name.clone(),
                format!(
                    "a flush failed ({e}); this node keeps the write hold: attach and \
                     detach the VHD here once the LUN path works"
                ),
            ));
        }
        let lun = self.data.lun().await?;
        self.data.give_back(rec.id, false, &lun).await;
        r
    }
}

fn copy_in(
    path: &std::path::Path,
    file: &ExtentFile,
    length: u64,
    progress: &OpProgress,
) -> Result<(), OpsError> {
    let io = |e: std::io::Error| OpsError::storage(format!("read {}", path.display()), e);
    let mut src = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut off = 0u64;
    file.set_len(length)
        .map_err(|e| OpsError::storage("size the file", e))?;
    while off < length {
        let n = (length - off).min(COPY_CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n]).map_err(io)?;
        // The file was zeroed when opened: zero chunks stay holes.
        if buf[..n].iter().any(|b| *b != 0) {
            file.write(&buf[..n], off)
                .map_err(|e| OpsError::storage("write to the LUN", e))?;
        }
        off += n as u64;
        progress.set(off, length);
    }
    file.flush().map_err(|e| OpsError::storage("flush", e))
}

fn copy_out(
    file: &ExtentFile,
    path: &std::path::Path,
    progress: &OpProgress,
) -> Result<(), OpsError> {
    let io = |e: std::io::Error| OpsError::storage(format!("write {}", path.display()), e);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| OpsError::InvalidArgument(format!("create {}: {e}", path.display())))?;
    let len = file.logical_len();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut off = 0u64;
    progress.set(0, len);
    let r = (|| {
        while off < len {
            let n = (len - off).min(COPY_CHUNK as u64) as usize;
            file.read(&mut buf[..n], off)
                .map_err(|e| OpsError::storage("read the LUN", e))?;
            if buf[..n].iter().any(|b| *b != 0) {
                out.seek(std::io::SeekFrom::Start(off)).map_err(io)?;
                out.write_all(&buf[..n]).map_err(io)?;
            }
            off += n as u64;
            progress.set(off, len);
        }
        out.set_len(len).map_err(io)?;
        out.sync_all().map_err(io)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}
