//! Operations over VHDs that build on the data path: create, import, export, expand,
//! compact (`vhd_ops.rs`), merge (`merge.rs`), attach and detach asked of another node
//! through the log (`remote.rs`, design 040 §6.1), and the bounded table of running long
//! operations that `OperationProgress` reads (`progress.rs`).

mod core;
mod error;
pub mod merge;
pub mod progress;
pub mod remote;
pub mod vhd_ops;

pub use core::Ops;
pub use error::OpsError;
