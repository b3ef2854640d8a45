//! Redirected I/O (docs/design/070): the node's LUN handle that follows the path-health
//! core's route (`switch`), the sessions to peers (`session`), the peer side that runs
//! other nodes' LUN calls (`serve`), the heartbeat probe (`probe`) and the driver that
//! ties them to `redirector::health` and the replicated path states (`driver`).

pub(crate) mod admin;
pub(crate) mod driver;
pub(crate) mod handle;
pub(crate) mod link;
pub(crate) mod probe;
pub(crate) mod serve;
pub(crate) mod session;
pub(crate) mod switch;
#[cfg(test)]
mod switch_tests;
