//! Table-driven transition tests, persistence round trips and replica determinism of the
//! cluster state machine.

use csv_api::{ClusterId, Epoch, ErrorCode, Generation, NodeId, VhdId};
use lock_manager::{Command as LockCommand, Mode};
use meta_store::StateMachine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ClusterState;
use super::runs::Run;
use super::types::*;

pub(crate) use super::test_kv::MemKv;

use super::test_util::{MIB, vhd, volume};
pub(crate) use super::test_util::{code, init, run, setup};

#[test]
fn transitions_table() {
    use ErrorCode::*;
    let (mut sm, mut kv) = setup();
    let add = |id: u64, addr: &str| Command::AddNode {
        node: NodeId(id),
        address: addr.into(),
        role: NodeRole::Voter,
    };
    let table: Vec<(Command, Option<ErrorCode>)> = vec![
        (init(), None), // same id: idempotent
        (
            Command::InitCluster {
                id: ClusterId(uuid::Uuid::from_u128(8)),
                name: "x".into(),
                created_unix_ms: 1,
                node: NodeId(1),
                address: "a:1".into(),
            },
            Some(AlreadyInitialized),
        ),
        (add(2, "127.0.0.1:2"), None),
        (add(2, "127.0.0.1:22"), None), // joining: retry updates
        (add(3, "127.0.0.1:22"), Some(AlreadyExists)), // address taken
        (add(4, "no-port"), Some(InvalidArgument)),
        (
            Command::SetNodeRole {
                node: NodeId(2),
                role: NodeRole::Voter,
            },
            None,
        ),
        (add(2, "127.0.0.1:2"), Some(AlreadyExists)),
        (
            Command::SetNodeRole {
                node: NodeId(9),
                role: NodeRole::Voter,
            },
            Some(NotFound),
        ),
        (vhd("a", VhdKind::Fixed, None, 10), None), // vhd-1 at 0..10
        (vhd("a", VhdKind::Fixed, None, 1), Some(AlreadyExists)),
        (vhd("b/c", VhdKind::Fixed, None, 1), Some(InvalidArgument)),
        (vhd("", VhdKind::Fixed, None, 1), Some(InvalidArgument)),
        (
            vhd("d", VhdKind::Dynamic, Some(1), 1),
            Some(InvalidArgument),
        ),
        (
            vhd("d", VhdKind::Differencing, None, 1),
            Some(InvalidArgument),
        ),
        (vhd("d", VhdKind::Differencing, Some(77), 1), Some(NotFound)),
        (vhd("d", VhdKind::Differencing, Some(1), 1), None), // vhd-2 at 10
        (vhd("huge", VhdKind::Fixed, None, 1000), Some(NoSpace)),
        (Command::DeleteVhd { vhd: VhdId(1) }, Some(InvalidState)), // has a child
        (lock(LockCommand::Register { node: NodeId(1) }), None),    // epoch 1
        (lock(LockCommand::Register { node: NodeId(2) }), None),    // epoch 1
        (set_state(2, VhdState::Ready, 1, 5), Some(Fenced)),        // nobody holds it
        (acquire(2, 1), None), // node 1 writes vhd-2 at generation 1
        (set_state(2, VhdState::Ready, 2, 1), Some(Fenced)), // not the writer
        (set_state(2, VhdState::Ready, 1, 1), None),
        (set_state(2, VhdState::Creating, 1, 1), Some(InvalidState)),
        (set_state(2, VhdState::Deleting, 1, 1), None),
        (set_state(2, VhdState::Ready, 1, 1), Some(InvalidState)),
        (Command::DeleteVhd { vhd: VhdId(2) }, Some(InvalidState)), // held
        (release(2, 1, 1), None),
        (Command::DeleteVhd { vhd: VhdId(2) }, None),
        (Command::DeleteVhd { vhd: VhdId(2) }, Some(NotFound)),
        (Command::DeleteVhd { vhd: VhdId(1) }, None),
        (reserve(9, 1, 4), Some(InvalidState)), // not a member
        (reserve(2, 1, 0), Some(Limit)),
        (reserve(2, 2, 4), Some(Fenced)), // not its epoch
        (reserve(2, 1, 4), None),         // runs 0..4
        (vhd("dyn", VhdKind::Dynamic, None, 0), None), // vhd-3, no extents
        (acquire(3, 2), None),            // node 2 writes vhd-3 at generation 2
        (set_extents(3, 1, 2, &[(0, 1)], 1), Some(Fenced)), // node 1 is not the writer
        (set_extents(3, 2, 1, &[(0, 1)], 1), Some(Fenced)), // an old generation
        (set_extents(3, 2, 2, &[(4, 1)], 1), Some(InvalidArgument)), // not reserved
        (
            set_extents(3, 2, 2, &[(0, 2)], 3 * 64 * MIB),
            Some(InvalidArgument), // longer than mapped
        ),
        (set_extents(3, 2, 2, &[(0, 2)], 2 * 64 * MIB), None),
        (set_extents(3, 2, 2, &[(0, 2)], 2 * 64 * MIB), None), // again: no change
        (set_extents(3, 2, 2, &[(1, 1)], 0), Some(InvalidArgument)), // not a prefix
        (set_extents(3, 2, 2, &[(0, 1)], 64 * MIB), None),     // extent 1 freed
        (
            set_extents(3, 2, 2, &[(0, 1), (1, 1)], 64 * MIB),
            Some(InvalidArgument),
        ), // freed
        (set_extents(3, 2, 2, &[(0, 1), (2, 1)], 70 * MIB), None), // reserved run 2
        (
            lock(LockCommand::Leave {
                node: NodeId(2),
                epoch: Epoch(1),
            }),
            None,
        ),
        (reserve(2, 1, 1), Some(Fenced)), // its epoch ended (reservation returned)
        (
            set_extents(3, 2, 2, &[(0, 1), (2, 1)], 70 * MIB),
            Some(Fenced),
        ),
        (Command::RemoveNode { node: NodeId(2) }, None),
        (Command::RemoveNode { node: NodeId(2) }, Some(InvalidState)),
        (add(2, "127.0.0.1:2"), Some(AlreadyExists)), // removed ids never return
        (
            Command::SetVolume { volume: volume(50) },
            Some(InvalidState),
        ), // shrink
        (
            Command::SetVolume {
                volume: volume(120),
            },
            None,
        ), // grow
        (
            Command::Lock {
                command: LockCommand::Renew {
                    node: NodeId(1),
                    epoch: Epoch(9),
                },
            },
            Some(LockStaleEpoch),
        ),
        (acquire(3, 1), None), // generation 3
        (Command::DeleteVhd { vhd: VhdId(3) }, Some(InvalidState)), // held
        (
            Command::CheckpointWritten {
                sequence: 1,
                index: 10_000,
            },
            Some(InvalidArgument), // beyond the last catalog change
        ),
    ];
    for (i, (cmd, want)) in table.into_iter().enumerate() {
        let got = code(run(&mut sm, &mut kv, 10 + i as u64, &cmd));
        assert_eq!(got, want, "step {i}: {cmd:?}");
    }
    // Allocation accounting: 120 extents = free + mapped + reserved.
    let QueryReply::Space(s) = sm.answer(Query::Space).expect("space") else {
        panic!("space reply");
    };
    let reserved: u64 = s
        .reservations
        .iter()
        .flat_map(|(_, r)| r)
        .map(|r| r.count)
        .sum();
    assert_eq!(s.free_extents + s.mapped_extents + reserved, 120, "{s:?}");
    assert_eq!(s.mapped_extents, 2);
    assert_eq!(reserved, 0, "the node that left gave its reservation back");
    // The valid writer (node 1 at generation 3) grows vhd-3 from its own reservation.
    let r = run(&mut sm, &mut kv, 99, &reserve(1, 1, 2));
    let Ok(Reply::Runs { runs }) = r else {
        panic!("{r:?}")
    };
    let mut map = sm.vhd(VhdId(3)).expect("vhd-3").runs.clone();
    map.extend(runs);
    let m = Command::SetExtents {
        vhd: VhdId(3),
        node: NodeId(1),
        generation: Generation(3),
        runs: map,
        length: 3 * 64 * MIB,
    };
    let Ok(Reply::Extents { index, .. }) = run(&mut sm, &mut kv, 100, &m) else {
        panic!("set extents")
    };
    assert_eq!(index, 100);
    // Sent again (its answer lost): the same map, nothing changes, answered at the index
    // of the last catalog change.
    let Ok(Reply::Extents { index, .. }) = run(&mut sm, &mut kv, 101, &m) else {
        panic!("set extents again")
    };
    assert_eq!(index, 100);
    let Ok(QueryReply::Checkpoint(c)) = sm.answer(Query::Checkpoint) else {
        panic!("checkpoint")
    };
    assert_eq!((c.catalog_index, c.checkpoint_index), (100, 0));
    let w = Command::CheckpointWritten {
        sequence: 4,
        index: 100,
    };
    assert!(run(&mut sm, &mut kv, 102, &w).is_ok());
    let stale = Command::CheckpointWritten {
        sequence: 3,
        index: 90,
    };
    assert_eq!(
        code(run(&mut sm, &mut kv, 103, &stale)),
        Some(InvalidArgument)
    );
    assert!(sm.apply(104, b"garbage", &mut kv).starts_with(b"{\"Err\""));
}

