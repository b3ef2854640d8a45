//! The async shell around [`Core`]: a dedicated thread owns the core (so RocksDB's
//! blocking writes and fsyncs never run on the tokio reactor of the caller), runs a
//! current-thread runtime for its tick timer and queues, and batches every queued input
//! into one Ready. [`MetaHandle`] is the cloneable async API.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::core::{Core, Event, MemberChange, Response, Status};
use crate::engine::{KvEngine, RocksEngine};
use crate::error::Error;
use crate::state_machine::StateMachine;
use crate::transport::{Inbox, Transport};
use crate::wire::{Envelope, Membership};

/// Extra wait beyond a request's own deadline before the handle gives up on the driver
/// (which always answers by the deadline unless it is stuck).
const DRIVER_GRACE: Duration = Duration::from_secs(2);
/// A Ready pass slower than this is logged: it delays heartbeats and votes.
const SLOW_READY: Duration = Duration::from_millis(200);

type Reply<T> = oneshot::Sender<Result<T, Error>>;

enum Request {
    Propose(Vec<u8>, Duration, Reply<Vec<u8>>),
    Membership(Vec<MemberChange>, Duration, Reply<Membership>),
    Read(Option<Vec<u8>>, Duration, Reply<(u64, Option<Vec<u8>>)>),
    LocalQuery(Vec<u8>, Reply<Vec<u8>>),
    Transfer(u64, Duration, Reply<()>),
    Status(Reply<Status>),
    Hashes(Reply<Hashes>),
    Shutdown(oneshot::Sender<()>),
}

enum Waiter {
    Propose(Reply<Vec<u8>>),
    Membership(Reply<Membership>),
    Read(Reply<(u64, Option<Vec<u8>>)>),
    Transfer(Reply<()>),
}

/// Who leads, as this node sees it; published on every change (see
/// [`MetaHandle::leadership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The leader (the coordinator), if one is known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// True when this node is the leader.
    pub is_self: bool,
}

/// Replica fingerprints for tests: equal on replicas at equal applied index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashes {
    /// Applied index.
    pub applied: u64,
    /// The state machine's own hash, when it provides one.
    pub state_machine: Option<u64>,
    /// Hash of the persisted state-machine data and address book.
    pub persisted: u64,
}

/// Starts metadata nodes.
#[derive(Debug)]
pub struct MetaNode;

impl MetaNode {
    /// Opens (or creates) the RocksDB store in `data_dir` and starts the node.
    pub async fn start<S: StateMachine>(
        config: Config,
        data_dir: &Path,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<MetaHandle, Error> {
        let dir = data_dir.to_path_buf();
        let engine = tokio::task::spawn_blocking(move || RocksEngine::open(&dir))
            .await
            .map_err(|e| Error::Storage(format!("open store: {e}")))??;
        Self::start_with_engine(config, engine, sm, transport).await
    }

    /// Starts a node on any engine.
    pub async fn start_with_engine<E: KvEngine, S: StateMachine>(
        config: Config,
        engine: E,
        sm: S,
        transport: Arc<dyn Transport>,
    ) -> Result<MetaHandle, Error> {
        config.validate()?;
        let id = config.id;
        let timeouts = (
            config.propose_timeout,
            config.read_timeout,
            config.admin_timeout,
        );
        let (req_tx, req_rx) = mpsc::channel(config.limits.request_queue_capacity);
        let (inbox, inbox_rx) = Inbox::new(config.limits.inbox_capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let (lead_tx, lead_rx) = watch::channel(Leadership::default());
        let t2 = transport.clone();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(40);
        std::thread::Builder::new()
            .name(format!("meta-node-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::Storage(format!("driver runtime: {e}"))));
                        return;
                    }
                };
                let logger = crate::slog_bridge::raft_logger();
                let core = match Core::new(config, engine, sm, seed, &logger) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                rt.block_on(drive(core, req_rx, inbox_rx, t2, lead_tx));
            })
            .map_err(|e| Error::Storage(format!("spawn driver thread: {e}")))?;
        ready_rx.await.map_err(|_| Error::Stopped)??;
        transport.attach(inbox);
        Ok(MetaHandle {
            id,
            tx: req_tx,
            transport,
            timeouts,
            leadership: lead_rx,
        })
    }
}

