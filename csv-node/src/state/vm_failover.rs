//! What a node's expiry does to its VMs (docs/design/080 §6), in the same command as
//! the expiry: every replica places them the same way, and no coordinator-side loop can
//! forget one. Highest restart priority first; each goes to a schedulable node (active,
//! live, path not paused; its preferred ones first, else the least loaded), and that
//! node's supervisor takes the disks over before it starts QEMU. A migration the node
//! took part in ends: before the switch it is aborted (the VM stays, or restarts, at
//! the source); after it the destination holds the disks, so the VM is placed there.

use csv_api::NodeId;
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::vm_migrate::ended;
use super::vms::*;

impl ClusterState {
    pub(super) fn vms_after_expiry(&mut self, node: NodeId, at_index: u64, w: &mut dyn KvWrite) {
        let mut hit: Vec<VmRecord> = self
            .vms
            .records()
            .filter(|r| {
                (r.node == Some(node) && r.want == Want::Running)
                    || r.migration
                        .as_ref()
                        .is_some_and(|m| m.src == node || m.dst == node)
            })
            .cloned()
            .collect();
        hit.sort_by_key(|r| (std::cmp::Reverse(r.def.priority), r.id));
        for mut rec in hit {
            if let Some(m) = rec.migration.take() {
                match (m.step, m.src == node) {
                    (MigrationStep::Switched, true) => {
                        // The destination holds every disk: the VM is its own now.
                        rec.last_migration = Some(ended(
                            &m,
                            "completed: the source failed after the switch",
                            0,
                        ));
                        rec.node = Some(m.dst);
                        rec.incarnation += 1;
                        rec.state = VmState::Starting;
                        rec.detail =
                            format!("placed on {} after {node} failed mid-migration", m.dst);
                        self.vms.put(rec, w);
                        continue;
                    }
                    (MigrationStep::Prepared, false) => {
                        rec.last_migration = Some(ended(&m, "aborted: the destination failed", 0));
                        self.vms.put(rec, w);
                        continue;
                    }
                    (MigrationStep::Prepared, true) => {
                        rec.last_migration = Some(ended(&m, "aborted: the source failed", 0));
                    }
                    (MigrationStep::Switched, false) => {
                        rec.last_migration = Some(ended(
                            &m,
                            "aborted: the destination failed after the switch",
                            0,
                        ));
                        // Its disks are the failed node's: the VM starts afresh.
                        rec.node = Some(node);
                    }
                }
            }
            if rec.def.priority == 0 {
                rec.state = VmState::Failed;
                rec.detail = format!(
                    "{node} failed (index {at_index}); priority 0: not restarted elsewhere"
                );
            } else if let Some(n) = self.choose_node(&rec.def) {
                rec.node = Some(n);
                rec.incarnation += 1;
                rec.state = VmState::Starting;
                rec.detail = format!("restarted after {node} failed");
            } else {
                rec.state = VmState::Failed;
                rec.detail = format!("{node} failed and no node can take its VMs");
            }
            self.vms.put(rec, w);
        }
    }
}
