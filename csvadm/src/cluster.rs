//! `csvadm cluster ...` and `csvadm node ...`: cluster commands sent to a node's daemon over
//! its admin socket (csv-api client). The socket comes from `--admin`, else `$CSV_ADMIN`,
//! else the node config at `$CSV_CONFIG` or `/etc/csv/csv-node.toml` (`paths.admin_socket`,
//! default `<paths.data_dir>/admin.sock`).
//!
//! Exit codes: 0 success; 1 local error (usage, config); 2 the cluster refused the request;
//! 3 the daemon could not be reached; 4 unavailable or outcome unknown (no coordinator,
//! timeout: retry later).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use csv_api::ErrorCode;
use csv_api::admin::{Client, ClientError, Membership, Status};
use serde_json::json;

/// Default node configuration read to find the admin socket.
pub const DEFAULT_CONFIG: &str = "/etc/csv/csv-node.toml";

/// Exit code: the cluster refused the request.
pub const EXIT_REFUSED: u8 = 2;
/// Exit code: the daemon could not be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: unavailable now or outcome unknown.
pub const EXIT_UNAVAILABLE: u8 = 4;

/// `csvadm cluster`.
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
}

/// `csvadm node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Add a node (started with an empty data dir) by id and cluster address; it becomes
    /// a voter once caught up, unless --learner.
    Add {
        /// New node id (never used before in this cluster).
        id: u64,
        /// Its cluster address (host:port, its `cluster.advertise`).
        address: String,
        /// Keep it a learner (replicates, does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter.
    Promote {
        /// Node id.
        id: u64,
    },
    /// Remove a node for good (its id can never be used again).
    Remove {
        /// Node id.
        id: u64,
    },
    /// Liveness of every node (renewal ages when asked on the coordinator) and the
    /// addressed node's local fence.
    Liveness,
}

/// Where the admin socket is.
pub fn admin_socket(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let cfg = std::env::var_os("CSV_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    socket_from_config(&cfg)
}

fn socket_from_config(path: &Path) -> Result<PathBuf> {
    #[derive(serde::Deserialize)]
    struct Paths {
        data_dir: Option<PathBuf>,
        admin_socket: Option<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct File {
        paths: Paths,
    }
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "read node config {} (give --admin SOCKET, or set CSV_ADMIN or CSV_CONFIG)",
            path.display()
        )
    })?;
    let f: File =
        toml::from_str(&text).with_context(|| format!("parse node config {}", path.display()))?;
    f.paths
        .admin_socket
        .or_else(|| f.paths.data_dir.map(|d| d.join("admin.sock")))
        .ok_or_else(|| {
            anyhow!(
                "{}: no paths.admin_socket or paths.data_dir",
                path.display()
            )
        })
}

/// A failed cluster command: the message and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: u8,
    /// What to print.
    pub message: String,
}

pub(crate) fn failure(e: ClientError) -> Failure {
    let code = match &e {
        ClientError::Connect { .. } => EXIT_UNREACHABLE,
        ClientError::Api(a) => match a.code() {
            ErrorCode::NoLeader
            | ErrorCode::NotLeader
            | ErrorCode::Dropped
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::Indeterminate
            | ErrorCode::Stopped
            | ErrorCode::Unavailable => EXIT_UNAVAILABLE,
            _ => EXIT_REFUSED,
        },
        ClientError::Frame(_) | ClientError::Closed => EXIT_UNAVAILABLE,
        ClientError::Protocol(_) => EXIT_REFUSED,
    };
    let message = match &e {
        ClientError::Api(a) => format!("{} ({}): {}", a.code().name(), a.code, a.message),
        other => other.to_string(),
    };
    Failure { code, message }
}

pub(crate) fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket).map_err(failure)
}

fn print_membership(m: &Membership, json_out: bool) {
    if json_out {
        println!("{}", json!({"voters": m.voters, "learners": m.learners}));
    } else {
        println!("voters: {:?}  learners: {:?}", m.voters, m.learners);
    }
}

/// Runs `csvadm cluster ...`.
pub fn run_cluster(socket: &Path, args: ClusterArgs, json_top: bool) -> Result<(), Failure> {
    let json_out = args.json || json_top;
    let mut c = connect(socket)?;
    match args.command {
        ClusterCommand::Init { name } => {
            let r = c.cluster_init(&name).map_err(failure)?;
            if json_out {
                println!(
                    "{}",
                    json!({"cluster_id": r.cluster_id, "node_id": r.node_id})
                );
            } else {
                println!(
                    "cluster {} created; node {} is its coordinator",
                    r.cluster_id, r.node_id
                );
            }
        }
        ClusterCommand::Status => {
            let s = c.status().map_err(failure)?;
            if json_out {
                println!("{}", status_json(&s));
            } else {
                print!("{}", status_table(&s));
            }
        }
        ClusterCommand::TransferLeader { to } => {
            c.leader_transfer(to).map_err(failure)?;
            if json_out {
                println!("{}", json!({"coordinator": to}));
            } else {
                println!("node {to} is the coordinator");
            }
        }
    }
    Ok(())
}

