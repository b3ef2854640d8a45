//! What the rest of the node asks of the lease machinery: take and drop holds
//! (`Leases::acquire`, `Leases::release`), leave the cluster at a graceful stop, move a VHD's write hold to another node
//! (`owner move`), and the per-hold [`volume::WriteFence`] the data path checks right
//! before every LUN write.

use std::sync::Arc;
use std::time::Duration;

use csv_api::{Generation, NodeId, VhdId};
use lock_manager::{Command as LockCommand, LockError, Mode, Outcome, OwnerView};

use super::clock::boottime;
use super::error::LeaseError;
use super::leases::{Leases, LockResult};
use crate::meta::{Limit, Member, Meta, MetaError, Retry, unexpected};
use crate::state::event::lock_result;
use crate::state::types::{Command, Query, QueryReply, Reply, decode_result};

/// Lock proposals whose outcome is unknown (timeout, leader change) are tried five
/// times, 100 ms apart, before the caller gets the error.
const LOCK_RETRY: Retry = Retry {
    limit: Limit::Attempts(5),
    pause: Duration::from_millis(100),
    repeatable: true,
};
/// Longest `owner move` waits for the owner to hand the VHD off.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(15);

/// A hold the data path got from `Leases::acquire`.
#[derive(Debug, Clone)]
pub struct VhdHold {
    pub vhd: VhdId,
    /// The hold's generation (the fencing token of a write hold).
    pub generation: Generation,
    /// Answers, at each call, whether this node may still write the VHD at
    /// `generation` (the fence guard's `check_write` with a fresh clock reading).
    pub fence: Arc<dyn volume::WriteFence>,
}

/// The fence of one write hold: the guard's answer for (vhd, generation) at "now".
struct HoldFence {
    leases: Arc<Leases>,
    vhd: VhdId,
    generation: Generation,
}

impl std::fmt::Debug for HoldFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldFence")
            .field("vhd", &self.vhd)
            .field("generation", &self.generation)
            .finish()
    }
}

impl volume::WriteFence for HoldFence {
    fn writer(&self) -> Option<volume::Writer> {
        Some(volume::Writer {
            vhd: self.vhd.0,
            node: self.leases.node().0,
            generation: self.generation.0,
        })
    }

    fn check(&self) -> Result<(), volume::FenceError> {
        let g = self.leases.guard();
        g.check_write(self.vhd, self.generation, boottime())
            .map_err(|d| {
                volume::FenceError(format!("fenced: {} at {}: {d}", self.vhd, self.generation))
            })
    }

    /// Reads need the hold (any mode, this generation) under a live lease: a node whose
    /// hold was lost must not read extents that may belong to another VHD by now.
    fn check_read(&self) -> Result<(), volume::FenceError> {
        let g = self.leases.guard();
        match g.hold(self.vhd) {
            Some(h) if h.generation == self.generation => {}
            Some(h) => {
                return Err(volume::FenceError(format!(
                    "fenced: {} is held at {}, not {}",
                    self.vhd, h.generation, self.generation
                )));
            }
            None => {
                return Err(volume::FenceError(format!(
                    "fenced: {} is not held by this node",
                    self.vhd
                )));
            }
        }
        g.check_read(self.vhd, boottime()).map_err(|d| {
            volume::FenceError(format!("fenced: {} at {}: {d}", self.vhd, self.generation))
        })
    }
}

/// Proposes one lock command; the outer error is an unknown outcome or no cluster, the
/// inner one the state machine's typed refusal.
pub async fn propose_lock(
    m: &Member,
    cmd: LockCommand,
    timeout: Duration,
) -> Result<LockResult, MetaError> {
    let r = m
        .propose_bytes(Command::Lock { command: cmd }.encode(), timeout)
        .await?;
    let r = decode_result::<Reply>(&r);
    match lock_result(&r) {
        Some(t) => Ok(t),
        None => match r {
            Ok(_) => unexpected("a lock command"),
            Err(e) => Err(MetaError::Refused(e)),
        },
    }
}

/// [`propose_lock`] under the repeatable retry policy: every lock command a node
/// proposes is safe to repeat (idempotent, or refused by epoch/generation).
pub(crate) async fn propose_retry(m: &Member, cmd: LockCommand) -> Result<LockResult, MetaError> {
    LOCK_RETRY
        .run(|| propose_lock(m, cmd.clone(), Duration::ZERO))
        .await
}

