//! `NbdPath` against real SAN targets started by the tests: the VHD scenario over
//! `nbdkit file` and `qemu-nbd --shared=8`; a target killed mid-stream gives path
//! failures within io_timeout (never a hang), and the path reconnects to a restarted
//! target, counting the connections lost with unflushed writes; a target that
//! stops answering times out; nbdkit's error filter gives media errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use volume::path::{ErrorClass, LunPath, NbdOptions, NbdPath, NbdTarget, PathError};

const IO_TIMEOUT: Duration = Duration::from_secs(1);

fn connect(uri: &str) -> NbdPath {
    connect_nbd(uri, 2, IO_TIMEOUT)
}

#[test]
fn vhd_scenario_over_nbdkit_file() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 64 * MIB);
    let t = nbdkit(dir.path(), &lun, &[]);
    let vol = Vol::format(Arc::new(connect(&t.uri)), MIB);
    scenario::vhd_on_volume(&vol, dir.path());
}

#[test]
fn vhd_scenario_over_qemu_nbd_shared() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 64 * MIB);
    let t = qemu_nbd(dir.path(), &lun);
    let vol = Vol::format(Arc::new(connect(&t.uri)), MIB);
    scenario::vhd_on_volume(&vol, dir.path());
}

#[test]
fn tcp_target_and_large_requests_are_split() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 80 * MIB);
    let t = nbdkit_tcp(&lun, free_port());
    let p = connect(&t.uri);
    assert_eq!(p.size().unwrap(), 80 * MIB);
    // 40 MiB: more than any target's 32 MiB maximum request.
    let data = pattern(3, 0, (40 * MIB) as usize);
    p.write_at(&data, 5).unwrap();
    p.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    p.read_at(&mut back, 5).unwrap();
    assert!(back == data);
    p.write_zeroes(MIB, 3 * MIB).unwrap();
    p.read_at(&mut back[..(3 * MIB) as usize], MIB).unwrap();
    assert!(back[..(3 * MIB) as usize].iter().all(|&b| b == 0));
    let e = p.read_at(&mut back[..10], 80 * MIB - 5).unwrap_err();
    assert!(matches!(e, PathError::OutOfRange { .. }), "{e}");
    // The file holds the bytes (no page-cache tricks: nbdkit wrote them).
    let file = std::fs::read(&lun).unwrap();
    assert_eq!(
        &file[5 + 4 * MIB as usize..5 + 4 * MIB as usize + 100],
        &data[4 * MIB as usize..4 * MIB as usize + 100]
    );
}

/// A target without multi-conn consistency (what a lost connection carried may be lost
/// with it: 041 §1).
const NO_MULTI_CONN: &[&str] = &["--filter=multi-conn", "multi-conn-mode=disable"];

/// A target that advertises multi-conn consistency makes every write it answered on any
/// connection durable at a flush on any other: losing a connection that carried
/// completed, unflushed writes loses nothing, and the next flush vouches for them.
#[test]
fn a_multi_conn_targets_lost_connection_loses_no_answered_write() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 16 * MIB);
    let socket = dir.path().join("san.sock");
    let mut t = nbdkit_at(&socket, &lun, &[]);
    let p = connect(&t.uri);
    p.write_at(&[7u8; 4096], 0).unwrap();
    t.kill();
    let _t2 = nbdkit_at(&socket, &lun, &[]);
    let start = Instant::now();
    while let Err(e) = p.flush() {
        assert!(e.is_path_failure(), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no reconnect: {e}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(p.lost_writes(), 0);
    let mut b = [0u8; 4096];
    p.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [7u8; 4096]);
}

