//! The sans-IO core of a metadata node: it owns the raft-rs `RawNode`, the storage and the
//! state machine, and turns inputs (ticks, peer envelopes, client requests) into outputs
//! (envelopes to send, completed requests, address-book changes). Time is an input: the
//! core counts ticks and never reads a clock, so the async shell and the deterministic
//! simulation drive exactly the same code.

mod apply;
mod membership;
mod ready;
mod requests;
pub mod sessions;
mod status;

use std::collections::{BTreeMap, VecDeque};

use raft::RawNode;
use raft::prelude::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Config, PeerAddr};
use crate::engine::{Cf, KvEngine};
use crate::error::Error;
use crate::state_machine::{SmReader, StateMachine};
use crate::storage::RaftStorage;
use crate::wire::{Envelope, Membership, MembershipRequest};

pub use membership::MemberChange;
pub use status::{PeerStatus, ReplicationState, Role, Status};

/// What a completed request produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A command was applied; the state machine's result.
    Applied(Vec<u8>),
    /// A membership change was applied (and a joint configuration left).
    Membership(Membership),
    /// A linearizable read: the read index, and the query's answer when one was asked.
    Read {
        /// Index the read is linearized at.
        index: u64,
        /// The state machine's answer.
        value: Option<Vec<u8>>,
    },
    /// The leadership moved to the requested node.
    Transferred,
}

/// Outputs of the core besides envelopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request finished.
    Done {
        /// Id returned when the request was submitted.
        request_id: u64,
        /// Outcome.
        result: Result<Response, Error>,
    },
    /// The address book changed: tell the transport.
    PeerAddr {
        /// Node.
        id: u64,
        /// New address, or `None` when the node left.
        addr: Option<String>,
    },
}

/// A request submitted on this node.
#[derive(Debug, Clone)]
enum Payload {
    Command(Vec<u8>),
    Membership(MembershipRequest),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalState {
    /// Waiting for a leader (never sent, or refused without being appended).
    Parked,
    /// Appended to the log by this node as leader.
    Proposed,
    /// Sent to this leader.
    Forwarded(u64),
    /// A joint configuration was entered; waiting for it to be left.
    WaitLeaveJoint,
}

#[derive(Debug)]
struct LocalReq {
    payload: Payload,
    deadline: u64,
    state: LocalState,
    /// Why the last attempt was refused (reported if the deadline passes while parked).
    last_error: Option<Error>,
    /// Sent to a leader or appended at least once: from then on the outcome of a missed
    /// deadline is unknown.
    ever_sent: bool,
    /// When it was last forwarded.
    sent_at: u64,
}

/// An entry this node appended as leader, for a local or a remote origin.
#[derive(Debug, Clone, Copy)]
struct Proposed {
    origin: u64,
    incarnation: u64,
    request_id: u64,
}

#[derive(Debug)]
struct ReadReq {
    query: Option<Vec<u8>>,
    deadline: u64,
    /// The read-index batch it belongs to.
    batch: u64,
}

#[derive(Debug, Default)]
struct ReadBatch {
    index: Option<u64>,
    issued: u64,
    rids: Vec<u64>,
}

#[derive(Debug)]
struct TransferReq {
    to: u64,
    deadline: u64,
    issued: u64,
}

/// Timing and limits in ticks, derived once from the [`Config`].
#[derive(Debug, Clone)]
struct Ticks {
    propose: u64,
    read: u64,
    admin: u64,
    snapshot_retry: u64,
    read_retry: u64,
    transfer_retry: u64,
    forward_retry: u64,
}

/// Counters for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Ready iterations processed.
    pub readies: u64,
    /// Readies whose writes were synced.
    pub synced_writes: u64,
    /// Entries applied.
    pub applied_entries: u64,
    pub snapshots_installed: u64,
    /// Log compactions.
    pub compactions: u64,
    /// Incoming messages dropped as malformed or misrouted.
    pub dropped_messages: u64,
}

/// The sans-IO metadata node.
pub struct Core<E: KvEngine, S: StateMachine> {
    cfg: Config,
    ticks: Ticks,
    raw: RawNode<RaftStorage<E>>,
    sm: S,
    rng: StdRng,
    now: u64,
    /// Random, non-zero: request ids are unique within one incarnation of this node.
    incarnation: u64,
    next_request_id: u64,
    sessions: sessions::Sessions,
    local: BTreeMap<u64, LocalReq>,
    proposed: BTreeMap<u64, Proposed>,
    remote_in_flight: usize,
    reads: BTreeMap<u64, ReadReq>,
    read_batches: BTreeMap<u64, ReadBatch>,
    unbatched_reads: Vec<u64>,
    transfers: BTreeMap<u64, TransferReq>,
    snapshot_since: BTreeMap<u64, u64>,
    peers: BTreeMap<u64, String>,
    /// Node ids removed from the cluster: replicated, so every replica refuses their return
    /// at the same log position. A node that lost its store must come back under a new id,
    /// or replicas that have not yet applied its removal could count its blank vote.
    removed: std::collections::BTreeSet<u64>,
    outbox: Vec<Envelope>,
    events: VecDeque<Event>,
    /// Requests to send again once the current Ready is advanced.
    resend_after_ready: Vec<u64>,
    /// Between `ready()` and `advance()`: raft-rs forbids proposing or stepping then.
    in_ready: bool,
    leader: u64,
    raft_view: (u64, raft::StateRole, u64),
    stats: CoreStats,
    failed: Option<Error>,
}

