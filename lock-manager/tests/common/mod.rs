//! Helpers shared by the integration tests: short command constructors and a compact,
//! canonical rendering of a `LockState` that tables can compare against.
//!
//! Rendering: `N <node>@<epoch><L|X|G><renewals> ... | V v<vhd>:<writer>#<generation>
//! <readers> ... | n=<next generation>` where a writer is `w<node>@<epoch>` (or `-`)
//! and a reader is `r<node>@<epoch><R|D>#<generation>` (R: read, D: read-deny-write);
//! L = live, X = expired, G = gone (left).
#![allow(dead_code)]

use lock_manager::{Command, Epoch, Generation, LockState, Mode, NodeId, NodeStatus, VhdId};

pub fn reg(n: u64) -> Command {
    Command::Register { node: NodeId(n) }
}
pub fn renew(n: u64, e: u64) -> Command {
    Command::Renew {
        node: NodeId(n),
        epoch: Epoch(e),
    }
}
pub fn expire(n: u64, e: u64, renewals: u64) -> Command {
    Command::ExpireNode {
        node: NodeId(n),
        epoch: Epoch(e),
        renewals,
    }
}
pub fn leave(n: u64, e: u64) -> Command {
    Command::Leave {
        node: NodeId(n),
        epoch: Epoch(e),
    }
}
pub fn acq(v: u64, n: u64, e: u64, mode: Mode) -> Command {
    Command::Acquire {
        vhd: VhdId(v),
        node: NodeId(n),
        epoch: Epoch(e),
        mode,
    }
}
pub fn w(v: u64, n: u64, e: u64) -> Command {
    acq(v, n, e, Mode::Write)
}
pub fn r(v: u64, n: u64, e: u64) -> Command {
    acq(v, n, e, Mode::Read)
}
pub fn rd(v: u64, n: u64, e: u64) -> Command {
    acq(v, n, e, Mode::ReadDenyWrite)
}
pub fn rel(v: u64, n: u64, e: u64, g: u64) -> Command {
    Command::Release {
        vhd: VhdId(v),
        node: NodeId(n),
        epoch: Epoch(e),
        generation: Generation(g),
    }
}
pub fn xfer(v: u64, from: u64, fe: u64, to: u64, te: u64, g: u64) -> Command {
    Command::Transfer {
        vhd: VhdId(v),
        from: NodeId(from),
        from_epoch: Epoch(fe),
        to: NodeId(to),
        to_epoch: Epoch(te),
        expected_generation: Generation(g),
    }
}
pub fn reclaim(v: u64, n: u64, e: u64, g: u64) -> Command {
    Command::Reclaim {
        vhd: VhdId(v),
        node: NodeId(n),
        epoch: Epoch(e),
        expected_generation: Generation(g),
    }
}
pub fn take(v: u64, n: u64, e: u64, g: u64) -> Command {
    Command::Takeover {
        vhd: VhdId(v),
        node: NodeId(n),
        epoch: Epoch(e),
        expected_generation: Generation(g),
    }
}

/// The canonical one-line rendering described in the module doc.
pub fn describe(s: &LockState) -> String {
    let nodes: Vec<String> = s
        .nodes()
        .iter()
        .map(|n| {
            let st = match n.status {
                NodeStatus::Live => 'L',
                NodeStatus::Expired => 'X',
                NodeStatus::Left => 'G',
            };
            format!("{}@{}{}{}", n.node.0, n.epoch.0, st, n.renewals)
        })
        .collect();
    let vhds: Vec<String> = s
        .owners()
        .iter()
        .map(|o| {
            let mut out = format!("v{}:", o.vhd.0);
            match (o.owner, o.owner_epoch) {
                (Some(n), Some(e)) => out += &format!("w{}@{}", n.0, e.0),
                _ => out += "-",
            }
            out += &format!("#{}", o.generation.0);
            for r in &o.readers {
                let m = if r.mode == Mode::ReadDenyWrite {
                    'D'
                } else {
                    'R'
                };
                out += &format!(" r{}@{}{}#{}", r.node.0, r.epoch.0, m, r.generation.0);
            }
            out
        })
        .collect();
    format!(
        "N {} | V {} | n={}",
        nodes.join(" "),
        vhds.join(" "),
        next_generation(s)
    )
}

/// The next grant number, read from the canonical snapshot.
pub fn next_generation(s: &LockState) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&s.snapshot()).expect("snapshot is json");
    v["next_generation"]
        .as_u64()
        .expect("next_generation is a number")
}

/// Applies `cmds`, panicking on the first refusal (for building states).
pub fn build(cmds: &[Command]) -> LockState {
    let mut s = LockState::new();
    for c in cmds {
        if let Err(e) = s.apply(c) {
            panic!("setup command {c:?} refused: {e}");
        }
    }
    s
}
