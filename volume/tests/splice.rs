//! Spliced reads (docs/design/070 §5.3) against a real SAN target: `nbdkit file` on a
//! Unix socket. The data of a read goes from the target's socket into a pipe and from
//! the pipe into a TCP connection; what comes out of the connection's other end is what
//! the LUN file holds. Targets that cannot take part (TCP, no multi-conn consistency)
//! and reads out of range or outside the spliced sizes are not offered; a target that
//! dies gives a path error within io_timeout, a target's error a media error, and a
//! restarted target serves the next read (idle connections of the old one are dropped).
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;
use volume::path::splice::{MIN_SPLICE, PIPE_CAPACITY};
use volume::path::{ErrorClass, LunPath, NbdPath, PathError};

const IO_TIMEOUT: Duration = Duration::from_secs(1);

fn connect(uri: &str) -> NbdPath {
    connect_nbd(uri, 1, IO_TIMEOUT)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connected pair of TCP sockets on loopback.
async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = tokio::net::TcpStream::connect(l.local_addr().unwrap());
    let (a, b) = tokio::join!(a, l.accept());
    (a.unwrap(), b.unwrap().0)
}

/// Reads `len` bytes at `off` through a pipe into a TCP connection, and what arrived.
async fn spliced(p: &NbdPath, off: u64, len: usize) -> Result<Vec<u8>, PathError> {
    let (tx, mut rx) = tcp_pair().await;
    let mut data = p
        .read_spliced(off, len)
        .expect("offered")
        .await?
        .expect("this host splices");
    assert_eq!(data.len(), len);
    // Large reads fill the socket: the other end reads while the splice runs.
    let read = async {
        let mut got = vec![0u8; len];
        rx.read_exact(&mut got).await.unwrap();
        got
    };
    let (sent, got) = tokio::join!(data.splice_into(&tx), read);
    sent.unwrap();
    Ok(got)
}

#[test]
fn spliced_reads_carry_the_lun_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let (lun, bytes) = patterned_lun(dir.path(), size, 9);
    let t = nbdkit(dir.path(), &lun, &[]);
    let p = connect(&t.uri);
    let rt = runtime();
    for (off, len) in [
        (0u64, PIPE_CAPACITY),
        (12_345, MIN_SPLICE),
        (5 * MIB + 7, 300_001),
        (size - PIPE_CAPACITY as u64, PIPE_CAPACITY),
    ] {
        // twice: the second read reuses the connection and the pipe
        for _ in 0..2 {
            let got = rt.block_on(spliced(&p, off, len)).unwrap();
            assert!(
                got[..] == bytes[off as usize..off as usize + len],
                "bytes at {off}+{len}"
            );
        }
    }
    // Eight at once, as a peer serving QD8 does.
    let got = rt.block_on(async {
        let reads = (0..8u64).map(|i| spliced(&p, i * MIB, PIPE_CAPACITY));
        futures_util::future::join_all(reads).await
    });
    for (i, g) in got.into_iter().enumerate() {
        let at = i * MIB as usize;
        assert!(g.unwrap()[..] == bytes[at..at + PIPE_CAPACITY], "read {i}");
    }
}

#[test]
fn reads_that_cannot_be_spliced_are_not_offered() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let lun = lun_file(dir.path(), size);
    let t = nbdkit(dir.path(), &lun, &[]);
    let p = connect(&t.uri);
    assert!(p.read_spliced(0, MIN_SPLICE - 1).is_none(), "too short");
    assert!(p.read_spliced(0, PIPE_CAPACITY + 1).is_none(), "too long");
    assert!(
        p.read_spliced(size - 4096, MIN_SPLICE).is_none(),
        "past the end"
    );
    // No multi-conn consistency: reads stay on the path's own connections.
    let t2 = nbdkit(
        dir.path(),
        &lun,
        &["--filter=multi-conn", "multi-conn-mode=disable"],
    );
    assert!(connect(&t2.uri).read_spliced(0, MIN_SPLICE).is_none());
    // TCP targets neither.
    let t3 = nbdkit_tcp(&lun, free_port());
    assert!(connect(&t3.uri).read_spliced(0, MIN_SPLICE).is_none());
}

#[test]
fn a_dead_target_is_a_path_error_and_a_target_error_a_media_error() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 8 * MIB);
    let mut t = nbdkit(
        dir.path(),
        &lun,
        &["--filter=error", "error-pread-rate=1", "error=EIO"],
    );
    let p = connect(&t.uri);
    let rt = runtime();
    let e = rt.block_on(spliced(&p, 0, MIN_SPLICE)).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Media, "{e}");
    t.child.kill().unwrap();
    t.child.wait().unwrap();
    let start = Instant::now();
    let e = rt.block_on(spliced(&p, 0, MIN_SPLICE)).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Path, "{e}");
    assert!(start.elapsed() < IO_TIMEOUT * 2);
}

#[test]
fn a_restarted_target_serves_the_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let (lun, bytes) = patterned_lun(dir.path(), size, 4);
    let socket = dir.path().join("san.sock");
    let mut t = nbdkit_at(&socket, &lun, &[]);
    let p = connect(&t.uri);
    let rt = runtime();
    // Two reads at once leave two idle connections behind.
    let (a, b) = rt
        .block_on(async { tokio::join!(spliced(&p, 0, MIN_SPLICE), spliced(&p, MIB, MIN_SPLICE)) });
    a.unwrap();
    b.unwrap();
    t.kill();
    let _t = nbdkit_at(&socket, &lun, &[]);
    for _ in 0..3 {
        let got = rt.block_on(spliced(&p, 3 * MIB, PIPE_CAPACITY)).unwrap();
        assert!(got[..] == bytes[3 * MIB as usize..3 * MIB as usize + PIPE_CAPACITY]);
    }
}

#[test]
fn at_most_max_splicing_reads_run_at_once() {
    use volume::path::splice::MAX_SPLICING;
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 8 * MIB);
    let t = nbdkit(dir.path(), &lun, &[]);
    let p = connect(&t.uri);
    // Futures made and not yet run count from when they first run; these are started.
    let rt = runtime();
    rt.block_on(async {
        let mut running = Vec::new();
        for _ in 0..MAX_SPLICING {
            let mut f = p.read_spliced(0, MIN_SPLICE).expect("offered");
            // one poll starts the read (it then waits on the target)
            let _ = futures_util::poll!(&mut f);
            running.push(f);
        }
        assert!(p.read_spliced(0, MIN_SPLICE).is_none(), "over the limit");
        for f in running {
            f.await.unwrap().expect("spliced");
        }
        assert!(p.read_spliced(0, MIN_SPLICE).is_some(), "room again");
    });
}

#[test]
fn a_target_that_now_serves_another_size_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (lun, _) = patterned_lun(dir.path(), 8 * MIB, 1);
    let socket = dir.path().join("san.sock");
    let mut t = nbdkit_at(&socket, &lun, &[]);
    let p = connect(&t.uri);
    t.kill();
    let other = dir.path().join("other.img");
    std::fs::write(&other, pattern(2, 0, (16 * MIB) as usize)).unwrap();
    let _t = nbdkit_at(&socket, &other, &[]);
    let rt = runtime();
    let e = rt.block_on(spliced(&p, 0, MIN_SPLICE)).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Path, "{e}");
    assert!(e.to_string().contains("size changed"), "{e}");
}
