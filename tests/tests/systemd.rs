//! `csv-node run` as systemd runs it, without systemd (docs/design/100): the
//! notification protocol over a datagram socket of the test's (READY=1 with STATUS=,
//! WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1), a watchdog interval the outage
//! budget does not allow refused at start, `check-config` and `run` naming what is
//! wrong in a bad file, and the admin socket's modes and read-only group (a client
//! switched to another user with setpriv).

use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use csv_tests::{PATIENCE, binary};

/// A node config in `dir` (data under `dir/data`, admin socket `dir/run/admin.sock`)
/// with `extra` appended.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let text = format!(
        "[node]\nid = 1\n[cluster]\nlisten = \"127.0.0.1:{port}\"\n[paths]\ndata_dir = \"{}\"\n\
         admin_socket = \"{}\"\n[tls]\nplaintext = true\n[hypervisor]\nenabled = false\n{extra}",
        dir.join("data").display(),
        dir.join("run/admin.sock").display()
    );
    let p = dir.join("node.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn csv_node(args: &[&str]) -> Command {
    let mut c = Command::new(binary("csv-node"));
    c.args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

fn output(c: &mut Command) -> Output {
    c.stdin(Stdio::null()).output().expect("run csv-node")
}

#[test]
fn check_config_and_run_name_the_field_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config(dir.path(), "");
    let cfg = good.to_str().expect("utf-8 path");
    let o = output(&mut csv_node(&["check-config", "--config", cfg]));
    assert!(o.status.success(), "{o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");

    let base = std::fs::read_to_string(&good).expect("read");
    let cases = [
        (
            base.replace("id = 1", "id = 0"),
            "node.id: must be 1 to 2^63-1",
        ),
        (
            format!("{base}[lease]\noutage_budget = \"5s\"\n"),
            "lease.outage_budget: outage budget 5s is outside [6s, 300s]",
        ),
        (
            format!("{base}[lease]\noutage_buget = \"8s\"\n"),
            "unknown field `outage_buget`, expected `outage_budget` or `watchdog`",
        ),
        (
            format!("{base}[admin]\nread_only_group = \"csv-no-such-group\"\n"),
            "admin.read_only_group: \"csv-no-such-group\": no such group on this host",
        ),
        (
            format!("{base}[admin]\nread_only_group = \"a b\"\n"),
            "admin.read_only_group: \"a b\" is not a group name",
        ),
        (
            format!("{base}[volume]\nlun = \"/dev/x\"\nio_timeout = \"5s\"\n"),
            "volume.io_timeout: 5s is above",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&p, text).expect("write");
        let p = p.to_str().expect("utf-8 path");
        for args in [["check-config", "--config", p], ["run", "--config", p]] {
            let o = output(&mut csv_node(&args));
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
            assert!(err.contains(want), "{args:?}: wanted {want:?} in {err}");
        }
    }
    let o = output(&mut csv_node(&[
        "check-config",
        "--config",
        "/nonexistent/node.toml",
    ]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("read config /nonexistent/node.toml: No such file"),
        "{err}"
    );
}

#[test]
fn a_watchdog_the_outage_budget_does_not_allow_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let cfg = cfg.to_str().expect("utf-8 path");
    let o = output(csv_node(&["run", "--config", cfg]).env("WATCHDOG_USEC", "2000000"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("WatchdogSec=2s") && err.contains("is above 1.861s"),
        "{err}"
    );
    // A watchdog of another process (WATCHDOG_PID) is not this node's.
    let o = output(
        csv_node(&["check-config", "--config", cfg])
            .env("WATCHDOG_USEC", "2000000")
            .env("WATCHDOG_PID", "1"),
    );
    assert!(o.status.success(), "{o:?}");
}

/// Messages received on `sock` until `want` is one of them (or the deadline passes).
fn wait_for(sock: &UnixDatagram, want: &str, within: Duration, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn ready_watchdog_pings_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), "");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let mut child = csv_node(&["run", "--config", cfg.to_str().expect("utf-8 path")])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("node.log")).expect("log"))
        .spawn()
        .expect("start csv-node");
    let mut seen = Vec::new();
    assert!(
        wait_for(&notify, "READY=1", PATIENCE, &mut seen),
        "no READY=1: {seen:?}"
    );
    let ready = seen.last().cloned().unwrap_or_default();
    assert!(
        ready.contains("STATUS=node 1 serving; admin socket"),
        "{ready:?}"
    );
    // Ready means the admin socket serves, owner-only without a read-only group.
    let sock = dir.path().join("run/admin.sock");
    let mode = std::fs::metadata(&sock)
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    std::os::unix::net::UnixStream::connect(&sock).expect("admin socket accepts");
    // Pings every 500 ms.
    seen.clear();
    let start = Instant::now();
    for _ in 0..3 {
        assert!(
            wait_for(&notify, "WATCHDOG=1", Duration::from_secs(2), &mut seen),
            "no WATCHDOG=1: {seen:?}"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(
        wait_for(&notify, "STOPPING=1", PATIENCE, &mut seen),
        "no STOPPING=1: {seen:?}"
    );
    let end = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < end, "csv-node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

fn setpriv_csvadm(sock: &Path, groups: Option<u32>, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534"]);
    match groups {
        Some(g) => c.arg(format!("--groups={g}")),
        None => c.arg("--clear-groups"),
    };
    c.arg(binary("csvadm"))
        .arg("--admin")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

/// With `[admin] read_only_group`, the socket is 0660 with that group; a member may
/// read (cluster status) but not change anything (cluster init: permission denied),
/// a user outside it cannot connect, and root may do anything.
#[test]
fn read_only_group_members_may_only_read() {
    let root = rustix::process::geteuid().is_root();
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if !root || !setpriv {
        eprintln!("skipped: needs root and setpriv to connect as another user");
        return;
    }
    // A group id no one else uses; numeric, so the test needs no groupadd.
    let gid = 64_123u32;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = config(
        dir.path(),
        &format!("[admin]\nread_only_group = \"{gid}\"\n"),
    );
    std::fs::create_dir(dir.path().join("run")).expect("run dir");
    std::fs::set_permissions(
        dir.path().join("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut child = csv_node(&["run", "--config", cfg.to_str().expect("utf-8 path")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start csv-node");
    let sock = dir.path().join("run/admin.sock");
    let end = Instant::now() + PATIENCE;
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < end, "the admin socket never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&sock).expect("admin socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);

    let o = setpriv_csvadm(&sock, Some(gid), &["cluster", "status"]);
    assert!(o.status.success(), "read-only status: {o:?}");
    let o = setpriv_csvadm(&sock, Some(gid), &["cluster", "init", "--name", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("permission_denied")
            && err.contains("read-only")
            && err.contains("cluster_init"),
        "{err}"
    );
    let o = setpriv_csvadm(&sock, None, &["cluster", "status"]);
    assert_eq!(o.status.code(), Some(3), "outside the group: {o:?}");

    let o = Command::new(binary("csvadm"))
        .arg("--admin")
        .arg(&sock)
        .args(["cluster", "init", "--name", "x"])
        .output()
        .expect("csvadm");
    assert!(o.status.success(), "root: {o:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// What csv-node-export@.socket does, without systemd: `systemd-socket-activate` listens,
/// starts `csv-node export` at the first connection with the socket in LISTEN_FDS, and the
/// export answers on it (the NBD greeting) and reports READY=1 with its listener.
#[test]
fn a_socket_activated_export_serves_and_reports_ready() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    let sock = dir.path().join("export.sock");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let mut child = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", sock.display()))
        .arg(format!("--setenv=NOTIFY_SOCKET={}", notify_path.display()))
        .arg(binary("csv-node"))
        .args(["export", "--format", "raw"])
        .arg(format!("{}=disk", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("export.log")).expect("log"))
        .spawn()
        .expect("systemd-socket-activate");
    let end = Instant::now() + PATIENCE;
    let mut conn = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("the activation socket never listened: {e}"),
        }
    };
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut greeting = [0u8; 8];
    std::io::Read::read_exact(&mut conn, &mut greeting).expect("NBD greeting");
    assert_eq!(&greeting, b"NBDMAGIC");
    let mut seen = Vec::new();
    assert!(
        wait_for(&notify, "READY=1", PATIENCE, &mut seen),
        "no READY=1: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=serving 1 exports on unix")),
        "{seen:?}"
    );
    drop(conn);
    let pid = rustix::process::Pid::from_child(&child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    assert!(
        wait_for(&notify, "STOPPING=1", PATIENCE, &mut seen),
        "no STOPPING=1: {seen:?}"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}

/// Count of `WATCHDOG=1` messages received on `sock` during `d`.
fn pings_during(sock: &UnixDatagram, d: Duration) -> usize {
    let end = Instant::now() + d;
    let mut buf = [0u8; 4096];
    let mut n = 0;
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok(len) = sock.recv(&mut buf) {
            n += String::from_utf8_lossy(&buf[..len])
                .lines()
                .filter(|l| *l == "WATCHDOG=1")
                .count();
        }
    }
    n
}

/// A writer cut off from the coordinator (the two other nodes paused) stops pinging
/// systemd's watchdog once its lease kill time is near (the lease watchdog is off here,
/// so the process lives on to be observed); an idle node would go on pinging. When the
/// others resume, its lease is settled (renewed, or lost with the hold) and the pings
/// resume.
#[test]
fn a_writer_whose_lease_runs_out_stops_the_watchdog_pings() {
    use csv_api::admin::vhd_ref;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = csv_tests::Options {
        extra_config: "[lease]\noutage_budget = \"6s\"\n".into(),
        ..csv_tests::Options::default()
    };
    let mut c = csv_tests::Cluster::new(3, opts);
    let mut sockets = std::collections::BTreeMap::new();
    for id in 1..=3u64 {
        let p = dir.path().join(format!("notify-{id}.sock"));
        sockets.insert(id, UnixDatagram::bind(&p).expect("notify socket"));
        c.set_env(id, "NOTIFY_SOCKET", p.to_str().expect("utf-8 path"));
        c.set_env(id, "WATCHDOG_USEC", "1000000");
    }
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 64);
    let vhd = csv_tests::create_retry(&mut c.client(leader), "w", PATIENCE).expect("VHD");
    csv_tests::leases::wait_leases(&c, &[1, 2, 3]);
    let owner = (1..=3).find(|i| *i != leader).expect("a follower");
    c.client(owner)
        .owner_acquire(vhd_ref(&vhd.to_string()), "write")
        .expect("acquire");
    let sock = &sockets[&owner];
    assert!(
        pings_during(sock, Duration::from_secs(2)) >= 3,
        "a healthy writer pings every 500 ms"
    );

    let others: Vec<u64> = (1..=3).filter(|i| *i != owner).collect();
    for id in &others {
        c.signal(*id, "STOP");
    }
    // The lease (node-local 4.1 s at a 6 s budget) runs out within ~5 s of the last
    // renewal; from then on no ping may come. (Pings sent meanwhile are drained.)
    let before = pings_during(sock, Duration::from_secs(6));
    assert!(before < 12, "{before} pings in 6 s");
    let quiet = pings_during(sock, Duration::from_secs(3));
    for id in &others {
        c.signal(*id, "CONT");
    }
    assert_eq!(quiet, 0, "pings went on after the lease kill time");
    let end = Instant::now() + PATIENCE;
    while pings_during(sock, Duration::from_secs(1)) == 0 {
        assert!(Instant::now() < end, "the pings never resumed");
    }
}
