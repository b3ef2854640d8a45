//! kill -9 the coordinator: a new one commits (the time is printed; the 3 s target is
//! checked by scripts/bench-cluster, this only bounds it against hangs) and nothing
//! acknowledged is lost; the killed node comes back with its data and catches up.

use std::time::{Duration, Instant};

use csv_tests::{Cluster, Options, PATIENCE, create_retry};

#[test]
fn heavy_kill_the_coordinator_and_a_new_one_commits() {
    let mut c = Cluster::new(3, Options::default());
    c.bootstrap();
    let mut leader = c.wait_leader();
    c.set_volume(leader, 4096);
    let mut acked = Vec::new();
    for round in 0..3 {
        for j in 0..10 {
            let via = 1 + (j % 3);
            if !c.nodes[&via].running() {
                continue;
            }
            let name = format!("k{round}-{j}");
            let id = create_retry(&mut c.client(via), &name, PATIENCE).expect("create");
            acked.push((name, id));
        }
        let survivor = (1..=3).find(|i| *i != leader).expect("a survivor");
        let killed_at = Instant::now();
        c.kill(leader);
        let name = format!("after-kill-{round}");
        let id = create_retry(&mut c.client(survivor), &name, Duration::from_secs(15))
            .expect("a new coordinator commits");
        let took = killed_at.elapsed();
        println!("round {round}: killed coordinator {leader}; next commit after {took:?}");
        assert!(took < Duration::from_secs(15), "failover took {took:?}");
        acked.push((name, id));
        let new_leader = c.wait_leader();
        assert_ne!(new_leader, leader);
        c.start(leader);
        leader = c.wait_leader();
    }
    c.wait_converged(&[1, 2, 3]);
    for id in 1..=3 {
        let mut cl = c.client(id);
        for (name, vid) in &acked {
            let v = cl
                .vhd_get_by_name(name)
                .unwrap_or_else(|e| panic!("{name} lost on node {id}: {e}"));
            assert_eq!(v.id, *vid);
        }
        assert_eq!(cl.vhd_list_all().expect("list").len(), acked.len());
    }
}
