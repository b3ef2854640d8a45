//! Admin requests of the lock manager: `csvadm owner list|show|acquire|release|move` and
//! `csvadm node liveness`, answered from the replicated lock table, the local guard and
//! (on the coordinator) the liveness tracker.

use csv_api::admin::{
    self as api, HoldInfo, LivenessInfo, LocalFence, LocalHoldInfo, LostHoldInfo, NodeLiveness,
    OwnerAnswer, OwnerInfo, OwnerOp, OwnerReply, OwnerRequest, ReaderInfo, Response,
};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId, VhdId};
use lock_manager::{Mode, NodeStatus, OwnerView};

use super::Admin;
use crate::lease::{Leases, boottime, owner};
use crate::meta::Member;
use crate::state::locks::{LockQuery, LockReply};
use crate::state::types::{Query, QueryReply};

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Write => "write",
        Mode::Read => "read",
        Mode::ReadDenyWrite => "read_deny_write",
    }
}

fn parse_mode(s: &str) -> Result<Mode, ApiError> {
    match s {
        "" | "write" => Ok(Mode::Write),
        "read" => Ok(Mode::Read),
        "read_deny_write" => Ok(Mode::ReadDenyWrite),
        other => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("mode {other:?}: write, read or read_deny_write"),
        )),
    }
}

fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Live => "live",
        NodeStatus::Expired => "expired",
        NodeStatus::Left => "left",
    }
}

/// The catalog id and name of a VHD reference (it must exist in the catalog).
async fn resolve(m: &Member, r: Option<api::VhdRef>) -> Result<(VhdId, String), ApiError> {
    let r = r.ok_or_else(|| ApiError::new(ErrorCode::InvalidArgument, "no VHD named"))?;
    let q = if r.id != 0 {
        Query::Vhd { vhd: VhdId(r.id) }
    } else {
        Query::VhdByName { name: r.name }
    };
    match m.query(q).await? {
        QueryReply::Vhd(v) => Ok((v.id, v.name)),
        _ => Err(ApiError::new(ErrorCode::Internal, "unexpected VHD reply")),
    }
}

