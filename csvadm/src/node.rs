//! `csvadm node ...`: add, promote and remove nodes, node liveness, maintenance
//! (`drain`, `resume`: `drain.rs`) and the node's metrics (`metrics.rs`), through the
//! addressed node's daemon (exit codes in `client.rs`).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use csv_api::admin::{LivenessInfo, Membership};
use serde::Serialize;

use crate::client::{EXIT_REFUSED, Failure, connect};
use crate::fence::FenceView;
use crate::metrics::MetricsView;
use crate::output::{Output, print};

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
    /// Maintenance: mark a node unschedulable, move its VMs away (live, quick when
    /// live fails) and the coordinator role too; it stays drained until `resume`.
    Drain {
        /// Node id.
        id: u64,
        /// VMs migrated at once.
        #[arg(long, default_value_t = 2)]
        parallel: usize,
        /// Give up after this many seconds (the node stays drained).
        #[arg(long, default_value_t = 900)]
        timeout: u64,
    },
    /// End maintenance: the node takes VMs again.
    Resume {
        /// Node id.
        id: u64,
    },
    /// The addressed node's key metrics (Raft, proposals, leases, path, extents, VMs,
    /// migrations, NBD per export); needs `[metrics] listen` in its configuration.
    Metrics,
}

/// Runs `csvadm node ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: NodeArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
    let mut c = connect(socket)?;
    let m = match args.command {
        NodeCommand::Add {
            id,
            address,
            learner,
        } => c.node_add(id, &address, learner)?,
        NodeCommand::Promote { id } => c.node_promote(id)?,
        NodeCommand::Remove { id } => c.node_remove(id)?,
        NodeCommand::Liveness => {
            print(&LivenessView::from(&c.node_liveness()?), out)?;
            return Ok(());
        }
        NodeCommand::Drain {
            id,
            parallel,
            timeout,
        } => {
            let v = crate::drain::drain(&mut c, id, parallel, Duration::from_secs(timeout))?;
            print(&v, out)?;
            if !v.left.is_empty() {
                return Err(Failure {
                    code: EXIT_REFUSED,
                    message: format!("{} VM(s) left on node {id}", v.left.len()),
                });
            }
            return Ok(());
        }
        NodeCommand::Resume { id } => {
            print(&crate::drain::resume(&mut c, id)?, out)?;
            return Ok(());
        }
        NodeCommand::Metrics => {
            let r = c.metrics()?;
            let v = MetricsView::from_text(&r.listen, &r.text).map_err(|e| Failure {
                code: EXIT_REFUSED,
                message: format!("the node's metrics do not parse: {e}"),
            })?;
            print(&v, out)?;
            return Ok(());
        }
    };
    print(&MembershipView::from(&m), out)?;
    Ok(())
}

/// `node add|promote|remove`: the membership after the change.
#[derive(Debug, Serialize)]
pub struct MembershipView {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

impl From<&Membership> for MembershipView {
    fn from(m: &Membership) -> MembershipView {
        MembershipView {
            voters: m.voters.clone(),
            learners: m.learners.clone(),
        }
    }
}

impl fmt::Display for MembershipView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "voters: {:?}  learners: {:?}",
            self.voters, self.learners
        )
    }
}

/// `node liveness`: every node's liveness and the asked node's fence.
#[derive(Debug, Serialize)]
pub struct LivenessView {
    /// The asked node.
    pub node_id: u64,
    /// Whether the asked node is the coordinator (whose tracker the ages come from).
    pub coordinator: bool,
    pub timing_ms: TimingView,
    pub nodes: Vec<NodeLivenessView>,
    pub local_fence: Option<FenceView>,
}

/// The liveness timing (ms) the cluster derives from its outage budget; `None` when the
/// node did not report it.
#[derive(Debug, Serialize)]
pub struct TimingView {
    pub outage_budget: Option<u64>,
    pub lease: Option<u64>,
    pub node_lease: Option<u64>,
    pub expiry_wait: Option<u64>,
}

