//! Errors of the VHD operations.

use csv_api::ErrorCode;
use csv_api::error::ApiError;

use crate::data::DataError;
use crate::error::Coded;
use crate::lease::LeaseError;
use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// The request names something impossible (bad size, unreadable source file, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The VHD is not in a state that allows this (attached, has children, ...).
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    NotFound(String),
    /// Image or LUN I/O failed: what, and why.
    #[error("{what}: {why}")]
    Storage { what: String, why: String },
    /// A step failed: what was being done; the code is the cause's.
    #[error("{what}: {source}")]
    Context { what: String, source: Box<OpsError> },
    /// Not attached here, but held on other nodes.
    #[error(
        "{source}; held by {holders}: detach it there with `csvadm vhd detach {name} --node {node}`"
    )]
    HeldElsewhere {
        source: Box<OpsError>,
        holders: String,
        name: String,
        node: u64,
    },
    /// What another node answered to a request (already coded there).
    #[error("{}", .0.message)]
    Remote(ApiError),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl OpsError {
    pub fn storage(what: impl Into<String>, why: impl std::fmt::Display) -> OpsError {
        OpsError::Storage {
            what: what.into(),
            why: why.to_string(),
        }
    }

    /// `self` as the cause of failing to do `what`.
    pub fn context(self, what: impl Into<String>) -> OpsError {
        OpsError::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }
}

impl From<tokio::task::JoinError> for OpsError {
    fn from(e: tokio::task::JoinError) -> OpsError {
        OpsError::Internal(e.to_string())
    }
}

impl Coded for OpsError {
    fn code(&self) -> ErrorCode {
        match self {
            OpsError::Meta(e) => e.code(),
            OpsError::Lease(e) => e.code(),
            OpsError::Data(e) => e.code(),
            OpsError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            OpsError::InvalidState(_) => ErrorCode::InvalidState,
            OpsError::NotFound(_) | OpsError::HeldElsewhere { .. } => ErrorCode::NotFound,
            OpsError::Storage { .. } => ErrorCode::Storage,
            OpsError::Context { source, .. } => source.code(),
            OpsError::Remote(e) => e.code(),
            OpsError::Timeout(_) => ErrorCode::Timeout,
            OpsError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> ApiError {
        crate::error::to_api(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_cause_code() {
        let cause = OpsError::Lease(LeaseError::NotHeld {
            vhd: csv_api::VhdId(3),
        });
        let api = ApiError::from(cause.context("c is in use (attached?)"));
        assert_eq!(api.code(), ErrorCode::LockNotHeld);
        assert_eq!(
            api.message,
            "c is in use (attached?): vhd-3 is not held by this node"
        );
    }
}
