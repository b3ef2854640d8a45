//! Membership changes while proposals keep flowing: learners join (by snapshot), are
//! promoted, voters are removed, several changes go through joint consensus, and no
//! acknowledged proposal is lost.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestCluster, cmd_put, init_tracing};
use meta_store::{Config, Error, LogPolicy, MemberChange, MetaHandle};

fn tune(cfg: &mut Config) {
    cfg.log = LogPolicy {
        compact_threshold: 100,
        keep_entries: 20,
    };
}

/// Retries a membership change until it is applied (learners may still be catching up,
/// or a previous change may still be in flight).
async fn change(h: &MetaHandle, changes: Vec<MemberChange>) -> meta_store::Membership {
    let start = Instant::now();
    loop {
        match h.change_membership(changes.clone()).await {
            Ok(m) => return m,
            Err(e) if e.is_retry_safe() && start.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("membership change {changes:?} failed: {e:?}"),
        }
    }
}

async fn leader_of(c: &TestCluster, members: &[u64]) -> u64 {
    c.wait_leader_among(members, PATIENCE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_membership_changes_under_load() {
    init_tracing();
    let mut c = TestCluster::start(5, 3, tune).await;
    c.wait_leader(PATIENCE).await;

    // A stream of proposals through node 2 during every change.
    let stop = Arc::new(AtomicBool::new(false));
    let h2 = c.h(2).clone();
    let s2 = stop.clone();
    let load = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut j = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let key = format!("load{j}");
            match h2.propose(cmd_put(&key, "v")).await {
                Ok(_) => acked.push(key),
                Err(e) if e.is_retry_safe() || e == Error::Timeout => {}
                Err(e) => panic!("unexpected error under membership changes: {e:?}"),
            }
            j += 1;
        }
        acked
    });

    // Learner 4 joins through a snapshot, then becomes a voter.
    c.start_node(4).await;
    let addr4 = c.nodes[&4].addr.to_string();
    let m = change(
        c.h(1),
        vec![MemberChange::AddLearner { id: 4, addr: addr4 }],
    )
    .await;
    assert_eq!(m.learners, vec![4]);
    let m = change(c.h(3), vec![MemberChange::Promote { id: 4 }]).await;
    assert_eq!(m.voters, vec![1, 2, 3, 4]);

    // Learner 5 joins; then in one joint change 5 is promoted and 1 removed.
    c.start_node(5).await;
    let addr5 = c.nodes[&5].addr.to_string();
    change(
        c.h(4),
        vec![MemberChange::AddLearner { id: 5, addr: addr5 }],
    )
    .await;
    let leader = c.wait_leader_among(&[1, 2, 3, 4, 5], PATIENCE).await;
    if leader == 1 {
        c.h(1)
            .transfer_leader(2)
            .await
            .expect("move leadership off node 1");
    }
    let m = change(
        c.h(2),
        vec![
            MemberChange::Promote { id: 5 },
            MemberChange::Remove { id: 1 },
        ],
    )
    .await;
    assert!(!m.is_joint(), "the joint configuration was left: {m:?}");
    assert_eq!(m.voters, vec![2, 3, 4, 5]);
    c.stop_node(1).await;

    // Remove a voter the plain way, keep proposing, then stop the load.
    let leader = c.wait_leader_among(&[2, 3, 4, 5], PATIENCE).await;
    let victim = [3, 4, 5]
        .into_iter()
        .find(|i| *i != leader)
        .expect("non-leader");
    let m = change(c.h(leader), vec![MemberChange::Remove { id: victim }]).await;
    assert!(!m.voters.contains(&victim));
    c.stop_node(victim).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.expect("load task");
    assert!(
        acked.len() > 50,
        "load went on during the changes: {}",
        acked.len()
    );

    let members: Vec<u64> = m.voters.clone();
    c.wait_converged(&members, PATIENCE).await;
    for id in &members {
        for k in acked.iter().step_by(7) {
            assert!(
                c.get(*id, k).await.is_some(),
                "node {id} lacks acknowledged {k}"
            );
        }
    }
    let st = c.h(5).status().await.expect("status");
    assert!(
        st.stats.snapshots_installed >= 1,
        "node 5 joined by snapshot"
    );
    // A removed id never comes back (a replacement machine needs a new id).
    let addr = c.nodes[&victim].addr.to_string();
    let e = c
        .h(leader_of(&c, &members).await)
        .add_learner(victim, addr)
        .await
        .expect_err("re-adding a removed id");
    assert!(matches!(e, Error::InvalidMembership(_)), "{e:?}");
    // The last voters refuse to drop to zero.
    let leader = c.wait_leader_among(&members, PATIENCE).await;
    let e = c
        .h(leader)
        .remove_node(leader)
        .await
        .expect_err("leader removal refused");
    assert!(matches!(e, Error::InvalidMembership(_)));
    c.stop_all().await;
}
