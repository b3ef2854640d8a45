//! Admin request handlers: cluster init and status, membership changes (which pair the
//! raft configuration change with the node record), leader transfer, and the catalog
//! operations of the state machine (proposals, and linearizable reads).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use csv_api::admin::{self as api, Request, Response};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use meta_store::{Role, Status};

use super::convert::{self, vhd_to_api};
use super::{Daemon, Member, Phase, meta_err};
use crate::state::types::{
    Command, NodeInfo, NodeRole, NodeState, Query, QueryReply, Reply, decode_result,
};

/// Pause between attempts while a learner catches up or a change is in progress.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub(super) async fn propose(m: &Member, cmd: Command) -> Result<Reply, ApiError> {
    let r = m.meta.propose(cmd.encode()).await.map_err(meta_err)?;
    decode_result(&r)
}

pub(super) async fn query(m: &Member, q: Query) -> Result<QueryReply, ApiError> {
    let r = m.meta.query(q.encode()).await.map_err(meta_err)?;
    decode_result(&r)
}

fn unexpected<T>(what: &str) -> Result<T, ApiError> {
    Err(ApiError::new(
        ErrorCode::Internal,
        format!("unexpected state-machine reply to {what}"),
    ))
}

fn vhd_reply(r: Reply) -> Result<Response, ApiError> {
    match r {
        Reply::Vhd(v) => Ok(Response::Vhd(vhd_to_api(&v))),
        _ => unexpected("a VHD command"),
    }
}

fn membership(m: &meta_store::Membership) -> Response {
    Response::Membership(api::Membership {
        voters: m.voters.clone(),
        learners: m.learners.clone(),
    })
}

/// Handles one admin request.
pub(super) async fn handle(d: &Arc<Daemon>, r: Request) -> Result<Response, ApiError> {
    match r {
        Request::ClusterInit(c) => {
            let id = d.init_cluster(&c.name).await?;
            Ok(Response::ClusterInit(api::ClusterInitReply {
                cluster_id: id.to_string(),
                node_id: d.id(),
            }))
        }
        Request::Status(_) => status(d).await.map(Response::Status),
        Request::Owner(o) => super::lease::handle(d, o).await,
        Request::NodeAdd(a) => node_add(d, a).await,
        Request::NodePromote(n) => node_promote(d, n.id).await,
        Request::NodeRemove(n) => node_remove(d, n.id).await,
        Request::LeaderTransfer(n) => {
            let m = d.member().await?;
            m.meta.transfer_leader(n.id).await.map_err(meta_err)?;
            Ok(Response::Done(api::Empty {}))
        }
        Request::VolumeGet(_) => {
            let m = d.member().await?;
            match query(&m, Query::Volume).await? {
                QueryReply::Volume { volume } => Ok(Response::Volume(api::VolumeReply {
                    volume: volume.as_ref().map(convert::volume_to_api),
                })),
                _ => unexpected("volume query"),
            }
        }
        Request::VolumeSet(v) => {
            let m = d.member().await?;
            let volume = convert::volume_from_api(&v)?;
            match propose(&m, Command::SetVolume { volume }).await? {
                Reply::Volume(v) => Ok(Response::Volume(api::VolumeReply {
                    volume: Some(convert::volume_to_api(&v)),
                })),
                _ => unexpected("set volume"),
            }
        }
        Request::VhdCreate(c) => {
            let m = d.member().await?;
            let cmd = Command::CreateVhd {
                name: c.name,
                kind: convert::kind_from_api(c.kind)?,
                virtual_size: c.virtual_size,
                parent: (c.parent != 0).then_some(csv_api::VhdId(c.parent)),
                length: c.length,
            };
            vhd_reply(propose(&m, cmd).await?)
        }
        Request::VhdDelete(v) => {
            let m = d.member().await?;
            let vhd = resolve(&m, &v).await?;
            vhd_reply(propose(&m, Command::DeleteVhd { vhd }).await?)
        }
        Request::VhdGet(v) => {
            let m = d.member().await?;
            let q = if v.id != 0 {
                Query::Vhd {
                    vhd: convert::vhd(v.id)?,
                }
            } else {
                Query::VhdByName { name: v.name }
            };
            match query(&m, q).await? {
                QueryReply::Vhd(v) => Ok(Response::Vhd(vhd_to_api(&v))),
                _ => unexpected("VHD query"),
            }
        }
        Request::VhdList(l) => {
            let m = d.member().await?;
            let limit = if l.limit == 0 { 100 } else { l.limit };
            match query(
                &m,
                Query::VhdList {
                    after: l.after,
                    limit,
                },
            )
            .await?
            {
                QueryReply::VhdPage {
                    vhds,
                    next_after,
                    total,
                } => Ok(Response::VhdList(api::VhdPage {
                    vhds: vhds.iter().map(vhd_to_api).collect(),
                    next_after,
                    total,
                })),
                _ => unexpected("VHD list"),
            }
        }
        Request::SpaceGet(_) => {
            let m = d.member().await?;
            match query(&m, Query::Space).await? {
                QueryReply::Space(s) => Ok(Response::Space(convert::space_to_api(&s))),
                _ => unexpected("space query"),
            }
        }
        other => super::vol_handlers::handle(d, other).await,
    }
}

