//! The migration transitions of the VM table (docs/design/080 §4): a migration is a
//! record on the VM, `prepared` → `switched` → committed (the VM placed on the
//! destination), or aborted before the switch. The switch is recorded only when the lock
//! table already says the destination writes every disk, so a record that says
//! `switched` never lies about where the disks are.

use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::err;
use super::types::{ApplyResult, Reply};
use super::vms::*;

/// The result record of a migration that ends now.
pub(super) fn ended(m: &Migration, outcome: &str, at: u64) -> MigrationResult {
    MigrationResult {
        id: m.id,
        src: m.src,
        dst: m.dst,
        kind: m.kind,
        outcome: outcome.to_string(),
        handoff_us: m.handoff_us,
        downtime_ms: 0,
        total_ms: 0,
        ended_unix_ms: at,
    }
}

fn stale(name: &str, id: u64) -> ApiError {
    err(
        ErrorCode::Fenced,
        format!("VM {name:?} has no migration {id} at that step (it ended or moved on)"),
    )
}

impl ClusterState {
    /// The migration `id` of VM `name`, at `step`, whose `role` node is `node`.
    fn migration_at(
        &self,
        name: &str,
        id: u64,
        step: MigrationStep,
        node: Option<NodeId>,
        dst_side: bool,
    ) -> Result<(VmRecord, Migration), ApiError> {
        let rec = self
            .vms
            .by_name(name)
            .cloned()
            .ok_or_else(|| err(ErrorCode::NotFound, format!("no VM named {name:?}")))?;
        let m = match &rec.migration {
            Some(m) if m.id == id && m.step == step => m.clone(),
            _ => return Err(stale(name, id)),
        };
        if let Some(n) = node {
            let expected = if dst_side { m.dst } else { m.src };
            if n != expected {
                return Err(err(
                    ErrorCode::Fenced,
                    format!(
                        "{n} is not the {} of migration {id}",
                        if dst_side { "destination" } else { "source" }
                    ),
                ));
            }
        }
        Ok((rec, m))
    }

