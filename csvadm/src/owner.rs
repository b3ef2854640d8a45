//! `csvadm owner ...` and `csvadm node liveness`: VHD ownership (who writes, generation,
//! readers, the asked node's local fence) and node liveness, over the admin socket. Exit
//! codes as in `cluster.rs`.

use std::path::Path;

use clap::{Args, Subcommand};
use csv_api::admin::{Client, LivenessInfo, LocalFence, OwnerInfo, vhd_ref};
use serde_json::{Value, json};

use crate::cluster::{Failure, failure};

/// `csvadm owner`.
#[derive(Args, Debug)]
pub struct OwnerArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OwnerCommand,
}

#[derive(Subcommand, Debug)]
enum OwnerCommand {
    /// Every VHD that has a writer or readers.
    List,
    /// One VHD's owner, generation and readers, and this node's fence for it.
    Show {
        /// VHD name or id.
        vhd: String,
    },
    /// Hand the VHD's write hold to another node (cooperative: the owner flushes,
    /// closes its fence and transfers; milliseconds).
    Move {
        /// VHD name or id.
        vhd: String,
        /// The node that becomes the writer.
        #[arg(long, value_name = "NODE")]
        to: u64,
    },
    /// Take a hold on the addressed node (write: acquire, or take over an expired owner).
    Acquire {
        /// VHD name or id.
        vhd: String,
        /// A read hold that tolerates a writer (migration target pre-open).
        #[arg(long, conflicts_with = "deny_write")]
        read_only: bool,
        /// A read hold that excludes every writer (differencing parent).
        #[arg(long)]
        deny_write: bool,
    },
    /// Drop the addressed node's hold.
    Release {
        /// VHD name or id.
        vhd: String,
    },
}

fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket).map_err(failure)
}

fn fence_json(f: &LocalFence) -> Value {
    json!({
        "node": f.node,
        "epoch": f.epoch,
        "lease_valid": f.lease_valid,
        "remaining_ms": f.remaining_ms,
        "write_open": f.write_open,
        "denied": f.denied,
        "holds": f.holds.iter().map(|h| json!({
            "vhd": h.vhd, "mode": h.mode, "generation": h.generation,
            "epoch": h.epoch, "handing_off": h.handing_off,
        })).collect::<Vec<_>>(),
        "lost": f.lost.iter().map(|h| json!({
            "vhd": h.vhd, "mode": h.mode, "generation": h.generation,
            "old_epoch": h.old_epoch, "new_epoch": h.new_epoch, "at_unix_ms": h.at_unix_ms,
        })).collect::<Vec<_>>(),
        "lapses": f.lapses,
        "last_lapse_unix_ms": f.last_lapse_unix_ms,
        "last_reopen_unix_ms": f.last_reopen_unix_ms,
    })
}

