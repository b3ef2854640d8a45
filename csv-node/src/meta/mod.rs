//! The node's metadata layer: membership of the metadata store (uninitialised, member,
//! removed; `cluster init`, joining a leader that added this node, removal) and the typed
//! client the other subsystems use ([`Member`]: commands and queries of the cluster state
//! machine, one retry policy), plus the subscriptions to applied commands
//! ([`events::EventHub`]). Design: docs/design/050-control-plane.md §4.

mod error;
pub mod events;
pub mod join;
mod lifecycle;
pub mod state_file;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csv_api::{ClusterId, ErrorCode};
use meta_store::{MetaHandle, TcpTransport};
use tokio::sync::{RwLock, watch};

use crate::config::NodeConfig;
use crate::error::Coded;
use crate::metrics::Metrics;
use crate::state::types::{Command, Query, QueryReply, Reply, decode_result};
use crate::task::Tasks;
pub use error::MetaError;
pub use events::{EventHub, LockEvent};

/// A running member: the metadata node and its transport.
#[derive(Clone)]
pub struct Member {
    pub cluster_id: ClusterId,
    pub meta: MetaHandle,
    pub transport: TcpTransport,
    /// Proposals are counted and timed here.
    pub metrics: Arc<Metrics>,
}

/// Where the node stands with the metadata store.
#[derive(Debug)]
pub enum Phase {
    Uninitialized,
    Member(Member),
    Removed(ClusterId),
    Stopping,
}

/// The wall clock in Unix milliseconds (recorded for operators, never decided on).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A metadata-store error.
pub fn meta_err(e: meta_store::Error) -> MetaError {
    MetaError::Store(e)
}

/// An unexpected state-machine reply (a bug, or a newer peer).
pub fn unexpected<T, E: From<MetaError>>(what: &'static str) -> Result<T, E> {
    Err(MetaError::Unexpected(what).into())
}

/// A state-machine answer: its reply, or its refusal.
fn answer<T: for<'de> serde::Deserialize<'de>>(bytes: &[u8]) -> Result<T, MetaError> {
    decode_result(bytes).map_err(MetaError::Refused)
}

/// When a failed metadata request is tried again: the one retry policy of the node's
/// metadata clients. Transient errors (`ErrorCode::is_transient`: not applied, the cause
/// passes) are retried; an unknown outcome (`ErrorCode::is_outcome_unknown`) only for a
/// repeatable request (idempotent, or refused on repeat by its epoch or generation).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub limit: Limit,
    pub pause: Duration,
    pub repeatable: bool,
}

/// How long a [`Retry`] keeps trying.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// Attempts in all (the first included).
    Attempts(u32),
    /// Until this long after the first attempt.
    Patience(Duration),
}

impl Retry {
    /// A few quick attempts of a repeatable command: a leader change, a full queue, a
    /// lost answer.
    pub const REPEATABLE: Retry = Retry {
        limit: Limit::Attempts(5),
        pause: Duration::from_millis(200),
        repeatable: true,
    };

    /// Whether an attempt that failed with `code` is tried again.
    pub fn retries(&self, code: ErrorCode) -> bool {
        code.is_transient() || (self.repeatable && code.is_outcome_unknown())
    }

    /// Runs `f` until it succeeds, fails with an error this policy does not retry, or
    /// the limit is reached (the last error is returned).
    pub async fn run<T, E, F, Fut>(self, mut f: F) -> Result<T, E>
    where
        E: Coded,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let start = tokio::time::Instant::now();
        let mut attempt = 1;
        loop {
            let r = f().await;
            let more = match self.limit {
                Limit::Attempts(n) => attempt < n,
                Limit::Patience(d) => start.elapsed() < d,
            };
            match r {
                Err(e) if more && self.retries(e.code()) => {
                    tracing::debug!(error = %e, attempt, "metadata request not applied yet; retrying");
                    attempt += 1;
                    tokio::time::sleep(self.pause).await;
                }
                r => return r,
            }
        }
    }
}

