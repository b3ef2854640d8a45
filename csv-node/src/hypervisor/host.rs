//! What every VM runner of a node shares: the node's config, its metadata member and
//! data path, its task set and the accelerator QEMU uses here.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use csv_api::NodeId;

use crate::config::NodeConfig;
use crate::data::Data;
use crate::meta::Meta;
use crate::task::Tasks;

/// The node as its VM runners see it.
pub struct Host {
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) meta: Arc<Meta>,
    pub(crate) data: Arc<Data>,
    pub(crate) tasks: Tasks,
    /// The accelerator QEMU uses here (settled by [`Host::settle_accel`]).
    accel: OnceLock<&'static str>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("node", &self.cfg.node.id)
            .field("accel", &self.accel.get())
            .finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(cfg: Arc<NodeConfig>, meta: Arc<Meta>, data: Arc<Data>, tasks: Tasks) -> Self {
        Host {
            cfg,
            meta,
            data,
            tasks,
            accel: OnceLock::new(),
        }
    }

    /// Decides the accelerator once (a probe QEMU for `auto`), before any VM starts.
    pub(crate) async fn settle_accel(&self) -> &'static str {
        if let Some(a) = self.accel.get() {
            return a;
        }
        let hv = &self.cfg.hypervisor;
        let a = super::qemu::accel_of(&hv.accel, &hv.qemu, &hv.machine).await;
        *self.accel.get_or_init(|| a)
    }

    /// The accelerator QEMU uses here.
    pub(crate) fn accel(&self) -> &'static str {
        self.accel.get().copied().unwrap_or("tcg")
    }

    pub(crate) fn node(&self) -> NodeId {
        NodeId(self.cfg.node.id)
    }

    /// Where the VMs' files are.
    pub fn vm_dir(&self) -> PathBuf {
        self.cfg
            .hypervisor
            .vm_dir
            .clone()
            .unwrap_or_else(|| self.cfg.paths.data_dir.join("vms"))
    }
}
