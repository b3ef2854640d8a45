//! `Request::Vm`: VM definitions and placements go through the log; `Show` adds each
//! disk's owner from the lock table (docs/design/080).

use csv_api::admin::vm::{self as api, VmAnswer, VmOp, VmReply};
use csv_api::admin::{Empty, Response};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};

use super::Admin;
use crate::meta::now_unix_ms;
use crate::meta::{Member, unexpected};
use crate::state::types::{Command, Query, QueryReply, Reply};
use crate::state::vms::{MigrationKind, MigrationStep, VmCommand, VmDef, VmRecord, Want};

fn def_from_api(d: api::VmDefinition) -> VmDef {
    VmDef {
        name: d.name,
        cpus: d.cpus,
        memory_mib: d.memory_mib,
        disks: d.disks,
        nic: d.nic,
        kernel: d.kernel,
        initrd: d.initrd,
        append: d.append,
        preferred: d.preferred.into_iter().map(NodeId).collect(),
        priority: d.priority,
        slots: Vec::new(),
    }
}

fn def_to_api(d: &VmDef) -> api::VmDefinition {
    api::VmDefinition {
        name: d.name.clone(),
        cpus: d.cpus,
        memory_mib: d.memory_mib,
        disks: d.disks.clone(),
        nic: d.nic,
        kernel: d.kernel.clone(),
        initrd: d.initrd.clone(),
        append: d.append.clone(),
        preferred: d.preferred.iter().map(|n| n.0).collect(),
        priority: d.priority,
    }
}

/// A VM record on the wire (without disk owners).
pub(crate) fn info(r: &VmRecord) -> api::VmInfo {
    api::VmInfo {
        id: r.id,
        definition: Some(def_to_api(&r.def)),
        node: r.node.map_or(0, |n| n.0),
        want: match r.want {
            Want::Running => "running",
            Want::Stopped => "stopped",
        }
        .into(),
        state: r.state.name().into(),
        detail: r.detail.clone(),
        since_unix_ms: r.since_unix_ms,
        started_unix_ms: r.started_unix_ms,
        incarnation: r.incarnation,
        disks: Vec::new(),
        migration: r.migration.as_ref().map(|m| api::VmMigration {
            id: m.id,
            src: m.src.0,
            dst: m.dst.0,
            kind: kind_name(m.kind).into(),
            state: match m.step {
                MigrationStep::Prepared => "prepared",
                MigrationStep::Switched => "switched",
            }
            .into(),
            handoff_us: m.handoff_us,
            downtime_ms: 0,
            total_ms: 0,
            at_unix_ms: m.started_unix_ms,
        }),
        last_migration: r.last_migration.as_ref().map(|m| api::VmMigration {
            id: m.id,
            src: m.src.0,
            dst: m.dst.0,
            kind: kind_name(m.kind).into(),
            state: m.outcome.clone(),
            handoff_us: m.handoff_us,
            downtime_ms: m.downtime_ms,
            total_ms: m.total_ms,
            at_unix_ms: m.ended_unix_ms,
        }),
    }
}

fn kind_name(k: MigrationKind) -> &'static str {
    match k {
        MigrationKind::Live => "live",
        MigrationKind::Quick => "quick",
    }
}

fn answer(a: VmAnswer) -> Response {
    Response::Vm(VmReply { answer: Some(a) })
}

async fn vm_command(m: &Member, command: VmCommand) -> Result<Response, ApiError> {
    match m.propose(Command::Vm { command }).await? {
        Reply::Vm(r) => Ok(answer(VmAnswer::Vm(Box::new(info(&r))))),
        _ => unexpected("a VM command"),
    }
}

async fn show(m: &Member, name: String) -> Result<Response, ApiError> {
    let rec = match m.query(Query::Vm { name }).await? {
        QueryReply::Vm(r) => r,
        _ => return unexpected("a VM query"),
    };
    let mut out = info(&rec);
    for d in &rec.def.disks {
        let mut disk = api::VmDisk {
            name: d.clone(),
            ..Default::default()
        };
        if let QueryReply::Vhd(v) = m.query(Query::VhdByName { name: d.clone() }).await?
            && let QueryReply::Owner { owner: Some(o) } =
                m.query(Query::Owner { vhd: v.id }).await?
        {
            disk.owner = o.owner.map_or(0, |n| n.0);
            disk.owner_valid = o.owner_valid;
            disk.generation = o.generation.0;
        }
        out.disks.push(disk);
    }
    Ok(answer(VmAnswer::Vm(Box::new(out))))
}

async fn list(m: &Member) -> Result<Response, ApiError> {
    match m.query(Query::Vms).await? {
        QueryReply::Vms { vms, drained } => Ok(answer(VmAnswer::List(api::VmList {
            vms: vms.iter().map(info).collect(),
            drained: drained.iter().map(|n| n.0).collect(),
        }))),
        _ => unexpected("a VM list"),
    }
}

pub(super) async fn handle(a: &Admin, r: api::VmRequest) -> Result<Response, ApiError> {
    let m = a.meta.member().await?;
    let Some(op) = r.op else {
        return Err(ApiError::new(
            ErrorCode::Malformed,
            "a VM request without an operation",
        ));
    };
    match op {
        VmOp::Create(d) => {
            vm_command(
                &m,
                VmCommand::Create {
                    def: def_from_api(d),
                },
            )
            .await
        }
        VmOp::List(Empty {}) => list(&m).await,
        VmOp::Show(n) => show(&m, n.name).await,
        VmOp::Start(s) => {
            let node = (s.node != 0).then_some(NodeId(s.node));
            vm_command(&m, VmCommand::Start { name: s.name, node }).await
        }
        VmOp::Stop(s) => {
            vm_command(
                &m,
                VmCommand::Stop {
                    name: s.name,
                    kill: s.kill,
                },
            )
            .await
        }
        VmOp::Delete(n) => vm_command(&m, VmCommand::Delete { name: n.name }).await,
        VmOp::Migrate(g) => {
            let kind = if g.quick {
                MigrationKind::Quick
            } else {
                MigrationKind::Live
            };
            let cmd = VmCommand::Migrate {
                name: g.name,
                to: (g.to != 0).then_some(NodeId(g.to)),
                kind,
                started_unix_ms: now_unix_ms(),
            };
            vm_command(&m, cmd).await
        }
        VmOp::Drain(d) => {
            let command = VmCommand::Drain {
                node: NodeId(d.node),
                on: d.on,
            };
            match m.propose(Command::Vm { command }).await? {
                Reply::Done => list(&m).await,
                _ => unexpected("a drain"),
            }
        }
        VmOp::DiskAdd(c) => {
            vm_command(
                &m,
                VmCommand::SetDisk {
                    name: c.name,
                    disk: c.disk,
                    add: true,
                },
            )
            .await
        }
        VmOp::DiskRemove(c) => {
            vm_command(
                &m,
                VmCommand::SetDisk {
                    name: c.name,
                    disk: c.disk,
                    add: false,
                },
            )
            .await
        }
    }
}
