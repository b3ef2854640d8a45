//! Remote attach/detach requests in the state machine: the legality table, failure of
//! open requests when their target expires, leaves or is removed, the bounded table
//! with eviction of the oldest finished record, and (through the shared `run` helper)
//! that every step persists and loads back to the same state and hash.

use csv_api::error::ApiError;
use csv_api::{Epoch, ErrorCode, NodeId};
use lock_manager::Command as LockCommand;
use meta_store::StateMachine;
use rand::rngs::StdRng;

use super::ClusterState;
use super::remote::*;
use super::remote_gen::{attached, register};
use super::tests::{MemKv, bootstrap_commands, code, run};
use super::types::*;

const ATTACH: RemoteAction = RemoteAction::Attach { read_only: false };

fn request(id: u64, from: u64, target: u64, name: &str, action: RemoteAction) -> Command {
    Command::Remote {
        command: RemoteCommand::Request {
            id,
            from: NodeId(from),
            target: NodeId(target),
            name: name.into(),
            action,
        },
    }
}

fn rc(command: RemoteCommand) -> Command {
    Command::Remote { command }
}

fn claim(id: u64, node: u64) -> Command {
    rc(RemoteCommand::Claim {
        id,
        node: NodeId(node),
    })
}

fn finish(id: u64, node: u64, outcome: RemoteOutcome) -> Command {
    rc(RemoteCommand::Finish {
        id,
        node: NodeId(node),
        outcome,
    })
}

fn state_of(sm: &ClusterState, id: u64) -> Option<RemoteState> {
    match sm.answer(Query::Remote(RemoteQuery::Get { id })) {
        Ok(QueryReply::Remote(RemoteReply::Record { record })) => record.map(|r| r.state),
        other => panic!("unexpected {other:?}"),
    }
}

fn outcome_of(sm: &ClusterState, id: u64) -> RemoteOutcome {
    match state_of(sm, id) {
        Some(RemoteState::Done { outcome, .. }) => outcome,
        other => panic!("request {id} is {other:?}"),
    }
}

