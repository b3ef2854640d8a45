//! The node's data path: the LUN (`volume.rs`: open, superblock check, format, status),
//! attached VHDs served over NBD (`attach.rs`, `detach.rs`: holds, exports, hand-off,
//! shutdown), VHD files on the LUN (`extents.rs`: the node's extent reservation, map
//! commits at the hold's generation), the coordinator's LUN checkpoint writer
//! (`checkpoint.rs`), standby exports of VMs migrating here (`standby.rs`,
//! `standby_ops.rs`), and the NBD devices (`vhd_device.rs`, `file_device.rs`).
//! Design: docs/design/040, 041, 042.

pub mod attach;
mod attachments;
pub mod checkpoint;
mod core;
pub mod detach;
mod error;
pub mod extents;
pub mod file_device;
mod lun;
pub(crate) mod redirect;
mod run;
pub(crate) mod standby;
mod standby_ops;
pub mod vhd_device;
pub mod volume;

pub use core::Data;
pub use error::DataError;
pub use lun::open_lun;