/// The VHD's ownership as this replica applied it.
pub async fn local_owner(m: &Member, vhd: VhdId) -> Result<Option<OwnerView>, MetaError> {
    match m.query_local(Query::Owner { vhd }).await? {
        QueryReply::Owner { owner } => Ok(owner),
        _ => unexpected("an owner query"),
    }
}

/// The VHD's ownership, linearizable.
pub async fn owner(m: &Member, vhd: VhdId) -> Result<Option<OwnerView>, MetaError> {
    match m.query(Query::Owner { vhd }).await? {
        QueryReply::Owner { owner } => Ok(owner),
        _ => unexpected("an owner query"),
    }
}

impl Leases {
    fn hold_of(self: &Arc<Self>, vhd: VhdId, mode: Mode) -> Option<VhdHold> {
        let g = self.guard();
        let h = g.hold(vhd)?;
        let enough = h.mode == mode || (h.mode == Mode::Write && mode == Mode::Read);
        (enough && !h.handing_off).then(|| VhdHold {
            vhd,
            generation: h.generation,
            fence: Arc::new(HoldFence {
                leases: self.clone(),
                vhd,
                generation: h.generation,
            }),
        })
    }

    /// Proposes a guard request and feeds the answer back; returns the typed result.
    async fn run_request(
        self: &Arc<Self>,
        m: &Member,
        req: lock_manager::Request,
    ) -> Result<LockResult, MetaError> {
        let res = propose_retry(m, req.command.clone()).await?;
        let events = self.guard().on_result(req.ticket, &res, boottime());
        for f in self.note_events(events) {
            self.spawn_request(m.clone(), f);
        }
        Ok(res)
    }

    /// Proposes `req` in the background; its answer reaches the guard through the
    /// driver.
    pub(crate) fn spawn_request(self: &Arc<Self>, m: Member, req: lock_manager::Request) {
        let tx = self.res_tx.clone();
        self.tasks.spawn(async move {
            match propose_retry(&m, req.command.clone()).await {
                Ok(r) => {
                    let _ = tx.send((req.ticket, r)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, command = ?req.command, "lock proposal failed")
                }
            }
        });
    }

    pub(crate) async fn acquire(
        self: &Arc<Self>,
        m: &Member,
        vhd: VhdId,
        mode: Mode,
    ) -> Result<VhdHold, LeaseError> {
        if let Some(h) = self.hold_of(vhd, mode) {
            return Ok(h);
        }
        let req = self
            .guard()
            .request_acquire(vhd, mode)
            .map_err(|d| LeaseError::not_ready(vhd, d))?;
        let mut res = self.run_request(m, req).await?;
        if let (
            Mode::Write,
            Err(LockError::OwnerExpired {
                generation, owner, ..
            }),
        ) = (mode, &res)
        {
            tracing::info!(%vhd, %owner, %generation, "owner expired: taking the VHD over");
            let req = self
                .guard()
                .request_takeover(vhd, *generation)
                .map_err(|d| LeaseError::not_ready(vhd, d))?;
            res = self.run_request(m, req).await?;
        }
        match res {
            Ok(Outcome::Granted { generation, .. }) => match self.hold_of(vhd, mode) {
                Some(h) if h.generation == generation => Ok(h),
                _ => Err(LeaseError::Superseded { vhd, generation }),
            },
            Ok(other) => Err(LeaseError::UnexpectedOutcome {
                vhd,
                outcome: format!("{other:?}"),
            }),
            Err(e) => Err(LeaseError::Refused(e)),
        }
    }

    pub(crate) async fn release(
        self: &Arc<Self>,
        m: &Member,
        vhd: VhdId,
    ) -> Result<(), LeaseError> {
        let req = self.guard().begin_release(vhd);
        let req = match req {
            Some(r) => r,
            // Already releasing (an earlier attempt's answer was lost): say it again.
            None => match self.guard().retry_release(vhd) {
                Some(r) => r,
                None => return Err(LeaseError::NotHeld { vhd }),
            },
        };
        match self.run_request(m, req).await? {
            Ok(_) | Err(LockError::NotHeld { .. } | LockError::GenerationMismatch { .. }) => Ok(()),
            Err(e) => Err(LeaseError::Refused(e)),
        }
    }

