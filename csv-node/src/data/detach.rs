//! The end of an attachment: `vhd detach` (export removed, connections drained, final
//! flush, then the hold released once this node's writes are past their bound; a failed
//! flush keeps the hold: docs/design/042 §8), the cooperative hand-off hook (bounded and
//! cancellation-safe: 042 §7) and the graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use csv_api::VhdId;
use nbd::device::BlockDevice;

use super::attachments::{Attached, drop_device};
use super::core::Data;
use super::error::DataError;
use crate::lease::HandoffRequest;
use crate::sync::lock;
use csv_api::admin::volume::VhdAttach;
use tokio::sync::mpsc;
use tracing::Instrument;

/// How long a detach waits for the export's connections to finish.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// How long a hand-off waits for the export's connections before closing them: well
/// inside the lease layer's hook timeout (10 s), with the flushes and the wait for quiet.
const HANDOFF_DRAIN: Duration = Duration::from_secs(3);
/// Hold releases in flight at once during a graceful shutdown.
const SHUTDOWN_RELEASES: usize = 32;

/// Serves the lease layer's hand-off requests until the node stops: before a VHD this
/// node writes is handed to another node, its export is removed and the image flushed
/// and closed (the lease layer then transfers the hold; this node keeps no attachment of
/// it). Each request runs in its own task, so one slow VHD does not hold up another.
///
/// The lease layer waits a bounded time, then aborts the hand-off and keeps the VHD
/// here. So the close asks, right before its one irreversible step (dropping the
/// attachment), whether the lease layer still waits; if not, the attachment is put back
/// (`Restore`). If the lease layer gives up after that step (between it and the answer),
/// the VHD is still held here with no attachment: it is attached again, so a VHD this
/// node holds is never left unserved (042 §7).
pub(crate) async fn serve_handoffs(d: Arc<Data>, mut requests: mpsc::Receiver<HandoffRequest>) {
    while let Some(HandoffRequest { vhd, done }) = requests.recv().await {
        let d2 = d.clone();
        d.tasks.spawn(
            async move {
                let r = d2.close_for_handoff(vhd, || done.is_closed()).await;
                let closed = r.as_ref().ok().cloned().flatten();
                if done.send(r.map(|_| ()).map_err(Into::into)).is_ok() {
                    return;
                }
                let Some(name) = closed else { return };
                tracing::warn!("the lease layer stopped waiting after the close: attaching again");
                let again = VhdAttach {
                    name,
                    node: 0,
                    read_only: false,
                };
                if let Err(e) = d2.attach(again).await {
                    tracing::error!(error = %e, "attaching again after an abandoned hand-off failed");
                }
            }
            .instrument(tracing::info_span!("handoff", %vhd)),
        );
    }
}

/// An attachment taken out of the map while its export is closed. Dropped armed (the
/// work failed, or was cancelled: the lease layer's hook timeout), it puts the attachment
/// back and exports it again, so a VHD this node still holds is never left unserved.
struct Restore<'a> {
    d: &'a Data,
    name: String,
    att: Option<Attached>,
}

impl Restore<'_> {
    fn attached(&self) -> Option<&Attached> {
        self.att.as_ref()
    }

    /// The attachment is gone for good.
    fn disarm(mut self) -> Option<Attached> {
        self.att.take()
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let Some(a) = self.att.take() else { return };
        if let Some(s) = self.d.att.server.get()
            && a.failed.is_none()
            && let Err(e) = self.d.export(s, &self.name, &a)
        {
            tracing::error!(vhd = self.name, "export again: {e}");
        }
        tracing::warn!(
            vhd = self.name,
            "hand-off or detach abandoned: the VHD stays attached here"
        );
        lock(&self.d.att.map).insert(self.name.clone(), a);
    }
}

