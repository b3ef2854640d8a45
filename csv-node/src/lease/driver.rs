//! The per-node lease task. Node side: register (and recover holds of a previous
//! incarnation), renew on the guard's schedule with the send time read just before the
//! proposal, poll the guard so a lapse is noticed and logged at the deadline, feed every
//! answer back by ticket, act on hand-off requests and transfers that name this node.
//! Coordinator side (while this node leads): feed the tracker every applied lock command
//! with a clock reading taken after the apply, start it on leadership with the full
//! grace (§4.2), and propose the `ExpireNode` commands it says are due.

use std::sync::Arc;
use std::time::Duration;

use csv_api::{Generation, NodeId, VhdId};
use lock_manager::{
    Command as LockCommand, FenceEvent, LockState, Mode, NodeRecord, Outcome, Time,
};
use tokio::sync::mpsc;

use super::api::{propose_lock, propose_retry};
use super::clock::boottime;
use super::leases::Leases;
use crate::error::Coded as _;
use crate::meta::{LockEvent, Member};
use crate::state::locks::{LockQuery, LockReply};
use crate::state::types::{Query, QueryReply};

/// Pause before registering again after a failure.
const REGISTER_RETRY: Duration = Duration::from_millis(200);
/// How often the task checks that the node is still a member (and wakes at least).
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// Attempts to learn a hand-off's outcome with `Reclaim` before giving up (logged).
const RECLAIM_ATTEMPTS: u32 = 20;

impl Leases {
    /// Starts the lease driver of member `m` (once: the lock events have one reader).
    pub fn start_member(self: &std::sync::Arc<Self>, m: crate::meta::Member) {
        match crate::sync::lock(&self.lock_events).take() {
            Some(events) => self.tasks.spawn(run(self.clone(), m, events)),
            None => tracing::error!("lease task started twice"),
        }
    }
}

