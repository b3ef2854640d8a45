//! A seeded schedule of faults. The same seed and the same settings give the same
//! faults, on the same nodes, at the same offsets: a failing run is replayed with its
//! seed and commit.

use serde::Serialize;

use crate::history::FaultClass;
use crate::rng::Rng;

/// One planned fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Quiet time before it starts (ms).
    pub gap_ms: u64,
    /// The fault.
    pub class: FaultClass,
    /// Its node (1-based).
    pub node: u64,
    /// How long it lasts before it is healed (ms; for a move, ignored).
    pub hold_ms: u64,
    /// Which VHD (an index into the workload's VHDs; moves only).
    pub vhd: usize,
}

/// Settings of a plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes in the cluster.
    pub nodes: u64,
    /// VHDs of the workload.
    pub vhds: usize,
    /// Classes to draw from (each appears once in the first round, in a seeded order).
    pub classes: Vec<FaultClass>,
    /// The lease outage budget (ms): a stop lasts past it.
    pub lease_ms: u64,
}

impl Plan {
    /// An endless, seeded sequence of faults: first every class once (shuffled), then
    /// classes drawn at random.
    pub fn faults(&self, seed: u64) -> impl Iterator<Item = Planned> + '_ {
        let mut rng = Rng::new(seed);
        let mut first = self.classes.clone();
        for i in (1..first.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            first.swap(i, j);
        }
        let mut first = first.into_iter();
        std::iter::from_fn(move || {
            let class = match first.next() {
                Some(c) => c,
                None => *self
                    .classes
                    .get(rng.below(self.classes.len() as u64) as usize)?,
            };
            let hold_ms = match class {
                FaultClass::Stop => self.lease_ms + rng.range(1_000, 3_000),
                FaultClass::Kill => rng.range(500, 3_000),
                FaultClass::Partition => rng.range(1_000, self.lease_ms + 3_000),
                FaultClass::Path | FaultClass::Late => rng.range(2_000, 5_000),
                FaultClass::SlowFsync => rng.range(3_000, 6_000),
                FaultClass::Move | FaultClass::Migrate => 0,
            };
            Some(Planned {
                gap_ms: rng.range(1_500, 4_000),
                class,
                node: rng.range(1, self.nodes.max(1)),
                hold_ms,
                vhd: rng.below(self.vhds.max(1) as u64) as usize,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_the_first_round_has_every_class() {
        let p = Plan {
            nodes: 3,
            vhds: 3,
            classes: FaultClass::ALL.to_vec(),
            lease_ms: 6_000,
        };
        let a: Vec<Planned> = p.faults(42).take(20).collect();
        let b: Vec<Planned> = p.faults(42).take(20).collect();
        assert_eq!(a, b);
        assert_ne!(a, p.faults(43).take(20).collect::<Vec<_>>());
        let n = FaultClass::ALL.len();
        let mut first: Vec<FaultClass> = a[..n].iter().map(|f| f.class).collect();
        first.sort();
        assert_eq!(first, FaultClass::ALL.to_vec());
        assert!(a.iter().all(|f| (1..=3).contains(&f.node) && f.vhd < 3));
        assert!(
            a.iter()
                .filter(|f| f.class == FaultClass::Stop)
                .all(|f| f.hold_ms > 6_000)
        );
        let none = Plan {
            classes: vec![],
            ..p
        };
        assert_eq!(none.faults(1).count(), 0);
    }
}
