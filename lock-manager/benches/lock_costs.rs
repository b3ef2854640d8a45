//! Cost of the lock manager's hot operations, measured side by side in one run:
//! a renewal with 16 nodes holding no VHD vs holding 1,000 VHDs (renewals must cost per
//! node, not per VHD: the ratio should be ~1), the fence check on the I/O path, and a
//! transfer's apply. Run: `cargo bench -p lock-manager --bench lock_costs`.

use lock_manager::{
    Command, Epoch, FenceGuard, Generation, LeaseTiming, LockState, Mode, NodeId, Outcome, Time,
    VhdId,
};
use std::hint::black_box;
use std::time::Instant;

const NODES: u64 = 16;
const ROUNDS: u64 = 200_000;

fn cluster(vhds: u64) -> LockState {
    let mut s = LockState::new();
    for n in 1..=NODES {
        s.apply(&Command::Register { node: NodeId(n) })
            .expect("register");
    }
    for v in 0..vhds {
        let node = NodeId(v % NODES + 1);
        let cmd = Command::Acquire {
            vhd: VhdId(v),
            node,
            epoch: Epoch(1),
            mode: Mode::Write,
        };
        s.apply(&cmd).expect("acquire");
    }
    s
}

/// Nanoseconds per renewal, round-robin over the 16 nodes.
fn renew_ns(s: &mut LockState) -> f64 {
    let start = Instant::now();
    for i in 0..ROUNDS {
        let cmd = Command::Renew {
            node: NodeId(i % NODES + 1),
            epoch: Epoch(1),
        };
        black_box(s.apply(black_box(&cmd)).expect("renew"));
    }
    start.elapsed().as_nanos() as f64 / ROUNDS as f64
}

fn main() {
    let mut empty = cluster(0);
    let mut loaded = cluster(1000);
    // Warm up both, then interleave measurements so machine noise hits both alike.
    renew_ns(&mut empty);
    renew_ns(&mut loaded);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        a.push(renew_ns(&mut empty));
        b.push(renew_ns(&mut loaded));
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (a, b) = (a[2], b[2]);
    println!("renewal apply, 16 nodes, 0 VHDs:     {a:8.1} ns");
    println!("renewal apply, 16 nodes, 1000 VHDs:  {b:8.1} ns");
    println!(
        "ratio loaded/empty:                  {:8.2} (per node, not per VHD: ~1)",
        b / a
    );
    println!(
        "renewal load at the default timing:  {:.1} commands/s for 16 nodes, independent of VHDs",
        16.0 / LeaseTiming::default().renew_interval.as_secs_f64()
    );

    // The fence check the data path makes before every write.
    let timing = LeaseTiming::default();
    let mut state = LockState::new();
    let mut g = FenceGuard::new(NodeId(1), &timing);
    let reg = state.apply(&g.register_command()).expect("register");
    g.on_registered(&reg);
    let req = g.poll_renewal(Time::ZERO).expect("due");
    let res = state.apply(&req.command);
    g.on_result(req.ticket, &res, Time::ZERO);
    for v in 0..1000 {
        let req = g
            .request_acquire(VhdId(v), Mode::Write)
            .expect("may request");
        let res = state.apply(&req.command);
        g.on_result(req.ticket, &res, Time::ZERO);
    }
    let gen_ = g.hold(VhdId(500)).expect("held").generation;
    let start = Instant::now();
    let mut ok = 0u64;
    for i in 0..ROUNDS * 10 {
        ok += u64::from(g.may_write(black_box(VhdId(500)), black_box(gen_), Time::from_nanos(i)));
    }
    assert_eq!(ok, ROUNDS * 10);
    println!(
        "fence check (1000 holds):            {:8.1} ns",
        start.elapsed().as_nanos() as f64 / (ROUNDS * 10) as f64
    );

    // Transfer apply (the state-machine part of a cooperative hand-off).
    let mut s = cluster(1000);
    let start = Instant::now();
    let mut generation = s.owner(VhdId(7)).expect("held").generation;
    let mut from = s.owner(VhdId(7)).and_then(|o| o.owner).expect("owner");
    for i in 0..ROUNDS {
        let to = NodeId((from.0 + i) % NODES + 1);
        let to = if to == from {
            NodeId(from.0 % NODES + 1)
        } else {
            to
        };
        let cmd = Command::Transfer {
            vhd: VhdId(7),
            from,
            from_epoch: Epoch(1),
            to,
            to_epoch: Epoch(1),
            expected_generation: generation,
        };
        match s.apply(&cmd).expect("transfer") {
            Outcome::Granted { generation: g2, .. } => generation = g2,
            o => panic!("{o:?}"),
        }
        from = to;
    }
    let _ = Generation(0);
    println!(
        "transfer apply (1000 VHDs):          {:8.1} ns",
        start.elapsed().as_nanos() as f64 / ROUNDS as f64
    );
}
