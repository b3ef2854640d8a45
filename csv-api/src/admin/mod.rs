//! The admin protocol between `csvadm` (or a test) and a node's daemon, over the node's
//! Unix socket: one [`AdminRequest`] frame, one [`AdminResponse`] frame, repeated.
//!
//! Messages are hand-written prost structs (no `.proto`, no `protoc`); tags never change
//! meaning. Framing and the limits are in [`frame`], the blocking client in [`client`].

mod access;
pub mod client;
mod envelope;
pub mod frame;
mod messages;
pub mod owner;
pub mod vm;
pub mod volume;

pub use client::{Client, ClientError};
pub use envelope::*;
pub use frame::{FrameError, MAX_FRAME_BYTES};
pub use messages::*;
pub use owner::*;

/// Version of the admin protocol carried in every request and response.
pub const PROTOCOL_VERSION: u32 = 1;
