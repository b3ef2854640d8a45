//! Leases and fencing with real processes (issue 5, design note 030): a killed owner's
//! VHD is taken over within the outage budget; a cooperative move takes milliseconds; a
//! paused owner that wakes after a takeover finds its fence closed and reports the lost
//! hold; an owner cut off from the majority closes its fence before anyone else is
//! granted the VHD. The clusters use the smallest outage budget (6 s) to stay short.

use std::time::{Duration, Instant};

use csv_api::admin::vhd_ref;
use csv_tests::leases::{acquire_until, lease_cluster, liveness, timing, unix_ms};
use csv_tests::{Cluster, PATIENCE};

const BUDGET: &str = "6s";
/// What a test's own polling adds to a measured takeover: one poll interval and the
/// refused attempt's round trip.
const POLL_ALLOWANCE: Duration = Duration::from_millis(250);
/// ρ of design note 030 §2.
const RHO: f64 = 0.01;

/// A node other than the coordinator and `not`.
fn follower(c: &Cluster, not: &[u64]) -> u64 {
    let leader = c.wait_leader();
    c.nodes
        .keys()
        .copied()
        .find(|i| *i != leader && !not.contains(i))
        .expect("a follower")
}

fn owner_of(c: &Cluster, via: u64, vhd: u64) -> (u64, u64, bool) {
    let o = c
        .client(via)
        .owner_show(vhd_ref(&vhd.to_string()))
        .expect("owner show");
    (o.owner, o.generation, o.owner_valid)
}

#[test]
fn heavy_killed_owner_is_taken_over_within_the_budget() {
    let (mut c, vhds) = lease_cluster(3, BUDGET, false, 1);
    let vhd = vhds[0];
    let owner = follower(&c, &[]);
    let taker = follower(&c, &[owner]);
    let h = acquire_until(&c, owner, vhd, PATIENCE);
    assert!(h.hold.fence_open || h.hold.generation > 0);
    let [budget, _lease, _node_lease, wait] = timing(&liveness(&c, owner).expect("liveness"));
    let renew_interval = _lease / 8;
    // While the owner lives, another node is refused.
    let r = c
        .client(taker)
        .owner_acquire(vhd_ref(&vhd.to_string()), "write");
    assert!(
        r.is_err(),
        "a live owner's VHD was granted elsewhere: {r:?}"
    );
    let killed = Instant::now();
    c.kill(owner);
    let got = acquire_until(&c, taker, vhd, PATIENCE);
    let took = got.answered - killed;
    let earliest = got.sent.saturating_duration_since(killed);
    println!(
        "takeover after kill -9: {took:?} (budget {budget:?}, coordinator wait {wait:?}, {} refused attempts)",
        got.refused
    );
    assert!(
        took <= budget + POLL_ALLOWANCE,
        "takeover took {took:?}, budget {budget:?}"
    );
    // Never before the coordinator's wait (minus the renewal gap before the kill).
    let min = wait.div_f64(1.0 + RHO).saturating_sub(renew_interval * 2);
    assert!(
        got.answered - killed >= min,
        "takeover after {earliest:?}, before the lease could have ended ({min:?})"
    );
    assert!(got.hold.generation > h.hold.generation);
    let (o, g, valid) = owner_of(&c, taker, vhd);
    assert_eq!((o, g, valid), (taker, got.hold.generation, true));
}

