//! A client request dropped in the middle of sending its payload (its caller's deadline)
//! poisons the connection: no later request writes a byte on it (its header would
//! complete the cut payload and land garbage), and the server never applies a request
//! made of two requests' bytes (docs/design/042 §5).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nbd::Capabilities;
use nbd::client::{self, ClientConfig, ClientError};
use nbd::device::{BlockDevice, DeviceFuture, ReadData, ZeroFlags};
use nbd::mem::MemDevice;
use nbd::server::{ExportOptions, Server, ServerConfig, listener};
use tokio::sync::Notify;

const MIB: u64 = 1 << 20;

/// A memory device whose writes wait until released.
#[derive(Debug)]
struct Stall {
    inner: MemDevice,
    stalled: AtomicBool,
    go: Notify,
}

impl BlockDevice for Stall {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        self.inner.read(offset, len)
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        Box::pin(async move {
            while self.stalled.load(Ordering::Acquire) {
                let n = self.go.notified();
                if !self.stalled.load(Ordering::Acquire) {
                    break;
                }
                n.await;
            }
            self.inner.write(offset, data, fua).await
        })
    }
    fn flush(&self) -> DeviceFuture<'_, ()> {
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        self.inner.write_zeroes(offset, len, flags)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_in_its_payload_poisons_the_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    // One request at a time: while the first is stalled, the server reads nothing more.
    let server = Server::new(ServerConfig {
        max_requests: 1,
        ..ServerConfig::default()
    })
    .expect("server");
    server.spawn_listener(listener::bind_unix(&socket, 0o600).expect("bind"));
    let dev = Arc::new(Stall {
        inner: MemDevice::new(64 * MIB),
        stalled: AtomicBool::new(true),
        go: Notify::new(),
    });
    server
        .add_export("", dev.clone(), ExportOptions::default())
        .expect("add");
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    let c = client::connect_unix(&socket, cfg.clone())
        .await
        .expect("connect");
    let c1 = c.clone();
    let first = tokio::spawn(async move { c1.write(0, &[1u8; 4096], false).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 8 MiB cannot fit in the socket buffers while the server reads nothing: the send
    // stops inside the payload, and the caller's deadline drops it there.
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        c.write(MIB, &vec![2u8; 8 * MIB as usize], false),
    )
    .await;
    assert!(cut.is_err(), "the big write cannot have finished");
    assert!(c.is_closed(), "the connection is poisoned");
    let later = tokio::time::timeout(
        Duration::from_secs(2),
        c.write(20 * MIB, &[3u8; 4096], false),
    )
    .await
    .expect("refused at once, not queued");
    assert!(matches!(later, Err(ClientError::Closed)), "{later:?}");
    // The device goes on: nothing of the cut request or the refused one lands.
    dev.stalled.store(false, Ordering::Release);
    dev.go.notify_waiters();
    let _ = tokio::time::timeout(Duration::from_secs(5), first).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fresh = client::connect_unix(&socket, cfg).await.expect("reconnect");
    let big = fresh.read(MIB, (8 * MIB) as u32).await.expect("read");
    assert!(big.iter().all(|b| *b == 0), "part of the cut write landed");
    let small = fresh.read(20 * MIB, 4096).await.expect("read");
    assert!(small.iter().all(|b| *b == 0), "the refused write landed");
}