    pub(super) fn apply_migration(
        &mut self,
        index: u64,
        c: VmCommand,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.require_init()?;
        let rec =
            match c {
                VmCommand::Migrate {
                    name,
                    to,
                    kind,
                    started_unix_ms,
                } => {
                    let mut rec =
                        self.vms.by_name(&name).cloned().ok_or_else(|| {
                            err(ErrorCode::NotFound, format!("no VM named {name:?}"))
                        })?;
                    let Some(src) = rec.node.filter(|_| rec.want == Want::Running) else {
                        return Err(err(
                            ErrorCode::InvalidState,
                            format!("VM {name:?} is not running"),
                        ));
                    };
                    if let Some(m) = &rec.migration {
                        return Err(err(
                            ErrorCode::Busy,
                            format!("VM {name:?} is migrating to {} already", m.dst),
                        ));
                    }
                    if !matches!(rec.state, VmState::Running | VmState::Paused) {
                        return Err(err(
                            ErrorCode::InvalidState,
                            format!("VM {name:?} is {}, not running", rec.state.name()),
                        ));
                    }
                    let to = match to {
                        Some(t) => t,
                        None => self.choose_node_but(&rec.def, Some(src)).ok_or_else(|| {
                            err(ErrorCode::Unavailable, "no other node can take VMs now")
                        })?,
                    };
                    if src == to {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            format!("VM {name:?} runs on {to}"),
                        ));
                    }
                    if !self.schedulable(to) {
                        return Err(err(
                            ErrorCode::Unavailable,
                            format!(
                                "{to} cannot take VMs (not active, not live, or its path is paused)"
                            ),
                        ));
                    }
                    rec.migration = Some(Migration {
                        id: index,
                        src,
                        dst: to,
                        kind,
                        step: MigrationStep::Prepared,
                        dst_uri: String::new(),
                        started_unix_ms,
                        handoff_us: 0,
                    });
                    rec
                }
                VmCommand::MigrateReady {
                    name,
                    id,
                    node,
                    uri,
                } => {
                    let (mut rec, mut m) =
                        self.migration_at(&name, id, MigrationStep::Prepared, Some(node), true)?;
                    if uri.is_empty() || uri.len() > super::MAX_ADDRESS_BYTES + 8 {
                        return Err(err(
                            ErrorCode::InvalidArgument,
                            "a migration URI of 1 to 263 bytes",
                        ));
                    }
                    m.dst_uri = uri;
                    rec.migration = Some(m);
                    rec
                }
                VmCommand::MigrateSwitched {
                    name,
                    id,
                    node,
                    handoff_us,
                } => {
                    let (mut rec, mut m) =
                        self.migration_at(&name, id, MigrationStep::Prepared, Some(node), false)?;
                    for d in &rec.def.disks {
                        let vhd = self.vhds.by_name(d).map(|v| v.id);
                        let writer = vhd.and_then(|v| self.locks.valid_writer(v)).map(|w| w.0);
                        if writer != Some(m.dst) {
                            return Err(err(
                                ErrorCode::InvalidState,
                                format!("disk {d:?} is not written by {} yet", m.dst),
                            ));
                        }
                    }
                    m.step = MigrationStep::Switched;
                    m.handoff_us = handoff_us;
                    rec.migration = Some(m);
                    rec
                }
                VmCommand::MigrateCommit {
                    name,
                    id,
                    node,
                    ended_unix_ms,
                } => {
                    let (mut rec, m) =
                        self.migration_at(&name, id, MigrationStep::Switched, Some(node), true)?;
                    let mut result = ended(&m, "completed", ended_unix_ms);
                    if let Some(old) = rec.last_migration.as_ref().filter(|r| r.id == id) {
                        result.downtime_ms = old.downtime_ms;
                        result.total_ms = old.total_ms;
                        result.handoff_us = old.handoff_us.max(result.handoff_us);
                    }
                    rec.node = Some(m.dst);
                    rec.incarnation += 1;
                    rec.state = VmState::Running;
                    rec.detail.clear();
                    rec.since_unix_ms = ended_unix_ms;
                    rec.migration = None;
                    rec.last_migration = Some(result);
                    rec
                }
                VmCommand::MigrateAbort {
                    name,
                    id,
                    reason,
                    ended_unix_ms,
                } => {
                    let (mut rec, m) =
                        self.migration_at(&name, id, MigrationStep::Prepared, None, false)?;
                    let mut why = format!("aborted: {reason}");
                    why.truncate(MAX_DETAIL_BYTES.min(why.len()));
                    while !why.is_char_boundary(why.len()) {
                        why.pop();
                    }
                    rec.last_migration = Some(ended(&m, &why, ended_unix_ms));
                    rec.migration = None;
                    rec
                }
                VmCommand::MigrateStats {
                    name,
                    id,
                    downtime_ms,
                    total_ms,
                    handoff_us,
                } => {
                    let mut rec =
                        self.vms.by_name(&name).cloned().ok_or_else(|| {
                            err(ErrorCode::NotFound, format!("no VM named {name:?}"))
                        })?;
                    if let Some(r) = rec.last_migration.as_mut().filter(|r| r.id == id) {
                        r.downtime_ms = downtime_ms;
                        r.total_ms = total_ms;
                        r.handoff_us = handoff_us;
                    } else if let Some(m) = rec.migration.as_ref().filter(|m| m.id == id) {
                        // Ahead of the commit: kept in a result the commit completes.
                        let mut r = ended(m, "under way", 0);
                        r.downtime_ms = downtime_ms;
                        r.total_ms = total_ms;
                        r.handoff_us = handoff_us;
                        rec.last_migration = Some(r);
                    } else {
                        return Err(stale(&name, id));
                    }
                    rec
                }
                _ => return Err(err(ErrorCode::Internal, "not a migration command")),
            };
        self.vms.put(rec.clone(), w);
        Ok(Reply::Vm(Box::new(rec)))
    }
}
