//! The lease watchdog (`[lease] watchdog = true`, design note 030 §9): a paused owner
//! (SIGSTOP) is SIGKILLed by its watchdog before another node's takeover of its VHD can
//! commit; a paused node that holds no write hold is left alone.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use csv_api::admin::vhd_ref;
use csv_tests::leases::lease_cluster_with;
use csv_tests::{Options, PATIENCE};

#[test]
fn heavy_watchdog_kills_a_paused_owner_before_the_takeover() {
    let opts = Options {
        extra_config: "[lease]\noutage_budget = \"6s\"\nwatchdog = true\n".into(),
        ..Options::default()
    };
    let (mut c, vhds) = lease_cluster_with(3, opts, 1);
    let vhd = vhds[0];
    let leader = c.wait_leader();
    let mut others = c.nodes.keys().copied().filter(|i| *i != leader);
    let owner = others.next().expect("a follower");
    let idle = others.next().expect("another follower");
    c.client(owner)
        .owner_acquire(vhd_ref(&vhd.to_string()), "write")
        .expect("acquire");

    // An idle node (no write hold) paused past its lease stays alive.
    c.signal(idle, "STOP");
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        c.try_exit(idle).is_none(),
        "the idle paused node was killed"
    );
    c.signal(idle, "CONT");

    // The owner paused: the taker tries to acquire from now on, in the background.
    c.signal(owner, "STOP");
    let paused = Instant::now();
    let mut taker = c.client(leader);
    taker.set_timeout(Duration::from_secs(20)).expect("timeout");
    let acquirer = std::thread::spawn(move || {
        loop {
            let sent = Instant::now();
            match taker.owner_acquire(vhd_ref(&vhd.to_string()), "write") {
                Ok(h) => return (sent, h),
                Err(e) => assert!(
                    paused.elapsed() < PATIENCE,
                    "no takeover within {PATIENCE:?}: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let status = loop {
        if let Some(st) = c.try_exit(owner) {
            break st;
        }
        assert!(
            paused.elapsed() < PATIENCE,
            "the paused owner is still alive after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let died = Instant::now();
    assert_eq!(status.signal(), Some(9), "not SIGKILLed: {status:?}");
    let (sent, hold) = acquirer.join().expect("acquirer");
    println!(
        "owner killed {:?} after the pause; the takeover's successful attempt was sent {:?} after the pause (generation {})",
        died - paused,
        sent - paused,
        hold.generation
    );
    // The grant committed after the successful attempt was sent, which is after the
    // death was observed (an upper bound of the kill).
    assert!(died < sent, "takeover attempt sent before the owner died");
    let log = c.log(owner);
    assert!(
        log.contains("lease watchdog: the node was not re-armed"),
        "watchdog did not say why:\n{log}"
    );
}
