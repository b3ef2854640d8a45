//! Cluster requests: `status`, membership changes (which pair the raft configuration
//! change with the node record) and their retries while the cluster catches up.

use std::collections::BTreeMap;
use std::time::Duration;

use csv_api::admin::{self as api, Response};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use meta_store::{Role, Status};

use super::Admin;
use crate::convert;
use crate::meta::{Limit, Member, Phase, Retry, meta_err, unexpected};
use crate::state::types::{Command, NodeInfo, NodeRole, NodeState, Query, QueryReply};

/// Pause between attempts while a learner catches up or a change is in progress.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

pub(super) fn membership(m: &meta_store::Membership) -> Response {
    Response::Membership(api::Membership {
        voters: m.voters.clone(),
        learners: m.learners.clone(),
    })
}

async fn node_records(m: &Member) -> Result<BTreeMap<u64, NodeInfo>, ApiError> {
    match m.query_local(Query::Cluster).await? {
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

pub(super) async fn status(a: &Admin) -> Result<api::Status, ApiError> {
    let m = match &*a.meta.phase().await {
        Phase::Member(m) => m.clone(),
        Phase::Uninitialized => {
            return Ok(api::Status {
                node_id: a.meta.id(),
                node_state: "uninitialized".into(),
                ..Default::default()
            });
        }
        Phase::Removed(c) => {
            return Ok(api::Status {
                node_id: a.meta.id(),
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
    let (identity, nodes) = match m.query_local(Query::Cluster).await? {
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
            mem.health = if p.recent_active || *id == a.meta.id() {
                "up"
            } else {
                "down"
            }
            .into();
        } else if *id == a.meta.id() {
            mem.health = "up".into();
        }
    }
    if let Some(me) = members.get_mut(&a.meta.id())
        && me.address.is_empty()
    {
        me.address = a.cfg.advertise();
    }
    Ok(api::Status {
        node_id: a.meta.id(),
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

/// Retries a membership change while it fails for a passing reason (a learner
/// catching up, another change in progress, no leader), until `wait` has passed.
async fn retry_changes<F, Fut, T>(wait: Duration, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, meta_store::Error>>,
{
    let retry = Retry {
        limit: Limit::Patience(wait),
        pause: RETRY_PAUSE,
        repeatable: false,
    };
    retry
        .run(|| {
            let r = f();
            async move { r.await.map_err(meta_err) }
        })
        .await
        .map_err(ApiError::from)
}

pub(super) async fn node_add(d: &Admin, a: api::NodeAdd) -> Result<Response, ApiError> {
    let m = d.meta.member().await?;
    let node = convert::node(a.id)?;
    let role = if a.learner {
        NodeRole::Learner
    } else {
        NodeRole::Voter
    };
    let wait = d.cfg.admin.catch_up_timeout.0;
    m.propose(Command::AddNode {
        node,
        address: a.address.clone(),
        role,
    })
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
    m.propose(Command::SetNodeRole { node, role }).await?;
    tracing::info!(target = a.id, address = %a.address, learner = a.learner, "node added");
    Ok(membership(&members))
}

pub(super) async fn node_promote(d: &Admin, id: u64) -> Result<Response, ApiError> {
    let m = d.meta.member().await?;
    let node = convert::node(id)?;
    let mut members = m.meta.status().await.map_err(meta_err)?.membership;
    if !members.is_voter(id) {
        members = retry_changes(d.cfg.admin.catch_up_timeout.0, || {
            m.meta.promote_learner(id)
        })
        .await?;
    }
    m.propose(Command::SetNodeRole {
        node,
        role: NodeRole::Voter,
    })
    .await?;
    tracing::info!(target = id, "node promoted");
    Ok(membership(&members))
}

pub(super) async fn node_remove(d: &Admin, id: u64) -> Result<Response, ApiError> {
    let m = d.meta.member().await?;
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
            m.propose(Command::RemoveNode { node }).await?;
        }
        _ => {}
    }
    tracing::info!(target = id, "node removed");
    Ok(membership(&members))
}
