//! Rows of the node lifecycle commands: Register, Renew, ExpireNode, Leave.

use super::table::*;
use lock_manager::{LockError, NodeId, NodeStatus, Outcome, VhdId};

pub(super) fn rows() -> Vec<Row> {
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
    ]
}
