//! `csvadm node drain N` and `csvadm node resume N`: maintenance of a host.
//!
//! Drain marks the node unschedulable in the replicated VM table (no VM is started,
//! restarted or migrated onto it), then moves every VM running there to another node,
//! at most `--parallel` at once: live, and quick when a live migration fails (a guest
//! that dirties memory faster than the link copies it). The destination is the VM's
//! first schedulable preferred node, else the least loaded one; a node whose storage
//! path is paused takes none, a degraded path elsewhere blocks nothing. Last, when the
//! node is the coordinator, the role moves to another active voter. The node stays
//! drained until `node resume`; running `drain` again continues an interrupted one.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use csv_api::admin::Client;
use csv_api::admin::vm::{VmAnswer, VmDrain, VmInfo, VmMigrate, VmOp};
use serde::Serialize;

use crate::client::{EXIT_UNAVAILABLE, Failure};

/// How a drain went.
#[derive(Debug, Serialize)]
pub struct DrainView {
    pub node: u64,
    pub drained: bool,
    /// VMs moved off it.
    pub migrated: Vec<MovedView>,
    /// VMs still placed on it, with why.
    pub left: Vec<LeftView>,
    /// Where the coordinator role went (when the node held it).
    pub coordinator_moved_to: Option<u64>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct MovedView {
    pub name: String,
    pub to: u64,
    pub kind: String,
    pub downtime_ms: u64,
    pub total_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct LeftView {
    pub name: String,
    pub reason: String,
}

impl fmt::Display for DrainView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} {} ({:.1} s): {} VM(s) moved, {} left",
            self.node,
            if self.drained {
                "drained"
            } else {
                "schedulable"
            },
            self.elapsed_ms as f64 / 1000.0,
            self.migrated.len(),
            self.left.len()
        )?;
        for m in &self.migrated {
            write!(
                f,
                "\n  {:<20} -> node {} ({}, downtime {} ms, total {} ms)",
                m.name, m.to, m.kind, m.downtime_ms, m.total_ms
            )?;
        }
        for l in &self.left {
            write!(f, "\n  {:<20} left: {}", l.name, l.reason)?;
        }
        if let Some(c) = self.coordinator_moved_to {
            write!(f, "\ncoordinator moved to node {c}")?;
        }
        Ok(())
    }
}

fn set_drained(c: &mut Client, node: u64, on: bool) -> Result<Vec<VmInfo>, Failure> {
    match c.vm(VmOp::Drain(VmDrain { node, on }))? {
        VmAnswer::List(l) => Ok(l.vms),
        other => Err(Failure::local(format!("unexpected answer: {other:?}"))),
    }
}

fn name_of(v: &VmInfo) -> String {
    v.definition
        .as_ref()
        .map(|d| d.name.clone())
        .unwrap_or_default()
}

/// `node resume N`.
pub fn resume(c: &mut Client, node: u64) -> Result<DrainView, Failure> {
    let start = Instant::now();
    set_drained(c, node, false)?;
    Ok(DrainView {
        node,
        drained: false,
        migrated: Vec::new(),
        left: Vec::new(),
        coordinator_moved_to: None,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

/// One VM being moved.
#[derive(Clone, Copy)]
struct Moving {
    id: u64,
    quick: bool,
}

/// `node drain N`.
pub fn drain(
    c: &mut Client,
    node: u64,
    parallel: usize,
    timeout: Duration,
) -> Result<DrainView, Failure> {
    let start = Instant::now();
    let deadline = start + timeout;
    set_drained(c, node, true)?;
    let mut moving: BTreeMap<String, Moving> = BTreeMap::new();
    let mut migrated = Vec::new();
    let mut left: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let vms = match c.vm(VmOp::List(csv_api::admin::Empty {}))? {
            VmAnswer::List(l) => l.vms,
            other => return Err(Failure::local(format!("unexpected answer: {other:?}"))),
        };
        // Migrations that ended.
        for v in &vms {
            let name = name_of(v);
            let Some(&Moving { id, quick }) = moving.get(&name) else {
                continue;
            };
            if v.migration.as_ref().is_some_and(|m| m.id == id) {
                continue;
            }
            moving.remove(&name);
            match v.last_migration.as_ref().filter(|m| m.id == id) {
                Some(m) if m.state == "completed" => migrated.push(MovedView {
                    name,
                    to: m.dst,
                    kind: m.kind.clone(),
                    downtime_ms: m.downtime_ms,
                    total_ms: m.total_ms,
                }),
                Some(m) if !quick => {
                    eprintln!("csvadm: live migration of {name} {}: trying quick", m.state);
                    if let Err(e) = start_move(c, &name, true, &mut moving) {
                        left.insert(name, e);
                    }
                }
                Some(m) => {
                    left.insert(name, format!("quick migration {}", m.state));
                }
                None => {
                    left.insert(name, "its migration ended without a record".into());
                }
            }
        }
        // VMs still here: start moving them, a bounded number at once.
        let mut waiting = false;
        for v in vms.iter().filter(|v| v.node == node) {
            let name = name_of(v);
            if moving.contains_key(&name) || left.contains_key(&name) {
                continue;
            }
            if v.want != "running" {
                continue;
            }
            match v.state.as_str() {
                "running" | "paused" if v.migration.is_none() => {
                    if moving.len() < parallel.max(1)
                        && let Err(e) = start_move(c, &name, false, &mut moving)
                    {
                        left.insert(name, e);
                    }
                    waiting = true;
                }
                "failed" => {
                    left.insert(name, format!("failed here: {}", v.detail));
                }
                // Starting, stopping, or a migration not started by this drain.
                _ => waiting = true,
            }
        }
        if moving.is_empty() && !waiting {
            break;
        }
        if Instant::now() > deadline {
            for name in moving.keys() {
                left.insert(name.clone(), "still migrating at the deadline".into());
            }
            return Err(Failure {
                code: EXIT_UNAVAILABLE,
                message: format!(
                    "node {node} not drained after {} s: {}",
                    timeout.as_secs(),
                    left.iter()
                        .map(|(n, r)| format!("{n}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let coordinator_moved_to = move_coordinator(c, node)?;
    Ok(DrainView {
        node,
        drained: true,
        migrated,
        left: left
            .into_iter()
            .map(|(name, reason)| LeftView { name, reason })
            .collect(),
        coordinator_moved_to,
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

fn start_move(
    c: &mut Client,
    name: &str,
    quick: bool,
    moving: &mut BTreeMap<String, Moving>,
) -> Result<(), String> {
    let op = VmOp::Migrate(VmMigrate {
        name: name.to_string(),
        to: 0,
        quick,
    });
    match c.vm_info(op) {
        Ok(v) => match v.migration {
            Some(m) => {
                moving.insert(name.to_string(), Moving { id: m.id, quick });
                Ok(())
            }
            None => Err("no migration was recorded".into()),
        },
        Err(e) => Err(crate::client::failure(e).message),
    }
}

/// Hands the coordinator role to another active voter when `node` holds it.
fn move_coordinator(c: &mut Client, node: u64) -> Result<Option<u64>, Failure> {
    let st = c.status()?;
    if st.coordinator != node {
        return Ok(None);
    }
    let Some(to) = st
        .members
        .iter()
        .find(|m| m.id != node && m.role == "voter" && m.state == "active" && m.health != "down")
        .map(|m| m.id)
    else {
        eprintln!("csvadm: node {node} stays coordinator: no other active voter");
        return Ok(None);
    };
    c.leader_transfer(to)?;
    Ok(Some(to))
}
