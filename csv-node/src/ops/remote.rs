//! `vhd attach NAME --node N` and `vhd detach NAME --node N` asked on a node other than
//! N (docs/design/040 §6.1). Nodes talk only through the Raft log, so:
//!
//! * the asking node records a request (`RemoteCommand::Request`, a random id) and waits,
//!   up to [`REMOTE_TIMEOUT`], until its own replica applied the outcome; on timeout it
//!   cancels the request (a pending one then never runs) and says where it stands;
//! * node N's executor ([`run`]) wakes on every applied remote command (the [`Tapped`]
//!   state machine) and every [`SWEEP`], claims each pending request addressed to it,
//!   runs the same attach/detach as a local request, and records the outcome;
//! * the asker deletes the record once read (`Forget`); the state keeps at most
//!   `MAX_REMOTE_RECORDS`, evicting the oldest finished ones.
//!
//! A request claimed by a previous incarnation of N (crash between claim and outcome) is
//! run again: attach is idempotent, and a detach of a VHD no longer attached there counts
//! as done. An outcome the state refuses (the request was failed meanwhile because N
//! expired) makes N undo an attach it made, so no attachment exists that nobody was told
//! of.

use std::sync::Arc;
use std::time::Duration;

use csv_api::admin::volume::{Attachment, VhdAttach, VhdDetach};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId};
use tracing::Instrument;

use super::core::Ops;
use super::error::OpsError;
use crate::error::Coded as _;
use crate::meta::{Member, Retry, unexpected};
use crate::state::remote::{
    RemoteAction, RemoteAttachment, RemoteCommand, RemoteOutcome, RemoteQuery, RemoteRecord,
    RemoteReply, RemoteState,
};
use crate::state::types::{Command, Query, QueryReply, Reply};
use crate::sync::lock;
use crate::task::Tasks;

