//! Data-driven table of every `LockState` transition: state before (built by setup
//! commands, rendered and checked), the command, the exact outcome or error, the state
//! after. A refused command must leave the state untouched. Rendering legend:
//! `tests/common/mod.rs`.

#[path = "../common/mod.rs"]
mod common;
mod node_rows;
mod vhd_rows;

use common::*;
use lock_manager::{
    Command, ConflictReason, Epoch, Generation, LockError, LockState, Mode, NodeId, NodeStatus,
    Outcome, VhdId,
};

struct Row {
    name: &'static str,
    setup: Vec<Command>,
    before: &'static str,
    cmd: Command,
    expect: Result<Outcome, LockError>,
    after: &'static str,
}

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const V1: VhdId = VhdId(1);

fn e(n: u64) -> Epoch {
    Epoch(n)
}
fn g(n: u64) -> Generation {
    Generation(n)
}
fn granted(
    vhd: VhdId,
    node: NodeId,
    ep: u64,
    mode: Mode,
    gen_: u64,
    prev: Option<NodeId>,
) -> Result<Outcome, LockError> {
    Ok(Outcome::Granted {
        vhd,
        node,
        epoch: e(ep),
        mode,
        generation: g(gen_),
        previous_writer: prev,
    })
}
fn stale(node: NodeId, given: u64, current: u64) -> Result<Outcome, LockError> {
    Err(LockError::StaleEpoch {
        node,
        given: e(given),
        current: e(current),
    })
}
fn conflict(holder: NodeId, reason: ConflictReason) -> Result<Outcome, LockError> {
    Err(LockError::Conflict {
        vhd: V1,
        holder,
        reason,
    })
}

fn req_xfer(v: u64, from: u64, to: u64, gen_: u64) -> Command {
    Command::RequestTransfer {
        vhd: VhdId(v),
        from: NodeId(from),
        to: NodeId(to),
        expected_generation: Generation(gen_),
    }
}

fn two() -> Vec<Command> {
    vec![reg(1), reg(2)]
}
fn three() -> Vec<Command> {
    vec![reg(1), reg(2), reg(3)]
}
fn with(mut base: Vec<Command>, more: &[Command]) -> Vec<Command> {
    base.extend_from_slice(more);
    base
}

fn rows() -> Vec<Row> {
    let mut r = node_rows::rows();
    r.extend(vhd_rows::rows());
    r
}

#[test]
fn every_transition_matches_its_row() {
    let rows = rows();
    assert!(
        rows.len() >= 50,
        "the table covers every command: {} rows",
        rows.len()
    );
    let mut failures = Vec::new();
    for row in rows {
        let mut state = build(&row.setup);
        let before = describe(&state);
        if before != row.before {
            failures.push(format!(
                "{}: before\n   got  {before}\n   want {}",
                row.name, row.before
            ));
            continue;
        }
        let hash_before = state.state_hash();
        let got = state.apply(&row.cmd);
        let after = describe(&state);
        if got != row.expect {
            failures.push(format!(
                "{}: outcome\n   got  {got:?}\n   want {:?}",
                row.name, row.expect
            ));
        }
        if after != row.after {
            failures.push(format!(
                "{}: after\n   got  {after}\n   want {}",
                row.name, row.after
            ));
        }
        if got.is_err() && state.state_hash() != hash_before {
            failures.push(format!("{}: a refused command changed the state", row.name));
        }
        if let Err(e) = state.check_invariants() {
            failures.push(format!("{}: invariant broken: {e}", row.name));
        }
        let restored = LockState::restore(&state.snapshot()).expect("own snapshot restores");
        if restored != state {
            failures.push(format!("{}: snapshot round trip differs", row.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn node_limit_is_enforced() {
    let mut s = LockState::new();
    for n in 0..lock_manager::state::MAX_NODES as u64 {
        s.apply(&reg(n)).expect("under the limit");
    }
    let err = s.apply(&reg(u64::MAX)).expect_err("over the limit");
    assert_eq!(err.code(), "limit");
    // Existing nodes still register (idempotently).
    s.apply(&reg(0)).expect("existing node");
}

#[test]
fn owner_show_json_has_owner_generation_and_readers() {
    let s = build(&with(two(), &[w(1, 1, 1), r(1, 2, 1)]));
    let v = serde_json::to_value(s.owner(V1).expect("held")).expect("json");
    assert_eq!(v["owner"], 1);
    assert_eq!(v["generation"], 1);
    assert_eq!(v["owner_valid"], true);
    assert_eq!(v["readers"][0]["node"], 2);
    assert_eq!(v["readers"][0]["mode"], "read");
    let nodes = serde_json::to_value(s.nodes()).expect("json");
    assert_eq!(nodes[0]["status"], "live");
}

#[test]
fn commands_and_outcomes_round_trip_through_json() {
    let cmds = [
        reg(1),
        renew(1, 1),
        expire(1, 1, 3),
        leave(1, 1),
        w(1, 1, 1),
        r(1, 1, 1),
        rd(1, 1, 1),
        rel(1, 1, 1, 1),
        xfer(1, 1, 1, 2, 1, 1),
        take(1, 1, 1, 1),
        reclaim(1, 1, 1, 1),
    ];
    for c in cmds {
        let text = serde_json::to_string(&c).expect("json");
        let back: Command = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, c, "{text}");
    }
    let o = granted(V1, N1, 1, Mode::Write, 4, Some(N2)).expect("ok");
    let back: Outcome =
        serde_json::from_str(&serde_json::to_string(&o).expect("json")).expect("parses");
    assert_eq!(back, o);
}