    /// `owner move`: asks the current writer (through the log) to hand `vhd` to `to`,
    /// then waits until this replica applied the transfer.
    pub(crate) async fn move_to(
        self: &Arc<Self>,
        m: &Member,
        vhd: VhdId,
        to: NodeId,
    ) -> Result<OwnerView, LeaseError> {
        let view = owner(m, vhd).await?.ok_or(LeaseError::NoOwner { vhd })?;
        let from = match (view.owner, view.owner_valid) {
            (Some(o), true) => o,
            (Some(owner), false) => return Err(LeaseError::OwnerExpired { vhd, owner, to }),
            (None, _) => return Err(LeaseError::NoOwner { vhd }),
        };
        if from == to {
            return Ok(view);
        }
        let g = view.generation;
        let cmd = LockCommand::RequestTransfer {
            vhd,
            from,
            to,
            expected_generation: g,
        };
        if let Err(e) = propose_retry(m, cmd).await? {
            return Err(LeaseError::Refused(e));
        }
        let deadline = tokio::time::Instant::now() + MOVE_TIMEOUT;
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = local_owner(m, vhd).await?
                && v.generation > g
            {
                return if v.owner == Some(to) {
                    Ok(v)
                } else {
                    Err(LeaseError::MovedOn {
                        vhd,
                        owner: v.owner,
                        generation: v.generation,
                    })
                };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(LeaseError::NoHandOff {
                    vhd,
                    from,
                    waited: MOVE_TIMEOUT,
                });
            }
        }
    }
}

impl Leases {
    /// Graceful exit (after the data path released its holds): stops renewing and
    /// proposes `Leave` at the current epoch, so the coordinator marks this node `Left`
    /// at once instead of expiring it a lease later; any hold still listed is dropped
    /// with it. Bounded by `timeout`; the next start registers again.
    pub async fn leave_cluster(&self, meta: &Meta, timeout: Duration) -> Result<(), LeaseError> {
        // Not a member (never initialised, or removed): nothing to leave.
        let Ok(m) = meta.member().await else {
            return Ok(());
        };
        self.stop_driver();
        let Some(epoch) = self.guard().epoch() else {
            return Ok(());
        };
        let cmd = LockCommand::Leave {
            node: self.node,
            epoch,
        };
        match propose_lock(&m, cmd, timeout).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(LeaseError::Refused(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use csv_api::Epoch;
    use lock_manager::LeaseTiming;
    use volume::WriteFence as _;

    /// The fence handed to the data path answers from the guard at each call: open with a
    /// confirmed lease at the held generation, closed ("fenced") once the epoch is lost.
    #[test]
    fn hold_fence_follows_the_guard() {
        let l = Arc::new(Leases::new(
            NodeId(1),
            LeaseTiming::default(),
            tokio::sync::mpsc::channel(1).1,
            crate::task::Tasks::default(),
            Arc::default(),
        ));
        let now = boottime();
        {
            let mut g = l.guard();
            g.on_registered(&Outcome::Registered {
                node: NodeId(1),
                epoch: Epoch(1),
                status: lock_manager::NodeStatus::Live,
                renewals: 0,
                created: true,
            });
            let r = g.poll_renewal(now).expect("renewal");
            g.on_result(
                r.ticket,
                &Ok(Outcome::Renewed {
                    node: NodeId(1),
                    epoch: Epoch(1),
                    renewals: 1,
                }),
                now,
            );
            let a = g.request_acquire(VhdId(7), Mode::Write).expect("acquire");
            g.on_result(
                a.ticket,
                &Ok(Outcome::Granted {
                    vhd: VhdId(7),
                    node: NodeId(1),
                    epoch: Epoch(1),
                    mode: Mode::Write,
                    generation: Generation(3),
                    previous_writer: None,
                }),
                now,
            );
        }
        let hold = l.hold_of(VhdId(7), Mode::Write).expect("held");
        assert_eq!(hold.generation, Generation(3));
        hold.fence.check().expect("open");
        // A stale generation of the same VHD is refused.
        let old = HoldFence {
            leases: l.clone(),
            vhd: VhdId(7),
            generation: Generation(2),
        };
        assert!(old.check().is_err());
        // The epoch moves on: every hold is gone, the fence says so.
        let lost = l.guard().on_error(&LockError::StaleEpoch {
            node: NodeId(1),
            given: Epoch(1),
            current: Epoch(2),
        });
        assert!(matches!(
            lost.as_slice(),
            [lock_manager::FenceEvent::OwnershipLost { .. }]
        ));
        let e = hold.fence.check().expect_err("closed");
        assert!(e.0.starts_with("fenced"), "{e}");
        l.note_events(lost);
        assert_eq!(l.record().lost.len(), 1);
        assert!(l.hold_of(VhdId(7), Mode::Write).is_none());
    }
}