/// Longest the asking node waits for the target's outcome (under the admin client's
/// 120 s request timeout; above the default outage budget, so a target killed just
/// before the request is usually answered `unavailable` by its expiry first).
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the executor looks for requests even without a wake-up (a missed one,
/// a restart, an outcome that could not be recorded).
pub const SWEEP: Duration = Duration::from_secs(1);
/// How long the executor retries a local attach/detach that failed for a passing
/// reason (lease not registered yet after a start, no coordinator for a moment).
pub const EXECUTE_PATIENCE: Duration = Duration::from_secs(20);
/// Pause between those retries.
const EXECUTE_RETRY: Duration = Duration::from_millis(500);
/// Most requests the executor runs at once (each attach/detach serialises on the
/// attachment lock anyway; this bounds the tasks).
pub const MAX_RUNNING: usize = 64;

/// Proposes a remote command. A failure of the log itself (no coordinator, a lost or
/// unknown outcome) is retried: every remote command is idempotent or refused on
/// repeat. The state machine's refusal is answered at once.
async fn propose_remote(m: &Member, cmd: RemoteCommand) -> Result<RemoteRecord, OpsError> {
    let cmd = Command::Remote { command: cmd };
    match m.propose_retrying(&cmd, Retry::REPEATABLE).await? {
        Reply::Remote { record } => Ok(record),
        _ => unexpected("a remote command"),
    }
}

/// A record as this replica applied it.
async fn local_record(m: &Member, id: u64) -> Result<Option<RemoteRecord>, OpsError> {
    match m
        .query_local(Query::Remote(RemoteQuery::Get { id }))
        .await?
    {
        QueryReply::Remote(RemoteReply::Record { record }) => Ok(record),
        _ => unexpected("a remote-request query"),
    }
}

/// The admin `Attachment` of an outcome the target reported.
fn attachment_of(rec: &RemoteRecord, a: &RemoteAttachment) -> Attachment {
    Attachment {
        name: rec.name.clone(),
        vhd: rec.vhd.0,
        node: rec.target.0,
        read_only: a.read_only,
        generation: a.generation,
        socket: a.socket.clone(),
        uri: a.uri.clone(),
        tcp: a.tcp.clone(),
        error: String::new(),
        path: String::new(),
    }
}

/// Errors after which the executor tries the local operation again (as the restore of
/// attachments after a restart does).
fn passing(code: ErrorCode) -> bool {
    code.is_transient() || code.is_outcome_unknown() || code == ErrorCode::Unavailable
}

impl Ops {
    /// `vhd attach`: on this node directly, or on `a.node` through the log.
    #[tracing::instrument(skip_all, fields(vhd = %a.name, target = a.node))]
    pub(crate) async fn attach_request(&self, a: VhdAttach) -> Result<Attachment, OpsError> {
        if a.node == 0 || a.node == self.id() {
            return Ok(self.data.attach(a).await?);
        }
        let action = RemoteAction::Attach {
            read_only: a.read_only,
        };
        let (rec, outcome) = self.ask(NodeId(a.node), &a.name, action).await?;
        match outcome {
            RemoteOutcome::Attached { attachment } => Ok(attachment_of(&rec, &attachment)),
            other => Err(self.outcome_error(&rec, other)),
        }
    }

    /// `vhd detach`: on this node directly, or on `r.node` through the log. A detach
    /// asked here of a VHD attached elsewhere names the nodes that hold it.
    #[tracing::instrument(skip_all, fields(vhd = %r.name, target = r.node))]
    pub(crate) async fn detach_request(&self, r: VhdDetach) -> Result<(), OpsError> {
        if r.node != 0 && r.node != self.id() {
            let (rec, outcome) = self
                .ask(NodeId(r.node), &r.name, RemoteAction::Detach)
                .await?;
            return match outcome {
                RemoteOutcome::Detached => Ok(()),
                other => Err(self.outcome_error(&rec, other)),
            };
        }
        match self.data.detach(&r.name).await {
            Err(e) if e.code() == ErrorCode::NotFound => {
                Err(self.held_elsewhere(&r.name, e.into()).await)
            }
            other => Ok(other?),
        }
    }

    /// Adds to a "not attached here" error which nodes hold the VHD, if any.
    async fn held_elsewhere(&self, name: &str, e: OpsError) -> OpsError {
        let Ok(rec) = self.data.vhd_by_name(name).await else {
            return e;
        };
        let Ok(m) = self.member().await else {
            return e;
        };
        let Ok(QueryReply::Owner { owner: Some(o) }) = m.query(Query::Owner { vhd: rec.id }).await
        else {
            return e;
        };
        let mut holders: Vec<String> = Vec::new();
        if let (Some(w), true) = (o.owner, o.owner_valid) {
            holders.push(format!("{w} (read-write)"));
        }
        for r in &o.readers {
            holders.push(format!("{} (read-only)", r.node));
        }
        let Some(first) = o
            .owner
            .filter(|_| o.owner_valid)
            .or_else(|| o.readers.first().map(|r| r.node))
        else {
            return e;
        };
        OpsError::HeldElsewhere {
            source: Box::new(e),
            holders: holders.join(", "),
            name: name.to_string(),
            node: first.0,
        }
    }

    fn outcome_error(&self, rec: &RemoteRecord, o: RemoteOutcome) -> OpsError {
        match o {
            RemoteOutcome::Failed { error } => {
                let t = rec.target.to_string();
                OpsError::Remote(ApiError {
                    code: error.code,
                    message: if error.message.contains(&t) {
                        error.message
                    } else {
                        format!("on {t}: {}", error.message)
                    },
                })
            }
            RemoteOutcome::Cancelled => OpsError::Timeout(format!(
                "{} did not take up the request within {REMOTE_TIMEOUT:?} (down, or far behind the log); it was cancelled: nothing was done on {}",
                rec.target, rec.name
            )),
            other => OpsError::Internal(format!("{}: unexpected outcome {other:?}", rec.target)),
        }
    }

    /// Records a request for `target` and waits for its outcome (or cancels it).
    async fn ask(
        &self,
        target: NodeId,
        name: &str,
        action: RemoteAction,
    ) -> Result<(RemoteRecord, RemoteOutcome), OpsError> {
        let m = self.member().await?;
        let id = uuid::Uuid::new_v4().as_u64_pair().0.max(1);
        let started = std::time::Instant::now();
        let rec = propose_remote(
            &m,
            RemoteCommand::Request {
                id,
                from: NodeId(self.id()),
                target,
                name: name.to_string(),
                action,
            },
        )
        .await;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                // Perhaps applied after all: cancel it, so it does not run unannounced.
                if matches!(e.code(), ErrorCode::Timeout | ErrorCode::Indeterminate) {
                    let m = m.clone();
                    self.tasks.spawn(async move {
                        let _ = propose_remote(&m, RemoteCommand::Cancel { id }).await;
                    });
                }
                return Err(e);
            }
        };
        tracing::info!(request_id = format_args!("{id:#x}"), %target, vhd = name, ?action, "remote request recorded");
        let deadline = tokio::time::Instant::now() + REMOTE_TIMEOUT;
        let mut last = rec;
        loop {
            let notified = self.meta.events().remote_changed().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = local_record(&m, id).await? {
                if let RemoteState::Done { outcome, .. } = &r.state {
                    let outcome = outcome.clone();
                    tracing::info!(request_id = format_args!("{id:#x}"), %target, ?outcome, took_ms = started.elapsed().as_millis() as u64, "remote request answered");
                    forget(&self.tasks, &m, id);
                    return Ok((r, outcome));
                }
                last = r;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let after = propose_remote(&m, RemoteCommand::Cancel { id }).await;
        match after {
            Ok(r) => match &r.state {
                RemoteState::Done { outcome, .. } => {
                    let outcome = outcome.clone();
                    forget(&self.tasks, &m, id);
                    Ok((r, outcome))
                }
                _ => Err(OpsError::Timeout(format!(
                    "{target} took up the request ({id:#x}) but did not finish it within {REMOTE_TIMEOUT:?}; it will finish it: see `csvadm volume status` on {target}"
                ))),
            },
            Err(e) => Err(OpsError::Timeout(format!(
                "{target} did not answer within {REMOTE_TIMEOUT:?} and the request ({id:#x}, {:?}) could not be cancelled ({e}): it may still run",
                last.state
            ))),
        }
    }
}

/// Deletes a read record in the background (best effort: the table is bounded anyway).
fn forget(tasks: &Tasks, m: &Member, id: u64) {
    let m = m.clone();
    tasks.spawn(async move {
        if let Err(e) = propose_remote(&m, RemoteCommand::Forget { id }).await {
            tracing::debug!(request_id = format_args!("{id:#x}"), error = %e, "remote request not forgotten (evicted later)");
        }
    });
}

impl Ops {
    /// Starts the tasks of a member: the executor of remote requests.
    pub fn start_member(self: &Arc<Self>, m: Member) {
        self.tasks.spawn(run(self.clone(), m));
    }
}

/// The executor: runs the requests addressed to this node until it stops being a member.
async fn run(d: Arc<Ops>, m: Member) {
    let me = NodeId(d.id());
    loop {
        if d.meta.try_member().await.is_none() {
            return;
        }
        let r = m
            .query_local(Query::Remote(RemoteQuery::PendingFor { node: me }))
            .await;
        let records = match r {
            Ok(QueryReply::Remote(RemoteReply::Records { records })) => records,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::debug!(error = %e, "remote requests not readable now");
                Vec::new()
            }
        };
        for rec in records {
            {
                let mut running = lock(&d.remote.running);
                if running.contains(&rec.id) || running.len() >= MAX_RUNNING {
                    continue;
                }
                running.insert(rec.id);
            }
            let (d2, m2) = (d.clone(), m.clone());
            let span = tracing::info_span!("remote_request", request_id = format_args!("{:#x}", rec.id), vhd = %rec.name);
            d.tasks.spawn(
                async move {
                    let id = rec.id;
                    execute(&d2, &m2, rec).await;
                    // Until this replica applied the outcome, the sweep would still see
                    // the request running and run it again (harmless, but wasted).
                    settle(&m2, id).await;
                    lock(&d2.remote.running).remove(&id);
                }
                .instrument(span),
            );
        }
        let _ = tokio::time::timeout(SWEEP, d.meta.events().remote_work().notified()).await;
    }
}

