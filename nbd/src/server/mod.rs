//! The NBD server: accept loops over [`Listener`]s, one task per connection
//! (negotiation, optional STARTTLS, transmission), the export registry, a connection
//! limit and graceful shutdown. [`Server`] is a cheap handle: clone it to add or
//! remove exports, or to shut down, from anywhere.

pub mod command;
mod config;
pub mod export;
mod handle;
pub mod listener;
pub mod negotiate;
pub mod observe;
mod outq;
pub mod transmit;

pub use config::{
    DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUESTS, ListenerTls, ServerConfig,
    ServerError, TlsPolicy,
};
pub use export::{Export, ExportOptions, ExportRemoval};
pub use handle::Server;
pub use listener::Listener;
pub use observe::{RequestKind, RequestObserver};
pub use transmit::{End, TransmitLimits};
