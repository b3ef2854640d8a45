//! The csv node agent as a library: the cluster state machine ([`state`]) and the cluster
//! daemon ([`daemon`], `csv-node run`). The binary (`main.rs`) adds `csv-node export`.

pub mod daemon;
pub mod state;
pub mod vhd_device;
pub mod watchdog;
