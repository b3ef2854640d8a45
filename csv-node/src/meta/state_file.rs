//! `<data_dir>/node-state.json`: which cluster this node belongs to and whether it
//! bootstrapped it. Written once (atomically: temp file, fsync, rename, fsync of the
//! directory) before the metadata store is first opened, so a restart knows the cluster
//! id the store was created under.

use std::path::{Path, PathBuf};

use anyhow::Context;
use csv_api::ClusterId;
use serde::{Deserialize, Serialize};

/// File name inside the data directory.
pub const FILE: &str = "node-state.json";

/// The persisted membership facts of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Initial voters when this node bootstrapped the cluster (itself), else empty.
    pub initial_voters: Vec<u64>,
    /// Cluster name given at init (bootstrap node only; proposed again if the init
    /// command was not committed before a crash).
    pub cluster_name: Option<String>,
    /// Creation time of the cluster (bootstrap node only).
    pub created_unix_ms: Option<u64>,
    /// Peers known before the first snapshot: the leader that invited this node (joiners
    /// only). Later addresses come from the replicated membership.
    #[serde(default)]
    pub seed_peers: Vec<SeedPeer>,
}

/// A peer address given at join time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPeer {
    pub id: u64,
    /// `host:port`.
    pub addr: String,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// Reads the state file; `None` when the node never joined a cluster.
pub fn read(data_dir: &Path) -> anyhow::Result<Option<NodeState>> {
    let p = path(data_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("parse {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", p.display())),
    }
}

/// Writes the state file durably (temporary file, fsync, rename, fsync of the directory).
pub fn write(data_dir: &Path, st: &NodeState) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(st).context("encode node state")?;
    crate::durable::replace(data_dir, FILE, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(d.path()).expect("read"), None);
        let st = NodeState {
            cluster_id: ClusterId::random(),
            initial_voters: vec![1],
            cluster_name: Some("c".into()),
            created_unix_ms: Some(5),
            seed_peers: vec![SeedPeer {
                id: 2,
                addr: "10.0.0.2:7100".into(),
            }],
        };
        write(d.path(), &st).expect("write");
        assert_eq!(read(d.path()).expect("read"), Some(st));
        std::fs::write(d.path().join(FILE), b"{").expect("corrupt");
        assert!(read(d.path()).is_err());
    }
}
