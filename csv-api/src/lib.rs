//! The shared API of csv: identifier newtypes ([`ids`]), the stable error codes every
//! tool shows ([`error`]), and the admin protocol between `csvadm` (or tests) and a node's
//! daemon ([`admin`]: prost messages, framing, a blocking client).
//!
//! A leaf crate: no RocksDB, no Raft, and tokio only behind the `tokio` feature, so tools
//! link it cheaply. Design: docs/design/050-control-plane.md.

pub mod admin;
pub mod error;
pub mod ids;

pub use error::ErrorCode;
pub use ids::{ClusterId, Epoch, Generation, NodeId, VhdId, VolumeId};
