//! Injecting one planned fault and healing it (blocking: the runner's main thread).

use std::time::Duration;

use chaos::history::FaultClass;
use chaos::schedule::Planned;
use csv_api::admin::vhd_ref;

use super::rig::Rig;
use super::workload::{Shared, Target};
use crate::san::LateTarget;

/// How long a fault's own admin call (a move) may take.
const ADMIN_WAIT: Duration = Duration::from_secs(15);

/// Every metadata fsync of a node this much slower (fail point `meta.fsync`).
const SLOW_FSYNC: &str = "meta.fsync=sleep(300)";

/// Injects `f`, waits its hold time, heals it; what was done, in words.
pub fn inject(rig: &mut Rig, sh: &Shared, targets: &[Target], f: &Planned) -> String {
    let n = f.node;
    let hold = Duration::from_millis(f.hold_ms);
    match f.class {
        FaultClass::Kill => {
            rig.vc.c.kill(n);
            std::thread::sleep(hold);
            rig.vc.c.start(n);
            format!("kill -9, restarted after {hold:?}")
        }
        FaultClass::Stop => {
            rig.vc.c.signal(n, "STOP");
            std::thread::sleep(hold);
            rig.vc.c.signal(n, "CONT");
            format!("SIGSTOP for {hold:?}, SIGCONT")
        }
        FaultClass::Partition => {
            rig.vc.c.net().cut(&[n]);
            std::thread::sleep(hold);
            rig.vc.c.net().heal(&[n]);
            format!("cut off from its peers for {hold:?}")
        }
        FaultClass::Path => {
            let san = rig.sans.get_mut(&n).expect("san");
            san.cut();
            std::thread::sleep(hold);
            san.restore();
            format!("SAN port killed for {hold:?}, restored")
        }
        FaultClass::Late => {
            rig.sans.get_mut(&n).expect("san").cut();
            let late = LateTarget::start(&rig.san_sock(n), &rig.vc.lun);
            std::thread::sleep(hold);
            // Killed with writes in its scripts: they land later still.
            drop(late);
            rig.sans.get_mut(&n).expect("san").restore();
            format!("SAN port landing writes 1 s late for {hold:?}, then cut and restored")
        }
        FaultClass::SlowFsync => {
            let c = &mut rig.vc.c;
            c.stop(n);
            c.set_env(n, "FAILPOINTS", &fsync_env(sh, n, true));
            c.start(n);
            std::thread::sleep(hold);
            c.stop(n);
            c.set_env(n, "FAILPOINTS", &fsync_env(sh, n, false));
            c.start(n);
            format!("restarted with metadata fsyncs 300 ms slow for {hold:?}, restarted")
        }
        FaultClass::Move => {
            // Never the VM's disk: taking it from the VM's node is the VM's death, not a
            // move (migrations move it).
            let movable: Vec<&Target> = targets.iter().filter(|t| !t.vm).collect();
            match movable.get(f.vhd % movable.len().max(1)) {
                Some(t) => move_vhd(sh, t, n),
                None => "no VHD to move".into(),
            }
        }
        FaultClass::Migrate => migrate(rig, n),
    }
}

/// The node's FAILPOINTS with or without the slow fsync, keeping what the run set.
fn fsync_env(sh: &Shared, _node: u64, slow: bool) -> String {
    let base = sh.node_failpoints.clone();
    match (slow, base.is_empty()) {
        (true, true) => SLOW_FSYNC.to_string(),
        (true, false) => format!("{base};{SLOW_FSYNC}"),
        (false, _) => base,
    }
}

/// Hands the VHD's write hold to `to` (or the next node when it is there already) and
/// attaches it there.
fn move_vhd(sh: &Shared, t: &Target, to: u64) -> String {
    let nodes: Vec<u64> = sh.admins.keys().copied().collect();
    let owner = nodes.iter().find_map(|n| {
        let info = sh
            .admin_within(*n, ADMIN_WAIT)?
            .owner_show(vhd_ref(&t.name))
            .ok()?;
        Some(info.owner)
    });
    let Some(owner) = owner else {
        return format!("{}: no node answers", t.name);
    };
    let to = if to == owner {
        nodes[(nodes.iter().position(|n| *n == to).unwrap_or(0) + 1) % nodes.len()]
    } else {
        to
    };
    let moved = sh
        .admin_within(owner, ADMIN_WAIT)
        .ok_or_else(|| format!("node {owner} does not answer"))
        .and_then(|mut c| {
            c.owner_move(vhd_ref(&t.name), to)
                .map_err(|e| e.to_string())
        });
    match moved {
        Ok(info) => format!(
            "{} moved from node {owner} to node {to} (generation {})",
            t.name, info.generation
        ),
        Err(e) => format!(
            "{} move from node {owner} to node {to} refused: {e}",
            t.name
        ),
    }
}

/// Live-migrates the chaos VM to `to` (or the next node when it runs there), under the
/// workload's load on its disk.
fn migrate(rig: &Rig, to: u64) -> String {
    let vm = super::rig::VM;
    let ids: Vec<u64> = rig.vc.c.nodes.keys().copied().collect();
    let at = ids.iter().find_map(|id| {
        let o = rig.vc.csvadm(*id, &["vm", "show", vm, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["node"].as_u64()
    });
    let Some(at) = at else {
        return format!("{vm}: no node answers");
    };
    let to = if to == at {
        ids[(ids.iter().position(|n| *n == to).unwrap_or(0) + 1) % ids.len()]
    } else {
        to
    };
    let o = rig
        .vc
        .csvadm(at, &["vm", "migrate", vm, "--to", &to.to_string()]);
    let text = String::from_utf8_lossy(if o.status.success() {
        &o.stdout
    } else {
        &o.stderr
    })
    .trim()
    .replace('\n', "; ");
    if o.status.success() {
        format!("{vm} migrated live from node {at} to node {to}: {text}")
    } else {
        format!("{vm} migration from node {at} to node {to} refused: {text}")
    }
}
