//! The view of a node's local fence (its lease and the holds its guard knows), part of
//! `csvadm owner` and `csvadm node liveness` output.

use csv_api::admin::LocalFence;
use serde::Serialize;

/// A node's local fence, as `LocalFence` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FenceView {
    pub node: u64,
    pub epoch: u64,
    pub lease_valid: bool,
    pub remaining_ms: u64,
    /// For `owner show`: whether a write at the held generation would pass now.
    pub write_open: bool,
    /// Why a write would not pass (empty when open).
    pub denied: String,
    pub holds: Vec<FenceHoldView>,
    /// Holds lost with the epoch, oldest first.
    pub lost: Vec<LostHoldView>,
    pub lapses: u64,
    pub last_lapse_unix_ms: u64,
    pub last_reopen_unix_ms: u64,
}

/// A hold in the node's guard.
#[derive(Debug, Clone, Serialize)]
pub struct FenceHoldView {
    pub vhd: u64,
    pub mode: String,
    pub generation: u64,
    pub epoch: u64,
    pub handing_off: bool,
}

/// A hold lost with the node's epoch.
#[derive(Debug, Clone, Serialize)]
pub struct LostHoldView {
    pub vhd: u64,
    pub mode: String,
    pub generation: u64,
    pub old_epoch: u64,
    pub new_epoch: u64,
    pub at_unix_ms: u64,
}

impl FenceView {
    /// `valid` or `lapsed`.
    pub fn lease(&self) -> &'static str {
        if self.lease_valid { "valid" } else { "lapsed" }
    }
}

impl From<&LocalFence> for FenceView {
    fn from(f: &LocalFence) -> FenceView {
        FenceView {
            node: f.node,
            epoch: f.epoch,
            lease_valid: f.lease_valid,
            remaining_ms: f.remaining_ms,
            write_open: f.write_open,
            denied: f.denied.clone(),
            holds: f
                .holds
                .iter()
                .map(|h| FenceHoldView {
                    vhd: h.vhd,
                    mode: h.mode.clone(),
                    generation: h.generation,
                    epoch: h.epoch,
                    handing_off: h.handing_off,
                })
                .collect(),
            lost: f
                .lost
                .iter()
                .map(|h| LostHoldView {
                    vhd: h.vhd,
                    mode: h.mode.clone(),
                    generation: h.generation,
                    old_epoch: h.old_epoch,
                    new_epoch: h.new_epoch,
                    at_unix_ms: h.at_unix_ms,
                })
                .collect(),
            lapses: f.lapses,
            last_lapse_unix_ms: f.last_lapse_unix_ms,
            last_reopen_unix_ms: f.last_reopen_unix_ms,
        }
    }
}