/// Runs `csvadm node ...`.
pub fn run_node(socket: &Path, args: NodeArgs, json_top: bool) -> Result<(), Failure> {
    let json_out = args.json || json_top;
    let mut c = connect(socket)?;
    let m = match args.command {
        NodeCommand::Add {
            id,
            address,
            learner,
        } => c.node_add(id, &address, learner),
        NodeCommand::Promote { id } => c.node_promote(id),
        NodeCommand::Remove { id } => c.node_remove(id),
        NodeCommand::Liveness => return crate::owner::run_liveness(&mut c, json_out),
    }
    .map_err(failure)?;
    print_membership(&m, json_out);
    Ok(())
}

/// The `--json` form of a status.
pub fn status_json(s: &Status) -> serde_json::Value {
    json!({
        "node_id": s.node_id,
        "node_state": s.node_state,
        "cluster_id": s.cluster_id,
        "cluster_name": s.cluster_name,
        "role": s.role,
        "coordinator": if s.coordinator == 0 { serde_json::Value::Null } else { json!(s.coordinator) },
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "first_index": s.first_index,
        "last_index": s.last_index,
        "progress_known": s.progress_known,
        "state_hash": format!("{:016x}", s.state_hash),
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "role": m.role,
            "state": m.state,
            "health": m.health,
            "coordinator": m.coordinator,
            "match_index": if s.progress_known { json!(m.match_index) } else { serde_json::Value::Null },
            "lag": if s.progress_known { json!(m.lag) } else { serde_json::Value::Null },
        })).collect::<Vec<_>>(),
    })
}

/// The readable form of a status.
pub fn status_table(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if s.node_state != "member" {
        let _ = writeln!(o, "node {}: {}", s.node_id, s.node_state);
        if s.node_state == "uninitialized" {
            let _ = writeln!(
                o,
                "run `csvadm cluster init` here, or `csvadm node add {} ADDRESS` on a member",
                s.node_id
            );
        }
        return o;
    }
    let coord = if s.coordinator == 0 {
        "none (election in progress or no quorum)".to_string()
    } else {
        format!("node {}", s.coordinator)
    };
    let _ = writeln!(o, "cluster      {} ({})", s.cluster_name, s.cluster_id);
    let _ = writeln!(o, "coordinator  {coord}");
    let _ = writeln!(o, "term         {}", s.term);
    let _ = writeln!(
        o,
        "asked        node {} ({}): commit {}, applied {}, log {}..{}",
        s.node_id, s.role, s.commit_index, s.applied_index, s.first_index, s.last_index
    );
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<6} {:<22} {:<8} {:<8} {:<7} {:>10} {:>8}",
        "ID", "ADDRESS", "ROLE", "STATE", "HEALTH", "MATCH", "LAG"
    );
    for m in &s.members {
        let (mi, lag) = if s.progress_known {
            (m.match_index.to_string(), m.lag.to_string())
        } else {
            ("-".into(), "-".into())
        };
        let id = format!("{}{}", m.id, if m.coordinator { "*" } else { "" });
        let _ = writeln!(
            o,
            "{:<6} {:<22} {:<8} {:<8} {:<7} {:>10} {:>8}",
            id, m.address, m.role, m.state, m.health, mi, lag
        );
    }
    if !s.progress_known && s.coordinator != 0 {
        let _ = writeln!(
            o,
            "\n(* coordinator; match index and lag are known only to the coordinator: ask node {})",
            s.coordinator
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use csv_api::admin::Member;

    #[test]
    fn socket_from_config_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("n.toml");
        std::fs::write(&p, "[node]\nid=1\n[paths]\ndata_dir = \"/d\"\n").expect("write");
        assert_eq!(
            socket_from_config(&p).expect("ok"),
            PathBuf::from("/d/admin.sock")
        );
        std::fs::write(&p, "[paths]\ndata_dir = \"/d\"\nadmin_socket = \"/s\"\n").expect("write");
        assert_eq!(socket_from_config(&p).expect("ok"), PathBuf::from("/s"));
        assert!(socket_from_config(&d.path().join("none")).is_err());
        assert_eq!(
            admin_socket(Some(PathBuf::from("/x"))).expect("explicit"),
            PathBuf::from("/x")
        );
    }

    #[test]
    fn status_renders() {
        let s = Status {
            node_id: 1,
            node_state: "member".into(),
            cluster_id: "c".into(),
            cluster_name: "n".into(),
            role: "leader".into(),
            coordinator: 1,
            term: 3,
            applied_index: 9,
            progress_known: true,
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
        };
        let j = status_json(&s);
        assert_eq!(j["coordinator"], 1);
        assert_eq!(j["members"][0]["state"], "active");
        assert!(status_table(&s).contains("1*"));
        let f = failure(ClientError::Api(csv_api::error::ApiError::new(
            ErrorCode::NoLeader,
            "x",
        )));
        assert_eq!(f.code, EXIT_UNAVAILABLE);
        assert_eq!(f.message, "no_leader (1): x");
    }
}
