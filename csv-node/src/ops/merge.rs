//! `vhd merge CHILD`: a detached differencing child merged into its detached parent on
//! the volume. Refused while either is attached anywhere (the write holds this takes
//! would conflict), while the parent has another child (merging would change what that
//! sibling sees) or while the child has children (they are not relinked). Under both
//! write holds the vhd crate's `merge_into` writes the child's sectors into the parent
//! over its extent file (growth from the node's reservation, `SetExtents` at the parent
//! hold's generation, the hold's fence) and flushes; then the child hold is released and
//! the child deleted from the catalog (its extents return to the free pool), and a grown
//! parent's size recorded under its hold. A failed flush keeps both holds (042 §8). A crash
//! before the delete leaves the child valid: it has every sector it had, and the parent
//! sectors it shadows were not visible to it.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::core::Ops;
use super::error::OpsError;
use crate::data::extents;
use crate::state::types::{Command, Reply, VhdKind, VhdRecord, VhdState};
use csv_api::NodeId;
use csv_api::admin::volume::VhdMerge;
use lock_manager::Mode;

impl Ops {
    /// Refuses a merge the catalog already rules out: not a ready differencing child,
    /// attached here, or a parent with other children.
    async fn merge_check(&self, child: &VhdRecord) -> Result<VhdRecord, OpsError> {
        if child.kind != VhdKind::Differencing {
            return Err(OpsError::InvalidArgument(format!(
                "{} is not a differencing VHD",
                child.name
            )));
        }
        if child.state != VhdState::Ready {
            return Err(OpsError::InvalidState(format!(
                "{} is {:?}, not ready",
                child.name, child.state
            )));
        }
        let m = self.member().await?;
        let parent = extents::ancestors(&m, child)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| OpsError::InvalidState("the child has no parent record".into()))?;
        for v in [child, &parent] {
            if self.data.is_attached_here(v.id) {
                return Err(OpsError::InvalidState(format!(
                    "{} is attached here: detach it first",
                    v.name
                )));
            }
        }
        if let Some(k) = self.data.children_of(child.id).await?.first() {
            return Err(OpsError::InvalidState(format!(
                "{} is the parent of {}: merge or delete its children first",
                child.name, k.name
            )));
        }
        let siblings: Vec<String> = self
            .data
            .children_of(parent.id)
            .await?
            .into_iter()
            .filter(|k| k.id != child.id)
            .map(|k| k.name)
            .collect();
        if !siblings.is_empty() {
            return Err(OpsError::InvalidState(format!(
                "{} has other children ({}): merging {} would change what they see",
                parent.name,
                siblings.join(", "),
                child.name
            )));
        }
        Ok(parent)
    }

    /// `vhd merge CHILD` → the parent's record after the merge.
    #[tracing::instrument(name = "vhd_merge", skip_all, fields(vhd = %req.name))]
    pub(crate) async fn vhd_merge(&self, req: VhdMerge) -> Result<VhdRecord, OpsError> {
        let (lun, layout) = self.data.volume_ready().await?;
        let m = self.member().await?;
        let child = self.data.vhd_by_name(&req.name).await?;
        self.merge_check(&child).await?;
        let guard = self
            .progress
            .start(req.op_id, "merge", &child.name, "bytes")?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let child_hold = self
            .data
            .acquire_vhd(child.id, Mode::Write)
            .await
            .map_err(|e| {
                OpsError::from(e).context(format!("{} is in use (attached?)", child.name))
            })?;
        let parent_id = child.parent.unwrap_or(child.id);
        let parent_hold = match self.data.acquire_vhd(parent_id, Mode::Write).await {
            Ok(h) => h,
            Err(e) => {
                if let Err(r) = self.data.release_vhd(child.id).await {
                    tracing::warn!(vhd = %child.name, "release after refused merge: {r}");
                }
                return Err(OpsError::from(e).context(format!(
                    "the parent of {} is in use (attached?)",
                    child.name
                )));
            }
        };
        // Under both holds: the records are final (no writer elsewhere, no new child).
        let r = async {
            let child = self.data.vhd_by_name(&req.name).await?;
            let parent = self.merge_check(&child).await?;
            let chain = extents::ancestors(&m, &child).await?;
            // The grandparents and above are read: held read-deny-write.
            let (grand, grand_access) = self.data.hold_ancestors(&chain[1..]).await?;
            let access = self.data.write_access(&m, &parent, &parent_hold, &lun);
            let child_read = self.data.read_access(&child_hold);
            let mut child_parents = vec![self.data.read_access(&parent_hold)];
            child_parents.extend(grand_access.iter().cloned());
            let progress = guard.progress();
            let p2 = poisoned.clone();
            let lun = lun.clone();
            let r = tokio::task::spawn_blocking(move || {
                let pfile = Arc::new(extents::open_file(
                    &lun,
                    &layout,
                    &parent,
                    Some(access),
                    None,
                )?);
                let mut pimg = extents::open_image(
                    &lun,
                    &layout,
                    pfile.clone(),
                    &parent,
                    &chain[1..],
                    &grand_access,
                    false,
                )?;
                let cfile = Arc::new(extents::open_file(
                    &lun,
                    &layout,
                    &child,
                    None,
                    Some(child_read),
                )?);
                let cimg = extents::open_image(
                    &lun,
                    &layout,
                    cfile,
                    &child,
                    &chain,
                    &child_parents,
                    true,
                )?;
                let r = (|| {
                    let n = vhd::ops::merge_into(&cimg, &mut pimg, &mut |d, t| progress.set(d, t))
                        .map_err(|e| OpsError::storage("merge", e))?;
                    let size = pimg.virtual_size();
                    pimg.flush()
                        .map_err(|e| OpsError::storage("flush the parent", e))?;
                    Ok::<_, OpsError>((n, size))
                })();
                p2.store(pfile.poisoned().is_some(), Ordering::Release);
                r
            })
            .await
            .map_err(|e| OpsError::Internal(e.to_string()))
            .and_then(|r| r);
            for g in grand {
                self.data.drop_read(g).await;
            }
            r
        }
        .await;
        if poisoned.load(Ordering::Acquire) {
            // Writes into the parent may be lost or still land: both holds are kept
            // (042 §8); attaching and detaching the parent here settles it.
            return Err(OpsError::storage(
                format!("merge of {}", child.name),
                format!(
                    "a flush of the parent failed ({}); this node keeps both write holds",
                    r.err().map(|e| e.to_string()).unwrap_or_default()
                ),
            ));
        }
        let released = self.data.release_vhd(child.id).await;
        let outcome = async {
            let (n, size) = r?;
            released?;
            // The data is in the parent: the child's record goes (its extents are free).
            m.propose(Command::DeleteVhd { vhd: child.id })
                .await
                .map_err(|e| {
                    OpsError::from(e).context(format!(
                        "{} is merged into its parent but its record stays",
                        child.name
                    ))
                })?;
            let parent = self.vhd_by_id(parent_id).await?;
            let parent = if size > parent.virtual_size {
                match m.propose(Command::SetVirtualSize {
                        vhd: parent_id,
                        virtual_size: size,
                        node: NodeId(self.id()),
                        generation: parent_hold.generation,
                    },
                )
                .await?
                {
                    Reply::Vhd(v) => v,
                    _ => return Err(OpsError::Internal("unexpected reply".into())),
                }
            } else {
                parent
            };
            tracing::info!(child = %child.name, parent = %parent.name, bytes = n.bytes_merged, "merged");
            Ok(parent)
        }
        .await;
        self.data.give_back(parent_id, false, &lun).await;
        outcome
    }

    async fn vhd_by_id(&self, id: csv_api::VhdId) -> Result<VhdRecord, OpsError> {
        let m = self.member().await?;
        match m.query(crate::state::types::Query::Vhd { vhd: id }).await? {
            crate::state::types::QueryReply::Vhd(v) => Ok(v),
            _ => Err(OpsError::Internal("unexpected VHD reply".into())),
        }
    }
}