fn owner_json(o: &OwnerInfo) -> Value {
    let mut v = json!({
        "vhd": o.vhd,
        "name": o.name,
        "owner": if o.owner == 0 { Value::Null } else { json!(o.owner) },
        "owner_epoch": if o.owner == 0 { Value::Null } else { json!(o.owner_epoch) },
        "owner_valid": o.owner_valid,
        "generation": o.generation,
        "readers": o.readers.iter().map(|r| json!({
            "node": r.node, "epoch": r.epoch, "mode": r.mode, "generation": r.generation,
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = &o.local_fence {
        v["local_fence"] = fence_json(f);
    }
    v
}

fn owner_text(o: &OwnerInfo) -> String {
    let who = match (o.owner, o.owner_valid) {
        (0, _) => "none".to_string(),
        (n, true) => format!("node {n} (epoch {})", o.owner_epoch),
        (n, false) => format!("node {n} EXPIRED (epoch {}): takeover-able", o.owner_epoch),
    };
    let readers: Vec<String> = o
        .readers
        .iter()
        .map(|r| format!("node {} ({})", r.node, r.mode))
        .collect();
    let mut s = format!(
        "vhd {} {:?}: owner {who}, generation {}, readers [{}]",
        o.vhd,
        o.name,
        o.generation,
        readers.join(", ")
    );
    if let Some(f) = &o.local_fence {
        s.push_str(&format!(
            "\nlocal fence (node {}): write {}{}; lease {} ({} ms left); {} holds lost",
            f.node,
            if f.write_open { "open" } else { "closed" },
            if f.denied.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.denied)
            },
            if f.lease_valid { "valid" } else { "lapsed" },
            f.remaining_ms,
            f.lost.len()
        ));
    }
    s
}

/// Runs `csvadm owner ...`.
pub fn run_owner(socket: &Path, args: OwnerArgs, json_top: bool) -> Result<(), Failure> {
    let json_out = args.json || json_top;
    let mut c = connect(socket)?;
    match args.command {
        OwnerCommand::List => {
            let l = c.owner_list().map_err(failure)?;
            if json_out {
                println!("{}", Value::Array(l.iter().map(owner_json).collect()));
            } else if l.is_empty() {
                println!("no VHD is held");
            } else {
                for o in &l {
                    println!("{}", owner_text(o));
                }
            }
        }
        OwnerCommand::Show { vhd } => {
            let o = c.owner_show(vhd_ref(&vhd)).map_err(failure)?;
            print_owner(&o, json_out);
        }
        OwnerCommand::Move { vhd, to } => {
            let o = c.owner_move(vhd_ref(&vhd), to).map_err(failure)?;
            print_owner(&o, json_out);
        }
        OwnerCommand::Acquire {
            vhd,
            read_only,
            deny_write,
        } => {
            let mode = match (read_only, deny_write) {
                (true, _) => "read",
                (_, true) => "read_deny_write",
                _ => "write",
            };
            let h = c.owner_acquire(vhd_ref(&vhd), mode).map_err(failure)?;
            if json_out {
                println!(
                    "{}",
                    json!({"vhd": h.vhd, "node": h.node, "mode": h.mode,
                           "generation": h.generation, "fence_open": h.fence_open})
                );
            } else {
                println!(
                    "vhd {} held by node {} ({}) at generation {}; fence {}",
                    h.vhd,
                    h.node,
                    h.mode,
                    h.generation,
                    if h.fence_open { "open" } else { "not open yet" }
                );
            }
        }
        OwnerCommand::Release { vhd } => {
            let o = c.owner_release(vhd_ref(&vhd)).map_err(failure)?;
            print_owner(&o, json_out);
        }
    }
    Ok(())
}

fn print_owner(o: &OwnerInfo, json_out: bool) {
    if json_out {
        println!("{}", owner_json(o));
    } else {
        println!("{}", owner_text(o));
    }
}

/// `csvadm node liveness` as JSON.
pub fn liveness_json(l: &LivenessInfo) -> Value {
    json!({
        "node_id": l.node_id,
        "coordinator": l.coordinator,
        "timing_ms": {
            "outage_budget": l.timing_ms.first(),
            "lease": l.timing_ms.get(1),
            "node_lease": l.timing_ms.get(2),
            "expiry_wait": l.timing_ms.get(3),
        },
        "nodes": l.nodes.iter().map(|n| json!({
            "node": n.node, "epoch": n.epoch, "status": n.status, "renewals": n.renewals,
            "tracked": n.tracked,
            "since_renewal_ms": if n.tracked { json!(n.since_renewal_ms) } else { Value::Null },
            "expires_in_ms": if n.tracked { json!(n.expires_in_ms) } else { Value::Null },
        })).collect::<Vec<_>>(),
        "local_fence": l.local_fence.as_ref().map(fence_json),
    })
}

/// Runs `csvadm node liveness`.
pub fn run_liveness(c: &mut Client, json_out: bool) -> Result<(), Failure> {
    let l = c.node_liveness().map_err(failure)?;
    if json_out {
        println!("{}", liveness_json(&l));
        return Ok(());
    }
    println!(
        "asked node {}{}",
        l.node_id,
        if l.coordinator {
            " (coordinator: ages are its own)"
        } else {
            " (not the coordinator: ask it for renewal ages)"
        }
    );
    println!("NODE  EPOCH  STATUS   RENEWALS  SINCE_RENEWAL  EXPIRES_IN");
    for n in &l.nodes {
        let (since, exp) = if n.tracked {
            (
                format!("{} ms", n.since_renewal_ms),
                format!("{} ms", n.expires_in_ms),
            )
        } else {
            ("-".into(), "-".into())
        };
        println!(
            "{:<5} {:<6} {:<8} {:<9} {:<14} {}",
            n.node, n.epoch, n.status, n.renewals, since, exp
        );
    }
    if let Some(f) = &l.local_fence {
        println!(
            "local fence: lease {} ({} ms left), {} holds, {} lost, {} lapses",
            if f.lease_valid { "valid" } else { "lapsed" },
            f.remaining_ms,
            f.holds.len(),
            f.lost.len(),
            f.lapses
        );
    }
    Ok(())
}