impl Member {
    /// Proposes encoded command bytes (`Duration::ZERO`: the store's default deadline)
    /// and returns the state machine's encoded answer: the one way this node proposes,
    /// counted and timed in the metrics.
    pub async fn propose_bytes(
        &self,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, meta_store::Error> {
        let start = std::time::Instant::now();
        let r = self.meta.propose_with_timeout(bytes, timeout).await;
        self.metrics.proposal(r.is_ok(), start.elapsed());
        r
    }

    /// Proposes `cmd` and waits for its reply.
    pub async fn propose(&self, cmd: Command) -> Result<Reply, MetaError> {
        let r = self.propose_bytes(cmd.encode(), Duration::ZERO).await?;
        answer(&r)
    }

    /// Proposes `cmd` under `retry`.
    pub async fn propose_retrying(&self, cmd: &Command, retry: Retry) -> Result<Reply, MetaError> {
        let bytes = cmd.encode();
        retry
            .run(|| async {
                let r = self.propose_bytes(bytes.clone(), Duration::ZERO).await?;
                answer(&r)
            })
            .await
    }

    /// A linearizable query.
    pub async fn query(&self, q: Query) -> Result<QueryReply, MetaError> {
        let r = self.meta.query(q.encode()).await?;
        answer(&r)
    }

    /// A query of this replica's applied state (may lag the leader).
    pub async fn query_local(&self, q: Query) -> Result<QueryReply, MetaError> {
        let r = self.meta.query_local(q.encode()).await?;
        answer(&r)
    }
}

/// The metadata layer of one node.
pub struct Meta {
    cfg: Arc<NodeConfig>,
    metrics: Arc<Metrics>,
    phase: RwLock<Phase>,
    events: Arc<EventHub>,
    join_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    members: watch::Sender<Option<Member>>,
    tasks: Tasks,
}

impl Meta {
    pub fn new(cfg: Arc<NodeConfig>, metrics: Arc<Metrics>, tasks: Tasks) -> Meta {
        Meta {
            cfg,
            metrics,
            phase: RwLock::new(Phase::Uninitialized),
            events: Arc::default(),
            join_task: Mutex::new(None),
            members: watch::Sender::new(None),
            tasks,
        }
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.cfg.node.id
    }

    /// The node's metrics (the layers above update theirs through it).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn events(&self) -> &Arc<EventHub> {
        &self.events
    }

    /// The member handles, or the error that says why there are none.
    pub async fn member(&self) -> Result<Member, MetaError> {
        match &*self.phase.read().await {
            Phase::Member(m) => Ok(m.clone()),
            Phase::Uninitialized => Err(MetaError::NotMember),
            Phase::Removed(_) => Err(MetaError::Removed),
            Phase::Stopping => Err(MetaError::Stopping),
        }
    }

    /// The member handles when this node is a member now.
    pub async fn try_member(&self) -> Option<Member> {
        match &*self.phase.read().await {
            Phase::Member(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// The phase, for status reports.
    pub async fn phase(&self) -> tokio::sync::RwLockReadGuard<'_, Phase> {
        self.phase.read().await
    }

    /// Sees every metadata store this node starts (the node starts its member tasks).
    pub fn subscribe_members(&self) -> watch::Receiver<Option<Member>> {
        self.members.subscribe()
    }
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("node", &self.cfg.node.id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("cluster", &self.cluster_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_follows_the_codes_and_the_limit() {
        let fail = |code| csv_api::error::ApiError::new(code, "x");
        let quick = Retry {
            pause: Duration::from_millis(1),
            ..Retry::REPEATABLE
        };
        let mut n = 0;
        let r: Result<(), _> = quick
            .run(|| {
                n += 1;
                std::future::ready(Err(fail(ErrorCode::NoLeader)))
            })
            .await;
        assert_eq!((r.map_err(|e| e.code()), n), (Err(ErrorCode::NoLeader), 5));
        let once = Retry {
            repeatable: false,
            ..quick
        };
        let mut n = 0;
        let _ = once
            .run(|| {
                n += 1;
                std::future::ready(Err::<(), _>(fail(ErrorCode::Timeout)))
            })
            .await;
        assert_eq!(
            n, 1,
            "an unknown outcome is not repeated for a one-shot command"
        );
        let mut n = 0;
        let r = quick
            .run(|| {
                n += 1;
                std::future::ready(if n < 3 {
                    Err(fail(ErrorCode::Timeout))
                } else {
                    Ok(n)
                })
            })
            .await;
        assert_eq!(r.ok(), Some(3));
        let mut n = 0;
        let _ = quick
            .run(|| {
                n += 1;
                std::future::ready(Err::<(), _>(fail(ErrorCode::NotFound)))
            })
            .await;
        assert_eq!(n, 1, "a refusal is final");
    }
}
