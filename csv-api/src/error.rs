//! Stable error codes of the control plane. A code's number and name never change and are
//! never reused: tools print them, scripts match on them, and they cross the wire.
//!
//! 1–14 are the metadata store's codes one to one (`meta_store::ErrorCode`), 20–32 belong
//! to the control plane, 40–52 to the lock manager (`LockError::code()` names).

use std::fmt;

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident = $num:literal, $name:literal, $retry:literal; )*) => {
        /// A stable error code (see the module documentation for the ranges).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant = $num, )*
        }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code for a number read from the wire; `None` for unknown numbers.
            pub fn from_u32(v: u32) -> Option<Self> {
                match v {
                    $( $num => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }

            /// The stable snake_case name.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $name, )*
                }
            }

            /// The code with this stable name.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }

            /// True when a request that failed with this code was certainly not applied,
            /// so sending it again cannot apply it twice. (Whether sending it again can
            /// succeed is [`ErrorCode::is_transient`].)
            pub fn is_retry_safe(self) -> bool {
                match self {
                    $( ErrorCode::$variant => $retry, )*
                }
            }
        }
    };
}

impl ErrorCode {
    /// True when the cause passes by itself and the request was not applied: no leader
    /// or another one, a full queue, a learner catching up, a membership change in
    /// progress. The one test of "try again shortly" for every client.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorCode::NoLeader
                | ErrorCode::NotLeader
                | ErrorCode::Dropped
                | ErrorCode::Busy
                | ErrorCode::NotCaughtUp
                | ErrorCode::ConfChangeInProgress
        )
    }

    /// True when the request may or may not have been applied (a deadline passed, the
    /// leader changed with it in flight): only a repeatable request may be sent again.
    pub fn is_outcome_unknown(self) -> bool {
        matches!(self, ErrorCode::Timeout | ErrorCode::Indeterminate)
    }
}

codes! {
    /// No leader (coordinator) is known at the moment.
    NoLeader = 1, "no_leader", true;
    /// The node asked is not the leader.
    NotLeader = 2, "not_leader", true;
    /// Raft refused to append the proposal.
    Dropped = 3, "dropped", true;
    /// Too many requests are pending.
    Busy = 4, "busy", true;
    /// The deadline passed; the outcome is unknown.
    Timeout = 5, "timeout", false;
    /// The request may or may not have been applied.
    Indeterminate = 6, "indeterminate", false;
    /// A command or message exceeds its size limit.
    TooLarge = 7, "too_large", true;
    /// The membership change is refused.
    InvalidMembership = 8, "invalid_membership", true;
    /// Another membership change has not been applied yet.
    ConfChangeInProgress = 9, "conf_change_in_progress", true;
    /// The metadata node is stopped.
    Stopped = 10, "stopped", false;
    /// The storage engine failed.
    Storage = 11, "storage", false;
    /// The configuration is invalid.
    Config = 12, "config", true;
    /// A learner is too far behind to be promoted.
    NotCaughtUp = 13, "not_caught_up", true;
    /// A message could not be decoded.
    Malformed = 14, "malformed", true;
    /// The node is not a member of a cluster yet.
    NotInitialized = 20, "not_initialized", true;
    /// The node (or the cluster) is already initialised.
    AlreadyInitialized = 21, "already_initialized", true;
    /// The request's protocol version is not supported.
    UnsupportedVersion = 22, "unsupported_version", true;
    /// An argument is out of range or inconsistent.
    InvalidArgument = 23, "invalid_argument", true;
    /// The named object does not exist.
    NotFound = 24, "not_found", true;
    /// An object with that identity or name exists.
    AlreadyExists = 25, "already_exists", true;
    /// Not enough free extents.
    NoSpace = 26, "no_space", true;
    /// A configured bound would be exceeded.
    Limit = 27, "limit", true;
    /// The object is in a state that does not allow the request.
    InvalidState = 28, "invalid_state", true;
    /// The node cannot serve the request now (starting, stopping, removed).
    Unavailable = 29, "unavailable", true;
    /// An internal error (a bug or a corrupt store).
    Internal = 30, "internal", false;
    /// The writer's generation does not match (a fenced or stale writer).
    Fenced = 31, "fenced", true;
    /// The connection may not make this request: a peer of the admin socket's read-only
    /// group asked for a change (`[admin] read_only_group`), or the peer is neither
    /// root, the node's user, nor in that group.
    PermissionDenied = 32, "permission_denied", true;
    /// Lock manager: the node never registered.
    LockUnknownNode = 40, "unknown_node", true;
    /// Lock manager: the command's epoch is not the node's current one.
    LockStaleEpoch = 41, "stale_epoch", true;
    /// Lock manager: the node is expired or has left.
    LockNodeNotLive = 42, "node_not_live", true;
    /// Lock manager: the node renewed after the expiry was decided.
    LockRenewedSince = 43, "renewed_since", true;
    /// Lock manager: no matching hold.
    LockNotHeld = 44, "not_held", true;
    /// Lock manager: the VHD is at another generation.
    LockGenerationMismatch = 45, "generation_mismatch", true;
    /// Lock manager: another node's hold is in the way.
    LockConflict = 46, "conflict", true;
    /// Lock manager: the owner is still live.
    LockOwnerAlive = 47, "owner_alive", true;
    /// Lock manager: the owner expired; take over instead.
    LockOwnerExpired = 48, "owner_expired", true;
    /// Lock manager: the VHD has no writer.
    LockNoWriter = 49, "no_writer", true;
    /// Lock manager: the command is malformed.
    LockInvalid = 50, "invalid", true;
    /// Lock manager: a lock-table limit would be exceeded.
    LockLimit = 51, "lock_limit", true;
    /// Lock manager: a snapshot could not be restored.
    LockBadSnapshot = 52, "bad_snapshot", false;
}

