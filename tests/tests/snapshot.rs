//! A node that is down while the log is compacted past its position catches up by
//! snapshot when it returns (small compaction threshold in the test config).

use csv_tests::{Cluster, Options, PATIENCE, create_retry};

#[test]
fn heavy_node_down_during_compaction_catches_up_by_snapshot() {
    let mut c = Cluster::new(
        3,
        Options {
            compact: Some((150, 30)),
            ..Options::default()
        },
    );
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 4096);
    let lagger = if leader == 3 { 2 } else { 3 };
    let via = (1..=3).find(|i| *i != lagger).expect("live node");
    c.wait_converged(&[1, 2, 3]);
    let behind = c.status(lagger).expect("status").applied_index;
    c.stop(lagger);
    let mut cl = c.client(via);
    for j in 0..400 {
        create_retry(&mut cl, &format!("s{j}"), PATIENCE).expect("create");
    }
    // Deletions too, so the snapshot differs from a plain replay of creations.
    for j in (0..400).step_by(7) {
        let v = cl.vhd_get_by_name(&format!("s{j}")).expect("get");
        cl.vhd_delete(v.id).expect("delete");
    }
    let l = c.wait_leader();
    let st = c.status(l).expect("leader status");
    assert!(
        st.first_index > behind + 1,
        "the log was not compacted past node {lagger}: first index {} vs its applied {behind}",
        st.first_index
    );
    c.start(lagger);
    let idx = c.wait_converged(&[1, 2, 3]);
    let st = c.status(lagger).expect("status");
    println!(
        "node {lagger} was at {behind}; leader log starts at {}; caught up to {idx} (its log starts at {})",
        c.status(l).expect("leader").first_index,
        st.first_index
    );
    assert!(
        st.first_index > behind + 1,
        "node {lagger} did not install a snapshot"
    );
    let all = c.client(lagger).vhd_list_all().expect("list");
    assert_eq!(all.len(), 400 - 400usize.div_ceil(7));
}
