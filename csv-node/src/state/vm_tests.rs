//! The VM table's transitions (`vm_apply.rs`), and VM commands for the random logs of
//! `tests.rs`.

use csv_api::{ErrorCode, NodeId};
use lock_manager::Command as LockCommand;
use rand::Rng;
use rand::rngs::StdRng;

use super::test_util::{code, run, setup};
use super::types::*;
use super::vms::*;

pub(super) fn def(name: &str, disks: &[&str]) -> VmDef {
    VmDef {
        name: name.into(),
        cpus: 1,
        memory_mib: 256,
        disks: disks.iter().map(|d| d.to_string()).collect(),
        nic: true,
        kernel: String::new(),
        initrd: String::new(),
        append: String::new(),
        preferred: Vec::new(),
        priority: 1,
        slots: Vec::new(),
    }
}

pub(super) fn vm(command: VmCommand) -> Command {
    Command::Vm { command }
}

pub(super) fn vhd(name: &str) -> Command {
    Command::CreateVhd {
        name: name.into(),
        kind: VhdKind::Dynamic,
        virtual_size: 1 << 30,
        parent: None,
        length: 0,
    }
}

pub(super) fn report(
    name: &str,
    node: u64,
    incarnation: u64,
    state: VmState,
    guest_off: bool,
) -> Command {
    vm(VmCommand::Report {
        name: name.into(),
        node: NodeId(node),
        incarnation,
        state,
        detail: "d".into(),
        since_unix_ms: 1_000,
        guest_off,
    })
}

pub(super) fn random_vm(rng: &mut StdRng, nodes: u64) -> Command {
    let name = format!("vm{}", rng.random_range(0..4));
    let node = NodeId(rng.random_range(1..=nodes + 1));
    let states = [
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Failed,
    ];
    match rng.random_range(0..7) {
        5 => vm(VmCommand::SetDisk {
            name,
            disk: format!("v{}", rng.random_range(0..60)),
            add: rng.random_bool(0.6),
        }),
        6 => vm(VmCommand::Drain {
            node,
            on: rng.random_bool(0.5),
        }),
        0 => {
            let disks: Vec<String> = (0..rng.random_range(0..3))
                .map(|_| format!("v{}", rng.random_range(0..60)))
                .collect();
            let d: Vec<&str> = disks.iter().map(String::as_str).collect();
            vm(VmCommand::Create {
                def: def(&name, &d),
            })
        }
        1 => vm(VmCommand::Start {
            name,
            node: rng.random_bool(0.5).then_some(node),
        }),
        2 => vm(VmCommand::Stop {
            name,
            kill: rng.random_bool(0.3),
        }),
        3 => report(
            &name,
            node.0,
            rng.random_range(0..4),
            states[rng.random_range(0..states.len())],
            rng.random_bool(0.3),
        ),
        _ => vm(VmCommand::Delete { name }),
    }
}

