//! The admin socket: a Unix socket (mode 0600; 0660 with the group of `[admin]
//! read_only_group`, whose members may send only the requests that read, checked by
//! the peer's credentials) serving `csv_api::admin` requests, one task
//! per connection, at most `admin.max_connections` at once (more get a `busy` answer),
//! idle connections closed after `admin.idle_timeout`. The admin edge: requests are
//! dispatched once (`dispatch.rs`) to the subsystem that owns them, and their errors
//! become wire error codes here.

mod cluster;
mod dispatch;
mod owner;
mod socket;
mod vm;

pub use socket::{Access, OWNER_ONLY, Peer, WITH_GROUP, bind, serve};

use std::sync::Arc;

use crate::config::NodeConfig;
use crate::data::Data;
use crate::hypervisor::Hypervisor;
use crate::lease::Leases;
use crate::meta::Meta;
use crate::metrics::collect::StateCollector;
use crate::ops::Ops;
use crate::task::Tasks;

/// The subsystems the admin requests reach.
#[derive(Clone)]
pub struct Admin {
    pub cfg: Arc<NodeConfig>,
    pub meta: Arc<Meta>,
    pub leases: Arc<Leases>,
    pub data: Arc<Data>,
    pub ops: Arc<Ops>,
    pub hv: Arc<Hypervisor>,
    /// The node's metrics and what refreshes their state gauges.
    pub metrics: Arc<StateCollector>,
    pub tasks: Tasks,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("node", &self.cfg.node.id)
            .finish_non_exhaustive()
    }
}
