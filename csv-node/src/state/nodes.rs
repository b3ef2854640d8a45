//! Transitions of the cluster identity and the node records.

use csv_api::{ClusterId, ErrorCode, NodeId};
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::types::*;
use super::{MAX_ADDRESS_BYTES, MAX_NAME_BYTES, MAX_NODES, err, persist};

pub(super) fn check_name(what: &str, name: &str) -> Result<(), csv_api::error::ApiError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("{what} must have 1 to {MAX_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("{what} {name:?} contains '/' or a control character"),
        ));
    }
    Ok(())
}

fn check_address(address: &str) -> Result<(), csv_api::error::ApiError> {
    if address.is_empty()
        || address.len() > MAX_ADDRESS_BYTES
        || address.chars().any(|c| c.is_whitespace() || c.is_control())
        || !address.contains(':')
    {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("address {address:?} is not host:port of at most {MAX_ADDRESS_BYTES} bytes"),
        ));
    }
    Ok(())
}

impl ClusterState {
    pub(super) fn require_init(&self) -> Result<(), csv_api::error::ApiError> {
        if self.identity.is_none() {
            return Err(err(
                ErrorCode::NotInitialized,
                "the cluster is not initialised",
            ));
        }
        Ok(())
    }

    pub(super) fn init_cluster(
        &mut self,
        id: ClusterId,
        name: String,
        created_unix_ms: u64,
        node: NodeId,
        address: String,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        if let Some(cur) = &self.identity {
            return if cur.id == id {
                Ok(Reply::Identity(cur.clone()))
            } else {
                Err(err(
                    ErrorCode::AlreadyInitialized,
                    format!("the cluster is {} already", cur.id),
                ))
            };
        }
        check_name("cluster name", &name)?;
        check_address(&address)?;
        if node.0 == 0 {
            return Err(err(ErrorCode::InvalidArgument, "node id 0"));
        }
        let ident = ClusterIdentity {
            id,
            name,
            created_unix_ms,
            first_node: node,
        };
        let info = NodeInfo {
            id: node,
            address,
            role: NodeRole::Voter,
            state: NodeState::Active,
        };
        persist::put_identity(w, &ident);
        persist::put_node(w, &info);
        self.identity = Some(ident.clone());
        self.nodes.insert(node, info);
        Ok(Reply::Identity(ident))
    }

    pub(super) fn add_node(
        &mut self,
        node: NodeId,
        address: String,
        role: NodeRole,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.require_init()?;
        check_address(&address)?;
        if node.0 == 0 {
            return Err(err(ErrorCode::InvalidArgument, "node id 0"));
        }
        match self.nodes.get(&node).map(|n| n.state) {
            Some(NodeState::Active) => {
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!("{node} is a member already"),
                ));
            }
            Some(NodeState::Removed) => {
                return Err(err(
                    ErrorCode::AlreadyExists,
                    format!("{node} was removed; a removed id never returns: use a new id"),
                ));
            }
            Some(NodeState::Joining) => {}
            None => {
                if self.nodes.len() >= MAX_NODES {
                    return Err(err(ErrorCode::Limit, format!("at most {MAX_NODES} nodes")));
                }
                if let Some(other) = self
                    .nodes
                    .values()
                    .find(|n| n.address == address && n.state != NodeState::Removed)
                {
                    return Err(err(
                        ErrorCode::AlreadyExists,
                        format!("address {address} belongs to {}", other.id),
                    ));
                }
            }
        }
        let info = NodeInfo {
            id: node,
            address,
            role,
            state: NodeState::Joining,
        };
        persist::put_node(w, &info);
        self.nodes.insert(node, info.clone());
        Ok(Reply::Node(info))
    }

    pub(super) fn set_node_role(
        &mut self,
        node: NodeId,
        role: NodeRole,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.require_init()?;
        let Some(cur) = self.nodes.get(&node) else {
            return Err(err(ErrorCode::NotFound, format!("{node} is not recorded")));
        };
        if cur.state == NodeState::Removed {
            return Err(err(ErrorCode::InvalidState, format!("{node} was removed")));
        }
        let info = NodeInfo {
            role,
            state: NodeState::Active,
            ..cur.clone()
        };
        persist::put_node(w, &info);
        self.nodes.insert(node, info.clone());
        Ok(Reply::Node(info))
    }

    pub(super) fn remove_node(
        &mut self,
        index: u64,
        node: NodeId,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        self.require_init()?;
        let Some(cur) = self.nodes.get(&node) else {
            return Err(err(ErrorCode::NotFound, format!("{node} is not recorded")));
        };
        if cur.state == NodeState::Removed {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{node} was removed already"),
            ));
        }
        let info = NodeInfo {
            state: NodeState::Removed,
            ..cur.clone()
        };
        persist::put_node(w, &info);
        self.nodes.insert(node, info.clone());
        // A node still live in the lock table may still zero and write extents of its
        // reservation until its lease ends: they return to the pool when it expires
        // (the coordinator expires it once its renewals stop), not before.
        let live = self
            .locks
            .node_record(node)
            .is_some_and(|r| r.status == lock_manager::NodeStatus::Live);
        if !live {
            self.release_reservation(node);
        }
        self.fail_remote_for(index, node, "was removed", w);
        self.paths.remove(node, w);
        Ok(Reply::Node(info))
    }
}