/// Runs the lease task of a member until the node stops being one; `obs` are the lock
/// commands this replica applies (the metadata layer's event hub).
async fn run(l: Arc<Leases>, m: Member, mut obs: mpsc::Receiver<LockEvent>) {
    let Some(mut results) = l.res_rx.lock().ok().and_then(|mut r| r.take()) else {
        tracing::error!("lease task started twice");
        return;
    };
    let mut leadership = m.meta.leadership();
    // Leading already (a single-node cluster elects itself at once): start tracking now,
    // `changed()` only reports later changes.
    let leading = leadership.borrow_and_update().is_self;
    if leading {
        on_leadership(&l, &m, true).await;
    }
    let (reg_tx, mut reg_rx) = mpsc::channel::<Outcome>(1);
    let mut registering = false;
    tracing::info!(timing = ?l.timing, "lease task running");
    loop {
        if l.is_stopping() {
            tracing::info!("leaving: lease task stops");
            return;
        }
        if l.tasks.is_stopping() {
            return;
        }
        if l.guard().needs_register() && !registering {
            registering = true;
            l.tasks
                .spawn(register(l.clone(), m.clone(), reg_tx.clone()));
        }
        let now = boottime();
        let events = l.guard().poll(now);
        follow_up(&l, &m, events);
        let renewal = l.guard().poll_renewal(now);
        if let Some(req) = renewal {
            // The send time the guard recorded is `now`, read before the proposal.
            let tx = l.res_tx.clone();
            let m2 = m.clone();
            let t = l.timing.node_lease;
            let metrics = l.metrics.clone();
            l.tasks.spawn(async move {
                let sent = std::time::Instant::now();
                let r = propose_lock(&m2, req.command.clone(), t).await;
                let lease = &metrics.lease;
                let result = match &r {
                    Ok(Ok(_)) => {
                        lease.renewal_lag.observe(sent.elapsed());
                        "confirmed"
                    }
                    Ok(Err(_)) => "refused",
                    Err(_) => "unanswered",
                };
                lease
                    .renewals
                    .get_or_create(&crate::metrics::ResultLabel { result })
                    .inc();
                match r {
                    Ok(r) => {
                        let _ = tx.send((req.ticket, r)).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "renewal unanswered; the guard retries"),
                }
            });
        }
        l.feed_watchdog();
        let due = l.tracker().due(now);
        for cmd in due {
            tracing::warn!(command = ?cmd, "node lease expired: proposing its expiry");
            let m2 = m.clone();
            l.tasks.spawn(async move {
                // The result reaches the tracker through the applied-command tap.
                if let Err(e) = propose_lock(&m2, cmd, Duration::ZERO).await {
                    tracing::debug!(error = %e, "expiry proposal failed; the tracker re-issues it");
                }
            });
        }
        let wake = [l.guard().next_wakeup(), l.tracker().next_wakeup()]
            .into_iter()
            .flatten()
            .min()
            .map_or(IDLE_WAKE, |t| t.saturating_since(now))
            .min(IDLE_WAKE);
        tokio::select! {
            Some(o) = obs.recv() => {
                on_observed(&l, &m, o);
                // Drain what else is queued before the next timing pass.
                while let Ok(o) = obs.try_recv() {
                    on_observed(&l, &m, o);
                }
            }
            Some((ticket, r)) = results.recv() => {
                let events = l.guard().on_result(ticket, &r, boottime());
                follow_up(&l, &m, events);
            }
            Some(outcome) = reg_rx.recv() => {
                registering = false;
                registered(&l, &m, &outcome).await;
            }
            r = leadership.changed() => {
                if r.is_err() {
                    tracing::info!("not a member any more: lease task stops");
                    return;
                }
                let is_self = leadership.borrow_and_update().is_self;
                on_leadership(&l, &m, is_self).await;
            }
            _ = l.stop.notified() => {}
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

fn follow_up(l: &Arc<Leases>, m: &Member, events: Vec<FenceEvent>) {
    let failed: Vec<VhdId> = events
        .iter()
        .filter_map(|e| match e {
            FenceEvent::HandoffFailed { vhd } => Some(*vhd),
            _ => None,
        })
        .collect();
    for req in l.note_events(events) {
        l.spawn_request(m.clone(), req);
    }
    for vhd in failed {
        l.tasks.spawn(reclaim(l.clone(), m.clone(), vhd));
    }
}

async fn register(l: Arc<Leases>, m: Member, tx: mpsc::Sender<Outcome>) {
    loop {
        let cmd = l.guard().register_command();
        match propose_lock(&m, cmd, Duration::ZERO).await {
            Ok(Ok(o)) => {
                let _ = tx.send(o).await;
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lock-manager registration refused"),
            Err(e) if e.code() == csv_api::ErrorCode::Stopped => return,
            Err(e) => tracing::debug!(error = %e, "lock-manager registration pending"),
        }
        tokio::time::sleep(REGISTER_RETRY).await;
    }
}

/// After registration: a restarted node voids its previous incarnation's holds
/// (reclaims write holds under a new generation, releases read holds; §4.3).
async fn registered(l: &Arc<Leases>, m: &Member, outcome: &Outcome) {
    let events = l.guard().on_registered(outcome);
    follow_up(l, m, events);
    if let Outcome::Registered { epoch, created, .. } = outcome {
        tracing::info!(epoch = epoch.0, created, "registered with the lock manager");
    }
    let holds = match m
        .query(Query::Locks(LockQuery::HoldsOf { node: l.node }))
        .await
    {
        Ok(QueryReply::Locks(LockReply::Holds { holds })) => holds,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this node's holds; none recovered");
            Vec::new()
        }
    };
    // A node registered for the first time had no earlier incarnation: nothing of it
    // can be in flight, so its writes need not wait (030 §4.3).
    if matches!(outcome, Outcome::Registered { created: true, .. }) && holds.is_empty() {
        return;
    }
    if !holds.is_empty() {
        tracing::info!(
            holds = holds.len(),
            "recovering the holds of the previous incarnation"
        );
    }
    let reqs = l.guard().recover(&holds, boottime());
    for req in reqs {
        l.spawn_request(m.clone(), req);
    }
}

async fn on_leadership(l: &Arc<Leases>, m: &Member, is_self: bool) {
    if !is_self {
        if l.tracker().is_leader() {
            tracing::info!("no longer coordinator: liveness tracking stops");
        }
        l.tracker().on_leadership_lost();
        return;
    }
    if l.tracker().is_leader() {
        return;
    }
    let nodes = match m.query_local(Query::Locks(LockQuery::Nodes)).await {
        Ok(QueryReply::Locks(LockReply::Nodes { nodes })) => nodes,
        other => {
            tracing::warn!(?other, "cannot read node records; tracking starts empty");
            Vec::new()
        }
    };
    let records = nodes.iter().map(|v| {
        (
            v.node,
            NodeRecord {
                epoch: v.epoch,
                status: v.status,
                renewals: v.renewals,
            },
        )
    });
    match LockState::from_parts(Generation(1), records, []) {
        Ok(state) => {
            // Read after the query: every renewal in `state` was sent before it (§4.2).
            let now = boottime();
            l.tracker().on_leadership(&state, now);
            tracing::info!(
                nodes = nodes.len(),
                grace_ms = l.timing.expiry_wait.as_millis() as u64,
                "coordinator: liveness tracking starts with the full grace"
            );
        }
        Err(e) => tracing::error!(error = %e, "node records refused; tracking not started"),
    }
}

fn on_observed(l: &Arc<Leases>, m: &Member, o: LockEvent) {
    let now: Time = boottime();
    l.tracker().observe(&o.command, &o.result, now);
    l.applied.notify_waiters();
    let me = l.node;
    match (&o.command, &o.result) {
        (
            _,
            Ok(Outcome::TransferRequested {
                vhd,
                from,
                to,
                to_epoch,
                generation,
                ..
            }),
        ) => {
            if *to == me {
                l.guard().expect_transfer(*vhd, *generation);
            }
            if *from == me {
                l.tasks.spawn(handoff(
                    l.clone(),
                    m.clone(),
                    *vhd,
                    *to,
                    *to_epoch,
                    *generation,
                ));
            }
        }
        (LockCommand::Transfer { .. }, Ok(granted @ Outcome::Granted { node, .. }))
            if *node == me =>
        {
            let events = l.guard().on_transfer_in(granted);
            if events.is_empty() {
                tracing::info!(?granted, "write hold transferred to this node");
            }
            follow_up(l, m, events);
        }
        _ => {}
    }
}

/// The source side of a cooperative hand-off: the data path lets the VHD go (flush,
/// stop writing: `Leases::let_go`), close the
/// fence, propose `Transfer` with the generation held; on refusal or an unknown outcome,
/// learn it with `Reclaim` (§6).
async fn handoff(
    l: Arc<Leases>,
    m: Member,
    vhd: VhdId,
    to: NodeId,
    to_epoch: csv_api::Epoch,
    generation: Generation,
) {
    let held = l
        .guard()
        .hold(vhd)
        .is_some_and(|h| h.mode == Mode::Write && h.generation == generation && !h.handing_off);
    if !held {
        tracing::info!(%vhd, %generation, "hand-off request for a hold this node does not have");
        return;
    }
    let started = std::time::Instant::now();
    if let Err(e) = l.let_go(vhd).await {
        tracing::warn!(%vhd, error = %e, "the data path did not let the VHD go; it stays here");
        return;
    }
    let req = match l.guard().begin_handoff(vhd, to, to_epoch) {
        Ok(r) => r,
        Err(d) => {
            tracing::info!(%vhd, reason = %d, "hand-off not started");
            return;
        }
    };
    match propose_retry(&m, req.command.clone()).await {
        Ok(res) => {
            let ok = matches!(res, Ok(Outcome::Granted { .. }));
            let events = l.guard().on_result(req.ticket, &res, boottime());
            follow_up(&l, &m, events);
            if ok {
                tracing::info!(%vhd, %to, took_us = started.elapsed().as_micros() as u64, "handed off");
            }
        }
        Err(e) => {
            tracing::warn!(%vhd, error = %e, "hand-off outcome unknown; reclaiming to learn it");
            reclaim(l, m, vhd).await;
        }
    }
}

/// Learns a failed or unanswered hand-off's outcome: `Reclaim` either renumbers the
/// hold (fence reopens) or is refused (the hand-off happened; the hold is dropped).
async fn reclaim(l: Arc<Leases>, m: Member, vhd: VhdId) {
    for attempt in 0..RECLAIM_ATTEMPTS {
        let Some(req) = l.guard().reclaim(vhd) else {
            return;
        };
        match propose_retry(&m, req.command.clone()).await {
            Ok(res) => {
                let events = l.guard().on_result(req.ticket, &res, boottime());
                for f in l.note_events(events) {
                    l.spawn_request(m.clone(), f);
                }
                tracing::info!(%vhd, result = ?res.as_ref().map(|_| ()), "hand-off outcome learned by reclaim");
                return;
            }
            Err(e) => {
                tracing::warn!(%vhd, attempt, error = %e, "reclaim unanswered; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    tracing::error!(%vhd, "hand-off outcome still unknown: the fence stays closed");
}