impl ErrorCode {
    /// The control-plane code of a metadata-store code number (`meta_store::ErrorCode as
    /// u32`): the numbers are shared one to one. Unknown numbers are `internal`.
    pub fn from_meta_store(code: u32) -> Self {
        match code {
            1..=14 => ErrorCode::from_u32(code).unwrap_or(ErrorCode::Internal),
            _ => ErrorCode::Internal,
        }
    }

    /// The code of a lock-manager error name (`LockError::code()`). Unknown names are
    /// `internal`.
    pub fn from_lock_manager(name: &str) -> Self {
        match name {
            "unknown_node" => ErrorCode::LockUnknownNode,
            "stale_epoch" => ErrorCode::LockStaleEpoch,
            "node_not_live" => ErrorCode::LockNodeNotLive,
            "renewed_since" => ErrorCode::LockRenewedSince,
            "not_held" => ErrorCode::LockNotHeld,
            "generation_mismatch" => ErrorCode::LockGenerationMismatch,
            "conflict" => ErrorCode::LockConflict,
            "owner_alive" => ErrorCode::LockOwnerAlive,
            "owner_expired" => ErrorCode::LockOwnerExpired,
            "no_writer" => ErrorCode::LockNoWriter,
            "invalid" => ErrorCode::LockInvalid,
            "limit" => ErrorCode::LockLimit,
            "bad_snapshot" => ErrorCode::LockBadSnapshot,
            _ => ErrorCode::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u32)
    }
}

/// An error with its stable code and a human message: what the daemon answers and what
/// the state machine returns for a refused command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{}: {message}", self.code())]
pub struct ApiError {
    /// The code's number (an [`ErrorCode`]; kept as a number so unknown future codes
    /// survive a round trip).
    pub code: u32,
    /// What happened.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code: code as u32,
            message: message.into(),
        }
    }

    /// The code; unknown numbers read as `internal`.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::from_u32(self.code).unwrap_or(ErrorCode::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_and_names_are_unique_and_round_trip() {
        let mut names = HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u32(*c as u32), Some(*c));
            assert_eq!(ErrorCode::from_name(c.name()), Some(*c));
            assert!(names.insert(c.name()), "duplicate name {}", c.name());
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::from_u32(15), None);
    }

    #[test]
    fn numbers_never_change() {
        // Pinned: changing one breaks every script and older tool.
        let pinned = [
            (ErrorCode::NoLeader, 1, "no_leader"),
            (ErrorCode::Timeout, 5, "timeout"),
            (ErrorCode::Malformed, 14, "malformed"),
            (ErrorCode::NotInitialized, 20, "not_initialized"),
            (ErrorCode::NotFound, 24, "not_found"),
            (ErrorCode::NoSpace, 26, "no_space"),
            (ErrorCode::Fenced, 31, "fenced"),
            (ErrorCode::LockUnknownNode, 40, "unknown_node"),
            (ErrorCode::LockBadSnapshot, 52, "bad_snapshot"),
        ];
        for (c, n, s) in pinned {
            assert_eq!(c as u32, n);
            assert_eq!(c.name(), s);
        }
    }

    #[test]
    fn lock_and_meta_mappings() {
        for n in 1..=14 {
            assert_eq!(ErrorCode::from_meta_store(n) as u32, n);
        }
        assert_eq!(ErrorCode::from_meta_store(99), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_lock_manager("limit"), ErrorCode::LockLimit);
        assert_eq!(ErrorCode::from_lock_manager("???"), ErrorCode::Internal);
        assert!(!ErrorCode::Timeout.is_retry_safe());
        assert!(ErrorCode::NoLeader.is_retry_safe());
        assert!(ErrorCode::NoLeader.is_transient() && !ErrorCode::NotFound.is_transient());
        assert!(ErrorCode::Timeout.is_outcome_unknown() && !ErrorCode::Timeout.is_transient());
        let e = ApiError::new(ErrorCode::NotFound, "vhd 3");
        assert_eq!(e.to_string(), "not_found (24): vhd 3");
        assert_eq!(
            ApiError {
                code: 999,
                message: String::new()
            }
            .code(),
            ErrorCode::Internal
        );
    }
}
