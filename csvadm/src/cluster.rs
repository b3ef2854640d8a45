//! `csvadm cluster ...`: create a cluster, show its status, move the coordinator role,
//! through the addressed node's daemon (exit codes in `client.rs`).

use std::fmt;
use std::path::Path;

use clap::{Args, Subcommand};
use csv_api::admin::Status;
use serde::Serialize;

use crate::certs::CertsCommand;
use crate::client::{Failure, connect};
use crate::output::{Output, print};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Create a new cluster with the addressed node as its only member.
    Init {
        /// Cluster name.
        #[arg(long, default_value = "csv")]
        name: String,
    },
    /// Coordinator, term, commit and applied index, members with role, state and lag.
    Status,
    /// Move the coordinator role to another voter (maintenance).
    TransferLeader {
        /// The voter that becomes coordinator.
        #[arg(long, value_name = "ID")]
        to: u64,
    },
    /// The cluster CA: certificates for mutual TLS between nodes and for NBD over TCP
    /// (offline, no node involved).
    #[command(subcommand)]
    Certs(CertsCommand),
}

impl ClusterArgs {
    /// The `certs` command, which runs offline; otherwise the arguments back.
    pub fn offline(self) -> Result<(CertsCommand, bool), ClusterArgs> {
        match self.command {
            ClusterCommand::Certs(c) => Ok((c, self.json)),
            command => Err(ClusterArgs { command, ..self }),
        }
    }
}

/// Runs `csvadm cluster ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: ClusterArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
    let mut c = connect(socket)?;
    match args.command {
        ClusterCommand::Init { name } => {
            let r = c.cluster_init(&name)?;
            let view = InitView {
                cluster_id: r.cluster_id,
                node_id: r.node_id,
            };
            print(&view, out)?;
        }
        ClusterCommand::Status => print(&StatusView::from(&c.status()?), out)?,
        ClusterCommand::TransferLeader { to } => {
            c.leader_transfer(to)?;
            print(&TransferView { coordinator: to }, out)?;
        }
        ClusterCommand::Certs(_) => {
            return Err(Failure::local("`cluster certs` runs offline".into()));
        }
    }
    Ok(())
}

/// `cluster init`: the new cluster and its first node.
#[derive(Debug, Serialize)]
pub struct InitView {
    pub cluster_id: String,
    pub node_id: u64,
}

impl fmt::Display for InitView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster {} created; node {} is its coordinator",
            self.cluster_id, self.node_id
        )
    }
}

/// `cluster transfer-leader`: the new coordinator.
#[derive(Debug, Serialize)]
pub struct TransferView {
    pub coordinator: u64,
}

impl fmt::Display for TransferView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} is the coordinator", self.coordinator)
    }
}

/// `cluster status`: the cluster as the asked node sees it.
#[derive(Debug, Serialize)]
pub struct StatusView {
    /// The asked node.
    pub node_id: u64,
    /// `member`, `uninitialized`, ...
    pub node_state: String,
    pub cluster_id: String,
    pub cluster_name: String,
    /// The asked node's raft role.
    pub role: String,
    /// `None` while no coordinator is known (election, no quorum).
    pub coordinator: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    /// Whether match indexes and lags are known (only the coordinator knows them).
    pub progress_known: bool,
    /// Hash of the applied state, 16 hex digits.
    pub state_hash: String,
    pub members: Vec<MemberView>,
}

/// A member in [`StatusView`].
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: u64,
    pub address: String,
    pub role: String,
    pub state: String,
    pub health: String,
    pub coordinator: bool,
    /// `None` when progress is not known.
    pub match_index: Option<u64>,
    /// `None` when progress is not known.
    pub lag: Option<u64>,
}

impl From<&Status> for StatusView {
    fn from(s: &Status) -> StatusView {
        let known = |v: u64| s.progress_known.then_some(v);
        StatusView {
            node_id: s.node_id,
            node_state: s.node_state.clone(),
            cluster_id: s.cluster_id.clone(),
            cluster_name: s.cluster_name.clone(),
            role: s.role.clone(),
            coordinator: (s.coordinator != 0).then_some(s.coordinator),
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            first_index: s.first_index,
            last_index: s.last_index,
            progress_known: s.progress_known,
            state_hash: format!("{:016x}", s.state_hash),
            members: s
                .members
                .iter()
                .map(|m| MemberView {
                    id: m.id,
                    address: m.address.clone(),
                    role: m.role.clone(),
                    state: m.state.clone(),
                    health: m.health.clone(),
                    coordinator: m.coordinator,
                    match_index: known(m.match_index),
                    lag: known(m.lag),
                })
                .collect(),
        }
    }
}

