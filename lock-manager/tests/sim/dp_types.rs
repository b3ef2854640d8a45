//! The data path simulation's state (`datapath.rs` drives it): each node's path and
//! route, the operations in flight, the LUN of stamped blocks, the history.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use chaos::history::Event as HEv;
use chaos::stamp::{Seen, Stamp};
use lock_manager::{Generation, VhdId};
use redirector::health::{Config as HConfig, Health};

/// One node's LUN path and where its calls go.
#[derive(Debug)]
pub(super) struct PathSim {
    /// The node's own path works.
    pub(super) ok: bool,
    pub(super) health: Health,
    /// Real time by which every write issued on the failed path has landed or can no
    /// longer land.
    pub(super) doubt_until: u64,
    /// Calls held until the route allows them (quiescing, paused, failing back).
    pub(super) waiting: VecDeque<u64>,
    /// Calls out at a peer.
    pub(super) at_peer: BTreeSet<u64>,
    /// When calls sent through a failed session can no longer run at the peer.
    pub(super) peer_quiet_at: u64,
    /// Forwarded calls that reached this node while it was paused: (op, attempt, sent).
    pub(super) inbox: Vec<(Call, u64, u32, u64)>,
}

impl PathSim {
    pub(super) fn new(node: u64, base: Instant) -> PathSim {
        PathSim {
            ok: true,
            health: Health::new(health_config(), node, base),
            doubt_until: 0,
            waiting: VecDeque::new(),
            at_peer: BTreeSet::new(),
            peer_quiet_at: 0,
            inbox: Vec::new(),
        }
    }
}

fn health_config() -> HConfig {
    HConfig {
        settle_time: Duration::from_secs(1),
        max_settle: Duration::from_secs(20),
        ..HConfig::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Write(u64),
    Read,
}

/// What a LUN call carries (kept in its events: a call outlives the op of a node that
/// crashed, as a device queue or a peer's session does).
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    pub(super) node: usize,
    pub(super) vhd: VhdId,
    pub(super) block: u64,
    pub(super) write: Option<Stamp>,
}

#[derive(Debug, Clone)]
pub(super) struct Op {
    pub(super) node: usize,
    pub(super) inc: u32,
    pub(super) vhd: VhdId,
    pub(super) block: u64,
    pub(super) kind: Kind,
    pub(super) generation: Generation,
    pub(super) invoke: u64,
    pub(super) attempt: u32,
    /// A read's value, taken when it ran.
    pub(super) seen: Option<Seen>,
}

impl Op {
    pub(super) fn call(&self) -> Call {
        let write = match self.kind {
            Kind::Write(id) => Some(Stamp {
                vhd: self.vhd.0,
                block: self.block,
                client: self.node as u64 + 1,
                id,
                generation: self.generation.0,
                node: self.node as u64 + 1,
            }),
            Kind::Read => None,
        };
        Call {
            node: self.node,
            vhd: self.vhd,
            block: self.block,
            write,
        }
    }
}

/// The data path's share of the world.
#[derive(Debug)]
pub(super) struct DataPath {
    pub(super) base: Instant,
    pub(super) lun: BTreeMap<(VhdId, u64), Stamp>,
    pub(super) ops: BTreeMap<u64, Op>,
    pub(super) next_op: u64,
    pub(super) next_write: u64,
    pub(super) history: Vec<HEv>,
    /// A deliberately broken data path (its test only): calls are reissued as soon as
    /// the route changes, without waiting until the failed path or session is quiet.
    pub(super) skip_quiesce: bool,
}

impl DataPath {
    pub(super) fn new() -> DataPath {
        DataPath {
            base: Instant::now(),
            lun: BTreeMap::new(),
            ops: BTreeMap::new(),
            next_op: 1,
            next_write: 1,
            history: Vec::new(),
            skip_quiesce: false,
        }
    }
}

/// What the data path did in a seed.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct DpStats {
    pub(super) ops: u64,
    pub(super) acked: u64,
    pub(super) redirected: u64,
    pub(super) reissued: u64,
    pub(super) late_landed: u64,
    pub(super) refused_stale: u64,
    pub(super) refused_lapsed: u64,
    pub(super) path_cuts: u64,
}

impl DpStats {
    pub(super) fn add(&mut self, o: &DpStats) {
        self.ops += o.ops;
        self.acked += o.acked;
        self.redirected += o.redirected;
        self.reissued += o.reissued;
        self.late_landed += o.late_landed;
        self.refused_stale += o.refused_stale;
        self.refused_lapsed += o.refused_lapsed;
        self.path_cuts += o.path_cuts;
    }
}
