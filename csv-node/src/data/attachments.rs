//! The node's table of attached VHDs (what `attach.rs` and `detach.rs` change).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use csv_api::VhdId;
use nbd::server::Server;
use serde::{Deserialize, Serialize};

use super::extents::NodeReservation;
use super::vhd_device::VhdDevice;
use crate::lease::VhdHold;

/// File of the attachment set in the data dir.
pub(super) const STATE_FILE: &str = "attachments.json";

/// One attached VHD.
pub(crate) struct Attached {
    pub(super) vhd: VhdId,
    pub(super) read_only: bool,
    pub(super) hold: VhdHold,
    pub(super) device: Arc<VhdDevice>,
    pub(super) kind: String,
    /// Ancestors held read-deny-write for this attachment, parent first.
    pub(super) parents: Vec<VhdId>,
    /// Set when the export was closed and its final flush failed: the hold is kept and
    /// nothing is exported until a detach or an attach reopens the VHD (042 §8).
    pub(super) failed: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Saved {
    pub(super) name: String,
    pub(super) read_only: bool,
}

/// The node's attachments and its NBD server.
#[derive(Default)]
pub(crate) struct Attachments {
    pub(super) server: tokio::sync::OnceCell<Server>,
    pub(super) map: std::sync::Mutex<BTreeMap<String, Attached>>,
    /// Serialises attach and detach.
    pub(super) op: tokio::sync::Mutex<()>,
    pub(super) reservation: OnceLock<Arc<NodeReservation>>,
    /// Saved attachments not restored (yet): kept in the file.
    pub(super) pending: std::sync::Mutex<Vec<Saved>>,
    /// Read-deny-write holds this node took through [`Data::hold_read`], refcounted
    /// (one hold per node and VHD: a parent of several attached children, a read-only
    /// attachment, an export in progress).
    pub(super) reads: tokio::sync::Mutex<BTreeMap<VhdId, usize>>,
    /// Standby exports of VHDs a VM migrating here will write (`standby.rs`).
    pub(super) standby: std::sync::Mutex<BTreeMap<String, Arc<super::standby::StandbyDevice>>>,
    /// VHDs whose hand-off is a VM's switch-over: their export closes at once.
    pub(super) vm_handoff: std::sync::Mutex<std::collections::BTreeSet<VhdId>>,
}

/// Drops a device off the runtime worker (closing an image may flush it).
pub(super) async fn drop_device(d: Arc<VhdDevice>) {
    let _ = tokio::task::spawn_blocking(move || drop(d)).await;
}
