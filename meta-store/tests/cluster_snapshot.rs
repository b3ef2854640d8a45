//! A node that is down while the others compact their logs comes back and catches up by
//! installing a snapshot.

mod common;

use common::{PATIENCE, TestCluster, cmd_put, init_tracing};
use meta_store::{Config, LogPolicy};

fn small_log(cfg: &mut Config) {
    cfg.log = LogPolicy {
        compact_threshold: 50,
        keep_entries: 10,
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_down_during_compaction_catches_up_by_snapshot() {
    init_tracing();
    let mut c = TestCluster::start(3, 3, small_log).await;
    let leader = c.wait_leader(PATIENCE).await;
    let lagger = (1..=3).find(|i| *i != leader).expect("follower");
    c.propose_retry(leader, cmd_put("early", "1"), PATIENCE)
        .await
        .expect("proposal");
    c.wait_converged(&[1, 2, 3], PATIENCE).await;
    c.stop_node(lagger).await;
    let live: Vec<u64> = c.running();
    for j in 0..300 {
        c.propose_retry(live[j % 2], cmd_put(&format!("k{j}"), "v"), PATIENCE)
            .await
            .expect("proposal while a node is down");
    }
    let st = c.h(leader).status().await.expect("status");
    assert!(
        st.first_index > 100,
        "leader compacted its log: first index {}",
        st.first_index
    );
    assert!(st.stats.compactions > 0);

    c.start_node(lagger).await;
    c.wait_converged(&[1, 2, 3], PATIENCE).await;
    let st = c.h(lagger).status().await.expect("status");
    assert!(
        st.stats.snapshots_installed >= 1,
        "caught up by snapshot: {:?}",
        st.stats
    );
    assert_eq!(c.get(lagger, "k299").await, Some(b"v".to_vec()));
    assert_eq!(c.get(lagger, "early").await, Some(b"1".to_vec()));
    // It takes part normally afterwards.
    c.propose_retry(lagger, cmd_put("after", "1"), PATIENCE)
        .await
        .expect("proposal through the caught-up node");
    c.stop_all().await;
}
