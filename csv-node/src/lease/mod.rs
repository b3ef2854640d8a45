//! The node-side shell of the lock manager (issue 5, design note 030 §11): one
//! [`Leases`] per daemon owns the node's `FenceGuard` (register, renew through the Raft
//! log, self-fence on the local clock), the coordinator's `LivenessTracker` (expire nodes
//! whose renewals stopped, with the new-leader grace), and the API the data path uses
//! (`Leases::acquire_vhd`, `Leases::release_vhd`, and the hand-off requests the data
//! path serves: `Leases::take_handoff_requests`).
//!
//! * `driver.rs`: the per-node task (renewals, fence polling, tracker, hand-offs), fed
//!   the applied lock commands by the metadata layer's event hub.
//! * `api.rs`: acquire, release, move, and the `WriteFence` handed to the data path.
//! * `watchdog.rs`: the optional watchdog process.
//!
//! Clocks: the fence and the tracker read `CLOCK_BOOTTIME` (keeps counting across a
//! host suspend, §2 A2); wall-clock times are only recorded for operators and tests.

mod api;
mod clock;
mod driver;
mod error;
mod leases;
pub mod watchdog;

pub use api::{VhdHold, local_owner, owner, propose_lock};
pub use clock::{boottime, wall_ms_of};
pub use error::LeaseError;
pub use leases::{
    FenceRecord, HANDOFF_TIMEOUT, HandoffRequest, Leases, LockResult, LostRecord,
    MAX_FENCE_HISTORY, MAX_RESULTS,
};