async fn resolve(m: &Member, v: &api::VhdRef) -> Result<csv_api::VhdId, ApiError> {
    if v.id != 0 {
        return convert::vhd(v.id);
    }
    match query(
        m,
        Query::VhdByName {
            name: v.name.clone(),
        },
    )
    .await?
    {
        QueryReply::Vhd(r) => Ok(r.id),
        _ => unexpected("VHD query"),
    }
}

async fn node_records(m: &Member) -> Result<BTreeMap<u64, NodeInfo>, ApiError> {
    let q = m
        .meta
        .query_local(Query::Cluster.encode())
        .await
        .map_err(meta_err)?;
    match decode_result(&q)? {
        QueryReply::Cluster { nodes, .. } => Ok(nodes.into_iter().map(|n| (n.id.0, n)).collect()),
        _ => unexpected("cluster query"),
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre_candidate",
    }
}

async fn status(d: &Daemon) -> Result<api::Status, ApiError> {
    let m = match &*d.phase.read().await {
        Phase::Member(m) => m.clone(),
        Phase::Uninitialized => {
            return Ok(api::Status {
                node_id: d.id(),
                node_state: "uninitialized".into(),
                ..Default::default()
            });
        }
        Phase::Removed(c) => {
            return Ok(api::Status {
                node_id: d.id(),
                node_state: "removed".into(),
                cluster_id: c.to_string(),
                ..Default::default()
            });
        }
        Phase::Stopping => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "the node is stopping",
            ));
        }
    };
    let st: Status = m.meta.status().await.map_err(meta_err)?;
    let hashes = m.meta.hashes().await.map_err(meta_err)?;
    let q = m
        .meta
        .query_local(Query::Cluster.encode())
        .await
        .map_err(meta_err)?;
    let (identity, nodes) = match decode_result(&q)? {
        QueryReply::Cluster { identity, nodes } => (identity, nodes),
        _ => return unexpected("cluster query"),
    };
    let leader = st.role == Role::Leader;
    let mut members: BTreeMap<u64, api::Member> = BTreeMap::new();
    let mut add = |id: u64| {
        members.entry(id).or_insert_with(|| api::Member {
            id,
            role: "none".into(),
            state: "unknown".into(),
            health: "unknown".into(),
            ..Default::default()
        });
    };
    for id in st.membership.voters.iter().chain(&st.membership.learners) {
        add(*id);
    }
    for id in &st.membership.outgoing_voters {
        add(*id);
    }
    for n in nodes.iter().filter(|n| n.state != NodeState::Removed) {
        add(n.id.0);
    }
    for (id, mem) in members.iter_mut() {
        if st.membership.is_voter(*id) {
            mem.role = "voter".into();
        } else if st.membership.is_learner(*id) {
            mem.role = "learner".into();
        }
        if let Some(n) = nodes.iter().find(|n| n.id.0 == *id) {
            mem.address = n.address.clone();
            mem.state = match n.state {
                NodeState::Joining => "joining",
                NodeState::Active => "active",
                NodeState::Removed => "removed",
            }
            .into();
        }
        mem.coordinator = st.leader == Some(*id);
        if let Some(p) = st.progress.iter().find(|p| p.id == *id) {
            mem.match_index = p.matched;
            mem.lag = p.lag;
            mem.health = if p.recent_active || *id == d.id() {
                "up"
            } else {
                "down"
            }
            .into();
        } else if *id == d.id() {
            mem.health = "up".into();
        }
    }
    if let Some(me) = members.get_mut(&d.id())
        && me.address.is_empty()
    {
        me.address = d.cfg.advertise();
    }
    Ok(api::Status {
        node_id: d.id(),
        node_state: "member".into(),
        cluster_id: m.cluster_id.to_string(),
        cluster_name: identity.map(|i| i.name).unwrap_or_default(),
        role: role_name(st.role).into(),
        coordinator: st.leader.unwrap_or(0),
        term: st.term,
        commit_index: st.commit,
        applied_index: hashes.applied,
        first_index: st.first_index,
        last_index: st.last_index,
        members: members.into_values().collect(),
        progress_known: leader,
        state_hash: hashes.state_machine.unwrap_or(0),
        persisted_hash: hashes.persisted,
        pending_requests: st.pending_requests as u64,
    })
}