#[test]
fn a_vm_is_defined_placed_reported_stopped_and_deleted() {
    let (mut s, mut kv) = setup();
    run(&mut s, &mut kv, 3, &vhd("disk1")).expect("vhd");
    // Not placeable yet: node 1 never registered with the lock manager.
    let create = vm(VmCommand::Create {
        def: def("web1", &["disk1"]),
    });
    let r = run(&mut s, &mut kv, 4, &create).expect("create");
    assert!(matches!(r, Reply::Vm(ref v) if v.state == VmState::Stopped && v.node.is_none()));
    // The same definition again answers the record; another one under the name is refused.
    run(&mut s, &mut kv, 5, &create).expect("idempotent");
    let other = vm(VmCommand::Create {
        def: def("web1", &[]),
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 5, &other)),
        Some(ErrorCode::AlreadyExists)
    );
    // The disk is this VM's: another VM cannot name it, and it cannot be deleted.
    let thief = vm(VmCommand::Create {
        def: def("web2", &["disk1"]),
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 5, &thief)),
        Some(ErrorCode::InvalidState)
    );
    let id = s.vhds.by_name("disk1").expect("disk").id;
    assert_eq!(
        code(run(&mut s, &mut kv, 5, &Command::DeleteVhd { vhd: id })),
        Some(ErrorCode::InvalidState)
    );
    let start = vm(VmCommand::Start {
        name: "web1".into(),
        node: None,
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 5, &start)),
        Some(ErrorCode::Unavailable)
    );
    let register = Command::Lock {
        command: LockCommand::Register { node: NodeId(1) },
    };
    run(&mut s, &mut kv, 6, &register).expect("register");
    match run(&mut s, &mut kv, 7, &start).expect("start") {
        Reply::Vm(v) => {
            assert_eq!(
                (v.node, v.want, v.incarnation),
                (Some(NodeId(1)), Want::Running, 1)
            );
            assert_eq!(v.state, VmState::Starting);
        }
        other => panic!("{other:?}"),
    }
    // Starting it again where it runs is a no-op; elsewhere it is a migration.
    run(&mut s, &mut kv, 8, &start).expect("again");
    let elsewhere = vm(VmCommand::Start {
        name: "web1".into(),
        node: Some(NodeId(2)),
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 8, &elsewhere)),
        Some(ErrorCode::InvalidState)
    );
    // Reports: only from its node and its run.
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            8,
            &report("web1", 2, 1, VmState::Running, false)
        )),
        Some(ErrorCode::Fenced)
    );
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            8,
            &report("web1", 1, 0, VmState::Running, false)
        )),
        Some(ErrorCode::Fenced)
    );
    run(
        &mut s,
        &mut kv,
        9,
        &report("web1", 1, 1, VmState::Running, false),
    )
    .expect("running");
    let v = s.vms().by_name("web1").expect("vm").clone();
    assert_eq!((v.state, v.started_unix_ms), (VmState::Running, 1_000));
    let delete = vm(VmCommand::Delete {
        name: "web1".into(),
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 10, &delete)),
        Some(ErrorCode::InvalidState)
    );
    let stop = vm(VmCommand::Stop {
        name: "web1".into(),
        kill: false,
    });
    run(&mut s, &mut kv, 10, &stop).expect("stop");
    // Asked to stop, but its QEMU still runs: not deletable yet.
    assert_eq!(
        code(run(&mut s, &mut kv, 11, &delete)),
        Some(ErrorCode::InvalidState)
    );
    run(
        &mut s,
        &mut kv,
        11,
        &report("web1", 1, 1, VmState::Stopped, false),
    )
    .expect("stopped");
    let v = s.vms().by_name("web1").expect("vm").clone();
    assert_eq!(
        (v.state, v.started_unix_ms, v.want),
        (VmState::Stopped, 0, Want::Stopped)
    );
    run(&mut s, &mut kv, 12, &delete).expect("delete");
    assert!(s.vms().by_name("web1").is_none());
    run(&mut s, &mut kv, 13, &Command::DeleteVhd { vhd: id }).expect("disk free again");
}

#[test]
fn a_guest_that_powers_off_stays_off_and_a_new_run_fences_old_reports() {
    let (mut s, mut kv) = setup();
    for (i, n) in [1u64, 2].iter().enumerate() {
        if *n != 1 {
            let add = Command::AddNode {
                node: NodeId(*n),
                address: format!("127.0.0.1:{n}"),
                role: NodeRole::Voter,
            };
            run(&mut s, &mut kv, 3 + i as u64, &add).expect("add");
            let role = Command::SetNodeRole {
                node: NodeId(*n),
                role: NodeRole::Voter,
            };
            run(&mut s, &mut kv, 3 + i as u64, &role).expect("role");
        }
        let register = Command::Lock {
            command: LockCommand::Register { node: NodeId(*n) },
        };
        run(&mut s, &mut kv, 5 + i as u64, &register).expect("register");
    }
    let mut d = def("db", &[]);
    d.preferred = vec![NodeId(2)];
    run(&mut s, &mut kv, 8, &vm(VmCommand::Create { def: d })).expect("create");
    let start = vm(VmCommand::Start {
        name: "db".into(),
        node: None,
    });
    run(&mut s, &mut kv, 9, &start).expect("start");
    assert_eq!(
        s.vms().by_name("db").expect("vm").node,
        Some(NodeId(2)),
        "preferred"
    );
    run(
        &mut s,
        &mut kv,
        10,
        &report("db", 2, 1, VmState::Stopped, true),
    )
    .expect("off");
    let v = s.vms().by_name("db").expect("vm").clone();
    assert_eq!((v.want, v.state), (Want::Stopped, VmState::Stopped));
    // Placed again on node 1 by hand: run 2; node 2's report of run 1 is stale.
    let on1 = vm(VmCommand::Start {
        name: "db".into(),
        node: Some(NodeId(1)),
    });
    run(&mut s, &mut kv, 11, &on1).expect("start on 1");
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            12,
            &report("db", 2, 1, VmState::Running, false)
        )),
        Some(ErrorCode::Fenced)
    );
    run(
        &mut s,
        &mut kv,
        12,
        &report("db", 1, 2, VmState::Running, false),
    )
    .expect("run 2");
    // A bad definition is refused with the reason.
    let mut bad = def("bad/name", &[]);
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            13,
            &vm(VmCommand::Create { def: bad.clone() })
        )),
        Some(ErrorCode::InvalidArgument)
    );
    bad.name = "ok".into();
    bad.memory_mib = 1;
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            13,
            &vm(VmCommand::Create { def: bad.clone() })
        )),
        Some(ErrorCode::InvalidArgument)
    );
    bad.memory_mib = 64;
    bad.initrd = "/boot/initrd".into();
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            13,
            &vm(VmCommand::Create { def: bad })
        )),
        Some(ErrorCode::InvalidArgument)
    );
}