impl<E: KvEngine, S: StateMachine> std::fmt::Debug for Core<E, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.cfg.id)
            .field("now", &self.now)
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

impl<E: KvEngine, S: StateMachine> Core<E, S> {
    /// Opens the store on `engine`, loads the state machine and builds the Raft node.
    ///
    /// `seed` drives the election-timeout randomisation and the request-id space, so a
    /// simulation that passes a seeded value replays exactly; the async shell passes fresh
    /// randomness.
    pub fn new(
        cfg: Config,
        engine: E,
        mut sm: S,
        seed: u64,
        logger: &slog::Logger,
    ) -> Result<Self, Error> {
        cfg.validate()?;
        let (storage, recovered) = RaftStorage::open(engine, &cfg)?;
        sm.load(&SmReader {
            engine: storage.engine(),
        })?;
        let l = &cfg.limits;
        let raft_cfg = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied: recovered.applied.index,
            max_size_per_msg: l.max_msg_bytes,
            max_inflight_msgs: l.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: l.max_uncommitted_bytes,
            max_committed_size_per_ready: l.max_committed_bytes_per_ready,
            ..Default::default()
        };
        raft_cfg
            .validate()
            .map_err(|e| Error::Config(format!("raft: {e}")))?;
        let logger = logger.new(slog::o!("raft_id" => cfg.id));
        let raw = RawNode::new(&raft_cfg, storage, &logger)
            .map_err(|e| Error::Storage(format!("start raft: {e}")))?;
        let ticks = Ticks {
            propose: cfg.ticks(cfg.propose_timeout),
            read: cfg.ticks(cfg.read_timeout),
            admin: cfg.ticks(cfg.admin_timeout),
            snapshot_retry: cfg.ticks(cfg.snapshot_retry),
            read_retry: (cfg.election_ticks as u64 / 2).max(2),
            transfer_retry: cfg.election_ticks as u64,
            forward_retry: cfg.ticks(cfg.forward_retry),
        };
        let mut rng = StdRng::seed_from_u64(seed ^ cfg.id.rotate_left(32));
        let incarnation = rng.random::<u64>() | 1;
        let sessions = sessions::Sessions::load(raw.store().engine())?;
        let mut core = Core {
            ticks,
            raw,
            sm,
            rng,
            now: 0,
            incarnation,
            next_request_id: 1,
            sessions,
            local: BTreeMap::new(),
            proposed: BTreeMap::new(),
            remote_in_flight: 0,
            reads: BTreeMap::new(),
            read_batches: BTreeMap::new(),
            unbatched_reads: Vec::new(),
            transfers: BTreeMap::new(),
            snapshot_since: BTreeMap::new(),
            peers: BTreeMap::new(),
            removed: recovered.removed.iter().copied().collect(),
            outbox: Vec::new(),
            events: VecDeque::new(),
            resend_after_ready: Vec::new(),
            in_ready: false,
            leader: 0,
            raft_view: (0, raft::StateRole::Follower, 0),
            stats: CoreStats::default(),
            failed: None,
            cfg,
        };
        let mut book: BTreeMap<u64, String> = recovered
            .peers
            .into_iter()
            .map(|p| (p.id, p.addr))
            .collect();
        for p in &core.cfg.peers {
            if !core.removed.contains(&p.id) {
                book.entry(p.id).or_insert_with(|| p.addr.clone());
            }
        }
        for (id, addr) in book {
            core.set_peer(id, Some(addr));
        }
        core.rerandomize_election_timeout();
        core.raft_view = core.view();
        Ok(core)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Ticks elapsed.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The leader this node believes in (0 when none).
    pub fn leader(&self) -> u64 {
        self.leader
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn applied_index(&self) -> u64 {
        self.raw.store().applied().index
    }

    /// The state machine (tests and local, non-linearizable reads).
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// Counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// The error that stopped this node, if any.
    pub fn failure(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    /// The address book.
    pub fn peers(&self) -> Vec<PeerAddr> {
        self.peers
            .iter()
            .map(|(id, addr)| PeerAddr {
                id: *id,
                addr: addr.clone(),
            })
            .collect()
    }

    /// FNV-1a hash of the persisted state-machine data and address book: equal on replicas
    /// at equal applied index.
    pub fn persisted_hash(&self) -> Result<u64, Error> {
        let mut h = Fnv::new();
        for cf in [Cf::Sm, Cf::Peers, Cf::Sessions] {
            self.raw.store().engine().scan(cf, &[], None, &mut |k, v| {
                h.write(&(k.len() as u64).to_be_bytes());
                h.write(k);
                h.write(&(v.len() as u64).to_be_bytes());
                h.write(v);
                true
            })?;
        }
        Ok(h.finish())
    }

    /// Takes the envelopes to send.
    pub fn take_outbox(&mut self) -> Vec<Envelope> {
        std::mem::take(&mut self.outbox)
    }

    /// Takes the next event.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Advances the clock by one tick.
    pub fn tick(&mut self) {
        if self.failed.is_some() {
            return;
        }
        self.now += 1;
        self.raw.tick();
        self.after_raft_input();
        self.on_tick();
    }

    /// Handles an envelope from a peer. The transport guarantees `env.from` is the peer
    /// that completed the handshake.
    pub fn step(&mut self, env: Envelope) {
        if self.failed.is_some() {
            return;
        }
        if env.to != self.cfg.id {
            self.stats.dropped_messages += 1;
            return;
        }
        match env.body {
            Some(crate::wire::Body::Raft(bytes)) => self.step_raft(env.from, &bytes),
            Some(crate::wire::Body::Forward(f)) => self.on_forward(env.from, f),
            Some(crate::wire::Body::Reply(r)) => self.on_reply(env.from, r),
            None => self.stats.dropped_messages += 1,
        }
    }

    fn step_raft(&mut self, from: u64, bytes: &[u8]) {
        let mut m = Message::default();
        if let Err(e) = protobuf::Message::merge_from_bytes(&mut m, bytes) {
            tracing::debug!(from, error = %e, "undecodable raft message dropped");
            self.stats.dropped_messages += 1;
            return;
        }
        // A forwarded leader-transfer request names the transferee in `from`; every other
        // message must come from the peer the transport authenticated.
        let transfer = m.get_msg_type() == raft::prelude::MessageType::MsgTransferLeader;
        if (m.from != from && !transfer) || m.to != self.cfg.id {
            tracing::debug!(from, m.from, m.to, "misaddressed raft message dropped");
            self.stats.dropped_messages += 1;
            return;
        }
        if m.get_msg_type() == raft::prelude::MessageType::MsgSnapshot
            && let Err(e) = crate::storage::decode_snapshot_payload(
                m.get_snapshot(),
                self.cfg.limits.max_snapshot_bytes,
            )
        {
            tracing::warn!(from, error = %e, "invalid snapshot dropped");
            self.stats.dropped_messages += 1;
            return;
        }
        if let Err(e) = self.raw.step(m) {
            tracing::trace!(from, error = %e, "raft step refused");
        }
        self.after_raft_input();
    }

    fn view(&self) -> (u64, raft::StateRole, u64) {
        let r = &self.raw.raft;
        (r.term, r.state, r.leader_id)
    }

    /// raft-rs draws election timeouts from the thread's RNG; drawing them from the core's
    /// seeded RNG instead keeps a simulation replayable. Raft resets the timeout whenever
    /// term, role or leader change, so a new draw follows each such change.
    fn after_raft_input(&mut self) {
        let v = self.view();
        if v != self.raft_view {
            self.raft_view = v;
            self.rerandomize_election_timeout();
        }
    }

    fn rerandomize_election_timeout(&mut self) {
        let r = &mut self.raw.raft;
        let (lo, hi) = (r.election_timeout(), 2 * r.election_timeout());
        let t = self.rng.random_range(lo..hi);
        r.set_randomized_election_timeout(t);
    }

    fn fail(&mut self, e: Error) {
        tracing::error!(node = self.cfg.id, error = %e, "metadata node stops");
        self.failed = Some(e.clone());
        let ids: Vec<u64> = self
            .local
            .keys()
            .chain(self.reads.keys())
            .chain(self.transfers.keys())
            .copied()
            .collect();
        self.local.clear();
        self.reads.clear();
        self.transfers.clear();
        for id in ids {
            self.events.push_back(Event::Done {
                request_id: id,
                result: Err(Error::Stopped),
            });
        }
    }

    fn set_peer(&mut self, id: u64, addr: Option<String>) {
        let changed = match &addr {
            Some(a) => self.peers.insert(id, a.clone()).as_ref() != Some(a),
            None => self.peers.remove(&id).is_some(),
        };
        if changed {
            self.events.push_back(Event::PeerAddr { id, addr });
        }
    }
}

/// 64-bit FNV-1a, used for replica comparison hashes (stable across runs and platforms).
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    /// A fresh hasher.
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    /// The hash.
    pub fn finish(self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Self::new()
    }
}