impl Data {
    /// Closes `vhd`'s export here for a hand-off, without releasing its hold; the name of
    /// the attachment closed, if there was one. Bounded well inside the lease layer's
    /// timeout; on failure, or when `abandoned()` says the lease layer stopped waiting,
    /// the export is restored.
    async fn close_for_handoff(
        &self,
        vhd: VhdId,
        abandoned: impl Fn() -> bool,
    ) -> Result<Option<String>, DataError> {
        let _op = self.att.op.lock().await;
        let name = lock(&self.att.map)
            .iter()
            .find(|(_, a)| a.vhd == vhd && a.failed.is_none())
            .map(|(n, _)| n.clone());
        let Some(name) = name else {
            return Ok(None);
        };
        // A failed flush aborts the hand-off with the export still served.
        self.flush_attached(&name).await?;
        // A VM's disk at its migration's switch-over: the guest is stopped and its I/O
        // drained, its client never disconnects by itself: close at once.
        let drain = if lock(&self.att.vm_handoff).contains(&vhd) {
            Duration::ZERO
        } else {
            HANDOFF_DRAIN
        };
        let r = self.take_export(&name, drain, HANDOFF_DRAIN).await?;
        let Some(a) = r.attached() else {
            return Ok(None);
        };
        a.device.flush().await.map_err(|e| {
            DataError::storage(
                name.clone(),
                format!("flush before the hand-off failed: {e}"),
            )
        })?;
        let lun = self.lun().await?;
        if !self.wait_quiet(&lun).await {
            return Err(DataError::storage(
                name,
                "writes to the LUN are still in doubt",
            ));
        }
        if abandoned() {
            // `r` is dropped armed: the attachment and its export come back.
            return Err(DataError::Busy(format!(
                "{name}: the hand-off was abandoned by the lease layer"
            )));
        }
        if let Some(a) = r.disarm() {
            for p in &a.parents {
                self.drop_read(*p).await;
            }
            drop_device(a.device).await;
        }
        self.save_attachments().await;
        tracing::info!(vhd = name, "closed for hand-off");
        Ok(Some(name))
    }