#[test]
fn vm_queries_encode_through_the_state_machine() {
    use meta_store::StateMachine as _;
    let (mut s, mut kv) = setup();
    run(
        &mut s,
        &mut kv,
        3,
        &vm(VmCommand::Create { def: def("a", &[]) }),
    )
    .expect("create");
    let list: QueryReply =
        decode_result(&s.query(&serde_json::to_vec(&Query::Vms).expect("query"))).expect("list");
    assert!(
        matches!(list, QueryReply::Vms { ref vms, .. } if vms.len() == 1),
        "{list:?}"
    );
    let one = Query::Vm { name: "a".into() };
    let got: QueryReply =
        decode_result(&s.query(&serde_json::to_vec(&one).expect("query"))).expect("one");
    assert!(matches!(got, QueryReply::Vm(ref v) if v.def.name == "a"));
    let none = Query::Vm { name: "b".into() };
    let e = decode_result::<QueryReply>(&s.query(&serde_json::to_vec(&none).expect("query")));
    assert_eq!(e.expect_err("missing").code(), ErrorCode::NotFound);
}

pub(super) fn two_live_nodes() -> (super::ClusterState, super::test_kv::MemKv) {
    let (mut s, mut kv) = setup();
    let add = Command::AddNode {
        node: NodeId(2),
        address: "127.0.0.1:2".into(),
        role: NodeRole::Voter,
    };
    run(&mut s, &mut kv, 3, &add).expect("add");
    let role = Command::SetNodeRole {
        node: NodeId(2),
        role: NodeRole::Voter,
    };
    run(&mut s, &mut kv, 4, &role).expect("role");
    for n in [1, 2] {
        let register = Command::Lock {
            command: LockCommand::Register { node: NodeId(n) },
        };
        run(&mut s, &mut kv, 5, &register).expect("register");
    }
    (s, kv)
}

#[test]
fn an_expired_nodes_vms_restart_elsewhere_by_priority() {
    let (mut s, mut kv) = two_live_nodes();
    let mut low = def("low", &[]);
    low.priority = 0;
    run(&mut s, &mut kv, 6, &vm(VmCommand::Create { def: low })).expect("low");
    run(
        &mut s,
        &mut kv,
        7,
        &vm(VmCommand::Create {
            def: def("high", &[]),
        }),
    )
    .expect("high");
    for name in ["low", "high"] {
        let start = vm(VmCommand::Start {
            name: name.into(),
            node: Some(NodeId(2)),
        });
        run(&mut s, &mut kv, 8, &start).expect("start");
    }
    let expire = Command::Lock {
        command: LockCommand::ExpireNode {
            node: NodeId(2),
            epoch: csv_api::Epoch(1),
            renewals: 0,
        },
    };
    run(&mut s, &mut kv, 9, &expire).expect("expire");
    let high = s.vms().by_name("high").expect("high").clone();
    assert_eq!(
        (high.node, high.incarnation, high.state),
        (Some(NodeId(1)), 2, VmState::Starting)
    );
    assert!(high.detail.contains("restarted"), "{}", high.detail);
    let low = s.vms().by_name("low").expect("low").clone();
    assert_eq!((low.node, low.state), (Some(NodeId(2)), VmState::Failed));
    // The failed node's late report of the old run is stale.
    assert_eq!(
        code(run(
            &mut s,
            &mut kv,
            10,
            &report("high", 2, 1, VmState::Running, false)
        )),
        Some(ErrorCode::Fenced)
    );
}

