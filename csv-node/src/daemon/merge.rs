//! `vhd merge CHILD`: a detached differencing child merged into its detached parent on
//! the volume. Refused while either is attached anywhere (the write holds this takes
//! would conflict), while the parent has another child (merging would change what that
//! sibling sees) or while the child has children (they are not relinked). Under both
//! write holds the vhd crate's `merge_into` writes the child's sectors into the parent
//! over its extent file (growth from the node's reservation, `MapExtents` at the parent
//! hold's generation, the hold's fence) and flushes; then the child hold is released and
//! the child deleted from the catalog (its extents return to the free pool). A crash
//! before the delete leaves the child valid: it has every sector it had, and the parent
//! sectors it shadows were not visible to it.
use std::sync::Arc;

use csv_api::admin::volume::VhdMerge;
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use lock_manager::Mode;
use volume::WriteAccess;

use super::Daemon;
use super::extents::{self, CatalogSink};
use super::handlers::propose;
use crate::state::types::{Command, Reply, VhdKind, VhdRecord, VhdState};

fn err(code: ErrorCode, m: impl Into<String>) -> ApiError {
    ApiError::new(code, m)
}

impl Daemon {
    /// Refuses a merge the catalog already rules out: not a ready differencing child,
    /// attached here, or a parent with other children.
    async fn merge_check(&self, child: &VhdRecord) -> Result<VhdRecord, ApiError> {
        if child.kind != VhdKind::Differencing {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{} is not a differencing VHD", child.name),
            ));
        }
        if child.state != VhdState::Ready {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{} is {:?}, not ready", child.name, child.state),
            ));
        }
        let m = self.member().await?;
        let parent = extents::ancestors(&m, child)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| err(ErrorCode::InvalidState, "the child has no parent record"))?;
        for v in [child, &parent] {
            if self.is_attached_here(v.id) {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("{} is attached here: detach it first", v.name),
                ));
            }
        }
        if let Some(k) = self.children_of(child.id).await?.first() {
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "{} is the parent of {}: merge or delete its children first",
                    child.name, k.name
                ),
            ));
        }
        let siblings: Vec<String> = self
            .children_of(parent.id)
            .await?
            .into_iter()
            .filter(|k| k.id != child.id)
            .map(|k| k.name)
            .collect();
        if !siblings.is_empty() {
            return Err(err(
                ErrorCode::InvalidState,
                format!(
                    "{} has other children ({}): merging {} would change what they see",
                    parent.name,
                    siblings.join(", "),
                    child.name
                ),
            ));
        }
        Ok(parent)
    }

    /// `vhd merge CHILD` → the parent's record after the merge.
    pub(crate) async fn vhd_merge(&self, req: VhdMerge) -> Result<VhdRecord, ApiError> {
        let (lun, layout) = self.volume_ready().await?;
        let m = self.member().await?;
        let child = self.vhd_by_name(&req.name).await?;
        self.merge_check(&child).await?;
        let guard = self.ops.start(req.op_id, "merge", &child.name, "bytes")?;
        let _child_hold = self.acquire_vhd(child.id, Mode::Write).await.map_err(|e| {
            err(
                e.code(),
                format!("{} is in use (attached?): {}", child.name, e.message),
            )
        })?;
        let parent_id = child.parent.unwrap_or(child.id);
        let parent_hold = match self.acquire_vhd(parent_id, Mode::Write).await {
            Ok(h) => h,
            Err(e) => {
                if let Err(r) = self.release_vhd(child.id).await {
                    tracing::warn!(vhd = %child.name, "release after refused merge: {r}");
                }
                return Err(err(
                    e.code(),
                    format!(
                        "the parent of {} is in use (attached?): {}",
                        child.name, e.message
                    ),
                ));
            }
        };
        // Under both holds: the records are final (no writer elsewhere, no new child).
        let r = async {
            let child = self.vhd_by_name(&req.name).await?;
            let parent = self.merge_check(&child).await?;
            let chain = extents::ancestors(&m, &child).await?;
            let access = WriteAccess {
                source: self.reservation_source(&m),
                sink: Arc::new(CatalogSink::new(
                    m.clone(),
                    tokio::runtime::Handle::current(),
                    &parent,
                    NodeId(self.id()),
                    Some(parent_hold.generation),
                    layout.extent_size,
                )),
                fence: parent_hold.fence.clone(),
                fence_wait: volume::DEFAULT_FENCE_WAIT,
            };
            let progress = guard.progress();
            tokio::task::spawn_blocking(move || {
                let pfile = Arc::new(extents::open_file(&lun, &layout, &parent, Some(access))?);
                let mut pimg =
                    extents::open_image(&lun, &layout, pfile, &parent, &chain[1..], false)?;
                let cfile = Arc::new(extents::open_file(&lun, &layout, &child, None)?);
                let cimg = extents::open_image(&lun, &layout, cfile, &child, &chain, true)?;
                let n = vhd::ops::merge_into(&cimg, &mut pimg, &mut |d, t| progress.set(d, t))
                    .map_err(|e| err(ErrorCode::Storage, format!("merge: {e}")))?;
                let size = pimg.virtual_size();
                pimg.close()
                    .map_err(|e| err(ErrorCode::Storage, format!("flush the parent: {e}")))?;
                Ok::<_, ApiError>((n, size))
            })
            .await
            .map_err(|e| err(ErrorCode::Internal, e.to_string()))?
        }
        .await;
        let released = self.release_vhd(child.id).await;
        let outcome = async {
            let (n, size) = r?;
            released?;
            // The data is in the parent: the child's record goes (its extents are free).
            propose(&m, Command::DeleteVhd { vhd: child.id })
                .await
                .map_err(|e| {
                    err(
                        e.code(),
                        format!(
                            "{} is merged into its parent but its record stays: {}",
                            child.name, e.message
                        ),
                    )
                })?;
            let parent = self.vhd_by_id(parent_id).await?;
            let parent = if size > parent.virtual_size {
                match propose(
                    &m,
                    Command::SetVirtualSize {
                        vhd: parent_id,
                        virtual_size: size,
                    },
                )
                .await?
                {
                    Reply::Vhd(v) => v,
                    _ => return Err(err(ErrorCode::Internal, "unexpected reply")),
                }
            } else {
                parent
            };
            tracing::info!(child = %child.name, parent = %parent.name, bytes = n.bytes_merged, "merged");
            Ok(parent)
        }
        .await;
        if let Err(e) = self.release_vhd(parent_id).await {
            tracing::warn!(vhd = %child.name, "release the parent after merge: {e}");
        }
        outcome
    }

    async fn vhd_by_id(&self, id: csv_api::VhdId) -> Result<VhdRecord, ApiError> {
        let m = self.member().await?;
        match super::handlers::query(&m, crate::state::types::Query::Vhd { vhd: id }).await? {
            crate::state::types::QueryReply::Vhd(v) => Ok(v),
            _ => Err(err(ErrorCode::Internal, "unexpected VHD reply")),
        }
    }
}