#[test]
fn cooperative_move_takes_milliseconds() {
    let (c, vhds) = lease_cluster(3, BUDGET, false, 1);
    let vhd = vhds[0];
    let a = follower(&c, &[]);
    let b = follower(&c, &[a]);
    let first = acquire_until(&c, a, vhd, PATIENCE);
    let mut last_gen = first.hold.generation;
    let mut samples = Vec::new();
    let mut owner = a;
    for i in 0..10 {
        let to = if owner == a { b } else { a };
        // Asked alternately on the source, the target and the third node.
        let via = [owner, to, 6 - a - b][i % 3];
        let t = Instant::now();
        let o = c
            .client(via)
            .owner_move(vhd_ref(&vhd.to_string()), to)
            .expect("owner move");
        samples.push(t.elapsed());
        assert_eq!(o.owner, to);
        assert!(o.generation > last_gen, "generation must grow on a move");
        last_gen = o.generation;
        // The target's fence is open at the new generation once it applied the
        // transfer; the source's is closed.
        let start = Instant::now();
        loop {
            let s = c
                .client(to)
                .owner_show(vhd_ref(&vhd.to_string()))
                .expect("show");
            let f = s.local_fence.expect("local fence");
            if f.write_open {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "target fence: {f:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let src = c
            .client(owner)
            .owner_show(vhd_ref(&vhd.to_string()))
            .expect("show")
            .local_fence
            .expect("local fence");
        assert!(!src.write_open, "source fence still open: {src:?}");
        owner = to;
    }
    samples.sort();
    println!(
        "owner move: min {:?}, median {:?}, max {:?}",
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    assert!(
        samples[samples.len() / 2] < Duration::from_secs(1),
        "{samples:?}"
    );
    // Moving to a node that is not registered is refused and leaves the owner as is.
    let e = c
        .client(a)
        .owner_move(vhd_ref(&vhd.to_string()), 99)
        .expect_err("unknown target");
    println!("move to an unknown node: {e}");
    assert_eq!(owner_of(&c, a, vhd).0, owner);
}

#[test]
fn heavy_paused_owner_wakes_fenced_and_does_not_retake() {
    let (c, vhds) = lease_cluster(3, BUDGET, false, 1);
    let vhd = vhds[0];
    let owner = follower(&c, &[]);
    let taker = follower(&c, &[owner]);
    let h = acquire_until(&c, owner, vhd, PATIENCE);
    c.signal(owner, "STOP");
    let got = acquire_until(&c, taker, vhd, PATIENCE);
    println!(
        "taken over from the paused owner after {} refused attempts",
        got.refused
    );
    c.signal(owner, "CONT");
    // The woken owner finds its fence closed and reports the hold as lost.
    let start = Instant::now();
    let fence = loop {
        let f = liveness(&c, owner)
            .ok()
            .and_then(|l| l.local_fence)
            .expect("fence of the woken owner");
        if f.lost.iter().any(|l| l.vhd == vhd) {
            break f;
        }
        assert!(start.elapsed() < PATIENCE, "lost hold not reported: {f:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("woken owner: {fence:?}");
    let lost = fence.lost.iter().find(|l| l.vhd == vhd).expect("lost");
    assert_eq!(lost.generation, h.hold.generation);
    assert!(lost.new_epoch > lost.old_epoch);
    assert!(
        fence.holds.iter().all(|l| l.vhd != vhd),
        "still holds it: {fence:?}"
    );
    let show = c
        .client(owner)
        .owner_show(vhd_ref(&vhd.to_string()))
        .expect("show");
    let f = show.local_fence.expect("local fence");
    assert!(!f.write_open, "the woken owner's fence is open: {f:?}");
    // It does not take the VHD back: a while later the taker still owns it, unchanged.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        owner_of(&c, taker, vhd),
        (taker, got.hold.generation, true),
        "the VHD moved after the paused owner woke"
    );
    // And the woken node renews again at its new epoch (it is live, holding nothing).
    let start = Instant::now();
    while !liveness(&c, owner)
        .ok()
        .and_then(|l| l.local_fence)
        .is_some_and(|f| f.lease_valid && f.epoch == lost.new_epoch)
    {
        assert!(start.elapsed() < PATIENCE, "no lease at the new epoch");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn heavy_partitioned_owner_fences_itself_before_the_takeover() {
    let (c, vhds) = lease_cluster(3, BUDGET, true, 1);
    let vhd = vhds[0];
    let owner = follower(&c, &[]);
    let taker = follower(&c, &[owner]);
    acquire_until(&c, owner, vhd, PATIENCE);
    let cut_ms = unix_ms();
    c.net().cut(&[owner]);
    let got = acquire_until(&c, taker, vhd, PATIENCE);
    // The cut-off owner's admin socket is a file: it answers from its local state.
    let f = liveness(&c, owner)
        .expect("liveness of the cut-off owner")
        .local_fence
        .expect("fence");
    println!(
        "cut at {cut_ms}; owner fence closed at {} ({} ms after the cut); takeover attempt sent at {} ({} ms after the cut)",
        f.last_lapse_unix_ms,
        f.last_lapse_unix_ms.saturating_sub(cut_ms),
        got.sent_unix_ms,
        got.sent_unix_ms.saturating_sub(cut_ms)
    );
    assert!(f.lapses >= 1 && !f.lease_valid, "{f:?}");
    assert!(
        f.last_lapse_unix_ms > 0 && f.last_lapse_unix_ms < got.sent_unix_ms,
        "fence closed at {} but the takeover was attempted at {}",
        f.last_lapse_unix_ms,
        got.sent_unix_ms
    );
    // Healed, it learns its epoch moved on and reports the hold lost; the taker keeps it.
    c.net().heal(&[owner]);
    let start = Instant::now();
    loop {
        let f = liveness(&c, owner).ok().and_then(|l| l.local_fence);
        if f.as_ref()
            .is_some_and(|f| f.lost.iter().any(|l| l.vhd == vhd))
        {
            break;
        }
        assert!(start.elapsed() < PATIENCE, "lost hold not reported: {f:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(owner_of(&c, taker, vhd), (taker, got.hold.generation, true));
}

#[test]
fn restarted_owner_voids_its_old_generation_and_writes_again() {
    let (mut c, vhds) = lease_cluster(3, BUDGET, false, 1);
    let vhd = vhds[0];
    let owner = follower(&c, &[]);
    let h = acquire_until(&c, owner, vhd, PATIENCE);
    // Restart before the coordinator could expire it: same epoch, so the hold is still
    // its own, but the new incarnation renumbers it (commands of the old one may still
    // be in flight) and opens its fence only after the recovery delay.
    c.kill(owner);
    c.start(owner);
    let start = Instant::now();
    let f = loop {
        let s = c
            .client(owner)
            .owner_show(vhd_ref(&vhd.to_string()))
            .expect("show");
        let f = s.local_fence.clone().expect("local fence");
        if f.write_open {
            assert_eq!(s.owner, owner);
            assert!(s.generation > h.hold.generation, "{s:?}");
            break f;
        }
        assert!(start.elapsed() < PATIENCE, "fence never reopened: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "restarted owner writes again after {:?}: {f:?}",
        start.elapsed()
    );
    assert_eq!(f.epoch, 1, "the restart did not cost the epoch");
    assert!(f.holds.iter().any(|l| l.vhd == vhd && l.mode == "write"));
}

/// Runs csvadm against node `id`'s socket and parses its JSON output.
fn csvadm_json(c: &Cluster, id: u64, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(csv_tests::binary("csvadm"))
        .arg("--admin")
        .arg(&c.nodes[&id].admin)
        .args(args)
        .arg("--json")
        .output()
        .expect("run csvadm");
    assert!(
        out.status.success(),
        "csvadm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "csvadm {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn csvadm_owner_and_liveness_commands() {
    let (c, _) = lease_cluster(3, BUDGET, false, 2);
    let a = follower(&c, &[]);
    let b = follower(&c, &[a]);
    // By name; a write hold on a, a read hold on b.
    let h = csvadm_json(&c, a, &["owner", "acquire", "d0"]);
    assert_eq!(h["mode"], "write");
    assert_eq!(h["node"], a);
    let r = csvadm_json(&c, b, &["owner", "acquire", "d0", "--read-only"]);
    assert_eq!(r["mode"], "read");
    let s = csvadm_json(&c, b, &["owner", "show", "d0"]);
    assert_eq!(s["owner"], a);
    assert_eq!(s["owner_valid"], true);
    assert_eq!(s["generation"], h["generation"]);
    assert_eq!(s["readers"][0]["node"], b);
    assert_eq!(s["local_fence"]["node"], b);
    assert_eq!(s["local_fence"]["write_open"], false);
    // Move by id to the reader: it becomes the writer (its read hold upgraded).
    let id = s["vhd"].as_u64().expect("id").to_string();
    let m = csvadm_json(&c, a, &["owner", "move", &id, "--to", &b.to_string()]);
    assert_eq!(m["owner"], b);
    assert!(m["generation"].as_u64() > h["generation"].as_u64());
    assert_eq!(m["readers"].as_array().map(Vec::len), Some(0));
    let l = csvadm_json(&c, c.wait_leader(), &["owner", "list"]);
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    let rel = csvadm_json(&c, b, &["owner", "release", "d0"]);
    assert_eq!(rel["owner"], serde_json::Value::Null);
    let live = csvadm_json(&c, c.wait_leader(), &["node", "liveness"]);
    assert_eq!(live["coordinator"], true);
    assert_eq!(live["nodes"].as_array().map(Vec::len), Some(3), "{live}");
    for n in live["nodes"].as_array().expect("nodes") {
        assert_eq!(n["status"], "live");
        assert!(n["expires_in_ms"].as_u64().is_some(), "{n}");
    }
    assert_eq!(live["timing_ms"]["outage_budget"], 6000);
    // Errors: an unknown VHD is refused with the catalog's code (exit 2).
    let out = std::process::Command::new(csv_tests::binary("csvadm"))
        .arg("--admin")
        .arg(&c.nodes[&a].admin)
        .args(["owner", "show", "no-such-disk"])
        .output()
        .expect("run csvadm");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