#[test]
fn a_migration_is_recorded_switched_only_when_the_destination_writes_every_disk() {
    let (mut s, mut kv) = two_live_nodes();
    run(&mut s, &mut kv, 6, &vhd("d")).expect("vhd");
    run(
        &mut s,
        &mut kv,
        7,
        &vm(VmCommand::Create {
            def: def("m", &["d"]),
        }),
    )
    .expect("create");
    let start = vm(VmCommand::Start {
        name: "m".into(),
        node: Some(NodeId(1)),
    });
    run(&mut s, &mut kv, 8, &start).expect("start");
    let migrate = vm(VmCommand::Migrate {
        name: "m".into(),
        to: Some(NodeId(2)),
        kind: MigrationKind::Live,
        started_unix_ms: 1,
    });
    // Not running yet (no report): refused.
    assert_eq!(
        code(run(&mut s, &mut kv, 9, &migrate)),
        Some(ErrorCode::InvalidState)
    );
    run(
        &mut s,
        &mut kv,
        9,
        &report("m", 1, 1, VmState::Running, false),
    )
    .expect("running");
    run(&mut s, &mut kv, 10, &migrate).expect("migrate");
    let id = 10;
    let ready = vm(VmCommand::MigrateReady {
        name: "m".into(),
        id,
        node: NodeId(1),
        uri: "tcp:x:1".into(),
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 11, &ready)),
        Some(ErrorCode::Fenced),
        "not the destination"
    );
    let ready = vm(VmCommand::MigrateReady {
        name: "m".into(),
        id,
        node: NodeId(2),
        uri: "tcp:x:1".into(),
    });
    run(&mut s, &mut kv, 11, &ready).expect("ready");
    let switched = vm(VmCommand::MigrateSwitched {
        name: "m".into(),
        id,
        node: NodeId(1),
        handoff_us: 5,
    });
    // Node 1 still writes the disk (nobody does, here): the switch is refused.
    assert_eq!(
        code(run(&mut s, &mut kv, 12, &switched)),
        Some(ErrorCode::InvalidState)
    );
    let disk = s.vhds.by_name("d").expect("d").id;
    let acquire = Command::Lock {
        command: LockCommand::Acquire {
            vhd: disk,
            node: NodeId(2),
            epoch: csv_api::Epoch(1),
            mode: lock_manager::Mode::Write,
        },
    };
    run(&mut s, &mut kv, 12, &acquire).expect("node 2 writes d");
    run(&mut s, &mut kv, 13, &switched).expect("switched");
    // After the switch there is no abort, and a stop must wait.
    let abort = vm(VmCommand::MigrateAbort {
        name: "m".into(),
        id,
        reason: "x".into(),
        ended_unix_ms: 2,
    });
    assert_eq!(
        code(run(&mut s, &mut kv, 14, &abort)),
        Some(ErrorCode::Fenced)
    );
    let stop = vm(VmCommand::Stop {
        name: "m".into(),
        kill: false,
    });
    assert_eq!(code(run(&mut s, &mut kv, 14, &stop)), Some(ErrorCode::Busy));
    let commit = vm(VmCommand::MigrateCommit {
        name: "m".into(),
        id,
        node: NodeId(2),
        ended_unix_ms: 3,
    });
    run(&mut s, &mut kv, 14, &commit).expect("commit");
    let r = s.vms().by_name("m").expect("m").clone();
    assert_eq!(
        (r.node, r.incarnation, r.migration.is_none()),
        (Some(NodeId(2)), 2, true)
    );
    let last = r.last_migration.expect("result");
    assert_eq!((last.outcome.as_str(), last.handoff_us), ("completed", 5));
    let stats = vm(VmCommand::MigrateStats {
        name: "m".into(),
        id,
        downtime_ms: 40,
        total_ms: 400,
        handoff_us: 7,
    });
    run(&mut s, &mut kv, 15, &stats).expect("stats");
    let last = s
        .vms()
        .by_name("m")
        .expect("m")
        .last_migration
        .clone()
        .expect("r");
    assert_eq!(
        (last.downtime_ms, last.total_ms, last.handoff_us),
        (40, 400, 7)
    );
}