/// Retries `f` while it fails with a retry-safe "not yet" error (catching up, another
/// change in progress), until `wait` has passed.
async fn retry_changes<F, Fut, T>(wait: Duration, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, meta_store::Error>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(
                e @ (meta_store::Error::NotCaughtUp { .. }
                | meta_store::Error::ConfChangeInProgress
                | meta_store::Error::NoLeader
                | meta_store::Error::NotLeader { .. }
                | meta_store::Error::Dropped),
            ) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "membership change not possible yet; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(e) => return Err(meta_err(e)),
        }
    }
}

async fn node_add(d: &Daemon, a: api::NodeAdd) -> Result<Response, ApiError> {
    let m = d.member().await?;
    let node = convert::node(a.id)?;
    let role = if a.learner {
        NodeRole::Learner
    } else {
        NodeRole::Voter
    };
    let wait = d.cfg.admin.catch_up_timeout.0;
    propose(
        &m,
        Command::AddNode {
            node,
            address: a.address.clone(),
            role,
        },
    )
    .await?;
    let st = m.meta.status().await.map_err(meta_err)?;
    if !st.membership.is_voter(a.id) && !st.membership.is_learner(a.id) {
        let addr = a.address.clone();
        retry_changes(wait, || m.meta.add_learner(a.id, addr.clone())).await?;
    }
    let mut members = m.meta.status().await.map_err(meta_err)?.membership;
    if !a.learner && !members.is_voter(a.id) {
        members = retry_changes(wait, || m.meta.promote_learner(a.id)).await?;
    }
    propose(&m, Command::SetNodeRole { node, role }).await?;
    tracing::info!(node = a.id, address = %a.address, learner = a.learner, "node added");
    Ok(membership(&members))
}

async fn node_promote(d: &Daemon, id: u64) -> Result<Response, ApiError> {
    let m = d.member().await?;
    let node = convert::node(id)?;
    let mut members = m.meta.status().await.map_err(meta_err)?.membership;
    if !members.is_voter(id) {
        members = retry_changes(d.cfg.admin.catch_up_timeout.0, || {
            m.meta.promote_learner(id)
        })
        .await?;
    }
    propose(
        &m,
        Command::SetNodeRole {
            node,
            role: NodeRole::Voter,
        },
    )
    .await?;
    tracing::info!(node = id, "node promoted");
    Ok(membership(&members))
}

async fn node_remove(d: &Daemon, id: u64) -> Result<Response, ApiError> {
    let m = d.member().await?;
    let node: NodeId = convert::node(id)?;
    let wait = d.cfg.admin.catch_up_timeout.0;
    let st = m.meta.status().await.map_err(meta_err)?;
    let in_config = st.membership.is_voter(id) || st.membership.is_learner(id);
    if in_config && st.leader == Some(id) {
        // The coordinator cannot remove itself: hand the role to another voter first.
        let Some(to) = st.membership.voters.iter().copied().find(|v| *v != id) else {
            return Err(ApiError::new(
                ErrorCode::InvalidMembership,
                "the last voter cannot be removed",
            ));
        };
        tracing::info!(
            from = id,
            to,
            "moving the coordinator role before the removal"
        );
        m.meta.transfer_leader(to).await.map_err(meta_err)?;
    }
    let mut members = st.membership.clone();
    if in_config {
        members = retry_changes(wait, || m.meta.remove_node(id)).await?;
    }
    let records = node_records(&m).await?;
    match records.get(&id).map(|n| n.state) {
        Some(NodeState::Removed) if !in_config => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("node {id} was removed already"),
            ));
        }
        None if !in_config => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("node {id} is not a member"),
            ));
        }
        Some(NodeState::Joining | NodeState::Active) => {
            propose(&m, Command::RemoveNode { node }).await?;
        }
        _ => {}
    }
    tracing::info!(node = id, "node removed");
    Ok(membership(&members))
}
