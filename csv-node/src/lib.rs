//! The csv node agent as a library. Layers, each importing only the ones before it:
//!
//! * [`config`] — the configuration file; [`state`] — the replicated cluster state
//!   machine (pure); [`task`], [`sync`], [`durable`], [`convert`] — small leaves.
//! * [`meta`] — membership of the metadata store, the typed metadata client, events of
//!   applied commands.
//! * [`lease`] — leases, holds and fences (the lock manager's node-side shell).
//! * [`data`] — the LUN, attached VHDs, extent files, checkpoints, the NBD devices.
//! * [`ops`] — VHD operations (create, import, export, expand, compact, merge, remote
//!   attach/detach) and their progress.
//! * [`admin`] — the admin socket and its one dispatch.
//! * [`metrics`] — the Prometheus families the layers update, and the endpoint.
//! * [`node`] — composes them: `csv-node run`.
//!
//! The binary (`main.rs`) adds `csv-node export`. `scripts/module-graph` checks that no
//! module imports another in a circle.

pub mod admin;
pub mod config;
pub mod convert;
pub mod data;
pub mod durable;
pub mod error;
pub mod hypervisor;
pub mod lease;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod state;
pub mod sync;
pub mod sys;
pub mod task;
