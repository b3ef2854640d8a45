//! Disks added to or removed from a running VM (`csvadm vm disk add|remove`): the
//! runner makes its QEMU's disks follow the definition.
//!
//! Add: attach the VHD here (its write hold), `blockdev-add` an NBD client of the new
//! export, `device_add` a virtio-blk device behind the disk's own root port (q35: a
//! port per slot exists from the start). Remove: `device_del`, wait for the guest to
//! let the device go (`DEVICE_DELETED`), `blockdev-del`, detach the VHD (its data
//! flushed, the hold released). A step that fails is undone where it can be and said
//! in the VM's report detail; it is not tried again until the definition changes.

use std::time::Duration;

use csv_api::admin::volume::VhdAttach;
use serde_json::json;
use tokio::time::Instant;

use super::qemu;
use super::qmp::QmpEvent;
use super::runner::{QMP_TIMEOUT, Runner};
use crate::state::vms::VmRecord;

/// How long the guest may take to release an unplugged device (Linux waits 5 s after
/// a PCIe attention button press before it ejects).
const UNPLUG_WAIT: Duration = Duration::from_secs(30);

impl Runner {
    /// Plugs in the record's disks QEMU lacks and unplugs those it no longer lists.
    pub(super) async fn plug_disks(&mut self, rec: &VmRecord) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        live.plugged_for = rec.def.disks.clone();
        let want = super::runner::devices_of(rec);
        let have = live.devices.clone();
        let mut problems = Vec::new();
        for (slot, disk) in have.iter().filter(|d| !want.contains(d)) {
            match self.unplug(*slot, disk).await {
                Ok(()) => tracing::info!(vm = self.name, disk, slot, "disk removed"),
                Err(e) => problems.push(format!("remove disk {disk}: {e}")),
            }
        }
        for (slot, disk) in want.iter().filter(|d| !have.contains(d)) {
            match self.plug(*slot, disk).await {
                Ok(()) => tracing::info!(vm = self.name, disk, slot, "disk added"),
                Err(e) => problems.push(format!("add disk {disk}: {e}")),
            }
        }
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let (inc, state) = (live.incarnation, live.state);
        let detail = problems.join("; ");
        if !problems.is_empty() {
            tracing::error!(vm = self.name, "{detail}");
        }
        self.report(inc, state, &detail, false).await;
    }

    async fn plug(&mut self, slot: u32, disk: &str) -> Result<(), String> {
        let a = VhdAttach {
            name: disk.to_string(),
            node: 0,
            read_only: false,
        };
        self.h.data.attach(a).await.map_err(|e| e.to_string())?;
        if !self.disks.iter().any(|d| d == disk) {
            self.disks.push(disk.to_string());
        }
        let reconnect = self.h.cfg.hypervisor.reconnect_delay.0.as_secs().max(1);
        let ports = qemu::has_root_ports(&self.h.cfg.hypervisor.machine);
        let blockdev = qemu::disk_blockdev(slot, disk, &self.h.data.nbd_socket(), reconnect);
        let Some(live) = self.live.as_mut() else {
            return Err("QEMU is gone".into());
        };
        let added = live
            .qmp
            .execute("blockdev-add", Some(blockdev), QMP_TIMEOUT)
            .await
            .map_err(|e| format!("blockdev-add: {e}"));
        let plugged = match added {
            Ok(_) => live
                .qmp
                .execute(
                    "device_add",
                    Some(qemu::disk_device(slot, ports)),
                    QMP_TIMEOUT,
                )
                .await
                .map_err(|e| format!("device_add: {e}")),
            Err(e) => Err(e),
        };
        match plugged {
            Ok(_) => {
                live.devices.push((slot, disk.to_string()));
                Ok(())
            }
            Err(e) => {
                let _ = live
                    .qmp
                    .execute(
                        "blockdev-del",
                        Some(json!({"node-name": format!("d{slot}")})),
                        QMP_TIMEOUT,
                    )
                    .await;
                self.release(disk).await;
                Err(e)
            }
        }
    }

    async fn unplug(&mut self, slot: u32, disk: &str) -> Result<(), String> {
        let Some(live) = self.live.as_mut() else {
            return Err("QEMU is gone".into());
        };
        let id = format!("disk{slot}");
        live.qmp
            .execute("device_del", Some(json!({ "id": id })), QMP_TIMEOUT)
            .await
            .map_err(|e| format!("device_del: {e}"))?;
        // Events that arrive meanwhile are handled once the device is gone.
        let mut others: Vec<QmpEvent> = Vec::new();
        let deadline = Instant::now() + UNPLUG_WAIT;
        let gone = loop {
            match tokio::time::timeout_at(deadline, live.events.recv()).await {
                Err(_) => break false,
                Ok(None) => break false,
                Ok(Some(ev)) => {
                    if ev.name == "DEVICE_DELETED"
                        && ev.data.get("device").and_then(|d| d.as_str()) == Some(id.as_str())
                    {
                        break true;
                    }
                    others.push(ev);
                }
            }
        };
        if gone {
            live.devices.retain(|(s, _)| *s != slot);
            if let Err(e) = live
                .qmp
                .execute(
                    "blockdev-del",
                    Some(json!({"node-name": format!("d{slot}")})),
                    QMP_TIMEOUT,
                )
                .await
            {
                tracing::warn!(vm = self.name, disk, "blockdev-del: {e}");
            }
        }
        for ev in others {
            self.on_event(ev).await;
        }
        if !gone {
            return Err(format!(
                "the guest did not release device {id} within {} s (it stays plugged in)",
                UNPLUG_WAIT.as_secs()
            ));
        }
        self.release(disk).await;
        Ok(())
    }

    /// Detaches a disk this runner attached (its data flushed, its hold released).
    async fn release(&mut self, disk: &str) {
        self.disks.retain(|d| d != disk);
        if self.h.data.is_attached_name(disk)
            && let Err(e) = self.h.data.detach(disk).await
        {
            tracing::warn!(vm = self.name, disk, "detach of an unplugged disk: {e}");
        }
    }
}
