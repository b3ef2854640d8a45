//! Attaching and detaching on a node other than the addressed one (docs/design/040
//! §6.1): three nodes on one shared file LUN; a VHD created through node 1 is attached
//! on node 3 by a request asked through node 1 (the answer names node 3's socket), written
//! by fio (crc32c verify) through node 3's export, detached on node 3 by a request asked
//! through node 2, attached on node 2 directly and verified there; a detach asked on a
//! node that does not hold the VHD names the node that does; a read-only attach on node 3
//! through node 2; requests to a killed node fail with a clear error within the timeout,
//! and requests to a removed node are refused at once. A request recorded while its
//! target is frozen is answered by the target's next incarnation, once: a later restart
//! restores the attachment without running the request again. A request to a frozen
//! node that outlives the asker's timeout is cancelled and never runs.

use std::process::Command;
use std::time::{Duration, Instant};

use csv_tests::binary;
use csv_tests::volume::{fio_verify, need, volume_cluster, volume_cluster_with};

const GIB: u64 = 1 << 30;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Whether `qemu-img info` opens `uri`.
fn served(uri: &str) -> bool {
    Command::new("qemu-img")
        .args(["info", uri])
        .output()
        .expect("run qemu-img")
        .status
        .success()
}

#[test]
fn attach_and_detach_on_another_node() {
    need("fio", "fio");
    need("qemu-img", "qemu-utils");
    let mut vc = volume_cluster(3, 2 * GIB);
    let work = tempfile::tempdir().expect("work dir");
    vc.ok(1, &["vhd", "create", "r1", "--size", "256M"]);

    // Attach on node 3, asked through node 1: the answer is node 3's attachment.
    let t = Instant::now();
    let a = json(&vc.ok(1, &["vhd", "attach", "r1", "--node", "3", "--json"]));
    eprintln!("remote attach (csvadm wall time): {:?}", t.elapsed());
    let sock3 = vc.nbd_socket(3).display().to_string();
    assert_eq!(a["name"], "r1", "{a}");
    assert_eq!(a["node"], 3, "{a}");
    assert_eq!(a["read_only"], false, "{a}");
    assert_eq!(a["socket"], sock3.as_str(), "{a}");
    assert_eq!(a["uri"], vc.uri(3, "r1").as_str(), "{a}");
    assert!(a["generation"].as_u64().is_some_and(|g| g > 0), "{a}");
    // Node 3 lists it as its own; node 1 serves nothing.
    let st3 = json(&vc.ok(3, &["volume", "status", "--json"]));
    let names: Vec<&str> = st3["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, ["r1"], "{st3}");
    assert!(!served(&vc.uri(1, "r1")));
    // Asked again: the same attachment (idempotent), text form names node 3's socket.
    let again = vc.ok(2, &["vhd", "attach", "r1", "--node", "3"]);
    assert!(
        again.contains("attached on node 3") && again.contains(&sock3),
        "{again}"
    );
    // Another writer is refused, with node 3's refusal relayed.
    let e = vc.refused(1, &["vhd", "attach", "r1", "--node", "2"]);
    eprintln!("second writer: {e}");
    assert!(e.contains("node-2"), "{e}");

    fio_verify(
        a["uri"].as_str().expect("uri"),
        "randwrite",
        "64M",
        false,
        work.path(),
    );

    // A detach asked where it is not attached names the holder.
    let e = vc.refused(1, &["vhd", "detach", "r1"]);
    eprintln!("detach where not attached: {e}");
    assert!(
        e.contains("node-3 (read-write)") && e.contains("--node 3"),
        "{e}"
    );
    // Detach on node 3, asked through node 2.
    let t = Instant::now();
    let d = json(&vc.ok(2, &["vhd", "detach", "r1", "--node", "3", "--json"]));
    eprintln!("remote detach (csvadm wall time): {:?}", t.elapsed());
    assert_eq!(d["detached"], "r1", "{d}");
    assert!(!served(&vc.uri(3, "r1")), "node 3 still serves r1");
    let e = vc.refused(2, &["vhd", "detach", "r1", "--node", "3"]);
    assert!(e.contains("node-3") && e.contains("not attached"), "{e}");

    // Attached on node 2 directly, the data written through node 3 is there.
    let t = Instant::now();
    vc.ok(2, &["vhd", "attach", "r1"]);
    eprintln!("local attach (csvadm wall time): {:?}", t.elapsed());
    fio_verify(&vc.uri(2, "r1"), "randwrite", "64M", true, work.path());
    let t = Instant::now();
    vc.ok(2, &["vhd", "detach", "r1"]);
    eprintln!("local detach (csvadm wall time): {:?}", t.elapsed());

    // Read-only on node 3, asked through node 2.
    let a = json(&vc.ok(
        2,
        &[
            "vhd",
            "attach",
            "r1",
            "--node",
            "3",
            "--read-only",
            "--json",
        ],
    ));
    assert_eq!(a["read_only"], true, "{a}");
    assert_eq!(a["node"], 3, "{a}");
    fio_verify(&vc.uri(3, "r1"), "randwrite", "64M", true, work.path());

    // Node 3 killed: a request to it fails clearly within the timeout (its lease
    // expires, which fails the request as unavailable), it does not hang.
    vc.c.kill(3);
    let t = Instant::now();
    let e = vc.refused(1, &["vhd", "detach", "r1", "--node", "3"]);
    let took = t.elapsed();
    eprintln!("request to the killed node answered in {took:?}: {e}");
    assert!(took < Duration::from_secs(40), "took {took:?}: {e}");
    assert!(
        e.contains("node-3") && (e.contains("expired") || e.contains("did not take up")),
        "{e}"
    );
    // Now expired: refused at once.
    let t = Instant::now();
    let e = vc.refused(2, &["vhd", "attach", "r1", "--node", "3"]);
    eprintln!(
        "request to the expired node answered in {:?}: {e}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{e}");
    assert!(e.contains("node-3") && e.contains("unavailable"), "{e}");

    // Removed: refused at once, and the VHD can be taken elsewhere.
    vc.ok(1, &["node", "remove", "3"]);
    let t = Instant::now();
    let e = vc.refused(1, &["vhd", "attach", "r1", "--node", "3"]);
    eprintln!(
        "request to the removed node answered in {:?}: {e}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{e}");
    assert!(e.contains("node-3 was removed"), "{e}");
    let a = json(&vc.ok(1, &["vhd", "attach", "r1", "--node", "2", "--json"]));
    assert_eq!(a["node"], 2, "{a}");
    fio_verify(&vc.uri(2, "r1"), "randwrite", "64M", true, work.path());
}

#[test]
fn a_restarted_target_answers_a_pending_request_once() {
    need("fio", "fio");
    need("qemu-img", "qemu-utils");
    // A long lease, so the frozen node restarts before anyone expires it.
    let mut vc = volume_cluster_with(
        3,
        2 * GIB,
        "[lease]\noutage_budget = \"30s\"\n[volume]\nlun = \"{lun}\"\n",
    );
    let work = tempfile::tempdir().expect("work dir");
    vc.ok(1, &["vhd", "create", "r2", "--size", "128M"]);
    vc.c.signal(3, "STOP");
    let t = Instant::now();
    let admin1 = vc.c.nodes[&1].admin.clone();
    let asker = std::thread::spawn(move || {
        Command::new(binary("csvadm"))
            .arg("--admin")
            .arg(admin1)
            .args(["vhd", "attach", "r2", "--node", "3", "--json"])
            .output()
            .expect("run csvadm")
    });
    // Recorded and pending while node 3 is frozen; node 3 dies and comes back.
    std::thread::sleep(Duration::from_millis(1500));
    vc.c.kill(3);
    vc.c.start(3);
    let out = asker.join().expect("asker thread");
    eprintln!(
        "pending request answered by the restarted node {:?} after the request",
        t.elapsed()
    );
    assert!(
        out.status.success(),
        "attach through node 1 failed: {}\nnode 3 log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        vc.c.log(3)
    );
    let a = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(a["node"], 3, "{a}");
    assert_eq!(a["uri"], vc.uri(3, "r2").as_str(), "{a}");
    fio_verify(&vc.uri(3, "r2"), "randwrite", "32M", false, work.path());
    // Restarted again (SIGTERM: fio flushed nothing, the shutdown flushes): the
    // attachment comes back from node 3's own record, and the answered request is not
    // run a second time.
    vc.c.stop(3);
    vc.c.start(3);
    vc.wait_export(3, "r2");
    fio_verify(&vc.uri(3, "r2"), "randwrite", "32M", true, work.path());
    let log = std::fs::read_to_string(vc.c.nodes[&3].log_path()).expect("node 3 log");
    let runs = log.matches("running remote request").count();
    assert_eq!(runs, 1, "node 3 ran the request {runs} times:\n{log}");
}

#[test]
fn a_request_that_times_out_is_cancelled_and_never_runs() {
    need("qemu-img", "qemu-utils");
    // A lease longer than the asker's 30 s timeout: the frozen node is not expired.
    let vc = volume_cluster_with(
        3,
        GIB,
        "[lease]\noutage_budget = \"120s\"\n[volume]\nlun = \"{lun}\"\n",
    );
    vc.ok(1, &["vhd", "create", "r3", "--size", "64M"]);
    vc.c.signal(3, "STOP");
    let t = Instant::now();
    let e = vc.refused(1, &["vhd", "attach", "r3", "--node", "3"]);
    let took = t.elapsed();
    eprintln!("request to the frozen node answered in {took:?}: {e}");
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(45),
        "{took:?}: {e}"
    );
    assert!(
        e.contains("timeout") && e.contains("cancelled") && e.contains("node-3"),
        "{e}"
    );
    // Thawed, node 3 catches up, sees the request cancelled, and does nothing.
    vc.c.signal(3, "CONT");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let _ = vc.ok(3, &["volume", "status", "--json"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = json(&vc.ok(3, &["volume", "status", "--json"]));
    assert_eq!(st["attachments"], serde_json::json!([]), "{st}");
    assert!(!served(&vc.uri(3, "r3")));
    let log = std::fs::read_to_string(vc.c.nodes[&3].log_path()).expect("node 3 log");
    assert!(!log.contains("running remote request"), "{log}");
    // Nothing holds it: node 2 attaches it.
    vc.ok(2, &["vhd", "attach", "r3"]);
    assert!(served(&vc.uri(2, "r3")));
}
