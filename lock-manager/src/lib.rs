//! Per-VHD ownership for csv: node liveness leases, epochs, write/read holds with
//! fencing generations, cooperative hand-off, takeover and self-fencing.
//!
//! Pure and deterministic: commands in, outcomes out, time as an input, no I/O, no
//! threads. Design and proofs: `docs/design/030-leases-and-fencing.md`.
//!
//! * [`LockState`] is the replicated part, applied inside the Raft state machine:
//!   [`LockState::apply`] takes a [`Command`] and returns an [`Outcome`] or a
//!   [`LockError`]; it snapshots, restores and hashes canonically.
//! * [`LivenessTracker`] runs on the Raft leader only and proposes
//!   [`Command::ExpireNode`] for nodes whose renewals stopped.
//! * [`FenceGuard`] runs on every node and answers "may I still write VHD X at
//!   generation G?" from the node's own clock.
//! * [`LeaseTiming`] derives every timeout from one setting, the outage budget.

mod apply;
pub mod command;
pub mod error;
pub mod fence;
mod fence_types;
pub mod ids;
pub mod state;
pub mod time;
pub mod timing;
pub mod tracker;
pub mod view;

pub use command::{Command, Mode, NodeStatus, Outcome};
pub use error::{ConflictReason, LockError};
pub use fence::{FenceDenied, FenceEvent, FenceGuard, GuardStatus, LocalHold, LostHold, Request};
pub use ids::{Epoch, Generation, NodeId, VhdId};
pub use state::{LockState, NodeRecord, ReadHold, VhdRecord, Writer};
pub use time::Time;
pub use timing::{LeaseTiming, TimingError};
pub use tracker::{LivenessReport, LivenessTracker};
pub use view::{HoldView, NodeView, OwnerView, ReaderView};
