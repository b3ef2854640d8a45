//! Seeded simulation of 3- and 5-node clusters (see simharness): the replicas never
//! diverge, acknowledged writes survive crashes and restarts, and everything converges once
//! the faults stop. `SIM_SEED=<n>` replays one seed; `SIM_SEEDS=<n>` sets how many run.

mod simharness;

use simharness::{Scenario, Sim, run_scenario};

#[test]
fn sim_three_nodes_crashes_and_partitions() {
    run_scenario(
        &Scenario {
            name: "3-node",
            nodes: 3,
            voters: vec![1, 2, 3],
            steps: 3_000,
            crashes: true,
            partitions: true,
            membership: false,
            link_faults: true,
            transfers: true,
        },
        40,
    );
}

#[test]
fn sim_five_nodes_with_membership_changes() {
    run_scenario(
        &Scenario {
            name: "5-node-membership",
            nodes: 6,
            voters: vec![1, 2, 3, 4, 5],
            steps: 3_000,
            crashes: true,
            partitions: true,
            membership: true,
            link_faults: true,
            transfers: true,
        },
        24,
    );
}

#[test]
fn sim_replays_exactly_from_its_seed() {
    let sc = Scenario {
        name: "replay",
        nodes: 3,
        voters: vec![1, 2, 3],
        steps: 800,
        crashes: true,
        partitions: true,
        membership: false,
        link_faults: true,
        transfers: true,
    };
    let run = |seed| {
        let mut s = Sim::new(sc.clone(), seed);
        for _ in 0..sc.steps {
            s.step(true);
        }
        s.converge();
        s.fingerprint()
    };
    assert_eq!(run(42), run(42), "same seed, different run");
    assert_ne!(run(42), run(43));
}

#[test]
fn sim_without_faults_every_request_succeeds() {
    let sc = Scenario {
        name: "calm",
        nodes: 3,
        voters: vec![1, 2, 3],
        steps: 2_000,
        crashes: false,
        partitions: false,
        membership: false,
        link_faults: false,
        transfers: false,
    };
    let mut s = Sim::new(sc.clone(), 7);
    for _ in 0..sc.steps {
        s.step(true);
    }
    s.converge();
    let c = s.counts();
    let errors: u64 = c
        .iter()
        .filter(|(k, _)| k.starts_with("err_"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(errors, 0, "requests failed without any fault: {c:?}");
    assert!(c["acked"] > 500, "{c:?}");
}
