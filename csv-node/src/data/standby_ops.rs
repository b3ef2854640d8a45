//! The node's standby exports for VMs migrating here (`standby.rs`): added before the
//! hand-off, activated by the attach that opens the VHD, dropped when the migration ends
//! without it.

use std::sync::Arc;

use super::core::Data;
use super::error::DataError;
use super::standby::StandbyDevice;

impl Data {
    /// Exports `name` in standby for a VM migrating here (no hold: nothing is served
    /// until an attach of the VHD activates it). A no-op when it is attached or in
    /// standby here already.
    pub(crate) async fn standby(&self, name: &str) -> Result<(), DataError> {
        let _op = self.att.op.lock().await;
        if crate::sync::lock(&self.att.map).contains_key(name)
            || crate::sync::lock(&self.att.standby).contains_key(name)
        {
            return Ok(());
        }
        let rec = self.vhd_by_name(name).await?;
        let dev = Arc::new(StandbyDevice::new(rec.virtual_size));
        let s = self.nbd_server().await?;
        s.add_export(
            name,
            dev.clone(),
            nbd::server::ExportOptions {
                read_only: false,
                description: format!("csv VHD {name} (standby)"),
                observer: Some(self.meta.metrics().nbd_observer(name)),
            },
        )
        .map_err(|e| DataError::Internal(e.to_string()))?;
        crate::sync::lock(&self.att.standby).insert(name.to_string(), dev);
        tracing::info!(vhd = name, "standby export added");
        Ok(())
    }

    /// Removes a standby export that was not activated (its requests fail).
    pub(crate) async fn drop_standby(&self, name: &str, why: &str) {
        let _op = self.att.op.lock().await;
        let Some(dev) = crate::sync::lock(&self.att.standby).remove(name) else {
            return;
        };
        dev.abandon(why);
        if !dev.is_active()
            && let Some(s) = self.att.server.get()
            && let Some(r) = s.remove_export(name)
        {
            r.close_connections();
        }
        tracing::info!(vhd = name, "standby export removed: {why}");
    }

    /// Marks `vhd`'s next hand-off as a VM's switch-over (its export closes at once).
    pub(crate) fn set_vm_handoff(&self, vhd: csv_api::VhdId, on: bool) {
        let mut s = crate::sync::lock(&self.att.vm_handoff);
        if on {
            s.insert(vhd);
        } else {
            s.remove(&vhd);
        }
    }
}
