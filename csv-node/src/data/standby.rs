//! Standby exports (docs/design/080 §3): a VM migrating to this node opens its disks
//! before this node may write them. A standby export answers the NBD handshake with the
//! VHD's size and the flags its real export will have; once the VHD is attached here
//! (its write hold arrived and the image was opened under it) every request runs on that
//! image. Before that, nothing is read from a view of the image taken before the
//! hand-off: a read fails at once (QEMU reads sector 0 when it opens a disk, even for an
//! incoming migration, and carries on when that fails; a read that waited would hold up
//! its start), a flush succeeds (nothing was written through the export), and a write
//! waits for the hand-off, at most [`STANDBY_WAIT`]. An abandoned standby (the migration
//! was aborted) fails every request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nbd::device::{
    BlockDevice, Capabilities, DeviceError, DeviceFuture, Extent, ReadData, ZeroFlags,
};
use tokio::sync::watch;

use super::vhd_device::{VhdDevice, vhd_capabilities};

/// Longest a request waits for the hand-off.
pub const STANDBY_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
enum Slot {
    Waiting,
    Active(Arc<VhdDevice>),
    Abandoned(String),
}

/// An export that waits for its VHD.
#[derive(Debug)]
pub(crate) struct StandbyDevice {
    size: u64,
    slot: watch::Sender<Slot>,
}

impl StandbyDevice {
    pub(crate) fn new(size: u64) -> StandbyDevice {
        StandbyDevice {
            size,
            slot: watch::Sender::new(Slot::Waiting),
        }
    }

    /// Requests run on `dev` from now on.
    pub(crate) fn activate(&self, dev: Arc<VhdDevice>) {
        self.slot.send_replace(Slot::Active(dev));
    }

    /// Requests fail from now on.
    pub(crate) fn abandon(&self, why: &str) {
        self.slot.send_replace(Slot::Abandoned(why.to_string()));
    }

    pub(crate) fn is_active(&self) -> bool {
        matches!(*self.slot.borrow(), Slot::Active(_))
    }

    async fn device(&self) -> Result<Arc<VhdDevice>, DeviceError> {
        let mut rx = self.slot.subscribe();
        let ready =
            tokio::time::timeout(STANDBY_WAIT, rx.wait_for(|s| !matches!(s, Slot::Waiting))).await;
        let slot = match ready {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => Slot::Abandoned("the standby export was dropped".into()),
            Err(_) => Slot::Abandoned(format!("no hand-off within {STANDBY_WAIT:?}")),
        };
        match slot {
            Slot::Active(d) => Ok(d),
            Slot::Abandoned(why) => Err(DeviceError::Io(std::io::Error::other(format!(
                "standby export: {why}"
            )))),
            Slot::Waiting => Err(DeviceError::Io(std::io::Error::other(
                "standby export: still waiting",
            ))),
        }
    }
}

impl StandbyDevice {
    /// The image, if it is handed over already (reads do not wait for it).
    fn device_now(&self) -> Result<Arc<VhdDevice>, DeviceError> {
        match &*self.slot.borrow() {
            Slot::Active(d) => Ok(d.clone()),
            Slot::Waiting => Err(DeviceError::Io(std::io::Error::other(
                "standby export: the disk is not handed over yet",
            ))),
            Slot::Abandoned(why) => Err(DeviceError::Io(std::io::Error::other(format!(
                "standby export: {why}"
            )))),
        }
    }
}

impl BlockDevice for StandbyDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        vhd_capabilities(self.size, false)
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move { self.device_now()?.read(offset, len).await })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move { self.device().await?.write(offset, data, fua).await })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            match &*self.slot.borrow() {
                Slot::Waiting => return Ok(()),
                Slot::Active(_) | Slot::Abandoned(_) => {}
            }
            self.device_now()?.flush().await
        })
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move { self.device().await?.trim(offset, len, fua).await })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        Box::pin(async move { self.device().await?.write_zeroes(offset, len, flags).await })
    }

    fn block_status(&self, offset: u64, len: u64) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move { self.device_now()?.block_status(offset, len).await })
    }

    fn cache(&self, offset: u64, len: u64) -> DeviceFuture<'_, ()> {
        Box::pin(async move { self.device_now()?.cache(offset, len).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_wait_for_the_hand_off_and_fail_once_abandoned() {
        let sb = Arc::new(StandbyDevice::new(1 << 20));
        assert_eq!(sb.size(), 1 << 20);
        assert!(!sb.capabilities().read_only);
        // Before the hand-off: nothing is read, a flush has nothing to do, a write waits.
        assert!(sb.read(0, 512).await.is_err());
        sb.flush().await.expect("flush of nothing");
        let waiting = {
            let sb = sb.clone();
            tokio::spawn(async move { sb.write(0, Bytes::from_static(&[1; 512]), false).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a write before the hand-off waits");
        sb.abandon("aborted");
        let r = waiting.await.expect("task");
        assert!(
            matches!(&r, Err(DeviceError::Io(e)) if e.to_string().contains("aborted")),
            "{r:?}"
        );
    }
}
