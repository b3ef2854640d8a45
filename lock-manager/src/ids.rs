//! Identifiers and counters shared by the lock manager's commands, state and views. They
//! live in `csv-api` (shared by every crate of csv) and are re-exported here.

pub use csv_api::ids::{Epoch, Generation, NodeId, VhdId};
