//! What `SwitchPath` asks of a peer's session: one LUN call, answered or failed with a
//! class that says whether the call may go elsewhere.

use bytes::Bytes;
use redirector::wire::Writer;
use volume::path::PathError;

/// One LUN call forwarded to a peer.
#[derive(Debug, Clone)]
pub(crate) enum LunCall {
    Read {
        offset: u64,
        len: u64,
    },
    Write {
        offset: u64,
        data: Bytes,
        writer: Option<Writer>,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        writer: Option<Writer>,
    },
    Flush,
}

/// Why a forwarded call did not succeed.
#[derive(Debug, Clone)]
pub(crate) enum LinkError {
    /// Final: the answer another path would give too (media error, stale generation,
    /// fence), passed to the caller.
    Refused(PathError),
    /// The peer's replica has not applied what the call depends on yet: ask again.
    NotYet,
    /// The session failed (transport, no answer in time, the peer lost its own path):
    /// the call may still be running at the peer until the session's bound.
    Lost(String),
}

/// A session to one peer.
pub(crate) trait PeerLink: Send + Sync + std::fmt::Debug {
    fn peer(&self) -> u64;
    fn session(&self) -> u64;
    /// Runs `call` at the peer (blocking: never on a runtime worker).
    fn call(&self, call: LunCall) -> Result<Bytes, LinkError>;
}
