//! The data path's tasks.

use std::sync::Arc;

use super::core::Data;
use super::{checkpoint, detach, volume};

impl Data {
    /// Starts the tasks that run for the node's whole life: the hand-off server.
    pub fn start(self: &Arc<Self>) {
        if let Some(requests) = self.leases.take_handoff_requests() {
            self.tasks
                .spawn(detach::serve_handoffs(self.clone(), requests));
        }
    }

    /// Starts the tasks of a member: the volume watch and the checkpoint writer.
    pub fn start_member(self: &Arc<Self>) {
        self.tasks.spawn(volume::watch_volume(self.clone()));
        self.tasks.spawn(checkpoint::run(self.clone()));
        self.tasks.spawn(super::redirect::driver::run(self.clone()));
    }
}
