//! Errors of the metadata layer.

use csv_api::ErrorCode;
use csv_api::error::ApiError;

use crate::error::Coded;

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error(
        "this node is not a cluster member: run `csvadm cluster init` here, or `csvadm node add` on a member"
    )]
    NotMember,
    #[error("this node was removed from the cluster")]
    Removed,
    #[error("the node is stopping")]
    Stopping,
    #[error("this node is a cluster member already")]
    AlreadyMember,
    #[error("cluster name: at most 255 bytes, no '/'")]
    BadClusterName,
    /// The metadata store failed the request (no leader, timeout, stopped, ...).
    #[error("{0}")]
    Store(#[from] meta_store::Error),
    /// The state machine refused the command or query: its replicated answer.
    #[error("{}", .0.message)]
    Refused(ApiError),
    #[error("unexpected state-machine reply to {0}")]
    Unexpected(&'static str),
    /// Starting the metadata store failed (bind, open, write the state file).
    #[error("{0:#}")]
    Start(anyhow::Error),
}

impl Coded for MetaError {
    fn code(&self) -> ErrorCode {
        match self {
            MetaError::NotMember => ErrorCode::NotInitialized,
            MetaError::Removed | MetaError::Stopping => ErrorCode::Unavailable,
            MetaError::AlreadyMember => ErrorCode::AlreadyInitialized,
            MetaError::BadClusterName => ErrorCode::InvalidArgument,
            MetaError::Store(e) => ErrorCode::from_meta_store(e.code() as u32),
            MetaError::Refused(e) => e.code(),
            MetaError::Unexpected(_) | MetaError::Start(_) => ErrorCode::Internal,
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> ApiError {
        crate::error::to_api(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_the_wire_ones() {
        let refused = ApiError::new(ErrorCode::NotFound, "no VHD named \"a\"");
        let api = ApiError::from(MetaError::Refused(refused.clone()));
        assert_eq!(api, refused);
        let api = ApiError::from(MetaError::NotMember);
        assert_eq!(api.code(), ErrorCode::NotInitialized);
        assert!(api.message.starts_with("this node is not a cluster member"));
        let api = ApiError::from(MetaError::Store(meta_store::Error::NoLeader));
        assert_eq!(api.code(), ErrorCode::NoLeader);
    }
}