fn lock(command: LockCommand) -> Command {
    Command::Lock { command }
}

fn acquire(vhd: u64, node: u64) -> Command {
    lock(LockCommand::Acquire {
        vhd: VhdId(vhd),
        node: NodeId(node),
        epoch: Epoch(1),
        mode: Mode::Write,
    })
}

fn release(vhd: u64, node: u64, generation: u64) -> Command {
    lock(LockCommand::Release {
        vhd: VhdId(vhd),
        node: NodeId(node),
        epoch: Epoch(1),
        generation: Generation(generation),
    })
}

fn set_state(vhd: u64, state: VhdState, node: u64, generation: u64) -> Command {
    Command::SetVhdState {
        vhd: VhdId(vhd),
        state,
        node: NodeId(node),
        generation: Generation(generation),
    }
}

fn reserve(node: u64, epoch: u64, count: u64) -> Command {
    Command::ReserveExtents {
        node: NodeId(node),
        epoch: Epoch(epoch),
        count,
    }
}

fn set_extents(vhd: u64, node: u64, generation: u64, runs: &[(u64, u64)], length: u64) -> Command {
    Command::SetExtents {
        vhd: VhdId(vhd),
        node: NodeId(node),
        generation: Generation(generation),
        runs: runs
            .iter()
            .map(|&(start, count)| Run { start, count })
            .collect(),
        length,
    }
}

