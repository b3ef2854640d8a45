//! The data path's handle: the layers below it and the node's LUN and attachments.

use std::sync::Arc;

use csv_api::VhdId;
use lock_manager::Mode;

use super::attachments::Attachments;
use super::error::DataError;
use super::lun::VolumeRt;
use super::redirect::handle::Redirect;
use crate::config::NodeConfig;
use crate::lease::{Leases, VhdHold};
use crate::meta::{Member, Meta};
use crate::task::Tasks;

/// The data path of one node, over narrow handles of the layers below.
pub struct Data {
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) meta: Arc<Meta>,
    pub(crate) leases: Arc<Leases>,
    pub(crate) vol: VolumeRt,
    pub(crate) att: Attachments,
    pub(crate) tasks: Tasks,
    /// Redirected I/O, once the LUN is open (with `[redirect] enabled`).
    pub(crate) redir: std::sync::OnceLock<Arc<Redirect>>,
}

impl Data {
    pub fn new(cfg: Arc<NodeConfig>, meta: Arc<Meta>, leases: Arc<Leases>, tasks: Tasks) -> Data {
        Data {
            cfg,
            meta,
            leases,
            vol: Default::default(),
            att: Default::default(),
            tasks,
            redir: std::sync::OnceLock::new(),
        }
    }

    /// The node's redirection, once the LUN is open.
    pub(crate) fn redirect(&self) -> Option<Arc<Redirect>> {
        self.redir.get().cloned()
    }

    pub(crate) fn id(&self) -> u64 {
        self.cfg.node.id
    }

    pub(crate) async fn member(&self) -> Result<Member, DataError> {
        Ok(self.meta.member().await?)
    }

    /// Takes a hold on `vhd` for this node: `Write` acquires, or takes over a VHD whose
    /// owner expired; read modes add a read hold. Idempotent while held (the data path
    /// refcounts its own users). The returned fence answers each write check from the
    /// node's clock, so it closes by itself when the lease lapses.
    pub(crate) async fn acquire_vhd(&self, vhd: VhdId, mode: Mode) -> Result<VhdHold, DataError> {
        let m = self.member().await?;
        Ok(self.leases.acquire(&m, vhd, mode).await?)
    }

    /// Drops this node's hold on `vhd` (the caller closed its users and drained writes).
    pub(crate) async fn release_vhd(&self, vhd: VhdId) -> Result<(), DataError> {
        let m = self.member().await?;
        Ok(self.leases.release(&m, vhd).await?)
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data")
            .field("node", &self.cfg.node.id)
            .finish_non_exhaustive()
    }
}
