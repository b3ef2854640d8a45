//! Deterministic simulation harness: N sans-IO cores on the simulated network and clock,
//! random client traffic, crashes (with or without losing unsynced writes), partitions,
//! lossy and slow links, leader transfers and membership changes, with safety checks
//! after every step and a liveness phase at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meta_store::config::{Config, LogPolicy, PeerAddr};
use meta_store::core::{Core, Event, Fnv, MemberChange, Response, Role};
use meta_store::engine::MemEngine;
use meta_store::kvsm::{KvCommand, KvStateMachine};
use meta_store::sim::{LinkFaults, SimNetwork};
use meta_store::{Error, StateMachine};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Simulated milliseconds per step.
const STEP_MS: u64 = 10;
/// Steps per raft tick (100 ms ticks).
const STEPS_PER_TICK: u64 = 10;
/// Node ids the simulation may use: the initial nodes plus replacements, which always get
/// a new id (a removed id never returns, see `Core`'s removed set).
const MAX_SIM_IDS: u64 = 12;

type SimCore = Core<Arc<MemEngine>, KvStateMachine>;

/// What a scenario exercises.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    /// Node ids 1..=nodes exist.
    pub nodes: u64,
    /// Initial voters (the others start empty and wait to be added).
    pub voters: Vec<u64>,
    /// Steps of the chaos phase.
    pub steps: u64,
    pub crashes: bool,
    pub partitions: bool,
    pub membership: bool,
    /// Lossy and slow links.
    pub link_faults: bool,
    /// Leader transfers.
    pub transfers: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Read { key: Vec<u8>, expect: Vec<u8> },
    Change(MemberChange),
    Transfer,
}

struct SimNode {
    engine: Arc<MemEngine>,
    core: Option<SimCore>,
    phase: u64,
    restart_at: Option<u64>,
    /// Provisioned: has (or had) a running core; removed nodes are unprovisioned.
    provisioned: bool,
    /// Removed from the cluster: its id is never used again.
    retired: bool,
}

pub struct Sim {
    sc: Scenario,
    rng: StdRng,
    net: SimNetwork,
    now: u64,
    nodes: BTreeMap<u64, SimNode>,
    logger: slog::Logger,
    next_key: u64,
    inflight: BTreeMap<(u64, u64), Op>,
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    unknown: BTreeSet<Vec<u8>>,
    never: BTreeSet<Vec<u8>>,
    chains: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, (Option<u64>, u64)>,
    heal_at: Option<u64>,
    trace: Fnv,
    counts: BTreeMap<&'static str, u64>,
}

fn config(sc: &Scenario, id: u64, bootstrap: bool) -> Config {
    let mut c = Config::new(id, "sim-cluster");
    if bootstrap {
        c.initial_voters = sc.voters.clone();
    }
    c.peers = (1..=MAX_SIM_IDS)
        .map(|i| PeerAddr {
            id: i,
            addr: format!("sim-{i}"),
        })
        .collect();
    c.propose_timeout = Duration::from_secs(3);
    c.read_timeout = Duration::from_secs(3);
    c.admin_timeout = Duration::from_secs(5);
    c.snapshot_retry = Duration::from_secs(2);
    c.log = LogPolicy {
        compact_threshold: 40,
        keep_entries: 10,
    };
    c.limits.max_promote_lag = 40;
    c
}

impl Sim {
    pub fn new(sc: Scenario, seed: u64) -> Self {
        if std::env::var("SIM_TRACE").is_ok() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(std::env::var("SIM_TRACE").unwrap_or_default())
                .with_test_writer()
                .try_init();
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let net = SimNetwork::new(rng.random(), 100_000);
        let mut sim = Sim {
            net,
            now: 0,
            nodes: BTreeMap::new(),
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            next_key: 0,
            inflight: BTreeMap::new(),
            acked: BTreeMap::new(),
            unknown: BTreeSet::new(),
            never: BTreeSet::new(),
            chains: BTreeMap::new(),
            hashes: BTreeMap::new(),
            heal_at: None,
            trace: Fnv::new(),
            counts: BTreeMap::new(),
            rng,
            sc,
        };
        for id in 1..=sim.sc.nodes {
            let phase = sim.rng.random_range(0..STEPS_PER_TICK);
            sim.nodes.insert(
                id,
                SimNode {
                    engine: Arc::new(MemEngine::new()),
                    core: None,
                    phase,
                    restart_at: None,
                    provisioned: false,
                    retired: false,
                },
            );
            if sim.sc.voters.contains(&id) {
                sim.start_node(id, true);
            }
        }
        sim
    }

    fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_insert(0) += 1;
    }

    fn start_node(&mut self, id: u64, bootstrap: bool) {
        let cfg = config(&self.sc, id, bootstrap);
        let seed = self.rng.random();
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("t={} start node {id}", self.now);
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        let core = Core::new(
            cfg,
            node.engine.clone(),
            KvStateMachine::new(),
            seed,
            &self.logger,
        )
        .unwrap_or_else(|e| panic!("node {id} failed to start: {e}"));
        node.core = Some(core);
        node.provisioned = true;
        node.restart_at = None;
    }

    fn alive(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.core.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn core(&mut self, id: u64) -> &mut SimCore {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.core.as_mut())
            .expect("node is running")
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.core.as_ref().map(|c| (*id, c)))
            .filter(|(_, c)| c.status().role == Role::Leader)
            .max_by_key(|(_, c)| c.status().term)
            .map(|(id, _)| id)
    }

    /// One simulated step of `STEP_MS`.
    pub fn step(&mut self, chaos: bool) {
        self.now += STEP_MS;
        let restarts: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.restart_at.is_some_and(|t| t <= self.now))
            .map(|(id, _)| *id)
            .collect();
        for id in restarts {
            self.count("restarts");
            self.start_node(id, false);
        }
        if self.heal_at.is_some_and(|t| t <= self.now) {
            self.net.heal();
            self.heal_at = None;
        }
        let slot = (self.now / STEP_MS) % STEPS_PER_TICK;
        for id in self.alive() {
            if self.nodes[&id].phase == slot {
                self.core(id).tick();
            }
        }
        for env in self.net.deliver_due(self.now) {
            if let Some(c) = self.nodes.get_mut(&env.to).and_then(|n| n.core.as_mut()) {
                c.step(env);
            }
        }
        if chaos {
            self.chaos();
        } else if self.rng.random_bool(0.2) {
            self.propose_random();
        }
        for id in self.alive() {
            // An earlier node's events may have retired this one.
            let Some(core) = self.nodes.get_mut(&id).and_then(|n| n.core.as_mut()) else {
                continue;
            };
            core.process_ready();
            let out = core.take_outbox();
            let mut events = Vec::new();
            while let Some(ev) = core.next_event() {
                events.push(ev);
            }
            for env in out {
                self.net.send(self.now, env);
            }
            for ev in events {
                self.on_event(id, ev);
            }
        }
        self.check_safety();
    }

    fn chaos(&mut self) {
        let r: f64 = self.rng.random();
        let alive = self.alive();
        if alive.is_empty() {
            return;
        }
        if r < 0.25 {
            self.propose_random();
            if self.rng.random_bool(0.3) {
                self.propose_random();
                self.propose_random();
            }
        } else if r < 0.28 {
            self.read_random();
        } else if r < 0.282 && self.sc.crashes {
            self.crash_random();
        } else if r < 0.285 && self.sc.partitions && self.heal_at.is_none() {
            self.partition_random();
        } else if r < 0.287 && self.sc.link_faults {
            let f = [0.0, 0.0, 0.05, 0.2][self.rng.random_range(0..4)];
            let d = [5, 5, 30, 150][self.rng.random_range(0..4)];
            self.net.set_default_faults(LinkFaults {
                drop: f,
                min_delay: 1,
                max_delay: d,
            });
            self.count("fault_changes");
        } else if r < 0.2885 && self.sc.transfers {
            self.transfer_random();
        } else if r < 0.292 && self.sc.membership {
            self.membership_random();
        }
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.rng.random_range(0..v.len())]
    }

    fn propose_random(&mut self) {
        let alive = self.alive();
        if alive.is_empty() {
            return;
        }
        let id = self.pick(&alive);
        self.next_key += 1;
        let key = format!("k{}", self.next_key).into_bytes();
        let value = format!("v{}-{}", self.next_key, self.rng.random::<u32>()).into_bytes();
        let cmd = KvCommand::Put {
            key: key.clone(),
            value: value.clone(),
        };
        let rid = self.core(id).propose(cmd.encode(), None);
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!(
                "t={} propose {} on node {id} rid {rid}",
                self.now,
                String::from_utf8_lossy(&key)
            );
        }
        self.inflight.insert((id, rid), Op::Put { key, value });
        self.count("proposals");
    }

    fn read_random(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let alive = self.alive();
        let id = self.pick(&alive);
        let n = self.rng.random_range(0..self.acked.len());
        let (key, value) = self
            .acked
            .iter()
            .nth(n)
            .map(|(k, v)| (k.clone(), v.clone()))
            .expect("index in range");
        let rid = self.core(id).read(Some(key.clone()), None);
        self.inflight
            .insert((id, rid), Op::Read { key, expect: value });
        self.count("reads");
    }

    fn crash_random(&mut self) {
        let alive = self.alive();
        let down = self
            .nodes
            .values()
            .filter(|n| n.restart_at.is_some())
            .count();
        if down >= (self.sc.voters.len() - 1) / 2 {
            return;
        }
        let id = self.pick(&alive);
        let lose = self.rng.random_bool(0.5);
        let delay = self.rng.random_range(200..3000);
        self.crash(id, lose, Some(self.now + delay));
    }

    fn crash(&mut self, id: u64, lose_unsynced: bool, restart_at: Option<u64>) {
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!(
                "t={} crash node {id} lose_unsynced={lose_unsynced} restart_at={restart_at:?}",
                self.now
            );
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        node.core = None;
        node.engine.crash(lose_unsynced);
        node.restart_at = restart_at;
        self.net.drop_to(id);
        self.forget_requests_of(id);
        self.count("crashes");
    }

    /// A stopped node's clients never learn their outcome: their puts may or may not apply.
    fn forget_requests_of(&mut self, id: u64) {
        let lost: Vec<(u64, u64)> = self
            .inflight
            .keys()
            .filter(|(n, _)| *n == id)
            .copied()
            .collect();
        for k in lost {
            if let Some(Op::Put { key, .. }) = self.inflight.remove(&k) {
                self.unknown.insert(key);
            }
        }
    }

    fn partition_random(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let size = self.rng.random_range(1..=ids.len() / 2);
        let mut minority = BTreeSet::new();
        while minority.len() < size {
            minority.insert(self.pick(&ids));
        }
        self.net.partition(&[minority.into_iter().collect()]);
        self.heal_at = Some(self.now + self.rng.random_range(500..5000));
        self.count("partitions");
    }

    fn transfer_random(&mut self) {
        let alive = self.alive();
        let id = self.pick(&alive);
        let to = self.pick(&self.sc.voters.clone());
        let rid = self.core(id).transfer_leader(to, None);
        self.inflight.insert((id, rid), Op::Transfer);
        self.count("transfers");
    }

    fn membership_random(&mut self) {
        let Some(leader) = self.leader() else { return };
        let m = self.core(leader).status().membership;
        if m.is_joint() {
            return;
        }
        let joinable: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(id, n)| !n.retired && !m.is_voter(**id) && !m.is_learner(**id))
            .map(|(id, _)| *id)
            .collect();
        let choice = self.rng.random_range(0..4);
        let next_id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let change = if choice == 0 && (!joinable.is_empty() || next_id <= MAX_SIM_IDS) {
            // A node that is not a member yet, or a new machine (new id, empty store) that
            // joins through a snapshot.
            let id = if joinable.is_empty() {
                let phase = self.rng.random_range(0..STEPS_PER_TICK);
                self.nodes.insert(
                    next_id,
                    SimNode {
                        engine: Arc::new(MemEngine::new()),
                        core: None,
                        phase,
                        restart_at: None,
                        provisioned: false,
                        retired: false,
                    },
                );
                next_id
            } else {
                self.pick(&joinable)
            };
            if !self.nodes[&id].provisioned {
                self.start_node(id, false);
            }
            MemberChange::AddLearner {
                id,
                addr: format!("sim-{id}"),
            }
        } else if choice == 1 && !m.learners.is_empty() {
            MemberChange::Promote {
                id: self.pick(&m.learners),
            }
        } else if choice == 2 && m.voters.len() > 3 {
            let candidates: Vec<u64> = m.voters.iter().copied().filter(|v| *v != leader).collect();
            MemberChange::Remove {
                id: self.pick(&candidates),
            }
        } else if choice == 3 && !m.learners.is_empty() {
            MemberChange::Remove {
                id: self.pick(&m.learners),
            }
        } else {
            return;
        };
        let alive = self.alive();
        let from = self.pick(&alive);
        let rid = self
            .core(from)
            .change_membership(std::slice::from_ref(&change), None);
        self.inflight.insert((from, rid), Op::Change(change));
        self.count("membership_requests");
    }

    fn on_event(&mut self, node: u64, ev: Event) {
        self.trace.write(&self.now.to_be_bytes());
        self.trace.write(&node.to_be_bytes());
        self.trace.write(format!("{ev:?}").as_bytes());
        if std::env::var("SIM_TRACE").is_ok() {
            eprintln!("t={} node {node} event {ev:?}", self.now);
        }
        let Event::Done { request_id, result } = ev else {
            return;
        };
        let Some(op) = self.inflight.remove(&(node, request_id)) else {
            return;
        };
        match (op, result) {
            (Op::Put { key, value }, Ok(Response::Applied(r))) => {
                assert_eq!(
                    r,
                    b"ok:new".to_vec(),
                    "put of unique key {} applied twice (result {:?})",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(&r)
                );
                self.acked.insert(key, value);
                self.count("acked");
            }
            (Op::Put { key, .. }, Err(e)) => {
                let code: &'static str = match e.code() {
                    meta_store::ErrorCode::Timeout => "err_timeout",
                    meta_store::ErrorCode::NoLeader => "err_no_leader",
                    meta_store::ErrorCode::Dropped => "err_dropped",
                    meta_store::ErrorCode::Indeterminate => "err_indeterminate",
                    _ => "err_other",
                };
                self.count(code);
                if e.is_retry_safe() {
                    self.never.insert(key);
                    self.count("refused");
                } else {
                    self.unknown.insert(key);
                    self.count("unknown");
                }
            }
            (Op::Read { key, expect }, Ok(Response::Read { value, .. })) => {
                let mut want = vec![1];
                want.extend_from_slice(&expect);
                assert_eq!(
                    value,
                    Some(want),
                    "linearizable read of {} on node {node} missed an acknowledged write",
                    String::from_utf8_lossy(&key)
                );
                self.count("reads_ok");
            }
            (Op::Change(change), Ok(Response::Membership(m))) => {
                self.count("membership_applied");
                if let MemberChange::Remove { id } = change {
                    assert!(!m.is_voter(id) && !m.is_learner(id));
                    // The removed machine is retired.
                    let n = self.nodes.get_mut(&id).expect("node exists");
                    n.core = None;
                    n.restart_at = None;
                    n.provisioned = false;
                    n.retired = true;
                    self.net.drop_to(id);
                    self.forget_requests_of(id);
                }
            }
            (Op::Transfer, Ok(_)) => self.count("transfers_ok"),
            (_, Err(Error::Stopped)) => unreachable!("no node stops by itself in the simulation"),
            _ => {}
        }
    }

    fn check_safety(&mut self) {
        if let Ok(k) = std::env::var("SIM_WATCH_KEY") {
            for (id, n) in &self.nodes {
                if let Some(c) = &n.core {
                    let has = c.state_machine().get(k.as_bytes()).is_some();
                    eprintln!(
                        "t={} watch node {id} applied {} has {k}: {has}",
                        self.now,
                        c.applied_index()
                    );
                }
            }
        }
        let check_hashes = (self.now / STEP_MS).is_multiple_of(7);
        for (id, n) in &self.nodes {
            let Some(c) = &n.core else { continue };
            if let Some(e) = c.failure() {
                panic!("node {id} failed: {e}");
            }
            let sm = c.state_machine();
            assert_eq!(sm.overwrites(), 0, "node {id}: a command was applied twice");
            let (ci, ch) = sm.chain();
            if ci > 0 {
                let prev = *self.chains.entry(ci).or_insert(ch);
                assert_eq!(prev, ch, "node {id}: replicas diverge at index {ci}");
            }
            if check_hashes {
                let applied = c.applied_index();
                let h = (sm.state_hash(), c.persisted_hash().expect("hash"));
                if std::env::var("SIM_DEBUG").is_ok() {
                    let cf_hash = |cf: meta_store::engine::Cf| {
                        let mut f = Fnv::new();
                        meta_store::engine::KvEngine::scan(
                            &*n.engine,
                            cf,
                            &[],
                            None,
                            &mut |k, v| {
                                f.write(k);
                                f.write(v);
                                true
                            },
                        )
                        .expect("scan");
                        f.finish()
                    };
                    eprintln!(
                        "t={} node {id} applied {applied} chain {:?} sm {:?} data {:x} peers {:x} sessions {:x} overwrites {}",
                        self.now,
                        sm.chain(),
                        sm.state_hash(),
                        cf_hash(meta_store::engine::Cf::Sm),
                        cf_hash(meta_store::engine::Cf::Peers),
                        cf_hash(meta_store::engine::Cf::Sessions),
                        sm.overwrites()
                    );
                }
                let prev = *self.hashes.entry(applied).or_insert(h);
                assert_eq!(
                    prev, h,
                    "node {id}: state (sm hash, persisted hash) differs from another replica at applied index {applied}"
                );
            }
        }
    }

    /// Heals everything, restarts crashed members and waits until a fresh write commits and
    /// every member replica converges; then checks acknowledged writes.
    pub fn converge(&mut self) {
        self.net.heal();
        self.heal_at = None;
        self.net.clear_links();
        self.net.set_default_faults(LinkFaults::default());
        let down: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.provisioned && n.core.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.start_node(id, false);
        }
        let deadline = self.now + 120_000;
        let mut final_key: Option<Vec<u8>> = None;
        loop {
            assert!(
                self.now < deadline,
                "no convergence within 120 s of healing"
            );
            for _ in 0..10 {
                self.step(false);
            }
            let Some(leader) = self.leader() else {
                continue;
            };
            if final_key
                .as_ref()
                .is_none_or(|k| !self.acked.contains_key(k))
            {
                if !self
                    .inflight
                    .values()
                    .any(|o| matches!(o, Op::Put { key, .. } if Some(key) == final_key.as_ref()))
                {
                    self.next_key += 1;
                    let key = format!("final{}", self.next_key).into_bytes();
                    let cmd = KvCommand::Put {
                        key: key.clone(),
                        value: b"done".to_vec(),
                    };
                    let rid = self.core(leader).propose(cmd.encode(), None);
                    self.inflight.insert(
                        (leader, rid),
                        Op::Put {
                            key: key.clone(),
                            value: b"done".to_vec(),
                        },
                    );
                    final_key = Some(key);
                }
                continue;
            }
            let st = self.core(leader).status();
            let members: Vec<u64> = st
                .membership
                .voters
                .iter()
                .chain(&st.membership.learners)
                .copied()
                .collect();
            if st.membership.is_joint() {
                continue;
            }
            let mut hashes = BTreeSet::new();
            let mut all_there = true;
            for id in &members {
                match self.nodes.get(id).and_then(|n| n.core.as_ref()) {
                    Some(c) if c.applied_index() == st.commit => {
                        hashes.insert((
                            c.state_machine().state_hash(),
                            c.persisted_hash().expect("hash"),
                        ));
                    }
                    _ => all_there = false,
                }
            }
            if all_there && hashes.len() == 1 {
                break;
            }
        }
        let leader = self.leader().expect("leader after convergence");
        let sm = self.core(leader).state_machine().clone();
        for (k, v) in &self.acked {
            assert_eq!(
                sm.get(k),
                Some(v.as_slice()),
                "acknowledged write {} lost",
                String::from_utf8_lossy(k)
            );
        }
        for k in &self.never {
            assert!(
                sm.get(k).is_none(),
                "write {} refused as retry-safe yet applied",
                String::from_utf8_lossy(k)
            );
        }
        for (k, _) in sm.entries() {
            let known = self.acked.contains_key(k)
                || self.unknown.contains(k)
                || self
                    .inflight
                    .values()
                    .any(|o| matches!(o, Op::Put { key, .. } if key.as_slice() == k));
            assert!(
                known,
                "replica holds {} that nobody proposed",
                String::from_utf8_lossy(k)
            );
        }
        self.trace
            .write(&sm.state_hash().unwrap_or(0).to_be_bytes());
    }

    /// A fingerprint of everything that happened (same seed, same fingerprint).
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    pub fn fingerprint(&self) -> u64 {
        self.trace.finish()
    }
}

