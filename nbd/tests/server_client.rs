//! The server and the client of this crate against each other, in process: data
//! round trips with many requests in flight, exports added and removed at runtime,
//! graceful shutdown, the connection limit, TLS (optional, required, client
//! certificates), simple-reply mode.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nbd::client::{self, ClientConfig, ClientError, ClientTls};
use nbd::device::{BlockDevice, DeviceFuture, Extent, ExtentKind, ReadData, ZeroFlags};
use nbd::mem::MemDevice;
use nbd::server::{ExportOptions, Server, ServerConfig, TlsPolicy, listener};
use nbd::{Capabilities, Errno};

const MIB: u64 = 1 << 20;

struct Fixture {
    server: Server,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn start(config: ServerConfig) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("s.sock");
    let server = Server::new(config).expect("server");
    server.spawn_listener(listener::bind_unix(&socket, 0o600).expect("bind"));
    Fixture {
        server,
        socket,
        _dir: dir,
    }
}

fn cfg(export: &str) -> ClientConfig {
    ClientConfig {
        export: export.into(),
        request_timeout: Duration::from_secs(20),
        ..ClientConfig::default()
    }
}

fn server_errno(r: Result<impl std::fmt::Debug, ClientError>) -> Errno {
    match r {
        Err(ClientError::Server { errno, .. }) => errno,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_flight_round_trip() {
    let f = start(ServerConfig::default());
    f.server
        .add_export(
            "",
            Arc::new(MemDevice::new(64 * MIB)),
            ExportOptions::default(),
        )
        .expect("add");
    let c = client::connect_unix(&f.socket, cfg(""))
        .await
        .expect("connect");
    let info = c.info().clone();
    assert!(info.structured && info.base_allocation.is_some());
    assert_eq!(
        (info.min_block, info.preferred_block, info.max_block),
        (512, 4096, 32 << 20)
    );

    let mut tasks = Vec::new();
    for i in 0..256u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let data = vec![(i % 251) as u8 + 1; 4096 * (1 + (i % 4) as usize)];
            let off = i * 64 * 1024;
            c.write(off, &data, i % 7 == 0).await.expect("write");
            assert_eq!(c.read(off, data.len() as u32).await.expect("read"), data);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    c.flush().await.expect("flush");

    // block status sees the writes, trims and zeroes make holes
    let ext = c.block_status(0, 128 * 1024, false).await.expect("status");
    assert_eq!(ext[0], Extent::new(4096, ExtentKind::Data));
    assert_eq!(ext[1].kind, ExtentKind::Hole);
    c.trim(0, 4096).await.expect("trim");
    c.write_zeroes(65536, 4096, ZeroFlags::default())
        .await
        .expect("zero");
    let ext = c.block_status(0, 128 * 1024, true).await.expect("status");
    assert_eq!(ext, vec![Extent::new(65536 + 4096, ExtentKind::Hole)]);
    assert!(
        c.read(65536, 4096)
            .await
            .expect("read")
            .iter()
            .all(|b| *b == 0)
    );

    // a large read spanning data and holes arrives whole
    let big = c.read(0, 32 << 20).await.expect("big read");
    assert_eq!(big.len(), 32 << 20);
    assert_eq!(big[2 * 65536], 3);

    // bad requests: errors, connection stays usable
    assert_eq!(server_errno(c.read(100, 512).await), Errno::Inval);
    assert_eq!(server_errno(c.read(64 * MIB, 512).await), Errno::Inval);
    assert_eq!(
        server_errno(c.write(64 * MIB, &[0; 512], false).await),
        Errno::NoSpc
    );
    c.cache(0, 4096).await.expect("cache");
    c.disconnect().await.expect("disc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_replies_without_structured_negotiation() {
    let f = start(ServerConfig::default());
    f.server
        .add_export("x", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
        .expect("add");
    let c = client::connect_unix(
        &f.socket,
        ClientConfig {
            structured_replies: false,
            ..cfg("x")
        },
    )
    .await
    .expect("connect");
    assert!(!c.info().structured);
    c.write(4096, &[9; 4096], false).await.expect("write");
    assert_eq!(c.read(4096, 4096).await.expect("read"), vec![9u8; 4096]);
    assert!(matches!(
        c.block_status(0, 4096, false).await,
        Err(ClientError::NotNegotiated(_))
    ));
    assert_eq!(server_errno(c.read(0, 100).await), Errno::Inval);
    // a read over a hole comes back as zero bytes in a simple reply
    assert_eq!(
        c.read(MIB - 8192, 8192).await.expect("read"),
        vec![0u8; 8192]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_export_per_export() {
    let f = start(ServerConfig::default());
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    f.server
        .add_export("rw", dev.clone(), ExportOptions::default())
        .expect("add");
    f.server
        .add_export(
            "ro",
            dev,
            ExportOptions {
                read_only: true,
                description: "same device, read-only".into(),
                observer: None,
            },
        )
        .expect("add");
    let rw = client::connect_unix(&f.socket, cfg("rw"))
        .await
        .expect("rw");
    let ro = client::connect_unix(&f.socket, cfg("ro"))
        .await
        .expect("ro");
    assert!(ro.info().has(nbd::proto::TFLAG_READ_ONLY));
    assert!(!rw.info().has(nbd::proto::TFLAG_READ_ONLY));
    rw.write(0, &[1; 512], false).await.expect("write");
    assert_eq!(
        server_errno(ro.write(0, &[2; 512], false).await),
        Errno::Perm
    );
    assert_eq!(ro.read(0, 512).await.expect("read"), vec![1u8; 512]);
    assert_eq!(
        ro.info().description.as_deref(),
        Some("same device, read-only")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_added_and_removed_at_runtime() {
    let f = start(ServerConfig {
        linger: Duration::from_millis(300),
        ..ServerConfig::default()
    });
    f.server
        .add_export("a", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
        .expect("add");
    assert!(
        f.server
            .add_export("a", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
            .is_err()
    );
    let c = client::connect_unix(&f.socket, cfg("a"))
        .await
        .expect("connect");
    c.write(0, &[5; 512], false).await.expect("write");

    let removal = f.server.remove_export("a").expect("remove");
    // new connections no longer see it
    match client::connect_unix(&f.socket, cfg("a")).await {
        Err(ClientError::Refused { reply, .. }) => {
            assert_eq!(reply, nbd::proto::REP_ERR_UNKNOWN)
        }
        other => panic!("connected to a removed export: {other:?}"),
    }
    // the open connection gets ESHUTDOWN for new requests, then is closed
    assert_eq!(server_errno(c.read(0, 512).await), Errno::Shutdown);
    tokio::time::timeout(Duration::from_secs(5), removal.wait())
        .await
        .expect("removal completes once the connection is gone");
    assert!(c.read(0, 512).await.is_err());

    // a new export under the same name works
    f.server
        .add_export(
            "a",
            Arc::new(MemDevice::new(2 * MIB)),
            ExportOptions::default(),
        )
        .expect("re-add");
    let c2 = client::connect_unix(&f.socket, cfg("a"))
        .await
        .expect("connect");
    assert_eq!(c2.size(), 2 * MIB);
    assert_eq!(f.server.export_names(), vec!["a".to_owned()]);
}

/// A device whose reads take a while: lets tests catch requests in flight.
#[derive(Debug)]
struct Slow(MemDevice, Duration);

impl BlockDevice for Slow {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn read(&self, offset: u64, len: u32) -> DeviceFuture<'_, ReadData> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            self.0.read(offset, len).await
        })
    }
    fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceFuture<'_, ()> {
        self.0.write(offset, data, fua)
    }
    fn flush(&self) -> DeviceFuture<'_, ()> {
        self.0.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceFuture<'_, ()> {
        self.0.write_zeroes(offset, len, flags)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_in_flight_then_eshutdown() {
    let f = start(ServerConfig {
        linger: Duration::from_millis(500),
        ..ServerConfig::default()
    });
    f.server
        .add_export(
            "",
            Arc::new(Slow(MemDevice::new(MIB), Duration::from_millis(400))),
            ExportOptions::default(),
        )
        .expect("add");
    let c = client::connect_unix(&f.socket, cfg(""))
        .await
        .expect("connect");
    let reads: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.read(i * 4096, 4096).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.server.shutdown();
    for r in reads {
        r.await.expect("task").expect("in-flight read answered");
    }
    assert_eq!(server_errno(c.read(0, 512).await), Errno::Shutdown);
    assert!(client::connect_unix(&f.socket, cfg("")).await.is_err());
    tokio::time::timeout(Duration::from_secs(5), f.server.wait())
        .await
        .expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit() {
    let f = start(ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    });
    f.server
        .add_export("", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
        .expect("add");
    let a = client::connect_unix(&f.socket, cfg("")).await.expect("1st");
    let b = client::connect_unix(&f.socket, cfg("")).await.expect("2nd");
    assert!(client::connect_unix(&f.socket, cfg("")).await.is_err());
    a.disconnect().await.expect("disc");
    drop(a);
    let t = std::time::Instant::now();
    loop {
        if client::connect_unix(&f.socket, cfg("")).await.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.read(0, 512).await.expect("read");
}

fn tls_client(pki: &common::certs::Pki, with_cert: bool) -> ClientTls {
    let client_cert = with_cert.then_some((pki.client_cert.as_path(), pki.client_key.as_path()));
    ClientTls {
        config: nbd::tls::client_config(&pki.ca, client_cert).expect("client tls"),
        server_name: "localhost".try_into().expect("name"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_optional_and_client_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = common::certs::generate(dir.path());

    // required, with client certificates
    let tls = nbd::tls::server_config(&pki.server_cert, &pki.server_key, Some(&pki.ca))
        .expect("server tls");
    let f = start(ServerConfig {
        tls: Some(tls),
        tls_policy: TlsPolicy::Required,
        ..ServerConfig::default()
    });
    f.server
        .add_export("", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
        .expect("add");
    assert!(matches!(
        client::connect_unix(&f.socket, cfg("")).await,
        Err(ClientError::TlsRequired)
    ));
    assert!(
        client::connect_unix(
            &f.socket,
            ClientConfig {
                tls: Some(tls_client(&pki, false)),
                ..cfg("")
            }
        )
        .await
        .is_err(),
        "a client without a certificate got in"
    );
    let c = client::connect_unix(
        &f.socket,
        ClientConfig {
            tls: Some(tls_client(&pki, true)),
            ..cfg("")
        },
    )
    .await
    .expect("TLS client");
    c.write(0, &[7; 4096], true).await.expect("write");
    assert_eq!(c.read(0, 4096).await.expect("read"), vec![7u8; 4096]);
    assert!(
        c.info().structured,
        "structured replies renegotiated after STARTTLS"
    );

    // optional: both kinds of clients get in
    let tls = nbd::tls::server_config(&pki.server_cert, &pki.server_key, None).expect("tls");
    let g = start(ServerConfig {
        tls: Some(tls),
        tls_policy: TlsPolicy::Optional,
        ..ServerConfig::default()
    });
    g.server
        .add_export("", Arc::new(MemDevice::new(MIB)), ExportOptions::default())
        .expect("add");
    client::connect_unix(&g.socket, cfg(""))
        .await
        .expect("plain");
    client::connect_unix(
        &g.socket,
        ClientConfig {
            tls: Some(tls_client(&pki, false)),
            ..cfg("")
        },
    )
    .await
    .expect("tls");
}

/// Counts what an export's observer was told, per request kind.
#[derive(Debug, Default)]
struct Counting {
    requests: [std::sync::atomic::AtomicU64; 7],
    bytes: [std::sync::atomic::AtomicU64; 7],
    failed: std::sync::atomic::AtomicU64,
}

impl nbd::server::RequestObserver for Counting {
    fn completed(&self, kind: nbd::server::RequestKind, bytes: u64, _: Duration, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests[kind.index()].fetch_add(1, Relaxed);
        self.bytes[kind.index()].fetch_add(bytes, Relaxed);
        if !ok {
            self.failed.fetch_add(1, Relaxed);
        }
    }
}

/// The observer of an export hears of each request its device answered, once, with
/// its kind and length; requests refused before the device (out of range) are not
/// reported, and other exports' requests go to their own observer (none here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_observer_sees_each_answered_request() {
    use nbd::server::RequestKind;
    use std::sync::atomic::Ordering::Relaxed;
    let f = start(ServerConfig::default());
    let seen = Arc::new(Counting::default());
    let dev: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(MIB));
    f.server
        .add_export(
            "watched",
            dev.clone(),
            ExportOptions {
                observer: Some(seen.clone()),
                ..ExportOptions::default()
            },
        )
        .expect("add");
    f.server
        .add_export("plain", dev, ExportOptions::default())
        .expect("add");
    let c = client::connect_unix(&f.socket, cfg("watched"))
        .await
        .expect("connect");
    for i in 0..8u64 {
        c.write(i * 4096, &[7; 4096], false).await.expect("write");
    }
    c.flush().await.expect("flush");
    assert_eq!(c.read(0, 8192).await.expect("read"), vec![7u8; 8192]);
    assert!(c.read(MIB, 512).await.is_err(), "beyond the end");
    let p = client::connect_unix(&f.socket, cfg("plain"))
        .await
        .expect("connect");
    p.write(0, &[1; 512], false).await.expect("write");
    let n = |k: RequestKind| seen.requests[k.index()].load(Relaxed);
    let b = |k: RequestKind| seen.bytes[k.index()].load(Relaxed);
    assert_eq!((n(RequestKind::Write), b(RequestKind::Write)), (8, 32768));
    assert_eq!((n(RequestKind::Flush), b(RequestKind::Flush)), (1, 0));
    assert_eq!((n(RequestKind::Read), b(RequestKind::Read)), (1, 8192));
    assert_eq!(seen.failed.load(Relaxed), 0);
}