async fn drive<E: KvEngine, S: StateMachine>(
    mut core: Core<E, S>,
    mut req_rx: mpsc::Receiver<Request>,
    mut inbox_rx: mpsc::Receiver<Envelope>,
    transport: Arc<dyn Transport>,
    leadership: watch::Sender<Leadership>,
) {
    let mut waiters: HashMap<u64, Waiter> = HashMap::new();
    let mut interval = tokio::time::interval(core.config().tick_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max_batch = core.config().limits.max_batch;
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    // Events emitted while opening (the address book) go to the transport first.
    dispatch(&mut core, &mut waiters, transport.as_ref());
    loop {
        tokio::select! {
            biased;
            _ = interval.tick() => core.tick(),
            r = req_rx.recv() => match r {
                Some(req) => shutdown = handle(&mut core, &mut waiters, req),
                None => break,
            },
            Some(env) = inbox_rx.recv() => core.step(env),
        }
        // Everything already queued joins this Ready: one fsync for all of it.
        let mut n = 0;
        while shutdown.is_none() && n < max_batch {
            match req_rx.try_recv() {
                Ok(req) => shutdown = handle(&mut core, &mut waiters, req),
                Err(_) => break,
            }
            n += 1;
        }
        let mut m = 0;
        while m < max_batch {
            match inbox_rx.try_recv() {
                Ok(env) => core.step(env),
                Err(_) => break,
            }
            m += 1;
        }
        if shutdown.is_some() {
            break;
        }
        let started = std::time::Instant::now();
        core.process_ready();
        let took = started.elapsed();
        if took > SLOW_READY {
            tracing::warn!(
                node = core.id(),
                ?took,
                "slow Ready pass (storage stalled?)"
            );
        }
        dispatch(&mut core, &mut waiters, transport.as_ref());
        let now = Leadership {
            leader: (core.leader() != 0).then_some(core.leader()),
            term: core.term(),
            is_self: core.leader() == core.id(),
        };
        leadership.send_if_modified(|l| {
            let changed = *l != now;
            *l = now;
            changed
        });
        if core.failure().is_some() {
            break;
        }
    }
    for (_, w) in waiters.drain() {
        fail(w, Error::Stopped);
    }
    drop(core);
    transport.shutdown();
    if let Some(tx) = shutdown {
        let _ = tx.send(());
    }
}

fn fail(w: Waiter, e: Error) {
    match w {
        Waiter::Propose(tx) => drop(tx.send(Err(e))),
        Waiter::Membership(tx) => drop(tx.send(Err(e))),
        Waiter::Read(tx) => drop(tx.send(Err(e))),
        Waiter::Transfer(tx) => drop(tx.send(Err(e))),
    }
}

fn handle<E: KvEngine, S: StateMachine>(
    core: &mut Core<E, S>,
    waiters: &mut HashMap<u64, Waiter>,
    req: Request,
) -> Option<oneshot::Sender<()>> {
    match req {
        Request::Propose(cmd, t, tx) => {
            let id = core.propose(cmd, Some(t));
            waiters.insert(id, Waiter::Propose(tx));
        }
        Request::Membership(changes, t, tx) => {
            let id = core.change_membership(&changes, Some(t));
            waiters.insert(id, Waiter::Membership(tx));
        }
        Request::Read(q, t, tx) => {
            let id = core.read(q, Some(t));
            waiters.insert(id, Waiter::Read(tx));
        }
        Request::Transfer(to, t, tx) => {
            let id = core.transfer_leader(to, Some(t));
            waiters.insert(id, Waiter::Transfer(tx));
        }
        Request::LocalQuery(q, tx) => {
            let _ = tx.send(Ok(core.state_machine().query(&q)));
        }
        Request::Status(tx) => {
            let _ = tx.send(Ok(core.status()));
        }
        Request::Hashes(tx) => {
            let r = core.persisted_hash().map(|persisted| Hashes {
                applied: core.applied_index(),
                state_machine: core.state_machine().state_hash(),
                persisted,
            });
            let _ = tx.send(r);
        }
        Request::Shutdown(tx) => return Some(tx),
    }
    None
}

fn dispatch<E: KvEngine, S: StateMachine>(
    core: &mut Core<E, S>,
    waiters: &mut HashMap<u64, Waiter>,
    transport: &dyn Transport,
) {
    for env in core.take_outbox() {
        transport.send(env);
    }
    while let Some(ev) = core.next_event() {
        match ev {
            Event::PeerAddr { id, addr } => transport.set_peer(id, addr),
            Event::Done { request_id, result } => {
                let Some(w) = waiters.remove(&request_id) else {
                    continue;
                };
                match (w, result) {
                    (w, Err(e)) => fail(w, e),
                    (Waiter::Propose(tx), Ok(Response::Applied(v))) => drop(tx.send(Ok(v))),
                    (Waiter::Membership(tx), Ok(Response::Membership(m))) => drop(tx.send(Ok(m))),
                    (Waiter::Read(tx), Ok(Response::Read { index, value })) => {
                        drop(tx.send(Ok((index, value))))
                    }
                    (Waiter::Transfer(tx), Ok(Response::Transferred)) => drop(tx.send(Ok(()))),
                    (w, Ok(other)) => {
                        tracing::error!(?other, "response does not match the request");
                        fail(w, Error::Malformed("mismatched response".into()));
                    }
                }
            }
        }
    }
}

/// Cloneable async handle to a running metadata node.
#[derive(Clone)]
pub struct MetaHandle {
    id: u64,
    tx: mpsc::Sender<Request>,
    transport: Arc<dyn Transport>,
    /// Default deadlines from the config: propose, read, admin.
    timeouts: (Duration, Duration, Duration),
    leadership: watch::Receiver<Leadership>,
}

impl std::fmt::Debug for MetaHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaHandle").field("id", &self.id).finish()
    }
}