impl fmt::Display for StatusView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = Vec::new();
        if self.node_state != "member" {
            lines.push(format!("node {}: {}", self.node_id, self.node_state));
            if self.node_state == "uninitialized" {
                lines.push(format!(
                    "run `csvadm cluster init` here, or `csvadm node add {} ADDRESS` on a member",
                    self.node_id
                ));
            }
            return f.write_str(&lines.join("\n"));
        }
        let coordinator = match self.coordinator {
            None => "none (election in progress or no quorum)".to_string(),
            Some(n) => format!("node {n}"),
        };
        lines.push(format!(
            "cluster      {} ({})",
            self.cluster_name, self.cluster_id
        ));
        lines.push(format!("coordinator  {coordinator}"));
        lines.push(format!("term         {}", self.term));
        lines.push(format!(
            "asked        node {} ({}): commit {}, applied {}, log {}..{}",
            self.node_id,
            self.role,
            self.commit_index,
            self.applied_index,
            self.first_index,
            self.last_index
        ));
        lines.push(String::new());
        lines.push(format!(
            "{:<6} {:<22} {:<8} {:<8} {:<7} {:>10} {:>8}",
            "ID", "ADDRESS", "ROLE", "STATE", "HEALTH", "MATCH", "LAG"
        ));
        let or_dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        for m in &self.members {
            let id = format!("{}{}", m.id, if m.coordinator { "*" } else { "" });
            lines.push(format!(
                "{:<6} {:<22} {:<8} {:<8} {:<7} {:>10} {:>8}",
                id,
                m.address,
                m.role,
                m.state,
                m.health,
                or_dash(m.match_index),
                or_dash(m.lag)
            ));
        }
        if let (false, Some(c)) = (self.progress_known, self.coordinator) {
            lines.push(String::new());
            lines.push(format!(
                "(* coordinator; match index and lag are known only to the coordinator: ask node {c})"
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;
    use csv_api::admin::Member;

    fn status(progress_known: bool) -> Status {
        Status {
            node_id: 1,
            node_state: "member".into(),
            cluster_id: "c".into(),
            cluster_name: "n".into(),
            role: "leader".into(),
            coordinator: 1,
            term: 3,
            commit_index: 9,
            applied_index: 9,
            first_index: 1,
            last_index: 9,
            progress_known,
            state_hash: 0xabc,
            members: vec![Member {
                id: 1,
                address: "a:1".into(),
                role: "voter".into(),
                state: "active".into(),
                health: "up".into(),
                match_index: 9,
                lag: 0,
                coordinator: true,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_text() {
        let table = StatusView::from(&status(true)).to_string();
        assert_eq!(
            table,
            "cluster      n (c)\n\
             coordinator  node 1\n\
             term         3\n\
             asked        node 1 (leader): commit 9, applied 9, log 1..9\n\
             \n\
             ID     ADDRESS                ROLE     STATE    HEALTH       MATCH      LAG\n\
             1*     a:1                    voter    active   up               9        0"
        );
        let follower = StatusView::from(&status(false)).to_string();
        assert!(follower.contains("up               -        -\n\n(* coordinator;"));
        let fresh = Status {
            node_id: 4,
            node_state: "uninitialized".into(),
            ..Default::default()
        };
        assert_eq!(
            StatusView::from(&fresh).to_string(),
            "node 4: uninitialized\n\
             run `csvadm cluster init` here, or `csvadm node add 4 ADDRESS` on a member"
        );
    }

    #[test]
    fn status_json() {
        let j = to_json(&StatusView::from(&status(false)), false).expect("json");
        assert_eq!(
            j,
            r#"{"applied_index":9,"cluster_id":"c","cluster_name":"n","commit_index":9,"coordinator":1,"first_index":1,"last_index":9,"members":[{"address":"a:1","coordinator":true,"health":"up","id":1,"lag":null,"match_index":null,"role":"voter","state":"active"}],"node_id":1,"node_state":"member","progress_known":false,"role":"leader","state_hash":"0000000000000abc","term":3}"#
        );
        let no_coordinator = Status {
            coordinator: 0,
            ..status(true)
        };
        let v: serde_json::Value = serde_json::from_str(
            &to_json(&StatusView::from(&no_coordinator), false).expect("json"),
        )
        .expect("parse");
        assert!(v["coordinator"].is_null());
        assert_eq!(v["members"][0]["lag"], 0);
    }
}
