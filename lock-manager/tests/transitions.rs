//! Data-driven table of every `LockState` transition: state before (built by setup
//! commands, rendered and checked), the command, the exact outcome or error, the state
//! after. A refused command must leave the state untouched. Rendering legend:
//! `tests/common/mod.rs`.

mod common;

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
    vec![
        // ---- Register ----
        Row {
            name: "register creates a live node at epoch 1",
            setup: vec![],
            before: "N  | V  | n=1",
            cmd: reg(1),
            expect: Ok(Outcome::Registered {
                node: N1,
                epoch: e(1),
                status: NodeStatus::Live,
                renewals: 0,
                created: true,
            }),
            after: "N 1@1L0 | V  | n=1",
        },
        Row {
            name: "register of a live node only reports it",
            setup: vec![reg(1), renew(1, 1)],
            before: "N 1@1L1 | V  | n=1",
            cmd: reg(1),
            expect: Ok(Outcome::Registered {
                node: N1,
                epoch: e(1),
                status: NodeStatus::Live,
                renewals: 1,
                created: false,
            }),
            after: "N 1@1L1 | V  | n=1",
        },
        Row {
            name: "register makes a left node live at its bumped epoch",
            setup: vec![reg(1), leave(1, 1)],
            before: "N 1@2G0 | V  | n=1",
            cmd: reg(1),
            expect: Ok(Outcome::Registered {
                node: N1,
                epoch: e(2),
                status: NodeStatus::Live,
                renewals: 0,
                created: false,
            }),
            after: "N 1@2L0 | V  | n=1",
        },
        Row {
            name: "register does not revive an expired node (it must renew at its epoch)",
            setup: vec![reg(1), expire(1, 1, 0)],
            before: "N 1@2X0 | V  | n=1",
            cmd: reg(1),
            expect: Ok(Outcome::Registered {
                node: N1,
                epoch: e(2),
                status: NodeStatus::Expired,
                renewals: 0,
                created: false,
            }),
            after: "N 1@2X0 | V  | n=1",
        },
        // ---- Renew ----
        Row {
            name: "renew counts one renewal per node",
            setup: with(two(), &[w(1, 1, 1), r(2, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 v2:-#0 r1@1R#2 | n=3",
            cmd: renew(1, 1),
            expect: Ok(Outcome::Renewed {
                node: N1,
                epoch: e(1),
                renewals: 1,
            }),
            after: "N 1@1L1 2@1L0 | V v1:w1@1#1 v2:-#0 r1@1R#2 | n=3",
        },
        Row {
            name: "renew at an old epoch is refused",
            setup: vec![reg(1), expire(1, 1, 0)],
            before: "N 1@2X0 | V  | n=1",
            cmd: renew(1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 | V  | n=1",
        },
        Row {
            name: "renew at a future epoch is refused",
            setup: vec![reg(1)],
            before: "N 1@1L0 | V  | n=1",
            cmd: renew(1, 5),
            expect: stale(N1, 5, 1),
            after: "N 1@1L0 | V  | n=1",
        },
        Row {
            name: "renew of an unknown node is refused",
            setup: vec![reg(1)],
            before: "N 1@1L0 | V  | n=1",
            cmd: renew(9, 1),
            expect: Err(LockError::UnknownNode { node: NodeId(9) }),
            after: "N 1@1L0 | V  | n=1",
        },
        Row {
            name: "an expired node renewing at its new epoch is live again with no holds",
            setup: vec![reg(1), w(1, 1, 1), expire(1, 1, 0)],
            before: "N 1@2X0 | V v1:w1@1#1 | n=2",
            cmd: renew(1, 2),
            expect: Ok(Outcome::Renewed {
                node: N1,
                epoch: e(2),
                renewals: 1,
            }),
            after: "N 1@2L1 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "renew of a node that left is refused",
            setup: vec![reg(1), leave(1, 1)],
            before: "N 1@2G0 | V  | n=1",
            cmd: renew(1, 2),
            expect: Err(LockError::NodeNotLive { node: N1 }),
            after: "N 1@2G0 | V  | n=1",
        },
        // ---- ExpireNode ----
        Row {
            name: "expire bumps the epoch, leaves writes stale and drops reads",
            setup: with(
                three(),
                &[
                    renew(1, 1),
                    w(1, 1, 1),
                    r(2, 1, 1),
                    w(3, 2, 1),
                    r(3, 1, 1),
                    rd(4, 1, 1),
                    rd(4, 3, 1),
                ],
            ),
            before: "N 1@1L1 2@1L0 3@1L0 | V v1:w1@1#1 v2:-#0 r1@1R#2 v3:w2@1#3 r1@1R#4 v4:-#0 r1@1D#5 r3@1D#6 | n=7",
            cmd: expire(1, 1, 1),
            expect: Ok(Outcome::Expired {
                node: N1,
                epoch: e(2),
                stale_writes: vec![VhdId(1)],
                dropped_reads: vec![VhdId(2), VhdId(3), VhdId(4)],
            }),
            after: "N 1@2X1 2@1L0 3@1L0 | V v1:w1@1#1 v3:w2@1#3 v4:-#0 r3@1D#6 | n=7",
        },
        Row {
            name: "expire loses to a renewal applied since the decision",
            setup: vec![reg(1), renew(1, 1), renew(1, 1)],
            before: "N 1@1L2 | V  | n=1",
            cmd: expire(1, 1, 1),
            expect: Err(LockError::RenewedSince {
                node: N1,
                seen: 1,
                current: 2,
            }),
            after: "N 1@1L2 | V  | n=1",
        },
        Row {
            name: "expire at an old epoch is refused (no double bump)",
            setup: vec![reg(1), expire(1, 1, 0), renew(1, 2)],
            before: "N 1@2L1 | V  | n=1",
            cmd: expire(1, 1, 0),
            expect: stale(N1, 1, 2),
            after: "N 1@2L1 | V  | n=1",
        },
        Row {
            name: "expire of an already expired node is refused",
            setup: vec![reg(1), expire(1, 1, 0)],
            before: "N 1@2X0 | V  | n=1",
            cmd: expire(1, 2, 0),
            expect: Err(LockError::NodeNotLive { node: N1 }),
            after: "N 1@2X0 | V  | n=1",
        },
        Row {
            name: "expire of an unknown node is refused",
            setup: vec![],
            before: "N  | V  | n=1",
            cmd: expire(4, 1, 0),
            expect: Err(LockError::UnknownNode { node: NodeId(4) }),
            after: "N  | V  | n=1",
        },
        // ---- Leave ----
        Row {
            name: "leave releases every hold, its own stale write included",
            setup: with(
                two(),
                &[
                    w(1, 1, 1),
                    expire(1, 1, 0),
                    renew(1, 2),
                    w(2, 1, 2),
                    r(3, 1, 2),
                    r(3, 2, 1),
                    rd(4, 1, 2),
                ],
            ),
            before: "N 1@2L1 2@1L0 | V v1:w1@1#1 v2:w1@2#2 v3:-#0 r1@2R#3 r2@1R#4 v4:-#0 r1@2D#5 | n=6",
            cmd: leave(1, 2),
            expect: Ok(Outcome::Left {
                node: N1,
                epoch: e(3),
                released: vec![VhdId(1), VhdId(2), VhdId(3), VhdId(4)],
            }),
            after: "N 1@3G1 2@1L0 | V v3:-#0 r2@1R#4 | n=6",
        },
        Row {
            name: "leave at a stale epoch is refused",
            setup: vec![reg(1), expire(1, 1, 0)],
            before: "N 1@2X0 | V  | n=1",
            cmd: leave(1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 | V  | n=1",
        },
        Row {
            name: "leave of an expired node is refused",
            setup: vec![reg(1), expire(1, 1, 0)],
            before: "N 1@2X0 | V  | n=1",
            cmd: leave(1, 2),
            expect: Err(LockError::NodeNotLive { node: N1 }),
            after: "N 1@2X0 | V  | n=1",
        },
        // ---- Acquire Write ----
        Row {
            name: "acquire write of a free VHD grants generation 1",
            setup: two(),
            before: "N 1@1L0 2@1L0 | V  | n=1",
            cmd: w(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::Write, 1, None),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "acquire write by the writer is idempotent",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: w(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::Write, 1, None),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "acquire write while another node validly writes conflicts",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: w(1, 2, 1),
            expect: conflict(N1, ConflictReason::Writer),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "acquire write over an expired writer says use takeover",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: w(1, 2, 1),
            expect: Err(LockError::OwnerExpired {
                vhd: V1,
                owner: N1,
                generation: g(1),
            }),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "acquire write beside another node's deny-write read conflicts",
            setup: with(two(), &[rd(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#1 | n=2",
            cmd: w(1, 2, 1),
            expect: conflict(N1, ConflictReason::DenyWrite),
            after: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#1 | n=2",
        },
        Row {
            name: "acquire write beside plain readers is fine",
            setup: with(three(), &[r(1, 1, 1), r(1, 3, 1)]),
            before: "N 1@1L0 2@1L0 3@1L0 | V v1:-#0 r1@1R#1 r3@1R#2 | n=3",
            cmd: w(1, 2, 1),
            expect: granted(V1, N2, 1, Mode::Write, 3, None),
            after: "N 1@1L0 2@1L0 3@1L0 | V v1:w2@1#3 r1@1R#1 r3@1R#2 | n=4",
        },
        Row {
            name: "acquire write upgrades the node's own read",
            setup: with(two(), &[r(1, 1, 1), r(1, 2, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1R#1 r2@1R#2 | n=3",
            cmd: w(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::Write, 3, None),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#3 r2@1R#2 | n=4",
        },
        Row {
            name: "acquire write upgrades the node's own deny-write read when alone",
            setup: with(two(), &[rd(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#1 | n=2",
            cmd: w(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::Write, 2, None),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#2 | n=3",
        },
        Row {
            name: "acquire at a stale epoch is refused (woken paused node)",
            setup: with(two(), &[expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V  | n=1",
            cmd: w(1, 1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 2@1L0 | V  | n=1",
        },
        Row {
            name: "acquire by an expired node at its new epoch waits for a renewal",
            setup: with(two(), &[expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V  | n=1",
            cmd: w(1, 1, 2),
            expect: Err(LockError::NodeNotLive { node: N1 }),
            after: "N 1@2X0 2@1L0 | V  | n=1",
        },
        Row {
            name: "acquire by an unknown node is refused",
            setup: two(),
            before: "N 1@1L0 2@1L0 | V  | n=1",
            cmd: r(1, 7, 1),
            expect: Err(LockError::UnknownNode { node: NodeId(7) }),
            after: "N 1@1L0 2@1L0 | V  | n=1",
        },
        // ---- Acquire Read / ReadDenyWrite ----
        Row {
            name: "a migration target reads while the source writes",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: r(1, 2, 1),
            expect: granted(V1, N2, 1, Mode::Read, 2, None),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 r2@1R#2 | n=3",
        },
        Row {
            name: "deny-write read beside a writer conflicts",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: rd(1, 2, 1),
            expect: conflict(N1, ConflictReason::DenyWrite),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "deny-write read beside an expired writer conflicts too",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: rd(1, 2, 1),
            expect: conflict(N1, ConflictReason::DenyWrite),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "the writer does not also take a read hold",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: r(1, 1, 1),
            expect: conflict(N1, ConflictReason::AlreadyWriter),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a read in the same mode is idempotent",
            setup: with(two(), &[rd(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#1 | n=2",
            cmd: rd(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::ReadDenyWrite, 1, None),
            after: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#1 | n=2",
        },
        Row {
            name: "changing read mode is a new grant",
            setup: with(two(), &[r(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1R#1 | n=2",
            cmd: rd(1, 1, 1),
            expect: granted(V1, N1, 1, Mode::ReadDenyWrite, 2, None),
            after: "N 1@1L0 2@1L0 | V v1:-#0 r1@1D#2 | n=3",
        },
        Row {
            name: "a differencing parent is read-only for many children's nodes",
            setup: with(three(), &[rd(1, 1, 1), rd(1, 2, 1)]),
            before: "N 1@1L0 2@1L0 3@1L0 | V v1:-#0 r1@1D#1 r2@1D#2 | n=3",
            cmd: rd(1, 3, 1),
            expect: granted(V1, N3, 1, Mode::ReadDenyWrite, 3, None),
            after: "N 1@1L0 2@1L0 3@1L0 | V v1:-#0 r1@1D#1 r2@1D#2 r3@1D#3 | n=4",
        },
        // ---- Release ----
        Row {
            name: "release of the write hold keeps readers and the generation",
            setup: with(two(), &[w(1, 1, 1), r(1, 2, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 r2@1R#2 | n=3",
            cmd: rel(1, 1, 1, 1),
            expect: Ok(Outcome::Released {
                vhd: V1,
                node: N1,
                generation: g(1),
            }),
            after: "N 1@1L0 2@1L0 | V v1:-#1 r2@1R#2 | n=3",
        },
        Row {
            name: "release of the last hold drops the record",
            setup: with(two(), &[r(1, 2, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r2@1R#1 | n=2",
            cmd: rel(1, 2, 1, 1),
            expect: Ok(Outcome::Released {
                vhd: V1,
                node: N2,
                generation: g(1),
            }),
            after: "N 1@1L0 2@1L0 | V  | n=2",
        },
        Row {
            name: "a late duplicate release does not drop a newer hold",
            setup: with(two(), &[w(1, 1, 1), rel(1, 1, 1, 1), w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#2 | n=3",
            cmd: rel(1, 1, 1, 1),
            expect: Err(LockError::GenerationMismatch {
                vhd: V1,
                expected: g(1),
                actual: g(2),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#2 | n=3",
        },
        Row {
            name: "release by a node that holds nothing is refused",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: rel(1, 2, 1, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N2 }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "release at a stale epoch is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: rel(1, 1, 1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a node releases its own stale write at its new epoch",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: rel(1, 1, 2, 1),
            expect: Ok(Outcome::Released {
                vhd: V1,
                node: N1,
                generation: g(1),
            }),
            after: "N 1@2X0 2@1L0 | V  | n=2",
        },
        // ---- Transfer ----
        Row {
            name: "transfer hands the write hold to the pre-opened target",
            setup: with(three(), &[w(1, 1, 1), r(1, 2, 1), r(1, 3, 1)]),
            before: "N 1@1L0 2@1L0 3@1L0 | V v1:w1@1#1 r2@1R#2 r3@1R#3 | n=4",
            cmd: xfer(1, 1, 1, 2, 1, 1),
            expect: granted(V1, N2, 1, Mode::Write, 4, Some(N1)),
            after: "N 1@1L0 2@1L0 3@1L0 | V v1:w2@1#4 r3@1R#3 | n=5",
        },
        Row {
            name: "a hand-off request to a live node is accepted and changes nothing",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: req_xfer(1, 1, 2, 1),
            expect: Ok(Outcome::TransferRequested {
                vhd: V1,
                from: N1,
                from_epoch: e(1),
                to: N2,
                to_epoch: e(1),
                generation: g(1),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a hand-off request naming another writer is refused",
            setup: with(three(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 3@1L0 | V v1:w1@1#1 | n=2",
            cmd: req_xfer(1, 3, 2, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N3 }),
            after: "N 1@1L0 2@1L0 3@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a hand-off request at an old generation is refused",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: req_xfer(1, 1, 2, 0),
            expect: Err(LockError::GenerationMismatch {
                vhd: V1,
                expected: g(0),
                actual: g(1),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a hand-off request to an expired node is refused",
            setup: with(two(), &[w(1, 1, 1), expire(2, 1, 0)]),
            before: "N 1@1L0 2@2X0 | V v1:w1@1#1 | n=2",
            cmd: req_xfer(1, 1, 2, 1),
            expect: Err(LockError::NodeNotLive { node: N2 }),
            after: "N 1@1L0 2@2X0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a hand-off request of an expired writer is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: req_xfer(1, 1, 2, 1),
            expect: Err(LockError::NoWriter { vhd: V1 }),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer to the source itself is invalid",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 1, 1, 1, 1),
            expect: Err(LockError::Invalid {
                reason: "transfer of vhd-1 from node-1 to itself".into(),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer at the wrong generation is refused",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 1, 2, 1, 7),
            expect: Err(LockError::GenerationMismatch {
                vhd: V1,
                expected: g(7),
                actual: g(1),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer by a node that is not the writer is refused",
            setup: with(three(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 3@1L0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 3, 1, 2, 1, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N3 }),
            after: "N 1@1L0 2@1L0 3@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer by an expired source is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 1, 2, 1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer of a stale write by its rejoined node is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0), renew(1, 2)]),
            before: "N 1@2L1 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 2, 2, 1, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N1 }),
            after: "N 1@2L1 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer to an expired target is refused",
            setup: with(two(), &[w(1, 1, 1), expire(2, 1, 0)]),
            before: "N 1@1L0 2@2X0 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 1, 2, 2, 1),
            expect: Err(LockError::NodeNotLive { node: N2 }),
            after: "N 1@1L0 2@2X0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "transfer naming the target's old epoch is refused",
            setup: with(two(), &[w(1, 1, 1), expire(2, 1, 0), renew(2, 2)]),
            before: "N 1@1L0 2@2L1 | V v1:w1@1#1 | n=2",
            cmd: xfer(1, 1, 1, 2, 1, 1),
            expect: stale(N2, 1, 2),
            after: "N 1@1L0 2@2L1 | V v1:w1@1#1 | n=2",
        },
        // ---- Reclaim ----
        Row {
            name: "reclaim renumbers the writer's own hold and keeps readers",
            setup: with(two(), &[w(1, 1, 1), r(1, 2, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 r2@1R#2 | n=3",
            cmd: reclaim(1, 1, 1, 1),
            expect: granted(V1, N1, 1, Mode::Write, 3, Some(N1)),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#3 r2@1R#2 | n=4",
        },
        Row {
            name: "reclaim after the transfer happened is refused",
            setup: with(two(), &[w(1, 1, 1), xfer(1, 1, 1, 2, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w2@1#2 | n=3",
            cmd: reclaim(1, 1, 1, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N1 }),
            after: "N 1@1L0 2@1L0 | V v1:w2@1#2 | n=3",
        },
        Row {
            name: "reclaim at an old generation is refused",
            setup: with(two(), &[w(1, 1, 1), reclaim(1, 1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#2 | n=3",
            cmd: reclaim(1, 1, 1, 1),
            expect: Err(LockError::GenerationMismatch {
                vhd: V1,
                expected: g(1),
                actual: g(2),
            }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#2 | n=3",
        },
        Row {
            name: "reclaim of its own stale write by a rejoined node is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0), renew(1, 2)]),
            before: "N 1@2L1 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: reclaim(1, 1, 2, 1),
            expect: Err(LockError::NotHeld { vhd: V1, node: N1 }),
            after: "N 1@2L1 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "reclaim by an expired node is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: reclaim(1, 1, 1, 1),
            expect: stale(N1, 1, 2),
            after: "N 1@2X0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        // ---- Takeover ----
        Row {
            name: "takeover of an expired writer's VHD",
            setup: with(two(), &[w(1, 1, 1), r(1, 2, 1), expire(1, 1, 0)]),
            before: "N 1@2X0 2@1L0 | V v1:w1@1#1 r2@1R#2 | n=3",
            cmd: take(1, 2, 1, 1),
            expect: granted(V1, N2, 1, Mode::Write, 3, Some(N1)),
            after: "N 1@2X0 2@1L0 | V v1:w2@1#3 | n=4",
        },
        Row {
            name: "takeover of a live writer's VHD is refused",
            setup: with(two(), &[w(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: take(1, 2, 1, 1),
            expect: Err(LockError::OwnerAlive { vhd: V1, owner: N1 }),
            after: "N 1@1L0 2@1L0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a second taker loses: the first is alive",
            setup: with(three(), &[w(1, 1, 1), expire(1, 1, 0), take(1, 2, 1, 1)]),
            before: "N 1@2X0 2@1L0 3@1L0 | V v1:w2@1#2 | n=3",
            cmd: take(1, 3, 1, 2),
            expect: Err(LockError::OwnerAlive { vhd: V1, owner: N2 }),
            after: "N 1@2X0 2@1L0 3@1L0 | V v1:w2@1#2 | n=3",
        },
        Row {
            name: "takeover with an outdated generation is refused",
            setup: with(three(), &[w(1, 1, 1), expire(1, 1, 0), take(1, 2, 1, 1)]),
            before: "N 1@2X0 2@1L0 3@1L0 | V v1:w2@1#2 | n=3",
            cmd: take(1, 3, 1, 1),
            expect: Err(LockError::GenerationMismatch {
                vhd: V1,
                expected: g(1),
                actual: g(2),
            }),
            after: "N 1@2X0 2@1L0 3@1L0 | V v1:w2@1#2 | n=3",
        },
        Row {
            name: "takeover of a VHD without a writer is refused",
            setup: with(two(), &[r(1, 1, 1)]),
            before: "N 1@1L0 2@1L0 | V v1:-#0 r1@1R#1 | n=2",
            cmd: take(1, 2, 1, 0),
            expect: Err(LockError::NoWriter { vhd: V1 }),
            after: "N 1@1L0 2@1L0 | V v1:-#0 r1@1R#1 | n=2",
        },
        Row {
            name: "takeover of an unknown VHD is refused",
            setup: two(),
            before: "N 1@1L0 2@1L0 | V  | n=1",
            cmd: take(1, 2, 1, 0),
            expect: Err(LockError::NoWriter { vhd: V1 }),
            after: "N 1@1L0 2@1L0 | V  | n=1",
        },
        Row {
            name: "takeover by an expired node is refused",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0), expire(2, 1, 0)]),
            before: "N 1@2X0 2@2X0 | V v1:w1@1#1 | n=2",
            cmd: take(1, 2, 2, 1),
            expect: Err(LockError::NodeNotLive { node: N2 }),
            after: "N 1@2X0 2@2X0 | V v1:w1@1#1 | n=2",
        },
        Row {
            name: "a rejoined node takes over its own stale write",
            setup: with(two(), &[w(1, 1, 1), expire(1, 1, 0), renew(1, 2)]),
            before: "N 1@2L1 2@1L0 | V v1:w1@1#1 | n=2",
            cmd: take(1, 1, 2, 1),
            expect: granted(V1, N1, 2, Mode::Write, 2, Some(N1)),
            after: "N 1@2L1 2@1L0 | V v1:w1@2#2 | n=3",
        },
    ]
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