#[test]
fn fixed_vhds_get_best_fit_contiguous_runs() {
    let (mut sm, mut kv) = setup();
    for (i, n) in [10, 20, 30].iter().enumerate() {
        run(
            &mut sm,
            &mut kv,
            10 + i as u64,
            &vhd(&format!("v{n}"), VhdKind::Fixed, None, *n),
        )
        .expect("create");
    }
    // Free: 60..100 (40). Delete the 20 at 10..30: free 10..30 (20) and 60..100 (40).
    run(&mut sm, &mut kv, 20, &Command::DeleteVhd { vhd: VhdId(2) }).expect("delete");
    let Ok(Reply::Vhd(v)) = run(&mut sm, &mut kv, 21, &vhd("fit", VhdKind::Fixed, None, 15)) else {
        panic!()
    };
    assert_eq!(
        v.runs,
        vec![Run {
            start: 10,
            count: 15
        }],
        "smallest hole that fits"
    );
    let Ok(Reply::Vhd(v)) = run(
        &mut sm,
        &mut kv,
        22,
        &vhd("split", VhdKind::Fixed, None, 44),
    ) else {
        panic!()
    };
    assert_eq!(
        v.runs,
        vec![
            Run {
                start: 25,
                count: 4
            },
            Run {
                start: 60,
                count: 40
            }
        ],
        "largest runs first when nothing fits"
    );
    assert_eq!(v.extents(), 44);
}

/// Random commands, mostly legal.
pub(crate) fn random_command(rng: &mut StdRng, nodes: u64) -> Command {
    let node = NodeId(rng.random_range(1..=nodes + 1));
    let vhd = VhdId(rng.random_range(1..40));
    match rng.random_range(0..22) {
        20 | 21 => super::vm_tests::random_vm(rng, nodes),
        12..=17 => super::remote_gen::random_remote(rng, nodes),
        18 => Command::SetPathState {
            node,
            update: super::paths::PathUpdate {
                mode: ["direct", "redirected", "paused", "bogus"][rng.random_range(0..4)].into(),
                reason: ["healthy", "io_errors"][rng.random_range(0..2)].into(),
                peer: rng
                    .random_bool(0.5)
                    .then(|| NodeId(rng.random_range(1..=nodes))),
                since_unix_ms: rng.random_range(0..1000),
                load: rng.random_range(0..3),
                data_addr: "127.0.0.1:1".into(),
                session_bound_ms: 1000,
            },
        },
        19 => Command::SetRedirect {
            node,
            on: rng.random_bool(0.5),
        },
        0 | 1 => vhd_cmd(rng),
        2 => Command::DeleteVhd { vhd },
        3 => Command::SetVhdState {
            vhd,
            state: [VhdState::Ready, VhdState::Deleting][rng.random_range(0..2)],
            node,
            generation: Generation(rng.random_range(1..20)),
        },
        4 => Command::ReserveExtents {
            node,
            epoch: Epoch(rng.random_range(1..3)),
            count: rng.random_range(1..6),
        },
        5 => Command::CheckpointWritten {
            sequence: rng.random_range(1..5),
            index: rng.random_range(0..200),
        },
        6 | 7 => {
            // A prefix of the VHD's map (guessed) and runs of the reservation (guessed).
            let mut runs = Vec::new();
            let mut start = rng.random_range(0..100);
            for _ in 0..rng.random_range(0..3) {
                let count = rng.random_range(1..3);
                runs.push(Run { start, count });
                start += count + rng.random_range(0..3);
            }
            Command::SetExtents {
                vhd,
                node,
                generation: Generation(rng.random_range(1..20)),
                runs,
                length: rng.random_range(0..4) * 64 * MIB,
            }
        }
        8 => Command::Lock {
            command: LockCommand::Register { node },
        },
        9 => Command::Lock {
            command: LockCommand::Acquire {
                vhd,
                node,
                epoch: Epoch(1),
                mode: [Mode::Write, Mode::Read, Mode::ReadDenyWrite][rng.random_range(0..3)],
            },
        },
        10 => Command::Lock {
            command: LockCommand::Leave {
                node,
                epoch: Epoch(rng.random_range(1..3)),
            },
        },
        _ => Command::Lock {
            command: LockCommand::Release {
                vhd,
                node,
                epoch: Epoch(1),
                generation: Generation(rng.random_range(1..20)),
            },
        },
    }
}

