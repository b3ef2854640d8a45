//! Chaos testing of csv (issue 15): what a workload writes, what it records, and how a
//! recorded run is judged.
//!
//! * [`stamp`]: a block written by the workload carries who wrote it (VHD, block, client,
//!   write id, the owner's generation, the node) and a CRC over all of it, so a read
//!   tells exactly which write it sees, or that the block is torn or misplaced.
//! * [`history`]: one JSON line per operation (invoke and completion time, outcome, what
//!   a read saw) and per injected fault.
//! * [`check`]: judges a history: every block is a register; acknowledged writes covered
//!   by an acknowledged flush survive crashes; no block goes back to an older
//!   generation; reads of one client never go back in time; no torn or unstamped block.
//! * [`schedule`]: a seeded, replayable plan of faults.
//!
//! The runner that drives real csv-node processes is `csv-chaos` (tests crate), started
//! by `csvadm chaos run`.

pub mod check;
pub mod history;
pub mod rng;
pub mod schedule;
pub mod stamp;
