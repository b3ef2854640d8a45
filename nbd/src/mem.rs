//! An in-memory [`BlockDevice`] with a per-block allocation map: the device the unit
//! tests, the fuzz targets and in-process tests of other crates serve. Trim and
//! hole-allowed zeroing deallocate whole blocks, so block status shows holes.

use std::sync::Mutex;

use bytes::Bytes;

use crate::device::{
    BlockDevice, Capabilities, DeviceError, DeviceFuture, Extent, ExtentKind, ReadData, ZeroFlags,
};

/// Allocation granularity of a [`MemDevice`].
pub const MEM_BLOCK: u64 = 4096;

#[derive(Debug)]
struct State {
    data: Vec<u8>,
    allocated: Vec<bool>,
}

/// A zero-filled, initially unallocated device held in memory.
#[derive(Debug)]
pub struct MemDevice {
    size: u64,
    read_only: bool,
    state: Mutex<State>,
}

impl MemDevice {
    pub fn new(size: u64) -> Self {
        let blocks = size.div_ceil(MEM_BLOCK) as usize;
        MemDevice {
            size,
            read_only: false,
            state: Mutex::new(State {
                data: vec![0; size as usize],
                allocated: vec![false; blocks],
            }),
        }
    }

    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, offset: u64, len: u64, write: bool) -> Result<(usize, usize), DeviceError> {
        if write && self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok((offset as usize, end as usize)),
            _ if write => Err(DeviceError::NoSpace),
            _ => Err(DeviceError::OutOfRange { offset, len }),
        }
    }

    fn zero(&self, start: usize, end: usize, deallocate: bool) {
        let mut st = self.state();
        st.data[start..end].fill(0);
        let first = (start as u64).div_ceil(MEM_BLOCK) as usize;
        let last = (end as u64 / MEM_BLOCK) as usize;
        for b in first..last {
            st.allocated[b] = !deallocate;
        }
        if !deallocate {
            mark(&mut st.allocated, start, end);
        }
    }
}

fn mark(allocated: &mut [bool], start: usize, end: usize) {
    if end <= start {
        return;
    }
    let first = start / MEM_BLOCK as usize;
    let last = (end - 1) / MEM_BLOCK as usize;
    for a in &mut allocated[first..=last] {
        *a = true;
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            read_only: self.read_only,
            can_trim: !self.read_only,
            can_zero: !self.read_only,
            can_fast_zero: !self.read_only,
            can_cache: true,
            can_multi_conn: true,
            ..Capabilities::default()
        }
    }

    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move {
            let (s, e) = self.range(offset, u64::from(len), false)?;
            Ok(ReadData::data(Bytes::copy_from_slice(
                &self.state().data[s..e],
            )))
        })
    }

    fn write(&self, offset: u64, data: Bytes, _fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            let (s, e) = self.range(offset, data.len() as u64, true)?;
            let mut st = self.state();
            st.data[s..e].copy_from_slice(&data);
            mark(&mut st.allocated, s, e);
            Ok(())
        })
    }

    fn flush(&self) -> DeviceFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            let (s, e) = self.range(offset, len, true)?;
            self.zero(s, e, true);
            Ok(())
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            let (s, e) = self.range(offset, len, true)?;
            self.zero(s, e, !flags.no_hole);
            Ok(())
        })
    }

    fn block_status(&self, offset: u64, len: u64) -> DeviceFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            let (s, e) = self.range(offset, len, false)?;
            let st = self.state();
            let mut out: Vec<Extent> = Vec::new();
            let mut pos = s as u64;
            while pos < e as u64 {
                let b = (pos / MEM_BLOCK) as usize;
                let stop = ((b as u64 + 1) * MEM_BLOCK).min(e as u64);
                let kind = if st.allocated[b] {
                    ExtentKind::Data
                } else {
                    ExtentKind::Hole
                };
                match out.last_mut() {
                    Some(last) if last.kind == kind => last.len += stop - pos,
                    _ => out.push(Extent::new(stop - pos, kind)),
                }
                pos = stop;
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allocation_follows_writes_and_trims() {
        let d = MemDevice::new(16384);
        d.write(4096, Bytes::from(vec![7; 100]), false)
            .await
            .expect("write");
        let st = d.block_status(0, 16384).await.expect("status");
        assert_eq!(
            st,
            vec![
                Extent::new(4096, ExtentKind::Hole),
                Extent::new(4096, ExtentKind::Data),
                Extent::new(8192, ExtentKind::Hole)
            ]
        );
        d.trim(4096, 4096, false).await.expect("trim");
        assert_eq!(
            d.block_status(0, 16384).await.expect("status"),
            vec![Extent::new(16384, ExtentKind::Hole)]
        );
        assert!(d.read(16000, 1000).await.is_err());
    }
}