fn pending_for(sm: &ClusterState, node: u64) -> Vec<u64> {
    match sm.answer(Query::Remote(RemoteQuery::PendingFor {
        node: NodeId(node),
    })) {
        Ok(QueryReply::Remote(RemoteReply::Records { records })) => {
            records.iter().map(|r| r.id).collect()
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// The shared bootstrap (init, nodes 2 and 3 active, a volume), nodes 1 and 2
/// registered, VHD 1 "a" ready, VHD 2 "b" still creating. The next free log index
/// comes back.
fn cluster() -> (ClusterState, MemKv, u64) {
    let mut sm = ClusterState::new();
    let mut kv = MemKv::default();
    let mut i = 1;
    let mut cmds = bootstrap_commands();
    cmds.push(register(1));
    cmds.push(register(2));
    for name in ["a", "b"] {
        cmds.push(Command::CreateVhd {
            name: name.into(),
            kind: VhdKind::Dynamic,
            virtual_size: 1 << 30,
            parent: None,
            length: 1 << 20,
        });
    }
    // A create marks its VHD ready under its write hold (the first grant: generation 1).
    let hold = |command| Command::Lock { command };
    cmds.push(hold(lock_manager::Command::Acquire {
        vhd: csv_api::VhdId(1),
        node: csv_api::NodeId(1),
        epoch: csv_api::Epoch(1),
        mode: lock_manager::Mode::Write,
    }));
    cmds.push(Command::SetVhdState {
        vhd: csv_api::VhdId(1),
        state: VhdState::Ready,
        node: csv_api::NodeId(1),
        generation: csv_api::Generation(1),
    });
    cmds.push(hold(lock_manager::Command::Release {
        vhd: csv_api::VhdId(1),
        node: csv_api::NodeId(1),
        epoch: csv_api::Epoch(1),
        generation: csv_api::Generation(1),
    }));
    for c in cmds {
        run(&mut sm, &mut kv, i, &c).expect("setup command");
        i += 1;
    }
    (sm, kv, i)
}

#[test]
fn requests_claims_outcomes_and_cancels() {
    use ErrorCode::*;
    let (mut sm, mut kv, mut i) = cluster();
    let failed = RemoteOutcome::Failed {
        error: ApiError::new(LockConflict, "held elsewhere"),
    };
    let table: Vec<(Command, Option<ErrorCode>)> = vec![
        (request(0, 1, 2, "a", ATTACH), Some(InvalidArgument)),
        (request(1, 2, 2, "a", ATTACH), Some(InvalidArgument)), // asks itself
        (request(1, 1, 9, "a", ATTACH), Some(Unavailable)),     // unknown node
        (request(1, 1, 3, "a", ATTACH), Some(Unavailable)),     // no lease yet
        (register(3), None),
        (request(1, 1, 3, "nope", ATTACH), Some(NotFound)),
        (request(1, 1, 3, "b", ATTACH), Some(InvalidState)), // creating
        (request(1, 1, 3, "b", RemoteAction::Detach), None), // detach: the target decides
        (request(5, 1, 3, "a", ATTACH), None),
        (request(5, 1, 3, "a", ATTACH), None), // a retried proposal
        (
            request(5, 1, 3, "a", RemoteAction::Detach),
            Some(AlreadyExists),
        ),
        (claim(5, 2), Some(InvalidArgument)), // not the target
        (finish(5, 3, attached(7)), Some(InvalidState)), // not claimed
        (claim(5, 3), None),
        (claim(5, 3), None), // again: still running
        (finish(5, 3, RemoteOutcome::Detached), Some(InvalidArgument)), // wrong kind
        (rc(RemoteCommand::Cancel { id: 5 }), None), // running: left alone
        (rc(RemoteCommand::Forget { id: 5 }), Some(InvalidState)),
        (finish(5, 3, attached(7)), None),
        (finish(5, 3, attached(7)), None), // a retried proposal
        (finish(5, 3, failed.clone()), Some(InvalidState)),
        (claim(5, 3), Some(InvalidState)), // finished
        (request(6, 2, 3, "a", ATTACH), None),
        (rc(RemoteCommand::Cancel { id: 6 }), None),
        (claim(6, 3), Some(InvalidState)), // cancelled: never runs
        (rc(RemoteCommand::Cancel { id: 6 }), None),
        (rc(RemoteCommand::Cancel { id: 99 }), Some(NotFound)),
        (claim(1, 3), None),
        (finish(1, 3, failed.clone()), None),
    ];
    for (cmd, want) in table {
        let r = run(&mut sm, &mut kv, i, &cmd);
        assert_eq!(code(r.clone()), want, "{cmd:?} → {r:?}");
        if let (Command::Remote { command }, Ok(Reply::Remote { record })) = (&cmd, &r) {
            assert_eq!(
                Some(record.state.clone()),
                state_of(&sm, record.id),
                "{command:?}"
            );
        }
        i += 1;
    }
    assert_eq!(outcome_of(&sm, 5), attached(7));
    assert_eq!(outcome_of(&sm, 6), RemoteOutcome::Cancelled);
    assert_eq!(outcome_of(&sm, 1), failed);
    assert!(pending_for(&sm, 3).is_empty());
    // Forgotten once read: gone, and forgetting again is not_found.
    let before = sm.state_hash();
    run(&mut sm, &mut kv, i, &rc(RemoteCommand::Forget { id: 5 })).expect("forget");
    assert_ne!(sm.state_hash(), before, "the hash covers request records");
    assert_eq!(state_of(&sm, 5), None);
    let r = run(
        &mut sm,
        &mut kv,
        i + 1,
        &rc(RemoteCommand::Forget { id: 5 }),
    );
    assert_eq!(code(r), Some(NotFound));
    // Long messages and paths are cut to their bounds.
    run(&mut sm, &mut kv, i + 2, &request(7, 1, 3, "a", ATTACH)).expect("request");
    run(&mut sm, &mut kv, i + 3, &claim(7, 3)).expect("claim");
    let long = RemoteOutcome::Failed {
        error: ApiError::new(Storage, "é".repeat(MAX_OUTCOME_MESSAGE)),
    };
    run(&mut sm, &mut kv, i + 4, &finish(7, 3, long)).expect("finish");
    match outcome_of(&sm, 7) {
        RemoteOutcome::Failed { error } => {
            assert!(error.message.len() <= MAX_OUTCOME_MESSAGE);
            assert_eq!(error.code(), Storage);
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_target_that_expires_leaves_or_is_removed_fails_its_open_requests() {
    let (mut sm, mut kv, mut i) = cluster();
    let mut step = |sm: &mut ClusterState, kv: &mut MemKv, c: Command| {
        let r = run(sm, kv, i, &c);
        i += 1;
        r
    };
    step(&mut sm, &mut kv, register(3)).expect("register 3");
    step(&mut sm, &mut kv, request(7, 1, 3, "a", ATTACH)).expect("request 7");
    step(
        &mut sm,
        &mut kv,
        request(8, 1, 3, "a", RemoteAction::Detach),
    )
    .expect("8");
    step(&mut sm, &mut kv, claim(8, 3)).expect("claim 8");
    step(&mut sm, &mut kv, request(9, 1, 2, "a", ATTACH)).expect("request 9");
    assert_eq!(pending_for(&sm, 3), vec![7, 8]);
    assert_eq!(pending_for(&sm, 2), vec![9]);
    step(
        &mut sm,
        &mut kv,
        Command::Lock {
            command: LockCommand::ExpireNode {
                node: NodeId(3),
                epoch: Epoch(1),
                renewals: 0,
            },
        },
    )
    .expect("expire 3");
    for id in [7, 8] {
        match outcome_of(&sm, id) {
            RemoteOutcome::Failed { error } => {
                assert_eq!(error.code(), ErrorCode::Unavailable);
                assert!(error.message.contains("node-3 expired"), "{error:?}");
            }
            o => panic!("{id}: {o:?}"),
        }
    }
    assert!(pending_for(&sm, 3).is_empty());
    assert_eq!(
        pending_for(&sm, 2),
        vec![9],
        "another target's request stays"
    );
    // The expired node's late outcome is refused (it then undoes its attach).
    let r = step(&mut sm, &mut kv, finish(8, 3, RemoteOutcome::Detached));
    assert_eq!(code(r), Some(ErrorCode::InvalidState));
    // An expired target is refused at once.
    let r = step(&mut sm, &mut kv, request(10, 1, 3, "a", ATTACH));
    assert_eq!(code(r), Some(ErrorCode::Unavailable));
    // Removal.
    step(&mut sm, &mut kv, Command::RemoveNode { node: NodeId(2) }).expect("remove 2");
    match outcome_of(&sm, 9) {
        RemoteOutcome::Failed { error } => assert!(error.message.contains("was removed")),
        o => panic!("{o:?}"),
    }
    // Leave (node 1 asks node 3 after it renewed at its new epoch, then 3 leaves).
    step(
        &mut sm,
        &mut kv,
        Command::Lock {
            command: LockCommand::Renew {
                node: NodeId(3),
                epoch: Epoch(2),
            },
        },
    )
    .expect("renew 3");
    step(&mut sm, &mut kv, request(11, 1, 3, "a", ATTACH)).expect("request 11");
    step(
        &mut sm,
        &mut kv,
        Command::Lock {
            command: LockCommand::Leave {
                node: NodeId(3),
                epoch: Epoch(2),
            },
        },
    )
    .expect("leave 3");
    match outcome_of(&sm, 11) {
        RemoteOutcome::Failed { error } => assert!(error.message.contains("left")),
        o => panic!("{o:?}"),
    }
}

#[test]
fn the_table_is_bounded_and_evicts_the_oldest_finished_record() {
    let (mut sm, mut kv, mut i) = cluster();
    run(&mut sm, &mut kv, i, &register(3)).expect("register 3");
    i += 1;
    let n = MAX_REMOTE_RECORDS as u64;
    for id in 1..=n {
        run(&mut sm, &mut kv, i, &request(id, 1, 3, "a", ATTACH)).expect("request");
        i += 1;
    }
    let r = run(&mut sm, &mut kv, i, &request(n + 1, 1, 3, "a", ATTACH));
    assert_eq!(code(r), Some(ErrorCode::Limit), "every record unfinished");
    // Finish 3 first, then 2: 3 is the oldest finished one.
    for id in [3, 2] {
        run(&mut sm, &mut kv, i, &rc(RemoteCommand::Cancel { id })).expect("cancel");
        i += 1;
    }
    run(&mut sm, &mut kv, i, &request(n + 1, 1, 3, "a", ATTACH)).expect("evicts");
    i += 1;
    assert_eq!(state_of(&sm, 3), None, "oldest finished evicted");
    assert!(state_of(&sm, 2).is_some());
    assert_eq!(sm.remote_requests().count(), MAX_REMOTE_RECORDS);
    run(&mut sm, &mut kv, i, &request(n + 2, 1, 3, "a", ATTACH)).expect("evicts 2");
    assert_eq!(state_of(&sm, 2), None);
    let r = run(&mut sm, &mut kv, i + 1, &request(n + 3, 1, 3, "a", ATTACH));
    assert_eq!(code(r), Some(ErrorCode::Limit));
    // A stored table over the bound does not load.
    let mut loaded = ClusterState::new();
    let mut big = kv.clone();
    let mut key = b"q/".to_vec();
    key.extend_from_slice(&(n + 100).to_be_bytes());
    let mut rec = sm.remote_requests().next().expect("a record").clone();
    rec.id = n + 100;
    big.0.insert(key, serde_json::to_vec(&rec).expect("json"));
    assert!(loaded.load(&big).is_err());
}

/// The random commands the replica and simulation tests apply reach every remote
/// transition, so those tests cover them.
#[test]
fn random_remote_commands_reach_every_transition() {
    use rand::SeedableRng;
    let mut ok = [0u32; 5];
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut sm = ClusterState::new();
        let mut kv = MemKv::default();
        let mut i = 1;
        for c in super::tests::bootstrap_commands() {
            sm.execute(i, c, &mut kv).expect("bootstrap");
            i += 1;
        }
        for _ in 0..400 {
            let c = super::tests::random_command(&mut rng, 3);
            let k = match &c {
                Command::Remote { command } => match command {
                    RemoteCommand::Request { .. } => 0,
                    RemoteCommand::Claim { .. } => 1,
                    RemoteCommand::Finish { .. } => 2,
                    RemoteCommand::Cancel { .. } => 3,
                    RemoteCommand::Forget { .. } => 4,
                },
                _ => usize::MAX,
            };
            if sm.execute(i, c, &mut kv).is_ok() && k < ok.len() {
                ok[k] += 1;
            }
            i += 1;
        }
    }
    assert!(ok.iter().all(|&n| n > 0), "applied per kind: {ok:?}");
}