impl MetaHandle {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
        deadline: Duration,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        let fut = async {
            self.tx.send(make(tx)).await.map_err(|_| Error::Stopped)?;
            rx.await.map_err(|_| Error::Stopped)?
        };
        tokio::time::timeout(deadline + DRIVER_GRACE, fut)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Proposes `command` with the configured default deadline; returns the state
    /// machine's apply result. On a follower the command is forwarded to the leader.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.propose_with_timeout(command, Duration::ZERO).await
    }

    /// [`MetaHandle::propose`] with an explicit deadline (`Duration::ZERO`: the default).
    pub async fn propose_with_timeout(
        &self,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, Error> {
        let t = self.effective(timeout, Defaults::Propose);
        self.call(|tx| Request::Propose(command, t, tx), t).await
    }

    /// Applies membership changes (several at once use joint consensus).
    pub async fn change_membership(&self, changes: Vec<MemberChange>) -> Result<Membership, Error> {
        let t = self.effective(Duration::ZERO, Defaults::Admin);
        self.call(|tx| Request::Membership(changes, t, tx), t).await
    }

    /// Adds a learner.
    pub async fn add_learner(&self, id: u64, addr: impl Into<String>) -> Result<Membership, Error> {
        self.change_membership(vec![MemberChange::AddLearner {
            id,
            addr: addr.into(),
        }])
        .await
    }

    /// Adds a voter directly (adding a learner and promoting it is gentler).
    pub async fn add_voter(&self, id: u64, addr: impl Into<String>) -> Result<Membership, Error> {
        self.change_membership(vec![MemberChange::AddVoter {
            id,
            addr: addr.into(),
        }])
        .await
    }

    /// Promotes a learner to voter.
    pub async fn promote_learner(&self, id: u64) -> Result<Membership, Error> {
        self.change_membership(vec![MemberChange::Promote { id }])
            .await
    }

    /// Removes a voter or learner.
    pub async fn remove_node(&self, id: u64) -> Result<Membership, Error> {
        self.change_membership(vec![MemberChange::Remove { id }])
            .await
    }

    /// Linearizable read barrier: returns the read index once this node has applied it.
    pub async fn read_index(&self) -> Result<u64, Error> {
        let t = self.effective(Duration::ZERO, Defaults::Read);
        self.call(|tx| Request::Read(None, t, tx), t)
            .await
            .map(|(i, _)| i)
    }

    /// Linearizable query of the state machine.
    pub async fn query(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        let t = self.effective(Duration::ZERO, Defaults::Read);
        let (_, v) = self.call(|tx| Request::Read(Some(query), t, tx), t).await?;
        v.ok_or_else(|| Error::Malformed("read without a value".into()))
    }

    /// Query of this node's state machine as applied now (may be stale).
    pub async fn query_local(&self, query: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.call(|tx| Request::LocalQuery(query, tx), Duration::from_secs(5))
            .await
    }

    /// Moves the leadership to voter `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), Error> {
        let t = self.effective(Duration::ZERO, Defaults::Admin);
        self.call(|tx| Request::Transfer(to, t, tx), t).await
    }

    /// Leadership as this node sees it, updated whenever leader or term change (the
    /// coordinator's duties start and stop on `is_self`).
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, Error> {
        self.call(Request::Status, Duration::from_secs(5)).await
    }

    /// Replica fingerprints (tests).
    pub async fn hashes(&self) -> Result<Hashes, Error> {
        self.call(Request::Hashes, Duration::from_secs(5)).await
    }

    /// Stops the node at once (nothing is flushed beyond what every write already made
    /// durable) and closes its transport.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
        }
        self.transport.shutdown();
    }

    fn effective(&self, t: Duration, d: Defaults) -> Duration {
        if !t.is_zero() {
            return t;
        }
        match d {
            Defaults::Propose => self.timeouts.0,
            Defaults::Read => self.timeouts.1,
            Defaults::Admin => self.timeouts.2,
        }
    }
}

enum Defaults {
    Propose,
    Read,
    Admin,
}