fn vhd_cmd(rng: &mut StdRng) -> Command {
    let kind = [VhdKind::Fixed, VhdKind::Dynamic, VhdKind::Differencing][rng.random_range(0..3)];
    Command::CreateVhd {
        name: format!("v{}", rng.random_range(0..60)),
        kind,
        virtual_size: 1 << 30,
        parent: (kind == VhdKind::Differencing).then(|| VhdId(rng.random_range(1..40))),
        length: rng.random_range(0..8) * 64 * MIB,
    }
}

/// The initial commands of a test cluster: init, three active nodes, a 100-extent volume.
pub(crate) fn bootstrap_commands() -> Vec<Command> {
    let mut v = vec![init()];
    for id in 2..=3 {
        v.push(Command::AddNode {
            node: NodeId(id),
            address: format!("127.0.0.1:{id}"),
            role: NodeRole::Voter,
        });
        v.push(Command::SetNodeRole {
            node: NodeId(id),
            role: NodeRole::Voter,
        });
    }
    v.push(Command::SetVolume {
        volume: volume(100),
    });
    v
}

#[test]
fn replicas_applying_the_same_log_agree_and_reload() {
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut log: Vec<Command> = bootstrap_commands();
        for _ in 0..400 {
            log.push(random_command(&mut rng, 3));
        }
        let mut a = (ClusterState::new(), MemKv::default());
        let mut b = (ClusterState::new(), MemKv::default());
        let mut results = Vec::new();
        for (i, c) in log.iter().enumerate() {
            let ra = run(&mut a.0, &mut a.1, i as u64 + 1, c);
            let rb = b.0.apply(i as u64 + 1, &c.encode(), &mut b.1);
            assert_eq!(
                encode_result(&ra),
                rb,
                "seed {seed} step {i}: results differ"
            );
            results.push(ra.is_ok());
        }
        assert_eq!(a.0.state_hash(), b.0.state_hash(), "seed {seed}");
        assert_eq!(a.1, b.1, "seed {seed}: persisted keys differ");
        let ok = results.iter().filter(|r| **r).count();
        assert!(ok > 50, "seed {seed}: only {ok} commands applied");
        // Free, mapped and reserved extents always add up to the volume.
        let QueryReply::Space(s) = a.0.answer(Query::Space).expect("space") else {
            panic!()
        };
        let reserved: u64 = s
            .reservations
            .iter()
            .flat_map(|(_, r)| r)
            .map(|r| r.count)
            .sum();
        assert_eq!(
            s.free_extents + s.mapped_extents + reserved,
            100,
            "seed {seed}"
        );
    }
}

#[test]
fn queries_page_and_refuse_garbage() {
    let (mut sm, mut kv) = setup();
    for i in 0..5 {
        run(
            &mut sm,
            &mut kv,
            10 + i,
            &vhd(&format!("q{i}"), VhdKind::Dynamic, None, 0),
        )
        .expect("create");
    }
    let QueryReply::VhdPage {
        vhds,
        next_after,
        total,
    } = sm
        .answer(Query::VhdList { after: 0, limit: 2 })
        .expect("page")
    else {
        panic!()
    };
    assert_eq!((vhds.len(), next_after, total), (2, 2, 5));
    let QueryReply::VhdPage {
        vhds, next_after, ..
    } = sm
        .answer(Query::VhdList { after: 4, limit: 2 })
        .expect("page")
    else {
        panic!()
    };
    assert_eq!((vhds.len(), next_after), (1, 0));
    assert!(sm.answer(Query::VhdList { after: 0, limit: 0 }).is_err());
    let r: Result<QueryReply, _> = decode_result(&sm.query(b"nonsense"));
    assert_eq!(r.expect_err("malformed").code(), ErrorCode::Malformed);
    let r: QueryReply = decode_result(&sm.query(&Query::VhdByName { name: "q3".into() }.encode()))
        .expect("by name");
    assert!(matches!(r, QueryReply::Vhd(v) if v.id == VhdId(4)));
}
