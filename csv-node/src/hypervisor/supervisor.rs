//! The VM supervisor of one node (docs/design/080 §1): it follows the replicated VM
//! table and keeps one runner per VM that is (or was) placed on this node, or whose QEMU
//! it finds running from an earlier agent. Each runner makes its VM's QEMU match the
//! record (`runner.rs`); the supervisor only hands them the latest record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::host::Host;
use crate::config::NodeConfig;
use crate::data::Data;
use crate::meta::{Member, Meta};
use crate::state::types::{Query, QueryReply};
use crate::state::vms::VmRecord;
use crate::sync::lock;
use crate::task::Tasks;

/// How long the runners may take to end at a node's stop.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// The table is read again at least this often (a missed wake-up costs no more).
const RESCAN: Duration = Duration::from_secs(2);

/// The node's VMs.
pub struct Hypervisor {
    pub(crate) host: Arc<Host>,
    /// Each runner's view of its VM's record (`None`: deleted).
    runners: Mutex<HashMap<String, watch::Sender<Option<VmRecord>>>>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Hypervisor {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.host
    }
}

impl Hypervisor {
    /// The supervisor's tasks (its runners) are its own: a graceful stop of the node
    /// ends them first ([`Hypervisor::stop`]), so that nothing acts on the VMs while the
    /// node releases their disks.
    pub fn new(cfg: Arc<NodeConfig>, meta: Arc<Meta>, data: Arc<Data>) -> Self {
        Hypervisor {
            host: Arc::new(Host::new(cfg, meta, data, Tasks::default())),
            runners: Mutex::new(HashMap::new()),
        }
    }

    /// Ends the runners (the node stops): QEMU processes keep running, their guests
    /// wait on their disks' NBD reconnects, and the next agent adopts them and takes
    /// their disks again. Returns how many tasks were still running at the bound.
    pub async fn stop(&self) -> usize {
        self.tasks.stop(STOP_BOUND).await
    }

    /// Starts following the VM table (once the node is a member).
    pub fn start_member(self: &Arc<Self>, m: Member) {
        if !self.cfg.hypervisor.enabled {
            tracing::info!("hypervisor disabled: this node runs no VMs");
            return;
        }
        self.tasks.spawn(follow(self.clone(), m));
    }

    /// Hands every runner its VM's record; starts runners for VMs placed here and for
    /// QEMUs left by an earlier agent (`found`), and tells runners of deleted VMs.
    fn reconcile(self: &Arc<Self>, m: &Member, records: Vec<VmRecord>, found: &[String]) {
        let me = self.node();
        let mut runners = lock(&self.runners);
        let mut seen = std::collections::HashSet::new();
        for rec in records {
            seen.insert(rec.def.name.clone());
            if let Some(tx) = runners.get(&rec.def.name) {
                tx.send_replace(Some(rec));
            } else if rec.node == Some(me)
                || rec.migration.as_ref().is_some_and(|m| m.dst == me)
                || found.contains(&rec.def.name)
            {
                let name = rec.def.name.clone();
                let (tx, rx) = watch::channel(Some(rec));
                runners.insert(name.clone(), tx);
                self.tasks
                    .spawn(super::runner::run(self.host.clone(), m.clone(), name, rx));
            }
        }
        for name in found {
            if !seen.contains(name) && !runners.contains_key(name) {
                // A QEMU of a VM the table no longer has: its runner stops it.
                let (tx, rx) = watch::channel(None);
                runners.insert(name.clone(), tx);
                self.tasks.spawn(super::runner::run(
                    self.host.clone(),
                    m.clone(),
                    name.clone(),
                    rx,
                ));
            }
        }
        runners.retain(|name, tx| {
            if !seen.contains(name) {
                tx.send_replace(None);
            }
            // A runner that ended (its VM deleted and nothing left running) is dropped.
            !tx.is_closed()
        });
    }
}

/// VM directories with a QEMU still running from an earlier agent.
async fn leftovers(h: &Hypervisor) -> Vec<String> {
    let dir = h.vm_dir();
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(&dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let files = super::qemu::VmFiles::new(&dir, &name);
        if super::qemu::adopt(&files).await.is_some() {
            tracing::info!(vm = name, "QEMU left running by an earlier agent");
            out.push(name);
        }
    }
    out
}

async fn follow(h: Arc<Hypervisor>, m: Member) {
    let accel = h.host.settle_accel().await;
    tracing::info!(accel, vm_dir = %h.vm_dir().display(), "VM supervisor running");
    let found = leftovers(&h).await;
    let mut first = true;
    loop {
        let wake = h.meta.events().vms_changed().notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        match m.query_local(Query::Vms).await {
            Ok(QueryReply::Vms { vms: records, .. }) => {
                h.reconcile(&m, records, if first { &found } else { &[] });
                first = false;
            }
            Ok(_) => tracing::error!("the VM query answered something else"),
            Err(e) => tracing::debug!("VM table not readable yet: {e}"),
        }
        tokio::select! {
            () = &mut wake => {}
            () = tokio::time::sleep(RESCAN) => {}
        }
    }
}