    /// Takes `name` out of the map and removes its export; waits for its connections at
    /// most `drain` (then they are closed, and requests already running get `idle`).
    /// The guard restores it if dropped armed.
    async fn take_export(
        &self,
        name: &str,
        drain: Duration,
        idle: Duration,
    ) -> Result<Restore<'_>, DataError> {
        let Some(a) = lock(&self.att.map).remove(name) else {
            return Err(DataError::NotAttached { name: name.into() });
        };
        let r = Restore {
            d: self,
            name: name.to_string(),
            att: Some(a),
        };
        if let Some(s) = self.att.server.get()
            && let Some(removal) = s.remove_export(name)
        {
            let drained = tokio::time::timeout(drain, async {
                if let Some(d) = volume::failpoint::delay("export.drain") {
                    tokio::time::sleep(d).await;
                }
                removal.wait().await
            })
            .await;
            if drained.is_err() {
                if drain > Duration::ZERO {
                    tracing::warn!(
                        vhd = name,
                        "connections did not drain in {drain:?}: closing them"
                    );
                }
                removal.close_connections();
                // Requests already handed to the image still run: wait for them, so that
                // nothing of this node is in flight once the caller moves on.
                let quiet = match r.attached() {
                    Some(a) => a.device.wait_idle(idle).await,
                    None => true,
                };
                if !quiet || tokio::time::timeout(idle, removal.wait()).await.is_err() {
                    return Err(DataError::Busy(format!(
                        "{name}: requests in flight did not end within {idle:?}"
                    )));
                }
            }
        }
        Ok(r)
    }

    /// `vhd detach`: remove the export, flush, and release the hold once this node's
    /// writes are past their bound. A failed flush keeps the hold (listed with its
    /// error, not exported); detaching again reopens the VHD from the LUN and retries.
    #[tracing::instrument(name = "detach", skip_all, fields(vhd = %name))]
    pub(crate) async fn detach(&self, name: &str) -> Result<(), DataError> {
        let _op = self.att.op.lock().await;
        let was_pending = self.forget_pending(name);
        let failed = lock(&self.att.map).get(name).map(|a| a.failed.is_some());
        let failed = match failed {
            Some(f) => f,
            None if was_pending => {
                self.save_attachments().await;
                return Ok(());
            }
            None => {
                return Err(DataError::NotAttachedHere {
                    name: name.into(),
                    node: self.id(),
                });
            }
        };
        if failed {
            let dev = self.reopen_device(name).await?;
            let old = lock(&self.att.map)
                .get_mut(name)
                .map(|a| std::mem::replace(&mut a.device, dev));
            if let Some(old) = old {
                drop_device(old).await;
            }
        }
        let r = self
            .take_export(name, DRAIN_DEADLINE, DRAIN_DEADLINE)
            .await?;
        let Some(a) = r.attached() else {
            return Ok(());
        };
        if !a.read_only
            && let Err(e) = a.device.flush().await
        {
            let msg = format!(
                "final flush failed ({e}): the hold is kept so that no other node writes {name} \
                 before the outcome of its writes is known; detach again (it reopens the VHD \
                 from the LUN) once the LUN path works"
            );
            let mut a = r
                .disarm()
                .ok_or_else(|| DataError::Internal("lost".into()))?;
            a.failed = Some(msg.clone());
            lock(&self.att.map).insert(name.to_string(), a);
            self.save_attachments().await;
            tracing::error!(vhd = name, "{msg}");
            return Err(DataError::storage(name, msg));
        }
        let a = r
            .disarm()
            .ok_or_else(|| DataError::Internal("lost".into()))?;
        self.save_attachments().await;
        self.release_attached(name, a).await?;
        tracing::info!(vhd = name, "detached");
        Ok(())
    }

    /// Releases the holds of an attachment that is closed and flushed: its own (a write
    /// hold once this node's writes are past their bound) and its parents'.
    async fn release_attached(&self, name: &str, a: Attached) -> Result<(), DataError> {
        for p in &a.parents {
            self.drop_read(*p).await;
        }
        drop_device(a.device).await;
        if a.read_only {
            self.drop_read(a.vhd).await;
            return Ok(());
        }
        let lun = self.lun().await?;
        if !self.wait_quiet(&lun).await {
            return Err(DataError::storage(
                name,
                "writes to the LUN are still in doubt: the hold is kept (it ends \
                     with this node's lease if this persists)",
            ));
        }
        self.release_vhd(a.vhd).await
    }

    /// Flushes an image attached here (the owner's export, import and maintenance).
    pub(crate) async fn flush_attached(&self, name: &str) -> Result<(), DataError> {
        let dev = lock(&self.att.map)
            .get(name)
            .filter(|a| a.failed.is_none())
            .map(|a| a.device.clone());
        match dev {
            Some(d) => d
                .flush()
                .await
                .map_err(|e| DataError::storage(format!("flush {name}"), e)),
            None => Ok(()),
        }
    }

    /// Graceful shutdown: stops the NBD server, then closes every export (connections
    /// drained, image flushed) and releases its holds, so another node can attach the
    /// VHD at once instead of a lease later. The attachment set on disk is kept: the
    /// restart attaches them again unless another node took them meanwhile. A flush
    /// that fails keeps that hold (it expires with the node's lease) rather than let
    /// another writer in before the data is on the LUN.
    pub(crate) async fn release_at_shutdown(&self) {
        let _op = self.att.op.lock().await;
        if let Some(s) = self.att.server.get() {
            s.shutdown();
        }
        let names: Vec<String> = lock(&self.att.map).keys().cloned().collect();
        let mut closed = Vec::with_capacity(names.len());
        for n in names {
            let r = match self.take_export(&n, DRAIN_DEADLINE, DRAIN_DEADLINE).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(vhd = n, "close at shutdown failed: {e}");
                    continue;
                }
            };
            let Some(a) = r.attached() else { continue };
            let failed = if a.failed.is_some() {
                true
            } else if !a.read_only
                && let Err(e) = a.device.flush().await
            {
                tracing::error!(
                    vhd = n,
                    "final flush at shutdown failed (the hold expires with the lease): {e}"
                );
                true
            } else {
                false
            };
            if failed {
                // Its hold stays: it expires with the lease. Nothing more is written.
                if let Some(a) = r.disarm() {
                    a.device.abandon();
                    drop_device(a.device).await;
                }
                continue;
            }
            if let Some(a) = r.disarm() {
                closed.push((n, a));
            }
        }
        use futures_util::StreamExt as _;
        futures_util::stream::iter(closed)
            .map(|(n, a)| async move {
                if let Err(e) = self.release_attached(&n, a).await {
                    tracing::warn!(
                        vhd = n,
                        "release at shutdown failed (the hold expires with the lease): {e}"
                    );
                }
            })
            .buffer_unordered(SHUTDOWN_RELEASES)
            .collect::<Vec<()>>()
            .await;
    }
}
