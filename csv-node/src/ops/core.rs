//! The operations' handle: the data path below them and their own bookkeeping.

use std::sync::Arc;

use super::error::OpsError;
use super::progress;
use crate::config::NodeConfig;
use crate::data::Data;
use crate::meta::{Member, Meta};
use crate::task::Tasks;

/// The operations of one node.
pub struct Ops {
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) meta: Arc<Meta>,
    pub(crate) data: Arc<Data>,
    pub(crate) progress: progress::Operations,
    pub(crate) remote: RemoteRt,
    pub(crate) tasks: Tasks,
}

impl Ops {
    pub fn new(data: Arc<Data>, tasks: Tasks) -> Ops {
        Ops {
            cfg: data.cfg.clone(),
            meta: data.meta.clone(),
            data,
            progress: Default::default(),
            remote: Default::default(),
            tasks,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.cfg.node.id
    }

    pub(crate) async fn member(&self) -> Result<Member, OpsError> {
        Ok(self.meta.member().await?)
    }
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("node", &self.cfg.node.id)
            .finish_non_exhaustive()
    }
}

/// The executor's bookkeeping (its wake-ups come from the metadata layer's event hub:
/// `remote_changed` for askers, `remote_work` for the executor).
#[derive(Default)]
pub(crate) struct RemoteRt {
    /// Requests this process is running (claimed or being claimed).
    pub(super) running: std::sync::Mutex<std::collections::BTreeSet<u64>>,
}
