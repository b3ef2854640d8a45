//! NBD (Network Block Device) protocol for csv: a pure codec, an async server that
//! serves [`device::BlockDevice`]s, an async client and an in-memory device (the
//! devices over files and VHD images live beside the node's data path, in csv-node). See docs/design/010-nbd-server.md.

pub mod client;
pub mod codec;
pub mod device;
pub mod error;
pub mod fuzz;
pub mod mem;
pub mod proto;
pub mod server;
mod sys;
pub mod tls;

pub use device::{BlockDevice, Capabilities, DeviceError, Extent, ExtentKind, ReadData, ZeroFlags};
pub use error::Errno;
pub use server::{ExportOptions, Server, ServerConfig};