/// Longest the executor waits for its replica to apply a request's outcome.
const SETTLE: Duration = Duration::from_secs(5);

/// Waits (bounded) until this replica shows request `id` finished or gone.
async fn settle(m: &Member, id: u64) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    while tokio::time::Instant::now() < deadline {
        match local_record(m, id).await {
            Ok(Some(r)) if !r.is_done() => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

/// Claims (if pending), runs and reports one request.
async fn execute(d: &Ops, m: &Member, rec: RemoteRecord) {
    let id = rec.id;
    let again = rec.state == RemoteState::Running;
    if !again {
        match propose_remote(
            m,
            RemoteCommand::Claim {
                id,
                node: rec.target,
            },
        )
        .await
        {
            Ok(r) if r.state == RemoteState::Running => {}
            Ok(r) => {
                tracing::info!(request_id = format_args!("{id:#x}"), state = ?r.state, "remote request not claimed");
                return;
            }
            Err(e) => {
                // Cancelled or finished meanwhile (invalid_state), or no coordinator:
                // the sweep sees it again if it is still pending.
                tracing::info!(request_id = format_args!("{id:#x}"), error = %e, "remote request not claimed");
                return;
            }
        }
    }
    tracing::info!(request_id = format_args!("{id:#x}"), from = %rec.from, vhd = rec.name, action = ?rec.action, again, "running remote request");
    let outcome = perform(d, &rec, again).await;
    match propose_remote(
        m,
        RemoteCommand::Finish {
            id,
            node: rec.target,
            outcome: outcome.clone(),
        },
    )
    .await
    {
        Ok(_) => tracing::info!(
            id = format_args!("{id:#x}"),
            ?outcome,
            "remote request answered"
        ),
        Err(e) if e.code() == ErrorCode::InvalidState || e.code() == ErrorCode::NotFound => {
            // Finished otherwise meanwhile (this node expired or was removed): nobody
            // learns of an attachment made here, so it is undone.
            tracing::warn!(request_id = format_args!("{id:#x}"), error = %e, "remote outcome refused");
            if matches!(outcome, RemoteOutcome::Attached { .. })
                && let Err(e) = d.data.detach(&rec.name).await
            {
                tracing::warn!(vhd = rec.name, error = %e, "undoing an unreported attach failed");
            }
        }
        // Unknown: the request stays running and the sweep runs it again (idempotent).
        Err(e) => {
            tracing::warn!(request_id = format_args!("{id:#x}"), error = %e, "remote outcome not recorded; retried")
        }
    }
}

/// The local attach or detach, retried for a while on passing errors.
async fn perform(d: &Ops, rec: &RemoteRecord, again: bool) -> RemoteOutcome {
    let deadline = tokio::time::Instant::now() + EXECUTE_PATIENCE;
    loop {
        let r = match rec.action {
            RemoteAction::Attach { read_only } => d
                .data
                .attach(VhdAttach {
                    name: rec.name.clone(),
                    node: 0,
                    read_only,
                })
                .await
                .map(|a| RemoteOutcome::Attached {
                    attachment: RemoteAttachment {
                        read_only: a.read_only,
                        generation: a.generation,
                        socket: a.socket,
                        uri: a.uri,
                        tcp: a.tcp,
                    },
                }),
            RemoteAction::Detach => match d.data.detach(&rec.name).await {
                Ok(()) => Ok(RemoteOutcome::Detached),
                // Run again after a restart: the previous run may have detached it.
                Err(e) if again && e.code() == ErrorCode::NotFound => Ok(RemoteOutcome::Detached),
                Err(e) => Err(e),
            },
        };
        match r {
            Ok(o) => return o,
            Err(e) if passing(e.code()) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(vhd = rec.name, error = %e, "remote request waits");
                tokio::time::sleep(EXECUTE_RETRY).await;
            }
            // The outcome is replicated: the error as the wire carries it.
            Err(e) => {
                return RemoteOutcome::Failed {
                    error: crate::error::to_api(&e),
                };
            }
        }
    }
}
