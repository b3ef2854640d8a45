//! Errors of the lease layer.

use csv_api::error::ApiError;
use csv_api::{ErrorCode, Generation, NodeId, VhdId};
use lock_manager::{FenceDenied, LockError};

use crate::error::Coded;
use crate::meta::MetaError;
use crate::state::locks::lock_api_error;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The lock table refused the command; the wire message carries the typed detail
    /// (`state::locks::lock_api_error`), which the guard of the asking node reads.
    #[error("{}", lock_api_error(.0).message)]
    Refused(LockError),
    #[error("{vhd}: this node is not registered with the lock manager yet")]
    NotRegistered { vhd: VhdId },
    #[error("{vhd}: {denied}")]
    Fenced { vhd: VhdId, denied: FenceDenied },
    #[error("{vhd}: granted at {generation} but superseded locally; retry")]
    Superseded { vhd: VhdId, generation: Generation },
    #[error("{vhd}: unexpected outcome {outcome}")]
    UnexpectedOutcome { vhd: VhdId, outcome: String },
    #[error("{vhd} is not held by this node")]
    NotHeld { vhd: VhdId },
    #[error("{vhd} has no owner")]
    NoOwner { vhd: VhdId },
    #[error("{vhd}: owner {owner} expired; acquire it on {to} to take it over")]
    OwnerExpired {
        vhd: VhdId,
        owner: NodeId,
        to: NodeId,
    },
    #[error("{vhd} moved on to {owner:?} at {generation} meanwhile")]
    MovedOn {
        vhd: VhdId,
        owner: Option<NodeId>,
        generation: Generation,
    },
    #[error(
        "{vhd}: owner {from} did not hand off within {waited:?} (it may be down: the VHD becomes takeover-able when its lease expires)"
    )]
    NoHandOff {
        vhd: VhdId,
        from: NodeId,
        waited: std::time::Duration,
    },
}

impl LeaseError {
    /// A guard's refusal to start a request.
    pub fn not_ready(vhd: VhdId, denied: FenceDenied) -> LeaseError {
        match denied {
            FenceDenied::NoLease => LeaseError::NotRegistered { vhd },
            denied => LeaseError::Fenced { vhd, denied },
        }
    }
}

impl Coded for LeaseError {
    fn code(&self) -> ErrorCode {
        match self {
            LeaseError::Meta(e) => e.code(),
            LeaseError::Refused(e) => ErrorCode::from_lock_manager(e.code()),
            LeaseError::NotRegistered { .. } | LeaseError::Superseded { .. } => {
                ErrorCode::Unavailable
            }
            LeaseError::Fenced { .. } => ErrorCode::Fenced,
            LeaseError::UnexpectedOutcome { .. } => ErrorCode::Internal,
            LeaseError::NotHeld { .. } => ErrorCode::LockNotHeld,
            LeaseError::NoOwner { .. } => ErrorCode::LockNoWriter,
            LeaseError::OwnerExpired { .. } => ErrorCode::LockOwnerExpired,
            LeaseError::MovedOn { .. } => ErrorCode::LockConflict,
            LeaseError::NoHandOff { .. } => ErrorCode::Timeout,
        }
    }
}

impl From<LeaseError> for ApiError {
    fn from(e: LeaseError) -> ApiError {
        crate::error::to_api(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::locks::lock_error_of;

    #[test]
    fn a_refusal_keeps_its_typed_detail_on_the_wire() {
        let refused = LockError::UnknownNode { node: NodeId(4) };
        let api = ApiError::from(LeaseError::Refused(refused.clone()));
        assert_eq!(api, lock_api_error(&refused));
        assert_eq!(lock_error_of(&api), Some(refused));
        let api = ApiError::from(LeaseError::not_ready(VhdId(2), FenceDenied::NoLease));
        assert_eq!(api.code(), ErrorCode::Unavailable);
    }
}
