//! Data-driven table of every `LockState` transition: state before (built by setup
//! commands, rendered and checked), the command, the exact outcome or error, the state
//! after. A refused command must leave the state untouched. Rendering legend:
//! `tests/common/mod.rs`.

#[path = "../common/mod.rs"]
mod common;
mod node_rows;
mod table;
mod vhd_rows;

use common::*;
use lock_manager::{Command, LockState, Mode, Outcome};
use table::*;

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
