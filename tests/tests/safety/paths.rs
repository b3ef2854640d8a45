//! SAN connections, late writes, flushes and runtime threads (042 §4, §5, §8, §10).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use csv_tests::nbdpy::Script;
use csv_tests::san::{Listen, San};
use csv_tests::volume::{VolumeCluster, volume_cluster_with};
use csv_tests::{Cluster, Options};
use volume::{LunPath, NbdOptions, NbdPath, NbdTarget};

use super::*;

fn lun_file(dir: &Path, size: u64) -> std::path::PathBuf {
    let p = dir.join("san.img");
    std::fs::File::create(&p)
        .and_then(|f| f.set_len(size))
        .expect("LUN file");
    p
}

/// fio through the NBD engine at `uri` with `job`, time-based (2 min at most), going on
/// after errors: a load the test kills when it is done.
fn fio_load(uri: &str, job: &[&str]) -> std::process::Child {
    need("fio", "fio");
    std::process::Command::new("fio")
        .args(["--name=load", "--ioengine=nbd", &format!("--uri={uri}")])
        .args(job)
        .args(["--time_based", "--runtime=120", "--continue_on_error=all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fio")
}

/// Item 4: a SAN request that times out in the middle of sending its payload poisons its
/// connection: no later request's bytes complete that payload (which would land garbage
/// on the LUN when the target catches up).
#[test]
fn a_timed_out_san_request_never_completes_with_another_requests_bytes() {
    let dir = tempfile::tempdir().expect("dir");
    let lun = lun_file(dir.path(), 256 * MIB);
    let san = San::start(Listen::Unix(dir.path().join("san.sock")), &lun, &[], &[]);
    let path = Arc::new(
        NbdPath::connect(
            NbdTarget::parse(&san.uri()).expect("uri"),
            NbdOptions {
                io_timeout: Duration::from_secs(2),
                connections: 1,
            },
        )
        .expect("connect"),
    );
    san.pause();
    let p1 = path.clone();
    // 1 MiB: more than a Unix socket buffers, so the send stops in the payload.
    let w1 = std::thread::spawn(move || p1.write_at(&vec![0xaa; MIB as usize], 0));
    std::thread::sleep(Duration::from_millis(900));
    let p2 = path.clone();
    let w2 = std::thread::spawn(move || p2.write_at(&vec![0xbb; MIB as usize], 64 * MIB));
    // w1 gives up at 2 s; the target catches up at 2.5 s, before w2's deadline.
    std::thread::sleep(Duration::from_millis(1600));
    san.resume();
    let r1 = w1.join().expect("w1");
    let _ = w2.join().expect("w2");
    assert!(r1.is_err(), "the first write cannot have been answered");
    std::thread::sleep(Duration::from_secs(1));
    let first = read_lun(&lun, 0, MIB as usize);
    let bad = first.iter().position(|b| *b != 0 && *b != 0xaa);
    assert!(
        bad.is_none(),
        "foreign bytes landed inside the timed-out write at {bad:?}: {:02x?}",
        &first[bad.unwrap_or(0)..(bad.unwrap_or(0) + 32).min(first.len())]
    );
}

/// Item 5 and the partition fault class: an owner cut off from the cluster *and* from its
/// SAN target (network namespaces) while it writes. Its lease lapses, another node takes
/// the VHD over and writes; when the link heals, none of the cut-off node's queued SAN
/// writes lands (TCP_USER_TIMEOUT and a reset on close drop them).
#[test]
fn a_partitioned_owners_queued_writes_never_land_after_the_takeover() {
    need("fio", "fio");
    let mut c = Cluster::new(
        3,
        Options {
            netns: true,
            ..Options::default()
        },
    );
    let hub = c.net().hub_address();
    let dir = tempfile::tempdir().expect("dir");
    let lun = lun_file(dir.path(), 2 * GIB);
    let _san = San::start(
        Listen::Tcp {
            ip: hub.to_string(),
            port: 10809,
            netns: Some(c.net().hub_name()),
        },
        &lun,
        &[],
        &[],
    );
    c.set_extra_config(&format!(
        "{FAST}[volume]\nlun = \"nbd://{hub}:10809/\"\nfence_wait = \"1s\"\n"
    ));
    c.bootstrap();
    c.wait_leader();
    csv_tests::leases::wait_leases(&c, &[1, 2, 3]);
    let vc = VolumeCluster::format_on(c, lun.clone(), dir);
    vc.ok(
        1,
        &["vhd", "create", "v", "--size", "64M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "v"]);
    let mut fio = fio_load(
        &vc.uri(2, "v"),
        &[
            "--rw=write",
            "--bs=1M",
            "--iodepth=16",
            "--size=64M",
            "--buffer_pattern=0xaa",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    vc.c.net().cut(&[2]);
    attach_until(&vc, 3, "v", &[], Duration::from_secs(60));
    qemu_io_ok(&vc.uri(3, "v"), &["write -P 0xcc 0 64M", "flush"]);
    vc.c.net().heal(&[2]);
    // Long enough for any retransmission of the cut-off connections to arrive.
    std::thread::sleep(Duration::from_secs(25));
    let _ = fio.kill();
    let _ = fio.wait();
    std::thread::sleep(Duration::from_secs(1));
    qemu_io_ok(&vc.uri(3, "v"), &["read -P 0xcc 0 64M"]);
}

/// A fence that lets `n` checks pass, then stays closed.
#[derive(Debug)]
struct Countdown(AtomicI64);

impl volume::WriteFence for Countdown {
    fn check(&self) -> Result<(), volume::FenceError> {
        if self.0.fetch_sub(1, Ordering::AcqRel) > 0 {
            Ok(())
        } else {
            Err(volume::FenceError("closed (test)".into()))
        }
    }
}

fn access(fence: Arc<dyn volume::WriteFence>) -> volume::WriteAccess {
    let pool = Arc::new(volume::testing::ExtentPool::new(8..16, false));
    volume::WriteAccess {
        source: pool.clone(),
        sink: Arc::new(volume::testing::RecordingSink::new(Some(pool))),
        fence,
        fence_wait: Duration::ZERO,
    }
}

/// Item 6: every LUN write call asks the fence: zeroing through a SAN target without
/// WRITE_ZEROES (nbdkit `nozero`: zeros are written 1 MiB at a time) stops at the first
/// call after the fence closed. (An unaligned O_DIRECT write is one `pwrite` after its
/// read-back; the unit tests of `FilePath` show the fence asked after the read-back.)
#[test]
fn every_lun_write_call_asks_the_fence() {
    let dir = tempfile::tempdir().expect("dir");
    let size = 64 * MIB;
    let lun = lun_file(dir.path(), size);
    std::fs::write(&lun, vec![0xffu8; size as usize]).expect("fill");
    let san = San::start(
        Listen::Unix(dir.path().join("nz.sock")),
        &lun,
        &[],
        &["--filter=nozero", "zeromode=none"],
    );
    let path: Arc<dyn LunPath> = Arc::new(
        NbdPath::connect(
            NbdTarget::parse(&san.uri()).expect("uri"),
            NbdOptions {
                io_timeout: Duration::from_secs(5),
                connections: 1,
            },
        )
        .expect("connect"),
    );
    let layout = volume::Layout::plan(size, MIB, MIB).expect("layout");
    // A writable file of 4 mapped extents and length 0 is zeroed when opened: one fence
    // check, then the zeroing of 4 MiB, written by the path as four 1 MiB writes.
    let map = volume::ExtentMap::from_runs(&[volume::ExtentRun::new(0, 4)]).expect("map");
    let fence = Arc::new(Countdown(AtomicI64::new(1)));
    let r = volume::ExtentFile::open(path.clone(), layout, "z", map, 0, Some(access(fence)));
    drop(r);
    let data = read_lun(&lun, layout.data_offset, 4 * MIB as usize);
    let zeroed = data.chunks(MIB as usize).filter(|c| c[0] == 0).count();
    assert!(
        zeroed <= 1,
        "{zeroed} MiB zeroed after the fence closed behind the first check"
    );
}

/// Item 7: once a SAN connection that carried completed, unflushed writes is lost, every
/// later flush of that image fails (until it is reopened), and a detach whose flush fails
/// keeps the hold; a second detach reopens the VHD and releases it.
#[test]
fn a_lost_san_connection_fails_every_later_flush_of_the_image() {
    let dir = tempfile::tempdir().expect("dir");
    let lun = lun_file(dir.path(), 2 * GIB);
    // A target without multi-conn consistency: what a lost connection carried may be
    // lost with it (a target that advertises CAN_MULTI_CONN makes it durable at a flush
    // on any connection, 041 §1).
    let mut san = San::start(
        Listen::Unix(dir.path().join("san.sock")),
        &lun,
        &[],
        &["--filter=multi-conn", "multi-conn-mode=disable"],
    );
    let vc = volume_cluster_with(
        2,
        MIB,
        &format!(
            "{FAST}[volume]\nlun = \"{}\"\nnbd_connections = 1\n",
            san.uri()
        ),
    );
    vc.ok(1, &["vhd", "create", "v", "--size", "1G"]);
    vc.ok(2, &["vhd", "attach", "v"]);
    let mut s = Script::spawn(
        r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xaa" * 65536, 0)
print("written", flush=True)
sys.stdin.readline()
for i in range(3):
    try:
        h.flush()
        print("flush ok", flush=True)
    except nbd.Error as e:
        print("flush failed", e, flush=True)
"#,
        &[&vc.uri(2, "v")],
    );
    s.expect("written");
    san.restart();
    s.go();
    let out = s.finish(Duration::from_secs(60));
    assert!(
        !out.contains("flush ok"),
        "a flush succeeded after unflushed writes were lost: {out}"
    );
    let e = vc.refused(2, &["vhd", "detach", "v"]);
    assert!(e.contains("flush"), "{e}");
    let o = owner(&vc, 1, "v");
    assert_eq!(o["owner"], 2, "the hold was released: {o}");
    vc.ok(2, &["vhd", "detach", "v"]);
    assert!(owner(&vc, 1, "v")["owner"].is_null());
}

/// Item 12: a SAN target that stops answering for longer than the node's lease never
/// starves the node's runtime: I/O fails or waits in the blocking pool while the lease
/// keeps being renewed (no lapse, same epoch).
#[test]
fn a_stalled_san_never_starves_the_lease() {
    need("fio", "fio");
    let dir = tempfile::tempdir().expect("dir");
    let lun = lun_file(dir.path(), 2 * GIB);
    let san = San::start(Listen::Unix(dir.path().join("san.sock")), &lun, &[], &[]);
    let vc = volume_cluster_with(
        2,
        MIB,
        &format!("{FAST}[volume]\nlun = \"{}\"\n", san.uri()),
    );
    vc.ok(
        1,
        &["vhd", "create", "v", "--size", "256M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "v"]);
    let fence = |vc: &VolumeCluster| -> serde_json::Value {
        let v: serde_json::Value =
            serde_json::from_str(&vc.ok(2, &["node", "liveness", "--json"])).expect("json");
        v["local_fence"].clone()
    };
    let before = fence(&vc);
    let mut fio = fio_load(
        &vc.uri(2, "v"),
        &[
            "--rw=randrw",
            "--bs=4k",
            "--iodepth=32",
            "--numjobs=2",
            "--size=256M",
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    san.pause();
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(200));
    }
    san.resume();
    std::thread::sleep(Duration::from_secs(3));
    let _ = fio.kill();
    let _ = fio.wait();
    let after = fence(&vc);
    assert_eq!(
        after["epoch"], before["epoch"],
        "node 2 lost its epoch: {after}"
    );
    assert_eq!(
        after["lapses"], before["lapses"],
        "node 2's lease lapsed during the SAN stall: {after}"
    );
}
