//! A minority partition makes no progress while the majority goes on; after healing, the
//! minority catches up and every replica converges.

mod common;

use std::time::{Duration, Instant};

use common::{PATIENCE, TestCluster, cmd_put, init_tracing, no_tune};
use meta_store::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_minority_partition_stalls_majority_continues() {
    init_tracing();
    let mut c = TestCluster::start(5, 5, no_tune).await;
    let old_leader = c.wait_leader(PATIENCE).await;
    c.propose_retry(old_leader, cmd_put("before", "1"), PATIENCE)
        .await
        .expect("proposal");
    c.wait_converged(&[1, 2, 3, 4, 5], PATIENCE).await;

    // Cut {old leader, one follower} off from the other three, in both directions.
    let buddy = (1..=5).find(|i| *i != old_leader).expect("buddy");
    let minority = [old_leader, buddy];
    let majority: Vec<u64> = (1..=5).filter(|i| !minority.contains(i)).collect();
    for m in minority {
        for o in &majority {
            c.t(m).block(*o);
            c.t(*o).block(m);
        }
    }
    let minority_commit = c.h(old_leader).status().await.expect("status").commit;

    // The majority elects a leader and commits.
    let start = Instant::now();
    c.propose_retry(majority[0], cmd_put("majority", "1"), PATIENCE)
        .await
        .expect("majority commits");
    eprintln!("majority committed {:?} after the cut", start.elapsed());
    let new_leader = c.wait_leader_among(&majority, PATIENCE).await;
    assert!(majority.contains(&new_leader));
    for j in 0..20 {
        c.propose_retry(majority[j % 3], cmd_put(&format!("m{j}"), "1"), PATIENCE)
            .await
            .expect("majority keeps going");
    }

    // The minority cannot commit: its proposals fail and its commit index stays put.
    let r = c
        .h(buddy)
        .propose_with_timeout(cmd_put("minority", "1"), Duration::from_secs(2))
        .await;
    assert!(r.is_err(), "a minority must not commit: {r:?}");
    for m in minority {
        let st = c.h(m).status().await.expect("status");
        assert_eq!(
            st.commit, minority_commit,
            "node {m} advanced its commit index while cut off"
        );
        assert_ne!(
            st.role,
            Role::Leader,
            "check-quorum made the old leader step down"
        );
    }

    // Heal: everyone converges on the majority's history; the minority write never
    // appears (it failed) unless it was retried.
    for id in 1..=5 {
        c.t(id).unblock_all();
    }
    let applied = c.wait_converged(&[1, 2, 3, 4, 5], PATIENCE).await;
    assert!(applied > minority_commit);
    assert_eq!(c.get(old_leader, "m19").await, Some(b"1".to_vec()));
    assert_eq!(c.get(buddy, "majority").await, Some(b"1".to_vec()));
    c.stop_all().await;
}
