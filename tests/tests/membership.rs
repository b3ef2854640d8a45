//! Membership changes under a stream of proposals: add a learner, promote it, add a
//! voter, remove a voter (the coordinator too when it is the one), while a client keeps
//! creating VHDs; nothing acknowledged is lost and the removed ids cannot return.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use csv_api::ErrorCode;
use csv_tests::{Cluster, Options, PATIENCE, create_retry};

#[test]
fn heavy_membership_changes_under_load() {
    let mut c = Cluster::new(3, Options::default());
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 8192);
    let stop = Arc::new(AtomicBool::new(false));
    let admin1 = c.nodes[&1].admin.clone();
    let s2 = stop.clone();
    let load = std::thread::spawn(move || {
        let mut cl = csv_api::admin::Client::connect(&admin1).expect("connect");
        let mut acked = Vec::new();
        let mut i = 0;
        while !s2.load(Ordering::Relaxed) {
            let name = format!("load-{i}");
            match create_retry(&mut cl, &name, PATIENCE) {
                Ok(id) => acked.push((name, id)),
                Err(e) => panic!("load proposal {name} failed: {e}"),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        acked
    });
    // Learner, then promotion.
    c.prepare(4);
    c.start(4);
    let addr4 = c.nodes[&4].addr.to_string();
    let m = c.client(2).node_add(4, &addr4, true).expect("add learner");
    assert!(m.learners.contains(&4), "{m:?}");
    let st = c.status(1).expect("status");
    let n4 = st
        .members
        .iter()
        .find(|m| m.id == 4)
        .expect("node 4 listed");
    assert_eq!((n4.role.as_str(), n4.state.as_str()), ("learner", "active"));
    let m = c.client(3).node_promote(4).expect("promote");
    assert!(m.voters.contains(&4), "{m:?}");
    // A voter added directly (learner, catch-up, promotion inside one request).
    c.prepare(5);
    c.start(5);
    let addr5 = c.nodes[&5].addr.to_string();
    let m = c.client(1).node_add(5, &addr5, false).expect("add voter");
    assert!(m.voters.contains(&5), "{m:?}");
    // Remove 2 and 3; when one is the coordinator, the daemon moves the role first.
    for gone in [2, 3] {
        let m = c.client(1).node_remove(gone).expect("remove");
        assert!(
            !m.voters.contains(&gone) && !m.learners.contains(&gone),
            "{m:?}"
        );
        c.wait_leader_among(&[1, 4, 5], PATIENCE);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let acked = load.join().expect("load thread");
    assert!(
        acked.len() > 20,
        "only {} proposals during the changes",
        acked.len()
    );
    println!(
        "{} proposals acknowledged during the membership changes",
        acked.len()
    );
    c.kill(2);
    c.kill(3);
    let l = c.wait_leader_among(&[1, 4, 5], PATIENCE);
    c.wait_converged(&[1, 4, 5]);
    let st = c.status(l).expect("status");
    let mut voters: Vec<u64> = st
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect();
    voters.sort_unstable();
    assert_eq!(voters, vec![1, 4, 5]);
    for id in [1, 4, 5] {
        let mut cl = c.client(id);
        for (name, vid) in &acked {
            let v = cl
                .vhd_get_by_name(name)
                .unwrap_or_else(|e| panic!("{name} lost on node {id}: {e}"));
            assert_eq!(v.id, *vid);
        }
    }
    // Removed ids never return.
    let addr2 = c.nodes[&2].addr.to_string();
    let e = c
        .client(1)
        .node_add(2, &addr2, false)
        .expect_err("removed id");
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
}
