//! TEMPORARY stand-in for the node shell's ownership API (issue 5, `daemon/lease.rs` on
//! branch `leases`): `acquire_vhd` / `release_vhd` with the same signatures, proposing the
//! embedded lock commands (Register, Acquire, Release) through the state machine directly.
//! No lease renewal and no liveness tracking: the fence is open while the hold is held
//! and closed by `release_vhd`. Deleted once the lease shell is merged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use csv_api::error::ApiError;
use csv_api::{Epoch, ErrorCode, Generation, NodeId, VhdId};
use lock_manager::{Command as LockCommand, Mode, Outcome};

use super::Daemon;
use super::handlers::propose;
use crate::state::types::{Command, Reply};

/// A hold on a VHD: its generation (the writer's fencing token) and the fence every LUN
/// write of the attached file passes.
#[derive(Debug, Clone)]
pub struct VhdHold {
    pub vhd: VhdId,
    pub generation: Generation,
    pub fence: Arc<dyn volume::WriteFence>,
}

#[derive(Debug)]
struct FlagFence {
    open: Arc<AtomicBool>,
    vhd: VhdId,
}

impl volume::WriteFence for FlagFence {
    fn check(&self) -> Result<(), volume::FenceError> {
        if self.open.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(volume::FenceError(format!("{} is not held by this node", self.vhd)))
        }
    }
}

/// The shim's state.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    epoch: tokio::sync::Mutex<Option<Epoch>>,
    held: std::sync::Mutex<BTreeMap<VhdId, (Generation, Arc<AtomicBool>)>>,
}

fn lock_reply(r: Reply) -> Result<Outcome, ApiError> {
    match r {
        Reply::Lock { outcome } => Ok(outcome),
        _ => Err(ApiError::new(ErrorCode::Internal, "unexpected lock reply")),
    }
}

impl Daemon {
    async fn shim_epoch(&self) -> Result<Epoch, ApiError> {
        let mut e = self.holds.epoch.lock().await;
        if let Some(e) = *e {
            return Ok(e);
        }
        let m = self.member().await?;
        let cmd = Command::Lock {
            command: LockCommand::Register {
                node: NodeId(self.id()),
            },
        };
        match lock_reply(propose(&m, cmd).await?)? {
            Outcome::Registered { epoch, .. } => {
                *e = Some(epoch);
                Ok(epoch)
            }
            _ => Err(ApiError::new(ErrorCode::Internal, "unexpected register reply")),
        }
    }

    /// Takes a hold on `vhd` in `mode`.
    pub async fn acquire_vhd(&self, vhd: VhdId, mode: Mode) -> Result<VhdHold, ApiError> {
        let epoch = self.shim_epoch().await?;
        let m = self.member().await?;
        let cmd = Command::Lock {
            command: LockCommand::Acquire {
                vhd,
                node: NodeId(self.id()),
                epoch,
                mode,
            },
        };
        match lock_reply(propose(&m, cmd).await?)? {
            Outcome::Granted { generation, .. } => {
                let open = Arc::new(AtomicBool::new(true));
                let old = super::volume::lock(&self.holds.held).insert(vhd, (generation, open.clone()));
                if let Some((_, o)) = old {
                    o.store(false, Ordering::Release);
                }
                Ok(VhdHold {
                    vhd,
                    generation,
                    fence: Arc::new(FlagFence { open, vhd }),
                })
            }
            _ => Err(ApiError::new(ErrorCode::Internal, "unexpected acquire reply")),
        }
    }

    /// Closes the fence of `vhd` and drops the hold.
    pub async fn release_vhd(&self, vhd: VhdId) -> Result<(), ApiError> {
        let Some((generation, open)) = super::volume::lock(&self.holds.held).remove(&vhd) else {
            return Ok(());
        };
        open.store(false, Ordering::Release);
        let epoch = self.shim_epoch().await?;
        let m = self.member().await?;
        let cmd = Command::Lock {
            command: LockCommand::Release {
                vhd,
                node: NodeId(self.id()),
                epoch,
                generation,
            },
        };
        lock_reply(propose(&m, cmd).await?).map(|_| ())
    }
}
