//! The simulated network of the deterministic simulation: envelopes between in-process
//! nodes are delayed, dropped, or cut by partitions according to a seeded RNG and a
//! simulated clock in milliseconds. Nothing here reads wall time, so a run replays
//! exactly from its seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::wire::Envelope;

/// Fault settings of one directed link (or the default of all links).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkFaults {
    /// Probability in [0, 1] that an envelope is lost.
    pub drop: f64,
    /// Shortest delivery delay (ms).
    pub min_delay: u64,
    /// Longest delivery delay (ms), inclusive.
    pub max_delay: u64,
}

impl Default for LinkFaults {
    fn default() -> Self {
        LinkFaults {
            drop: 0.0,
            min_delay: 1,
            max_delay: 5,
        }
    }
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Envelopes accepted for delivery.
    pub sent: u64,
    /// Lost to the drop probability.
    pub dropped: u64,
    /// Cut by a partition (at send or at delivery time).
    pub partitioned: u64,
    pub delivered: u64,
}

/// A seeded, simulated network.
#[derive(Debug)]
pub struct SimNetwork {
    rng: StdRng,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, Envelope>,
    default_faults: LinkFaults,
    links: BTreeMap<(u64, u64), LinkFaults>,
    /// Partition group of each node; nodes in different groups cannot talk. Nodes without
    /// a group are in group 0.
    groups: BTreeMap<u64, u32>,
    stats: NetStats,
    max_in_flight: usize,
}

impl SimNetwork {
    /// A network whose randomness comes from `seed`; at most `max_in_flight` envelopes are
    /// queued (more are dropped, like a full socket buffer).
    pub fn new(seed: u64, max_in_flight: usize) -> Self {
        SimNetwork {
            rng: StdRng::seed_from_u64(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            default_faults: LinkFaults::default(),
            links: BTreeMap::new(),
            groups: BTreeMap::new(),
            stats: NetStats::default(),
            max_in_flight,
        }
    }

    /// Faults of every link without its own setting.
    pub fn set_default_faults(&mut self, f: LinkFaults) {
        self.default_faults = f;
    }

    /// Faults of the directed link `from -> to`.
    pub fn set_link(&mut self, from: u64, to: u64, f: LinkFaults) {
        self.links.insert((from, to), f);
    }

    /// Removes every per-link setting.
    pub fn clear_links(&mut self) {
        self.links.clear();
    }

    /// Splits the nodes into groups that cannot reach each other (nodes not listed stay
    /// in group 0 together).
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        self.groups.clear();
        for (g, members) in groups.iter().enumerate() {
            for n in members {
                self.groups.insert(*n, g as u32 + 1);
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.groups.clear();
    }

    /// True when `a` and `b` can currently talk.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        self.groups.get(&a).copied().unwrap_or(0) == self.groups.get(&b).copied().unwrap_or(0)
    }

    /// The groups currently in force.
    pub fn partition_groups(&self) -> BTreeMap<u32, BTreeSet<u64>> {
        let mut out: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
        for (n, g) in &self.groups {
            out.entry(*g).or_default().insert(*n);
        }
        out
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Envelopes queued.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends `env` at simulated time `now` (ms).
    pub fn send(&mut self, now: u64, env: Envelope) {
        if !self.connected(env.from, env.to) {
            self.stats.partitioned += 1;
            return;
        }
        let f = self
            .links
            .get(&(env.from, env.to))
            .copied()
            .unwrap_or(self.default_faults);
        if f.drop > 0.0 && self.rng.random_bool(f.drop.clamp(0.0, 1.0)) {
            self.stats.dropped += 1;
            return;
        }
        if self.in_flight.len() >= self.max_in_flight {
            self.stats.dropped += 1;
            return;
        }
        let delay = if f.max_delay > f.min_delay {
            self.rng.random_range(f.min_delay..=f.max_delay)
        } else {
            f.min_delay
        };
        self.seq += 1;
        self.queue.push(Reverse((now + delay, self.seq)));
        self.in_flight.insert(self.seq, env);
        self.stats.sent += 1;
    }

    /// Removes and returns, in delivery order, the envelopes due at `now`. Envelopes
    /// whose endpoints were partitioned while in flight are lost.
    pub fn deliver_due(&mut self, now: u64) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            let Some(env) = self.in_flight.remove(&seq) else {
                continue;
            };
            if self.connected(env.from, env.to) {
                self.stats.delivered += 1;
                out.push(env);
            } else {
                self.stats.partitioned += 1;
            }
        }
        out
    }

    /// Drops every envelope addressed to `node` (it crashed: its sockets are gone).
    pub fn drop_to(&mut self, node: u64) {
        self.in_flight.retain(|_, e| e.to != node);
    }

    /// A random number from the network's RNG (the simulation draws its own decisions
    /// from a separate RNG; this one only decides network fates).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: u64, to: u64) -> Envelope {
        Envelope {
            from,
            to,
            body: None,
        }
    }

    #[test]
    fn delays_partitions_and_drops() {
        let mut n = SimNetwork::new(7, 100);
        n.set_default_faults(LinkFaults {
            drop: 0.0,
            min_delay: 10,
            max_delay: 10,
        });
        n.send(0, env(1, 2));
        assert!(n.deliver_due(9).is_empty());
        assert_eq!(n.deliver_due(10).len(), 1);

        n.partition(&[vec![1], vec![2, 3]]);
        n.send(0, env(1, 2));
        n.send(0, env(2, 3));
        assert_eq!(n.deliver_due(100).len(), 1);
        n.heal();
        n.send(100, env(1, 2));
        n.partition(&[vec![1]]);
        assert!(n.deliver_due(200).is_empty(), "cut while in flight");
        n.heal();

        n.set_link(
            1,
            2,
            LinkFaults {
                drop: 1.0,
                min_delay: 1,
                max_delay: 1,
            },
        );
        n.send(200, env(1, 2));
        n.send(200, env(2, 1));
        assert_eq!(n.deliver_due(300).len(), 1);
        assert_eq!(n.stats().dropped, 1);
    }

    #[test]
    fn same_seed_same_fates() {
        let run = |seed| {
            let mut n = SimNetwork::new(seed, 1000);
            n.set_default_faults(LinkFaults {
                drop: 0.3,
                min_delay: 1,
                max_delay: 50,
            });
            for i in 0..200 {
                n.send(i, env(1 + i % 3, 1 + (i + 1) % 3));
            }
            n.deliver_due(1000)
                .iter()
                .map(|e| (e.from, e.to))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
