//! Errors of the metadata store: the API error every caller sees (with a stable numeric
//! code that crosses the wire unchanged), and the storage-layer error of the engines.

use std::fmt;

/// Stable numeric codes of [`Error`]. They travel in forwarded-proposal results and will be
/// shown by tools, so a code is never reused for another meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// No leader is known at the moment.
    NoLeader = 1,
    /// The node asked is not the leader.
    NotLeader = 2,
    /// Raft refused to append the proposal.
    Dropped = 3,
    /// Too many requests are pending.
    Busy = 4,
    /// The deadline passed; the outcome is unknown.
    Timeout = 5,
    /// The request may or may not have been applied.
    Indeterminate = 6,
    /// The command is larger than the configured limit.
    TooLarge = 7,
    /// The membership change is refused.
    InvalidMembership = 8,
    /// Another membership change has not been applied yet.
    ConfChangeInProgress = 9,
    /// The node is stopped.
    Stopped = 10,
    /// The storage engine failed.
    Storage = 11,
    /// The configuration is invalid.
    Config = 12,
    /// A learner is too far behind to be promoted.
    NotCaughtUp = 13,
    /// A message could not be decoded.
    Malformed = 14,
}

impl ErrorCode {
    /// The code for a number read from the wire; unknown numbers map to `None`.
    pub fn from_u32(v: u32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => NoLeader,
            2 => NotLeader,
            3 => Dropped,
            4 => Busy,
            5 => Timeout,
            6 => Indeterminate,
            7 => TooLarge,
            8 => InvalidMembership,
            9 => ConfChangeInProgress,
            10 => Stopped,
            11 => Storage,
            12 => Config,
            13 => NotCaughtUp,
            14 => Malformed,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({})", self, *self as u32)
    }
}

/// The error of every metadata-store request.
///
/// Whether a failed request may be sent again depends on whether it might have been applied:
/// [`Error::is_retry_safe`] says the request was certainly not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No leader is known (an election is running or a quorum is missing).
    #[error("no leader is known")]
    NoLeader,
    /// The node that received the request is not the leader.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node believes in, if any.
        leader: Option<u64>,
    },
    /// Raft refused the proposal (leader transfer in progress, uncommitted-size limit, ...).
    #[error("proposal dropped by raft")]
    Dropped,
    /// Too many requests are already pending.
    #[error("too many pending requests")]
    Busy,
    /// The deadline passed before the outcome was known; the request may still apply.
    #[error("timed out; the outcome is unknown")]
    Timeout,
    /// The request may or may not have been applied (its leader lost the log position).
    #[error("the outcome is unknown: {0}")]
    Indeterminate(String),
    /// A command or snapshot exceeds its configured limit.
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The membership change is refused (unsafe or inconsistent with the current members).
    #[error("membership change refused: {0}")]
    InvalidMembership(String),
    /// Another membership change is not applied yet.
    #[error("another membership change is in progress")]
    ConfChangeInProgress,
    /// A learner is too far behind the leader to become a voter.
    #[error("learner {id} is {lag} entries behind (limit {max})")]
    NotCaughtUp {
        /// The learner.
        id: u64,
        /// How many entries it lacks.
        lag: u64,
        /// The configured limit.
        max: u64,
    },
    /// The node is stopped or stopping.
    #[error("the metadata node is stopped")]
    Stopped,
    /// The storage engine failed; the node stops.
    #[error("storage: {0}")]
    Storage(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A message could not be decoded.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NoLeader => ErrorCode::NoLeader,
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::Dropped => ErrorCode::Dropped,
            Error::Busy => ErrorCode::Busy,
            Error::Timeout => ErrorCode::Timeout,
            Error::Indeterminate(_) => ErrorCode::Indeterminate,
            Error::TooLarge { .. } => ErrorCode::TooLarge,
            Error::InvalidMembership(_) => ErrorCode::InvalidMembership,
            Error::ConfChangeInProgress => ErrorCode::ConfChangeInProgress,
            Error::NotCaughtUp { .. } => ErrorCode::NotCaughtUp,
            Error::Stopped => ErrorCode::Stopped,
            Error::Storage(_) => ErrorCode::Storage,
            Error::Config(_) => ErrorCode::Config,
            Error::Malformed(_) => ErrorCode::Malformed,
        }
    }

    /// True when the request was certainly not applied, so sending it again cannot apply it
    /// twice.
    pub fn is_retry_safe(&self) -> bool {
        matches!(
            self,
            Error::NoLeader
                | Error::NotLeader { .. }
                | Error::Dropped
                | Error::Busy
                | Error::ConfChangeInProgress
                | Error::NotCaughtUp { .. }
        )
    }
}

/// Failures of a storage engine (RocksDB or the in-memory engine) and of decoding what it
/// holds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB returned an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store belongs to another node or cluster, or is otherwise unusable.
    #[error("{0}")]
    Invalid(String),
    /// The state machine failed to load its state.
    #[error("state machine: {0}")]
    StateMachine(String),
}

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for v in 0..32u32 {
            if let Some(c) = ErrorCode::from_u32(v) {
                assert_eq!(c as u32, v);
            }
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(14), Some(ErrorCode::Malformed));
    }

    #[test]
    fn retry_safety() {
        assert!(Error::NotLeader { leader: Some(2) }.is_retry_safe());
        assert!(!Error::Timeout.is_retry_safe());
        assert!(!Error::Indeterminate("x".into()).is_retry_safe());
        assert_eq!(Error::Busy.code(), ErrorCode::Busy);
    }
}
