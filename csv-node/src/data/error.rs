//! Errors of the data path.

use std::time::Duration;

use csv_api::ErrorCode;
use csv_api::error::ApiError;

use crate::error::Coded;
use crate::lease::LeaseError;
use crate::meta::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("node {node} has no [volume] section in its config (the LUN path)")]
    NoVolume { node: u64 },
    /// The volume cannot be used yet (no record, not checked yet).
    #[error("{0}")]
    VolumeNotReady(String),
    /// The LUN does not hold the cluster's volume, or cannot be read.
    #[error("{0}")]
    VolumeBad(String),
    #[error("the cluster has volume {0} already")]
    VolumeExists(String),
    /// LUN or image I/O failed, or cannot be vouched for: what, and why.
    #[error("{what}: {why}")]
    Storage { what: String, why: String },
    #[error("{name} is not attached")]
    NotAttached { name: String },
    #[error("{name} is not attached on node {node}")]
    NotAttachedHere { name: String, node: u64 },
    /// The VHD or its attachment is not in a state that allows this.
    #[error("{0}")]
    InvalidState(String),
    /// Something passing is in the way (a concurrent change, connections still open).
    #[error("{0}")]
    Busy(String),
    #[error("parent {name} cannot be held read-only: {source}")]
    ParentHeld {
        name: String,
        source: Box<DataError>,
    },
    #[error("volume {volume} holds no valid checkpoint ({skipped} slots skipped)")]
    NoCheckpoint { volume: String, skipped: usize },
    #[error(
        "no LUN checkpoint covers the catalog change at index {index} after {limit:?} (is the coordinator able to write the LUN?)"
    )]
    CheckpointTimeout { index: u64, limit: Duration },
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    /// A bug or a broken runtime (a task that panicked, a server that cannot start).
    #[error("{0}")]
    Internal(String),
}

impl DataError {
    /// A storage failure: `what` was being done, `why` it failed.
    pub fn storage(what: impl Into<String>, why: impl std::fmt::Display) -> DataError {
        DataError::Storage {
            what: what.into(),
            why: why.to_string(),
        }
    }
}

impl From<tokio::task::JoinError> for DataError {
    fn from(e: tokio::task::JoinError) -> DataError {
        DataError::Internal(e.to_string())
    }
}

impl Coded for DataError {
    fn code(&self) -> ErrorCode {
        match self {
            DataError::Meta(e) => e.code(),
            DataError::Lease(e) => e.code(),
            DataError::NoVolume { .. } | DataError::Listen { .. } => ErrorCode::Config,
            DataError::VolumeNotReady(_) | DataError::InvalidState(_) => ErrorCode::InvalidState,
            DataError::VolumeExists(_) => ErrorCode::AlreadyExists,
            DataError::Storage { .. } | DataError::VolumeBad(_) => ErrorCode::Storage,
            DataError::NotAttached { .. }
            | DataError::NotAttachedHere { .. }
            | DataError::NoCheckpoint { .. } => ErrorCode::NotFound,
            DataError::Busy(_) => ErrorCode::Unavailable,
            DataError::ParentHeld { source, .. } => source.code(),
            DataError::CheckpointTimeout { .. } => ErrorCode::Timeout,
            DataError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> ApiError {
        crate::error::to_api(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_keep_their_code_and_message() {
        let refused = ApiError::new(ErrorCode::LockConflict, "v1 is held");
        let e = DataError::ParentHeld {
            name: "base".into(),
            source: Box::new(DataError::Meta(MetaError::Refused(refused))),
        };
        let api = ApiError::from(e);
        assert_eq!(api.code(), ErrorCode::LockConflict);
        assert_eq!(
            api.message,
            "parent base cannot be held read-only: v1 is held"
        );
        let api = ApiError::from(DataError::storage("flush a", "EIO"));
        assert_eq!(
            (api.code(), api.message.as_str()),
            (ErrorCode::Storage, "flush a: EIO")
        );
    }
}
