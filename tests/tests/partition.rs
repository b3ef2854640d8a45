//! A minority partition makes no progress while the majority goes on: five nodes, each in
//! its own network namespace; the coordinator and one follower are cut off by taking their
//! links down. Needs root and iproute2.

use std::time::{Duration, Instant};

use csv_tests::{Cluster, Options, PATIENCE, create_retry};

#[test]
fn heavy_minority_partition_stalls_while_the_majority_commits() {
    let mut c = Cluster::new(
        5,
        Options {
            netns: true,
            ..Options::default()
        },
    );
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 4096);
    for j in 0..5 {
        create_retry(&mut c.client(1 + j % 5), &format!("before-{j}"), PATIENCE).expect("create");
    }
    c.wait_converged(&[1, 2, 3, 4, 5]);
    let other = (1..=5).find(|i| *i != leader).expect("follower");
    let minority = [leader, other];
    let majority: Vec<u64> = (1..=5).filter(|i| !minority.contains(i)).collect();
    let applied_before: Vec<u64> = minority
        .iter()
        .map(|id| c.status(*id).expect("status").applied_index)
        .collect();
    let cut_at = Instant::now();
    c.net().cut(&minority);
    // The majority elects a coordinator and commits.
    let mut acked = Vec::new();
    for j in 0..10 {
        let via = majority[j % majority.len()];
        let name = format!("majority-{j}");
        let id = create_retry(&mut c.client(via), &name, Duration::from_secs(20))
            .expect("the majority commits");
        if j == 0 {
            println!("majority committed {:?} after the cut", cut_at.elapsed());
        }
        acked.push((name, id));
    }
    let new_leader = c.wait_leader_among(&majority, PATIENCE);
    assert!(majority.contains(&new_leader));
    // The minority cannot commit: a proposal there fails (no quorum) and its applied
    // index does not move.
    let mut cl = c.client(other);
    cl.set_timeout(Duration::from_secs(30)).expect("timeout");
    let r = cl.vhd_create(csv_tests::small_vhd("minority-write"));
    let e = r.expect_err("a minority must not commit");
    println!("minority proposal refused: {e}");
    for (i, id) in minority.iter().enumerate() {
        let st = c.status(*id).expect("minority status");
        assert_eq!(
            st.applied_index, applied_before[i],
            "node {id} applied entries while cut off"
        );
    }
    // Heal: everyone converges on the majority's history.
    c.net().heal(&minority);
    c.wait_leader_among(&[1, 2, 3, 4, 5], PATIENCE);
    c.wait_converged(&[1, 2, 3, 4, 5]);
    for id in 1..=5 {
        let mut cl = c.client(id);
        for (name, vid) in &acked {
            assert_eq!(
                cl.vhd_get_by_name(name).expect("acked VHD").id,
                *vid,
                "node {id}"
            );
        }
    }
    if e.code().is_some_and(|c| c.is_retry_safe()) {
        let r = c.client(1).vhd_get_by_name("minority-write");
        assert!(r.is_err(), "a write refused as retry-safe was applied");
    }
}