#[test]
fn killed_target_gives_path_errors_within_io_timeout_then_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 16 * MIB);
    let socket = dir.path().join("san.sock");
    let mut t = nbdkit_at(&socket, &lun, NO_MULTI_CONN);
    let p = Arc::new(connect(&t.uri));
    p.write_at(&[1u8; 4096], 0).unwrap();
    p.flush().unwrap();

    // Writers keep going while the target dies.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let p = p.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) && outcomes.len() < 100_000 {
                    let start = Instant::now();
                    let r = p.write_at(&[k as u8; 65536], (k * 2 * MIB) + (i % 16) * 65536);
                    outcomes.push((start.elapsed(), r.err()));
                    i += 1;
                }
                outcomes
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    t.kill();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Release);
    let mut failures = 0;
    for w in writers {
        for (took, err) in w.join().unwrap() {
            assert!(
                took < IO_TIMEOUT + Duration::from_millis(500),
                "a call took {took:?}"
            );
            if let Some(e) = err {
                failures += 1;
                assert_eq!(e.class(), ErrorClass::Path, "{e}");
            }
        }
    }
    assert!(failures > 0, "writes failed once the target was killed");
    let start = Instant::now();
    let e = p.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert!(e.is_path_failure(), "{e}");
    assert!(start.elapsed() < IO_TIMEOUT + Duration::from_millis(500));

    // Target back: the path reconnects (after its backoff) and I/O works; the path counts
    // the connections lost with completed, unflushed writes (their owners' flushes fail).
    let _t2 = nbdkit_at(&socket, &lun, NO_MULTI_CONN);
    let start = Instant::now();
    loop {
        match p.write_at(&[9u8; 4096], 8192) {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_path_failure(), "{e}");
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "no reconnect: {e}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    assert!(p.lost_writes() > 0, "the lost connections carried writes");
    p.flush().unwrap();
    let mut b = [0u8; 4096];
    p.read_at(&mut b, 8192).unwrap();
    assert_eq!(b, [9u8; 4096]);
}

#[test]
fn unresponsive_target_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 4 * MIB);
    // Every read sleeps 30 s in the target.
    let t = nbdkit(dir.path(), &lun, &["--filter=delay", "delay-read=30"]);
    let p = connect(&t.uri);
    let start = Instant::now();
    let e = p.read_at(&mut [0u8; 4096], 0).unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, PathError::Timeout { .. }), "{e}");
    assert!(e.is_path_failure());
    assert!(
        took >= IO_TIMEOUT && took < IO_TIMEOUT + Duration::from_millis(500),
        "{took:?}"
    );
    // Writes still work on a fresh connection.
    p.write_at(&[5u8; 4096], 0).unwrap();
}

#[test]
fn target_errors_are_media_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lun = lun_file(dir.path(), 4 * MIB);
    let t = nbdkit(
        dir.path(),
        &lun,
        &[
            "--filter=error",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=1",
            "error-pread=EIO",
            "error-pread-rate=1",
        ],
    );
    let p = connect(&t.uri);
    let e = p.write_at(&[1u8; 4096], 0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Media, "{e}");
    assert_eq!(e.errno(), libc::ENOSPC, "{e}");
    let e = p.read_at(&mut [0u8; 4096], 0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Media, "{e}");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    // A media error leaves the connection usable.
    p.flush().unwrap();
    drop(t);

    // A target that says it is shutting down is a path failure (another path may work).
    let t = nbdkit(
        dir.path(),
        &lun,
        &[
            "--filter=error",
            "error-pread=ESHUTDOWN",
            "error-pread-rate=1",
        ],
    );
    let p = connect(&t.uri);
    let e = p.read_at(&mut [0u8; 512], 0).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Path, "{e}");
}

#[test]
fn unreachable_target_fails_fast_as_a_path_error() {
    let dir = tempfile::tempdir().unwrap();
    let target = NbdTarget::parse(&format!(
        "nbd+unix:///?socket={}",
        dir.path().join("nobody.sock").display()
    ))
    .unwrap();
    let start = Instant::now();
    let e = NbdPath::connect(target, NbdOptions::default()).unwrap_err();
    assert!(e.is_path_failure(), "{e}");
    assert!(start.elapsed() < Duration::from_secs(1));
}