fn info(v: Option<&OwnerView>, vhd: VhdId, name: String) -> OwnerInfo {
    OwnerInfo {
        vhd: vhd.0,
        name,
        owner: v.and_then(|v| v.owner).map_or(0, |n| n.0),
        owner_epoch: v.and_then(|v| v.owner_epoch).map_or(0, |e| e.0),
        owner_valid: v.is_some_and(|v| v.owner_valid),
        generation: v.map_or(0, |v| v.generation.0),
        readers: v
            .map(|v| {
                v.readers
                    .iter()
                    .map(|r| ReaderInfo {
                        node: r.node.0,
                        epoch: r.epoch.0,
                        mode: mode_name(r.mode).into(),
                        generation: r.generation.0,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        local_fence: None,
    }
}

/// The local guard's state, with the write check of `vhd` when given.
pub(crate) fn local_fence(l: &Leases, vhd: Option<VhdId>) -> LocalFence {
    let now = boottime();
    let g = l.guard();
    let st = g.status(now);
    let (write_open, denied) = match vhd {
        Some(v) => {
            let r = match g.hold(v) {
                Some(h) => g.check_write(v, h.generation, now),
                None => Err(lock_manager::FenceDenied::NotHeld),
            };
            (
                r.is_ok(),
                r.err().map(|d| d.to_string()).unwrap_or_default(),
            )
        }
        None => (false, String::new()),
    };
    drop(g);
    let rec = l.record().clone();
    LocalFence {
        node: st.node.0,
        epoch: st.epoch.map_or(0, |e| e.0),
        lease_valid: st.lease_valid,
        remaining_ms: st.remaining_ms,
        holds: st
            .holds
            .iter()
            .map(|(v, h)| LocalHoldInfo {
                vhd: v.0,
                mode: mode_name(h.mode).into(),
                generation: h.generation.0,
                epoch: h.epoch.0,
                handing_off: h.handing_off,
            })
            .collect(),
        lost: rec
            .lost
            .iter()
            .map(|h| LostHoldInfo {
                vhd: h.vhd.0,
                mode: mode_name(h.mode).into(),
                generation: h.generation,
                old_epoch: h.old_epoch.unwrap_or(0),
                new_epoch: h.new_epoch.unwrap_or(0),
                at_unix_ms: h.at_unix_ms,
            })
            .collect(),
        lapses: rec.lapses,
        last_lapse_unix_ms: rec.last_lapse_unix_ms.unwrap_or(0),
        last_reopen_unix_ms: rec.last_reopen_unix_ms.unwrap_or(0),
        write_open,
        denied,
    }
}

fn reply(a: OwnerAnswer) -> Response {
    Response::Owner(OwnerReply { answer: Some(a) })
}

/// Handles one `Request::Owner`.
pub(super) async fn handle(d: &Admin, r: OwnerRequest) -> Result<Response, ApiError> {
    let m = d.meta.member().await?;
    let l = &d.leases;
    let op =
        r.op.ok_or_else(|| ApiError::new(ErrorCode::Malformed, "empty owner request"))?;
    match op {
        OwnerOp::List(_) => {
            let owners = match m.query(Query::Locks(LockQuery::Owners)).await? {
                QueryReply::Locks(LockReply::Owners { owners }) => owners,
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::Internal,
                        "unexpected owners reply",
                    ));
                }
            };
            let mut out = Vec::with_capacity(owners.len());
            for o in &owners {
                // Names are informative: this replica's catalog is enough.
                let name = match m.query_local(Query::Vhd { vhd: o.vhd }).await {
                    Ok(QueryReply::Vhd(v)) => v.name,
                    _ => String::new(),
                };
                out.push(info(Some(o), o.vhd, name));
            }
            Ok(reply(OwnerAnswer::Owners(api::OwnerList { owners: out })))
        }
        OwnerOp::Show(v) => {
            let (vhd, name) = resolve(&m, Some(v)).await?;
            let o = owner(&m, vhd).await?;
            let mut i = info(o.as_ref(), vhd, name);
            i.local_fence = Some(local_fence(l, Some(vhd)));
            Ok(reply(OwnerAnswer::Owner(i)))
        }
        OwnerOp::Acquire(a) => {
            let (vhd, _) = resolve(&m, a.vhd).await?;
            let mode = parse_mode(&a.mode)?;
            let h = l.acquire(&m, vhd, mode).await?;
            let open = h.fence.check().is_ok();
            Ok(reply(OwnerAnswer::Hold(HoldInfo {
                vhd: vhd.0,
                node: d.meta.id(),
                mode: mode_name(mode).into(),
                generation: h.generation.0,
                fence_open: open,
            })))
        }
        OwnerOp::Release(v) => {
            let (vhd, name) = resolve(&m, Some(v)).await?;
            l.release(&m, vhd).await?;
            let o = owner(&m, vhd).await?;
            Ok(reply(OwnerAnswer::Owner(info(o.as_ref(), vhd, name))))
        }
        OwnerOp::Move(mv) => {
            let (vhd, name) = resolve(&m, mv.vhd).await?;
            if mv.to == 0 {
                return Err(ApiError::new(ErrorCode::InvalidArgument, "no target node"));
            }
            let v = l.move_to(&m, vhd, NodeId(mv.to)).await?;
            Ok(reply(OwnerAnswer::Owner(info(Some(&v), vhd, name))))
        }
        OwnerOp::Liveness(_) => {
            let nodes = match m.query_local(Query::Locks(LockQuery::Nodes)).await? {
                QueryReply::Locks(LockReply::Nodes { nodes }) => nodes,
                _ => return Err(ApiError::new(ErrorCode::Internal, "unexpected nodes reply")),
            };
            let (coordinator, report) = {
                let t = l.tracker();
                (t.is_leader(), t.report(boottime()))
            };
            let t = l.timing();
            Ok(reply(OwnerAnswer::Liveness(LivenessInfo {
                node_id: d.meta.id(),
                coordinator,
                nodes: nodes
                    .iter()
                    .map(|n| {
                        let r = report
                            .iter()
                            .find(|r| r.node == n.node && r.epoch == n.epoch);
                        NodeLiveness {
                            node: n.node.0,
                            epoch: n.epoch.0,
                            status: status_name(n.status).into(),
                            renewals: n.renewals,
                            tracked: r.is_some(),
                            since_renewal_ms: r.map_or(0, |r| r.since_renewal_ms),
                            expires_in_ms: r.map_or(0, |r| r.expires_in_ms),
                        }
                    })
                    .collect(),
                local_fence: Some(local_fence(l, None)),
                timing_ms: [t.outage_budget, t.lease, t.node_lease, t.expiry_wait]
                    .iter()
                    .map(|d| d.as_millis() as u64)
                    .collect(),
            })))
        }
    }
}