/// One node in [`LivenessView`].
#[derive(Debug, Serialize)]
pub struct NodeLivenessView {
    pub node: u64,
    pub epoch: u64,
    /// `live`, `expired` or `left`.
    pub status: String,
    pub renewals: u64,
    /// Whether the coordinator's tracker follows it (the ages are known).
    pub tracked: bool,
    pub since_renewal_ms: Option<u64>,
    pub expires_in_ms: Option<u64>,
}

impl From<&LivenessInfo> for LivenessView {
    fn from(l: &LivenessInfo) -> LivenessView {
        let timing = |i: usize| l.timing_ms.get(i).copied();
        LivenessView {
            node_id: l.node_id,
            coordinator: l.coordinator,
            timing_ms: TimingView {
                outage_budget: timing(0),
                lease: timing(1),
                node_lease: timing(2),
                expiry_wait: timing(3),
            },
            nodes: l
                .nodes
                .iter()
                .map(|n| NodeLivenessView {
                    node: n.node,
                    epoch: n.epoch,
                    status: n.status.clone(),
                    renewals: n.renewals,
                    tracked: n.tracked,
                    since_renewal_ms: n.tracked.then_some(n.since_renewal_ms),
                    expires_in_ms: n.tracked.then_some(n.expires_in_ms),
                })
                .collect(),
            local_fence: l.local_fence.as_ref().map(FenceView::from),
        }
    }
}

impl fmt::Display for LivenessView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = vec![
            format!(
                "asked node {}{}",
                self.node_id,
                if self.coordinator {
                    " (coordinator: ages are its own)"
                } else {
                    " (not the coordinator: ask it for renewal ages)"
                }
            ),
            "NODE  EPOCH  STATUS   RENEWALS  SINCE_RENEWAL  EXPIRES_IN".to_string(),
        ];
        let age = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |ms| format!("{ms} ms"));
        for n in &self.nodes {
            lines.push(format!(
                "{:<5} {:<6} {:<8} {:<9} {:<14} {}",
                n.node,
                n.epoch,
                n.status,
                n.renewals,
                age(n.since_renewal_ms),
                age(n.expires_in_ms)
            ));
        }
        if let Some(fence) = &self.local_fence {
            lines.push(format!(
                "local fence: lease {} ({} ms left), {} holds, {} lost, {} lapses",
                fence.lease(),
                fence.remaining_ms,
                fence.holds.len(),
                fence.lost.len(),
                fence.lapses
            ));
        }
        f.write_str(&lines.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;
    use csv_api::admin::NodeLiveness;

    #[test]
    fn membership_text_and_json() {
        let v = MembershipView::from(&Membership {
            voters: vec![1, 2],
            learners: vec![],
        });
        assert_eq!(v.to_string(), "voters: [1, 2]  learners: []");
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"learners":[],"voters":[1,2]}"#
        );
    }

    #[test]
    fn liveness_text_and_json() {
        let l = LivenessInfo {
            node_id: 2,
            coordinator: false,
            nodes: vec![NodeLiveness {
                node: 1,
                epoch: 3,
                status: "live".into(),
                renewals: 10,
                tracked: false,
                since_renewal_ms: 5,
                expires_in_ms: 6,
            }],
            local_fence: None,
            timing_ms: vec![10000, 8000],
        };
        let v = LivenessView::from(&l);
        assert_eq!(
            v.to_string(),
            "asked node 2 (not the coordinator: ask it for renewal ages)\n\
             NODE  EPOCH  STATUS   RENEWALS  SINCE_RENEWAL  EXPIRES_IN\n\
             1     3      live     10        -              -"
        );
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"coordinator":false,"local_fence":null,"node_id":2,"nodes":[{"epoch":3,"expires_in_ms":null,"node":1,"renewals":10,"since_renewal_ms":null,"status":"live","tracked":false}],"timing_ms":{"expiry_wait":null,"lease":8000,"node_lease":null,"outage_budget":10000}}"#
        );
    }
}
