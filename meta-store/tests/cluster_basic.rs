//! 3- and 5-node clusters over real TCP with RocksDB: election, proposals from every node
//! (followers forward to the leader), linearizable reads everywhere, leader transfer, and
//! clear errors for bad requests.

mod common;

use common::{PATIENCE, TestCluster, cmd_put, init_tracing, no_tune};
use std::time::Duration;

use meta_store::{Error, Role};

async fn proposals_from_every_node(n: u64) {
    init_tracing();
    let mut c = TestCluster::start(n, n, no_tune).await;
    let leader = c.wait_leader(PATIENCE).await;
    for id in 1..=n {
        for j in 0..5 {
            let key = format!("n{id}-{j}");
            let r = c
                .propose_retry(id, cmd_put(&key, &format!("v{id}{j}")), PATIENCE)
                .await
                .expect("proposal");
            assert_eq!(
                r,
                b"ok:new".to_vec(),
                "apply result comes back to node {id}"
            );
        }
    }
    for id in 1..=n {
        for other in 1..=n {
            assert_eq!(
                c.get(id, &format!("n{other}-4")).await,
                Some(format!("v{other}4").into_bytes()),
                "node {id} reads node {other}'s write linearizably"
            );
        }
    }
    let st = c.h(leader).status().await.expect("status");
    assert_eq!(st.role, Role::Leader);
    assert_eq!(st.membership.voters, (1..=n).collect::<Vec<_>>());
    assert_eq!(st.progress.len() as u64, n);
    c.wait_converged(&(1..=n).collect::<Vec<_>>(), PATIENCE)
        .await;
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_three_nodes_elect_and_accept_proposals_from_any_node() {
    proposals_from_every_node(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_five_nodes_elect_and_accept_proposals_from_any_node() {
    proposals_from_every_node(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_leader_transfer_and_read_index() {
    init_tracing();
    let mut c = TestCluster::start(3, 3, no_tune).await;
    let leader = c.wait_leader(PATIENCE).await;
    let target = if leader == 1 { 2 } else { 1 };
    c.propose_retry(target, cmd_put("before", "1"), PATIENCE)
        .await
        .expect("proposal");
    // Ask a follower (not the leader) to move the leadership.
    let asker = (1..=3)
        .find(|i| *i != leader && *i != target)
        .expect("third node");
    let mut watch = c.h(target).leadership();
    c.h(asker).transfer_leader(target).await.expect("transfer");
    let new = c.wait_leader(PATIENCE).await;
    assert_eq!(new, target);
    // The new leader's own leadership watch says so.
    tokio::time::timeout(
        PATIENCE,
        watch.wait_for(|l| l.is_self && l.leader == Some(target)),
    )
    .await
    .expect("leadership published")
    .expect("watch open");
    let idx = c
        .h(asker)
        .read_index()
        .await
        .expect("read index on a follower");
    assert!(idx > 0);
    assert_eq!(c.get(asker, "before").await, Some(b"1".to_vec()));
    c.stop_all().await;
}

/// A leader refuses proposals while it transfers its role: a transfer to a voter that is
/// down is refused at once, and the cluster keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_transfer_to_a_dead_voter_is_refused_and_proposals_go_on() {
    init_tracing();
    let mut c = TestCluster::start(3, 3, no_tune).await;
    let leader = c.wait_leader(PATIENCE).await;
    let dead = (1..=3).find(|i| *i != leader).expect("follower");
    c.stop_node(dead).await;
    // Past an election timeout the leader knows it has not heard from it.
    let start = std::time::Instant::now();
    let e = loop {
        match c.h(leader).transfer_leader(dead).await {
            Err(e @ Error::InvalidMembership(_)) => break e,
            other => {
                assert!(
                    start.elapsed() < PATIENCE,
                    "transfer to stopped node {dead}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(e.to_string().contains("not answered"), "{e}");
    let t = std::time::Instant::now();
    c.h(leader)
        .propose(cmd_put("after", "1"))
        .await
        .expect("a proposal right after the refused transfer");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "proposal took {:?}",
        t.elapsed()
    );
    assert_eq!(c.wait_leader(PATIENCE).await, leader);
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_refuses_bad_requests_with_clear_errors() {
    init_tracing();
    let mut c = TestCluster::start(3, 3, |cfg| cfg.limits.max_command_bytes = 1024).await;
    let leader = c.wait_leader(PATIENCE).await;
    let follower = (1..=3).find(|i| *i != leader).expect("follower");
    let big = vec![0u8; 2048];
    assert!(matches!(
        c.h(follower).propose(big).await,
        Err(Error::TooLarge {
            size: 2048,
            max: 1024,
            ..
        })
    ));
    // Removing the leader, an unknown node, or promoting a non-learner are refused, also
    // when asked through a follower.
    let e = c
        .h(follower)
        .remove_node(leader)
        .await
        .expect_err("leader removal");
    assert!(matches!(e, Error::InvalidMembership(_)), "{e:?}");
    let e = c
        .h(follower)
        .remove_node(9)
        .await
        .expect_err("unknown node");
    assert!(matches!(e, Error::InvalidMembership(_)), "{e:?}");
    let e = c
        .h(leader)
        .promote_learner(follower)
        .await
        .expect_err("already a voter");
    assert!(matches!(e, Error::InvalidMembership(_)), "{e:?}");
    let e = c
        .h(leader)
        .transfer_leader(7)
        .await
        .expect_err("not a voter");
    assert!(matches!(e, Error::InvalidMembership(_)), "{e:?}");
    // A command the state machine cannot parse is answered with its error, not a failure.
    let r = c
        .h(follower)
        .propose(b"garbage".to_vec())
        .await
        .expect("applied");
    assert!(r.starts_with(b"err:"));
    c.stop_all().await;
}
