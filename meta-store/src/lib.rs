//! Raft-replicated metadata store of the csv cluster: raft-rs driven by one Ready loop on
//! RocksDB, a generic deterministic state machine whose applied index is persisted with the
//! state it produced, forwarding of proposals to the leader, ReadIndex reads, leader
//! transfer, snapshots with log compaction, membership changes, a node-to-node transport
//! (TCP, plus a simulated network), and a seeded simulation.
//!
//! Layers, bottom up:
//! * [`engine`]: ordered KV engine with column families (RocksDB, in-memory);
//! * [`storage`]: `raft::Storage` plus the Ready/apply/compaction/snapshot writes;
//! * [`core`]: the sans-IO node (time is an input) that the async [`node`] shell and the
//!   [`sim`] simulation both drive;
//! * [`transport`]: the [`Transport`] trait, TCP and simulated implementations.
//!
//! Design: docs/design/020-metadata-raft.md.

pub mod config;
pub mod core;
pub mod engine;
pub mod error;
pub mod keys;
pub mod kvsm;
pub mod node;
pub mod sim;
pub mod slog_bridge;
pub mod state_machine;
pub mod storage;
pub mod transport;
pub mod wire;

pub use config::{Config, Limits, LogPolicy, PeerAddr};
pub use core::{
    Core, CoreStats, Event, MemberChange, PeerStatus, ReplicationState, Response, Role, Status,
};
pub use error::{Error, ErrorCode, StoreError};
pub use node::{Hashes, Leadership, MetaHandle, MetaNode};
pub use state_machine::{KvRead, KvWrite, StateMachine};
pub use transport::tcp::{TcpConfig, TcpTransport};
pub use transport::{Inbox, Transport};
pub use wire::Membership;
