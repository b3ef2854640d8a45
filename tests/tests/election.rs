//! 3- and 5-node clusters of processes: init and join, election, catalog proposals from
//! every node with linearizable reads everywhere, `csvadm cluster status --json`, leader
//! transfer, and restarting every node with its data.

use std::process::Command;
use std::time::Instant;

use csv_api::ErrorCode;
use csv_api::admin::VhdState;
use csv_tests::{Cluster, Options, PATIENCE, binary, create_retry};

fn proposals_from_every_node(n: u64) {
    let mut c = Cluster::new(n, Options::default());
    let t = Instant::now();
    c.bootstrap();
    let leader = c.wait_leader();
    println!(
        "{n} nodes: bootstrap and election took {:?}; coordinator {leader}",
        t.elapsed()
    );
    c.set_volume(leader, 4096);
    for id in 1..=n {
        let mut cl = c.client(id);
        for j in 0..4 {
            create_retry(&mut cl, &format!("n{id}-{j}"), PATIENCE).expect("create from node");
        }
    }
    // Every node reads every node's VHDs (linearizable reads).
    for id in 1..=n {
        let mut cl = c.client(id);
        let all = cl.vhd_list_all().expect("list");
        assert_eq!(all.len() as u64, 4 * n, "node {id} sees every VHD");
        let v = cl.vhd_get_by_name(&format!("n{n}-3")).expect("get");
        assert_eq!(v.state, VhdState::Creating as i32);
        assert_eq!(v.runs.len(), 1);
    }
    // Refusals carry stable codes.
    let e = c
        .client(n)
        .vhd_create(csv_tests::small_vhd("n1-0"))
        .expect_err("duplicate");
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists));
    let e = c.client(1).vhd_get(999_999).expect_err("missing");
    assert_eq!(e.code(), Some(ErrorCode::NotFound));
    c.wait_converged(&(1..=n).collect::<Vec<_>>());
    // csvadm reads the same status as JSON.
    let out = Command::new(binary("csvadm"))
        .arg("--admin")
        .arg(&c.nodes[&n].admin)
        .args(["cluster", "status", "--json"])
        .output()
        .expect("run csvadm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json status");
    assert_eq!(j["coordinator"], leader);
    assert!(j["term"].as_u64().expect("term") >= 1);
    assert!(j["applied_index"].as_u64().expect("applied") > 0);
    let members = j["members"].as_array().expect("members");
    assert_eq!(members.len() as u64, n);
    for m in members {
        assert_eq!(m["state"], "active", "{m}");
        assert_eq!(m["role"], "voter", "{m}");
    }
}

#[test]
fn heavy_three_nodes_elect_and_take_proposals_from_any_node() {
    proposals_from_every_node(3);
}

#[test]
fn heavy_five_nodes_elect_and_take_proposals_from_any_node() {
    proposals_from_every_node(5);
}

#[test]
fn heavy_restart_all_nodes_keeps_everything_committed() {
    let mut c = Cluster::new(3, Options::default());
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 1024);
    let mut cl = c.client(2);
    let mut ids = Vec::new();
    for j in 0..30 {
        ids.push(create_retry(&mut cl, &format!("r{j}"), PATIENCE).expect("create"));
    }
    drop(cl);
    // Move the coordinator role by hand, then stop everything: half gracefully, half not.
    let to = if leader == 3 { 1 } else { 3 };
    c.client(2).leader_transfer(to).expect("transfer");
    assert_eq!(c.wait_leader(), to);
    let before = c.wait_converged(&[1, 2, 3]);
    c.stop(1);
    c.kill(2);
    c.kill(3);
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_leader();
    let after = c.wait_converged(&[1, 2, 3]);
    assert!(
        after >= before,
        "applied index went back: {before} -> {after}"
    );
    for id in 1..=3 {
        let all = c.client(id).vhd_list_all().expect("list");
        let got: Vec<u64> = all.iter().map(|v| v.id).collect();
        assert_eq!(got, ids, "node {id} after restart");
    }
    // The restarted cluster takes new proposals.
    create_retry(&mut c.client(1), "after-restart", PATIENCE).expect("create");
    let st = c.status(1).expect("status");
    assert_eq!(st.node_state, "member");
    assert_eq!(st.cluster_name, "test");
}