/// Seeds to run: `SIM_SEED` alone, or `SIM_SEEDS` of them starting at `SIM_SEED_BASE`.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![
            s.trim()
                .parse()
                .expect("SIM_SEED must be an unsigned integer"),
        ];
    }
    let n = std::env::var("SIM_SEEDS")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIM_SEEDS must be an unsigned integer")
        })
        .unwrap_or(default_count);
    let base: u64 = std::env::var("SIM_SEED_BASE")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .expect("SIM_SEED_BASE must be an unsigned integer")
        })
        .unwrap_or(1);
    (base..base + n).collect()
}

/// Runs `sc` once per seed; a failing seed is printed as `SIM_SEED=<n>` before the panic
/// propagates.
pub fn run_scenario(sc: &Scenario, default_seeds: u64) {
    for seed in seeds(default_seeds) {
        let sc2 = sc.clone();
        let res = std::panic::catch_unwind(move || {
            let mut sim = Sim::new(sc2, seed);
            for _ in 0..sim.sc.steps {
                sim.step(true);
            }
            sim.converge();
            sim.counts.clone()
        });
        match res {
            Ok(counts) => eprintln!("{} seed {seed}: ok {counts:?}", sc.name),
            Err(p) => {
                eprintln!(
                    "SIM_SEED={seed} failed scenario {} (replay: SIM_SEED={seed} cargo nextest run -p meta-store sim)",
                    sc.name
                );
                std::panic::resume_unwind(p);
            }
        }
    }
}
