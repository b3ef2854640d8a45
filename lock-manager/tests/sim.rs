//! Seeded simulation of the whole protocol: a Raft log (one total order, commit delays,
//! leader crashes that keep a prefix of the uncommitted entries), a coordinator whose
//! `LivenessTracker` restarts from the replicated state only, and nodes with drifting
//! clocks (rate within ±ρ, changing over time) that crash, pause, get partitioned (drop
//! or arbitrary delay), acquire, write, hand off, release and take over.
//!
//! Checked after every event: no two nodes have an open write fence for one VHD (fences
//! only open at events, so checking right after each event covers every instant), and
//! writes land in generation order per VHD (no write of an old owner lands after a newer
//! owner's). A paused node resumed after a takeover must find its fence closed. The calm
//! phase then checks liveness: healthy nodes ride through a coordinator failover with
//! their fences open, and a killed owner's VHDs are taken over within the outage budget.
//!
//! `SIM_SEED=n` replays one seed; `SIM_SEEDS=k` runs k seeds (default 40).

use lock_manager::timing::RHO_PPM;
use lock_manager::{
    Command, FenceEvent, FenceGuard, Generation, LeaseTiming, LivenessTracker, LockError,
    LockState, Mode, NodeId, Outcome, Time, VhdId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;
const NODES: usize = 5;
const VHDS: u64 = 6;
const CHAOS: u64 = 60 * SEC;
const NODE_TICK: u64 = 20 * MS;
/// Longest delay a delaying partition imposes on one message.
const MAX_DELAY: u64 = 30 * SEC;
const COORD_TICK: u64 = 100 * MS;
/// A pending request with no answer is given up after this long (lost message).
const REQUEST_TIMEOUT: u64 = 10 * SEC;
/// The VHD the calm phase makes sure is owned before killing its owner.
const CALM_VHD: VhdId = VhdId(100);

/// A clock whose rate error stays within ±ρ and changes over time.
#[derive(Clone, Copy, Debug)]
struct Clock {
    base_real: u64,
    base_local: u64,
    rate_ppm: i64,
}

impl Clock {
    fn read(&self, real: u64) -> Time {
        let dt = i128::from(real - self.base_real);
        let dl = dt * i128::from(1_000_000 + self.rate_ppm) / 1_000_000;
        Time::from_nanos(self.base_local + u64::try_from(dl).expect("clock moves forward"))
    }
    fn set_rate(&mut self, real: u64, rate_ppm: i64) {
        self.base_local = self.read(real).as_nanos();
        self.base_real = real;
        self.rate_ppm = rate_ppm;
    }
}

fn random_rate(rng: &mut StdRng) -> i64 {
    let rho = RHO_PPM as i64;
    match rng.random_range(0..4) {
        0 => rho,
        1 => -rho,
        _ => rng.random_range(-rho..=rho),
    }
}

#[derive(Debug, Clone)]
enum Ev {
    NodeTick(usize),
    ToCoord {
        node: usize,
        inc: u32,
        req: u64,
        cmd: Command,
    },
    ToNode {
        node: usize,
        inc: u32,
        req: Option<u64>,
        res: Result<Outcome, LockError>,
    },
    Commit,
    CoordTick(u64),
    Elect,
    Land {
        node: usize,
        vhd: VhdId,
        generation: Generation,
    },
    Fault,
    Resume(usize, u64),
    Restart(usize),
    Heal(usize, u64),
    RateChange,
    Calm,
    CrashLeader,
    KillOwner,
    End,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    Up,
    Drop,
    Delay(u64),
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Register,
    /// A guard request, with the VHD it is about (if any).
    Guard(u64, Option<VhdId>),
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    clock: Clock,
    guard: FenceGuard,
    inc: u32,
    alive: bool,
    paused: Option<u64>,
    link: (Link, u64),
    inbox: Vec<(Option<u64>, Result<Outcome, LockError>)>,
    pending: BTreeMap<u64, (Pending, u64)>,
    /// Latest landing time of this node's in-flight writes per VHD (drain before hand-off).
    landing: BTreeMap<VhdId, u64>,
    /// A hand-off or release waiting for the drain: (vhd, request, ready at).
    draining: Option<(VhdId, lock_manager::Request, u64)>,
    register_sent: bool,
}

struct Leader {
    term: u64,
    clock: Clock,
    tracker: LivenessTracker,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    writes_landed: u64,
    takeovers: u64,
    transfers: u64,
    leader_changes: u64,
    lapses: u64,
    reopened: u64,
    ownership_lost: u64,
    resumed_after_takeover: u64,
    expiries: u64,
    calm_takeover_ms_max: u64,
    ride_through_lapses: u64,
}

struct World {
    seed: u64,
    rng: StdRng,
    timing: LeaseTiming,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    state: LockState,
    log: VecDeque<LogEntry>,
    leader: Option<Leader>,
    next_term: u64,
    nodes: Vec<SimNode>,
    next_req: u64,
    landed_gen: BTreeMap<VhdId, Generation>,
    calm: bool,
    ride_through_from: Option<u64>,
    killed: Option<(usize, u64, BTreeSet<VhdId>)>,
    stats: Stats,
    trace: u64,
    tracing: bool,
}

type Check = Result<(), String>;
/// (commit time, command, proposer: node index, incarnation, request id).
type LogEntry = (u64, Command, Option<(usize, u32, u64)>);

impl World {
    fn new(seed: u64) -> World {
        let mut rng = StdRng::seed_from_u64(seed);
        let timing = LeaseTiming::default();
        let nodes = (0..NODES)
            .map(|i| SimNode {
                id: NodeId(i as u64 + 1),
                clock: Clock {
                    base_real: 0,
                    base_local: rng.random_range(0..1000 * SEC),
                    rate_ppm: random_rate(&mut rng),
                },
                guard: FenceGuard::new(NodeId(i as u64 + 1), &timing),
                inc: 0,
                alive: true,
                paused: None,
                link: (Link::Up, 0),
                inbox: Vec::new(),
                pending: BTreeMap::new(),
                landing: BTreeMap::new(),
                draining: None,
                register_sent: false,
            })
            .collect();
        let mut w = World {
            seed,
            rng,
            timing,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            state: LockState::new(),
            log: VecDeque::new(),
            leader: None,
            next_term: 1,
            nodes,
            next_req: 1,
            landed_gen: BTreeMap::new(),
            calm: false,
            ride_through_from: None,
            killed: None,
            stats: Stats::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            tracing: std::env::var("SIM_TRACE").is_ok(),
        };
        w.at(0, Ev::Elect);
        for i in 0..NODES {
            let t = w.rng.random_range(0..NODE_TICK);
            w.at(t, Ev::NodeTick(i));
        }
        w.at(SEC, Ev::Fault);
        w.at(SEC, Ev::RateChange);
        w.at(CHAOS, Ev::Calm);
        w
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t, self.seq, self.events.len() - 1)));
    }

    fn link_delay(&mut self, node: usize) -> Option<u64> {
        let (link, until) = self.nodes[node].link;
        let link = if self.now >= until { Link::Up } else { link };
        match link {
            Link::Up => Some(self.rng.random_range(MS / 5..3 * MS)),
            Link::Drop => None,
            Link::Delay(max) => Some(self.rng.random_range(MS..max)),
        }
    }

    fn send_req(&mut self, node: usize, vhd: Option<VhdId>, req: lock_manager::Request) {
        self.send(node, Pending::Guard(req.ticket, vhd), req.command);
    }

    fn send(&mut self, node: usize, kind: Pending, cmd: Command) {
        let req = self.next_req;
        self.next_req += 1;
        let n = &mut self.nodes[node];
        n.pending.insert(req, (kind, self.now));
        let inc = n.inc;
        if let Some(d) = self.link_delay(node) {
            self.at(
                self.now + d,
                Ev::ToCoord {
                    node,
                    inc,
                    req,
                    cmd,
                },
            );
        }
    }

    fn reply(&mut self, node: usize, inc: u32, req: Option<u64>, res: Result<Outcome, LockError>) {
        if let Some(d) = self.link_delay(node) {
            self.at(
                self.now + d,
                Ev::ToNode {
                    node,
                    inc,
                    req,
                    res,
                },
            );
        }
    }

    fn append(&mut self, cmd: Command, origin: Option<(usize, u32, u64)>) {
        let last = self.log.back().map_or(0, |e| e.0);
        let at = (self.now + self.rng.random_range(MS..20 * MS)).max(last);
        self.log.push_back((at, cmd, origin));
        self.at(at, Ev::Commit);
    }

    fn run(&mut self) -> Result<Stats, String> {
        while let Some(Reverse((t, _, idx))) = self.queue.pop() {
            self.now = t;
            let ev = self.events[idx].take().expect("each event fires once");
            if self.tracing && !matches!(ev, Ev::NodeTick(_) | Ev::Commit | Ev::CoordTick(_)) {
                eprintln!("{:>8.3} {ev:?}", t as f64 / 1e9);
            }
            let end = matches!(ev, Ev::End);
            self.trace = (self.trace ^ t ^ (idx as u64)).wrapping_mul(0x100_0000_01b3);
            self.handle(ev)?;
            self.check_fences()?;
            if end {
                return Ok(self.stats);
            }
        }
        Err("event queue ran dry".into())
    }

    fn handle(&mut self, ev: Ev) -> Check {
        match ev {
            Ev::NodeTick(i) => self.node_tick(i)?,
            Ev::ToCoord {
                node,
                inc,
                req,
                cmd,
            } => {
                if self.leader.is_some() {
                    self.append(cmd, Some((node, inc, req)));
                }
            }
            Ev::ToNode {
                node,
                inc,
                req,
                res,
            } => {
                let n = &mut self.nodes[node];
                if n.alive && n.inc == inc {
                    n.inbox.push((req, res));
                    if n.paused.is_none() {
                        self.drain_inbox(node)?;
                    }
                }
            }
            Ev::Commit => self.commit()?,
            Ev::CoordTick(term) => self.coord_tick(term),
            Ev::Elect => self.elect(),
            Ev::Land {
                node,
                vhd,
                generation,
            } => {
                let last = self.landed_gen.entry(vhd).or_insert(Generation(0));
                if generation < *last {
                    return Err(format!(
                        "write of node {} at {generation} to {vhd} landed after a write at {last}",
                        node + 1
                    ));
                }
                *last = generation;
                self.stats.writes_landed += 1;
            }
            Ev::Fault => self.fault(),
            Ev::Resume(i, until) => {
                if self.nodes[i].paused == Some(until) {
                    self.resume(i)?;
                }
            }
            Ev::Restart(i) => self.restart(i),
            Ev::Heal(i, until) => {
                if self.nodes[i].link.1 == until {
                    self.nodes[i].link = (Link::Up, 0);
                }
            }
            Ev::RateChange => {
                let i = self.rng.random_range(0..=NODES);
                let rate = random_rate(&mut self.rng);
                let now = self.now;
                match (i, self.leader.as_mut()) {
                    (NODES, Some(l)) => l.clock.set_rate(now, rate),
                    (NODES, None) => {}
                    (i, _) => self.nodes[i].clock.set_rate(now, rate),
                }
                let next = self.now + self.rng.random_range(100 * MS..2 * SEC);
                self.at(next, Ev::RateChange);
            }
            Ev::Calm => self.calm(),
            Ev::CrashLeader => {
                self.crash_leader();
                self.ride_through_from = Some(self.now);
                self.at(self.now + 2500 * MS, Ev::Elect);
            }
            Ev::KillOwner => self.kill_owner()?,
            Ev::End => self.end_checks()?,
        }
        Ok(())
    }

    fn elect(&mut self) {
        if self.leader.is_some() {
            return;
        }
        let term = self.next_term;
        self.next_term += 1;
        let clock = Clock {
            base_real: self.now,
            base_local: self.rng.random_range(0..1000 * SEC),
            rate_ppm: random_rate(&mut self.rng),
        };
        let mut tracker = LivenessTracker::new(&self.timing);
        tracker.on_leadership(&self.state, clock.read(self.now));
        self.leader = Some(Leader {
            term,
            clock,
            tracker,
        });
        self.stats.leader_changes += 1;
        // The surviving prefix of the old leader's log is committed by the new one first.
        let mut t = self.now;
        for e in self.log.iter_mut() {
            t += MS;
            e.0 = t;
        }
        self.at(t, Ev::Commit);
        self.at(self.now + COORD_TICK, Ev::CoordTick(term));
    }

    fn crash_leader(&mut self) {
        self.leader = None;
        // Entries replicated to a majority survive; replication is in order: a prefix.
        let keep = self.rng.random_range(0..=self.log.len());
        self.log.truncate(keep);
        for e in self.log.iter_mut() {
            e.0 = u64::MAX;
        }
    }

    fn commit(&mut self) -> Check {
        while self.leader.is_some() && self.log.front().is_some_and(|e| e.0 <= self.now) {
            let (_, cmd, origin) = self.log.pop_front().expect("checked");
            let res = self.state.apply(&cmd);
            if self.tracing {
                eprintln!("{:>8.3} commit {cmd:?} -> {res:?}", self.now as f64 / 1e9);
            }
            self.state
                .check_invariants()
                .map_err(|e| format!("invariant after {cmd:?}: {e}"))?;
            let leader = self.leader.as_mut().expect("checked");
            leader
                .tracker
                .observe(&cmd, &res, leader.clock.read(self.now));
            match (&cmd, &res) {
                (Command::Takeover { vhd, .. }, Ok(_)) => {
                    self.stats.takeovers += 1;
                    if let Some((_, t_kill, vhds)) = &mut self.killed
                        && vhds.remove(vhd)
                    {
                        let ms = (self.now - *t_kill) / MS;
                        self.stats.calm_takeover_ms_max = self.stats.calm_takeover_ms_max.max(ms);
                    }
                }
                (Command::Transfer { to, .. }, Ok(o)) => {
                    self.stats.transfers += 1;
                    let to = usize::try_from(to.0 - 1).expect("node index");
                    let inc = self.nodes[to].inc;
                    self.reply(to, inc, None, Ok(o.clone()));
                }
                (Command::ExpireNode { .. }, Ok(_)) => self.stats.expiries += 1,
                _ => {}
            }
            if let Some((node, inc, req)) = origin {
                self.reply(node, inc, Some(req), res);
            }
        }
        Ok(())
    }

    fn coord_tick(&mut self, term: u64) {
        let now = self.now;
        let Some(l) = self.leader.as_mut().filter(|l| l.term == term) else {
            return;
        };
        let due = l.tracker.due(l.clock.read(now));
        for cmd in due {
            self.append(cmd, None);
        }
        self.at(now + COORD_TICK, Ev::CoordTick(term));
    }

    fn local(&self, i: usize) -> Time {
        self.nodes[i].clock.read(self.now)
    }

    fn node_tick(&mut self, i: usize) -> Check {
        self.at(self.now + NODE_TICK, Ev::NodeTick(i));
        if !self.nodes[i].alive || self.nodes[i].paused.is_some() {
            return Ok(());
        }
        let now_l = self.local(i);
        let events = self.nodes[i].guard.poll(now_l);
        self.note_events(i, &events);
        let now = self.now;
        self.nodes[i]
            .pending
            .retain(|_, (_, sent)| now - *sent < REQUEST_TIMEOUT);
        if self.nodes[i].guard.needs_register() {
            if !self.nodes[i].register_sent || self.nodes[i].pending.is_empty() {
                self.nodes[i].register_sent = true;
                let cmd = self.nodes[i].guard.register_command();
                self.send(i, Pending::Register, cmd);
            }
            return Ok(());
        }
        if let Some(req) = self.nodes[i].guard.poll_renewal(now_l) {
            self.send_req(i, None, req);
        }
        self.try_writes(i, now_l);
        self.progress_drain(i);
        self.decide(i);
        Ok(())
    }

    fn try_writes(&mut self, i: usize, now_l: Time) {
        let holds: Vec<_> = self.nodes[i]
            .guard
            .holds()
            .iter()
            .map(|(v, h)| (*v, *h))
            .collect();
        for (vhd, h) in holds {
            if h.mode != Mode::Write || !self.rng.random_bool(0.5) {
                continue;
            }
            if self.nodes[i].guard.may_write(vhd, h.generation, now_l) {
                // A3: a checked write lands within io_timeout (real), mostly at once.
                let io = u64::try_from(self.timing.io_timeout.as_nanos()).expect("fits") - MS;
                let lat = if self.rng.random_bool(0.02) {
                    self.rng.random_range(0..io)
                } else {
                    self.rng.random_range(0..2 * MS)
                };
                let land = self.now + lat;
                let e = self.nodes[i].landing.entry(vhd).or_insert(0);
                *e = (*e).max(land);
                self.at(
                    land,
                    Ev::Land {
                        node: i,
                        vhd,
                        generation: h.generation,
                    },
                );
            }
        }
    }

    fn progress_drain(&mut self, i: usize) {
        if let Some((vhd, req, ready)) = self.nodes[i].draining.clone()
            && self.now >= ready
        {
            self.nodes[i].draining = None;
            self.send_req(i, Some(vhd), req);
        }
    }

    /// What a node's upper layer decides to do this tick (the replicated state is read
    /// directly, as a query through the coordinator would return it).
    fn decide(&mut self, i: usize) {
        if self.nodes[i].guard.epoch().is_none() {
            return;
        }
        let eager = self.calm;
        // Take over VHDs of expired writers.
        let stale: Vec<(VhdId, Generation)> = self
            .state
            .owners()
            .into_iter()
            .filter(|o| o.owner.is_some() && !o.owner_valid)
            .map(|o| (o.vhd, o.generation))
            .collect();
        for (vhd, g) in stale {
            if self.rng.random_bool(if eager { 0.5 } else { 0.05 })
                && let Ok(req) = self.nodes[i].guard.request_takeover(vhd, g)
            {
                self.send_req(i, Some(vhd), req);
            }
        }
        self.settle(i);
        if self.calm {
            return;
        }
        let vhd = VhdId(self.rng.random_range(1..=VHDS));
        let held = self.nodes[i].guard.hold(vhd).copied();
        let roll = self.rng.random_range(0..1000);
        let draining = self.nodes[i].draining.is_some();
        match (held, roll) {
            (None, 0..=14) => {
                let mode = if roll < 10 { Mode::Write } else { Mode::Read };
                if let Ok(req) = self.nodes[i].guard.request_acquire(vhd, mode) {
                    self.send_req(i, Some(vhd), req);
                }
            }
            (Some(h), 20..=23) if h.mode == Mode::Write && !h.handing_off && !draining => {
                let to = self.rng.random_range(0..NODES);
                let Some(to_rec) = self.state.node_record(NodeId(to as u64 + 1)).copied() else {
                    return;
                };
                if to == i {
                    return;
                }
                // The migration protocol tells the target first (if it is running).
                if self.nodes[to].alive && self.nodes[to].paused.is_none() {
                    self.nodes[to].guard.expect_transfer(vhd, h.generation);
                }
                let to_id = NodeId(to as u64 + 1);
                if let Ok(req) = self.nodes[i].guard.begin_handoff(vhd, to_id, to_rec.epoch) {
                    let ready = self.nodes[i].landing.get(&vhd).copied().unwrap_or(0);
                    self.nodes[i].draining = Some((vhd, req, ready));
                }
            }
            (Some(h), 30..=31) if !h.handing_off && !draining => {
                if let Some(req) = self.nodes[i].guard.begin_release(vhd) {
                    let ready = self.nodes[i].landing.get(&vhd).copied().unwrap_or(0);
                    self.nodes[i].draining = Some((vhd, req, ready));
                }
            }
            _ => {}
        }
    }

    /// Hand-offs refused or unanswered are settled by a reclaim, releases unanswered are
    /// re-sent (never settled by reading the state: a duplicate may still be in flight).
    fn settle(&mut self, i: usize) {
        let busy = |n: &SimNode, v: VhdId| {
            n.draining.as_ref().is_some_and(|d| d.0 == v)
                || n.pending
                    .values()
                    .any(|(p, _)| matches!(p, Pending::Guard(_, Some(x)) if *x == v))
        };
        let n = &self.nodes[i];
        let handing: Vec<VhdId> = n
            .guard
            .holds()
            .iter()
            .filter(|(v, h)| h.handing_off && !busy(n, **v))
            .map(|(v, _)| *v)
            .collect();
        let releasing: Vec<VhdId> = n
            .guard
            .status(Time::ZERO)
            .releasing
            .into_iter()
            .filter(|v| !busy(n, *v))
            .collect();
        for v in handing {
            if let Some(req) = self.nodes[i].guard.reclaim(v) {
                self.send_req(i, Some(v), req);
            }
        }
        for v in releasing {
            if let Some(req) = self.nodes[i].guard.retry_release(v) {
                self.send_req(i, Some(v), req);
            }
        }
    }

    fn drain_inbox(&mut self, i: usize) -> Check {
        let inbox = std::mem::take(&mut self.nodes[i].inbox);
        for (req, res) in inbox {
            let now_l = self.local(i);
            let kind = match req {
                Some(r) => match self.nodes[i].pending.remove(&r) {
                    Some((k, _)) => Some(k),
                    None => continue,
                },
                None => None,
            };
            let mut recover = Vec::new();
            let events = {
                let g = &mut self.nodes[i].guard;
                match (kind, &res) {
                    (Some(Pending::Register), Ok(o)) => {
                        let ev = g.on_registered(o);
                        // A restarted node recovers the holds the state still shows.
                        let holds = self.state.holds_of(g.node());
                        recover = g.recover(&holds, now_l);
                        ev
                    }
                    (Some(Pending::Guard(ticket, _)), r) => g.on_result(ticket, r, now_l),
                    // A transfer to this node, announced by the coordinator.
                    (None, Ok(o)) => g.on_transfer_in(o),
                    (_, Err(e)) => g.on_error(e),
                }
            };
            self.note_events(i, &events);
            for req in recover {
                let vhd = match req.command {
                    Command::Reclaim { vhd, .. } | Command::Release { vhd, .. } => Some(vhd),
                    _ => None,
                };
                self.send_req(i, vhd, req);
            }
        }
        Ok(())
    }

    fn note_events(&mut self, i: usize, events: &[FenceEvent]) {
        for e in events {
            match e {
                FenceEvent::Lapsed { .. } => {
                    self.stats.lapses += 1;
                    if let Some(from) = self.ride_through_from
                        && self.nodes[i].link.1 <= from
                        && self.killed.as_ref().is_none_or(|k| k.0 != i)
                    {
                        self.stats.ride_through_lapses += 1;
                    }
                }
                FenceEvent::Reopened { .. } => self.stats.reopened += 1,
                FenceEvent::OwnershipLost { .. } => self.stats.ownership_lost += 1,
                FenceEvent::GrantRefused {
                    vhd,
                    epoch,
                    generation,
                } => {
                    if let Some(req) =
                        self.nodes[i]
                            .guard
                            .release_unwanted(*vhd, *epoch, *generation)
                    {
                        self.send_req(i, Some(*vhd), req);
                    }
                }
                FenceEvent::HoldDropped { .. } | FenceEvent::HandoffFailed { .. } => {}
            }
        }
    }

    fn fault(&mut self) {
        if self.calm {
            return;
        }
        let next = self.now + self.rng.random_range(500 * MS..4 * SEC);
        self.at(next, Ev::Fault);
        let i = self.rng.random_range(0..NODES);
        match self.rng.random_range(0..10) {
            0 | 1 if self.nodes[i].alive && self.nodes[i].paused.is_none() => {
                let until = self.now + self.rng.random_range(500 * MS..15 * SEC);
                self.nodes[i].paused = Some(until);
                self.at(until, Ev::Resume(i, until));
            }
            2 if self.nodes[i].alive => {
                self.crash_node(i);
                let back = self.now + self.rng.random_range(2 * SEC..15 * SEC);
                self.at(back, Ev::Restart(i));
            }
            3..=5 => {
                let until = self.now + self.rng.random_range(SEC..20 * SEC);
                let link = if self.rng.random_bool(0.5) {
                    Link::Drop
                } else {
                    Link::Delay(self.rng.random_range(2 * SEC..MAX_DELAY))
                };
                self.nodes[i].link = (link, until);
                self.at(until, Ev::Heal(i, until));
            }
            6 if self.leader.is_some() => {
                self.crash_leader();
                let f = self.rng.random_range(300 * MS..8 * SEC);
                self.at(self.now + f, Ev::Elect);
            }
            _ => {}
        }
    }

    fn crash_node(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.paused = None;
        n.inbox.clear();
        n.pending.clear();
        n.draining = None;
    }

    fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.alive {
            return;
        }
        n.alive = true;
        n.inc += 1;
        n.guard = FenceGuard::new(n.id, &self.timing);
        n.register_sent = false;
        n.landing.clear();
    }

    /// A paused process resumes with its old beliefs: its I/O thread tries to write
    /// before anything else runs. A VHD taken over meanwhile must find its fence closed.
    fn resume(&mut self, i: usize) -> Check {
        self.nodes[i].paused = None;
        let now_l = self.local(i);
        let id = self.nodes[i].id;
        let holds: Vec<_> = self.nodes[i]
            .guard
            .holds()
            .iter()
            .map(|(v, h)| (*v, *h))
            .collect();
        for (vhd, h) in holds {
            if h.mode != Mode::Write {
                continue;
            }
            let still_owner = self.state.valid_writer(vhd) == Some((id, h.epoch, h.generation));
            if !still_owner && self.state.valid_writer(vhd).is_some() {
                self.stats.resumed_after_takeover += 1;
                if self.nodes[i].guard.may_write(vhd, h.generation, now_l) {
                    return Err(format!(
                        "node {} resumed with an open fence on {vhd} taken over",
                        i + 1
                    ));
                }
            }
        }
        self.try_writes(i, now_l);
        self.drain_inbox(i)
    }

    fn calm(&mut self) {
        self.calm = true;
        for i in 0..NODES {
            self.nodes[i].link = (Link::Up, 0);
            if self.nodes[i].paused.is_some() {
                self.nodes[i].paused = Some(self.now);
                self.at(self.now, Ev::Resume(i, self.now));
            }
            if !self.nodes[i].alive {
                self.at(self.now, Ev::Restart(i));
            }
        }
        self.at(self.now, Ev::Elect);
        // Messages delayed by the chaos phase arrive for up to 30 s more. They are safe
        // (stale requests are refused, late renewals only move the coordinator's base
        // later), but a late renewal of the victim would postpone its expiry: the budget
        // assumes bounded delays, so the liveness checks start once they have drained.
        self.at(self.now + MAX_DELAY + 2 * SEC, Ev::CrashLeader);
        self.at(self.now + MAX_DELAY + 11 * SEC, Ev::KillOwner);
    }

    fn kill_owner(&mut self) -> Check {
        self.ride_through_from = None;
        // Make sure some node owns something: node 1 acquires a dedicated VHD if free.
        let owner = self
            .state
            .owners()
            .into_iter()
            .find(|o| o.owner_valid)
            .and_then(|o| o.owner)
            .map(|n| usize::try_from(n.0 - 1).expect("index"));
        let Some(victim) = owner else {
            let req = self.nodes[0]
                .guard
                .request_acquire(CALM_VHD, Mode::Write)
                .map_err(|e| format!("node 1 cannot acquire in the calm phase: {e}"))?;
            self.send_req(0, Some(CALM_VHD), req);
            self.at(self.now + SEC, Ev::KillOwner);
            return Ok(());
        };
        let vhds: BTreeSet<VhdId> = self
            .state
            .holds_of(NodeId(victim as u64 + 1))
            .into_iter()
            .filter(|h| h.valid && h.mode == Mode::Write)
            .map(|h| h.vhd)
            .collect();
        self.crash_node(victim);
        self.killed = Some((victim, self.now, vhds));
        let budget = u64::try_from(self.timing.outage_budget.as_nanos()).expect("fits");
        self.at(self.now + budget + SEC, Ev::End);
        Ok(())
    }

    fn end_checks(&mut self) -> Check {
        if self.stats.ride_through_lapses > 0 {
            return Err(
                "a healthy node's fence lapsed during a coordinator failover within tolerance"
                    .into(),
            );
        }
        let (victim, _, left) = self.killed.as_ref().ok_or("no owner was killed")?;
        if !left.is_empty() {
            return Err(format!(
                "VHDs {left:?} of killed node {} not taken over within the budget",
                victim + 1
            ));
        }
        if self.stats.calm_takeover_ms_max
            > u64::try_from(self.timing.outage_budget.as_millis()).expect("fits")
        {
            return Err(format!(
                "takeover took {} ms",
                self.stats.calm_takeover_ms_max
            ));
        }
        Ok(())
    }

    /// No two nodes have an open write fence for one VHD right now.
    fn check_fences(&self) -> Check {
        let mut open: BTreeMap<VhdId, usize> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            let now_l = n.clock.read(self.now);
            for (vhd, h) in n.guard.holds() {
                if h.mode == Mode::Write
                    && n.guard.may_write(*vhd, h.generation, now_l)
                    && let Some(j) = open.insert(*vhd, i)
                {
                    {
                        return Err(format!(
                            "nodes {} and {} both have an open write fence on {vhd} at {} ns",
                            j + 1,
                            i + 1,
                            self.now
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn run_seed(seed: u64) -> Result<(Stats, u64), String> {
    let mut w = World::new(seed);
    let stats = w.run()?;
    let _ = w.seed;
    Ok((stats, w.trace))
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40u64);
    (1..=n).collect()
}

#[test]
fn no_two_open_write_fences_and_takeover_within_budget() {
    let mut total = Stats::default();
    let mut worst = 0;
    for seed in seeds() {
        let (s, _) = match run_seed(seed) {
            Ok(r) => r,
            Err(e) => panic!("SIM_SEED={seed}: {e}"),
        };
        eprintln!("seed {seed}: {s:?}");
        worst = worst.max(s.calm_takeover_ms_max);
        total.writes_landed += s.writes_landed;
        total.takeovers += s.takeovers;
        total.transfers += s.transfers;
        total.leader_changes += s.leader_changes;
        total.lapses += s.lapses;
        total.reopened += s.reopened;
        total.ownership_lost += s.ownership_lost;
        total.resumed_after_takeover += s.resumed_after_takeover;
        total.expiries += s.expiries;
    }
    eprintln!("total: {total:?}; slowest takeover after kill: {worst} ms");
    if std::env::var("SIM_SEED").is_err() {
        // The runs must exercise what they claim to check.
        for (what, n) in [
            ("writes", total.writes_landed),
            ("takeovers", total.takeovers),
            ("transfers", total.transfers),
            ("leader changes", total.leader_changes),
            ("lapses", total.lapses),
            ("reopened fences", total.reopened),
            ("ownership lost", total.ownership_lost),
            ("resumed after takeover", total.resumed_after_takeover),
            ("expiries", total.expiries),
        ] {
            assert!(n > 0, "no {what} in any seed: {total:?}");
        }
    }
}

#[test]
fn a_seed_replays_identically() {
    let a = run_seed(7).expect("seed 7 passes");
    let b = run_seed(7).expect("seed 7 passes");
    assert_eq!(a.1, b.1, "same seed, same event trace");
    assert_ne!(run_seed(8).expect("seed 8 passes").1, a.1);
}
