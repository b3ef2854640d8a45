//! Maintenance and disk changes of the VM table: a drained node takes no VM and its
//! VMs are migrated to the others; disks added and removed keep the others' slots.

use csv_api::{ErrorCode, NodeId};

use super::test_util::{code, run};
use super::types::*;
use super::vm_tests::{def, two_live_nodes, vhd, vm};
use super::vms::*;

fn start(name: &str, node: Option<u64>) -> Command {
    vm(VmCommand::Start {
        name: name.into(),
        node: node.map(NodeId),
    })
}

fn drain(node: u64, on: bool) -> Command {
    vm(VmCommand::Drain {
        node: NodeId(node),
        on,
    })
}

#[test]
fn a_drained_node_takes_no_vm_and_its_vms_migrate_to_the_others() {
    let (mut s, mut kv) = two_live_nodes();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let create = vm(VmCommand::Create {
            def: def(name, &[]),
        });
        run(&mut s, &mut kv, 10 + i as u64, &create).expect("create");
    }
    run(&mut s, &mut kv, 12, &start("a", Some(2))).expect("start a");
    run(&mut s, &mut kv, 13, &drain(2, true)).expect("drain");
    assert!(s.vms().is_drained(NodeId(2)));
    // Idempotent: a retried drain changes nothing.
    run(&mut s, &mut kv, 14, &drain(2, true)).expect("drain again");
    assert_eq!(
        code(run(&mut s, &mut kv, 15, &start("b", Some(2)))),
        Some(ErrorCode::Unavailable),
        "nothing is started on a drained node"
    );
    let b = run(&mut s, &mut kv, 16, &start("b", None)).expect("start b");
    assert!(
        matches!(b, Reply::Vm(ref r) if r.node == Some(NodeId(1))),
        "{b:?}"
    );
    // Its running VM moves away to a node the table chooses.
    let running = super::vm_tests::report("a", 2, 1, VmState::Running, false);
    run(&mut s, &mut kv, 17, &running).expect("report");
    let away = vm(VmCommand::Migrate {
        name: "a".into(),
        to: None,
        kind: MigrationKind::Live,
        started_unix_ms: 5,
    });
    let r = run(&mut s, &mut kv, 18, &away).expect("migrate");
    let Reply::Vm(r) = r else { panic!("{r:?}") };
    let m = r.migration.expect("under way");
    assert_eq!((m.src, m.dst), (NodeId(2), NodeId(1)));
    // With every other node drained, there is nowhere to go.
    run(&mut s, &mut kv, 19, &drain(1, true)).expect("drain 1");
    assert_eq!(
        code(run(&mut s, &mut kv, 20, &start("b", None))),
        None,
        "b runs already: a start is a no-op"
    );
    assert!(s.vms().drained().eq([NodeId(1), NodeId(2)]));
    run(&mut s, &mut kv, 21, &drain(1, false)).expect("resume 1");
    run(&mut s, &mut kv, 22, &drain(2, false)).expect("resume 2");
    assert_eq!(s.vms().drained().count(), 0);
    assert_eq!(
        code(run(&mut s, &mut kv, 23, &drain(9, true))),
        Some(ErrorCode::NotFound)
    );
}

fn set_disk(name: &str, disk: &str, add: bool) -> Command {
    vm(VmCommand::SetDisk {
        name: name.into(),
        disk: disk.into(),
        add,
    })
}

#[test]
fn disks_added_and_removed_keep_the_others_slots() {
    let (mut s, mut kv) = two_live_nodes();
    for (i, d) in ["x", "y", "z", "w"].iter().enumerate() {
        run(&mut s, &mut kv, 10 + i as u64, &vhd(d)).expect("vhd");
    }
    let create = vm(VmCommand::Create {
        def: def("a", &["x", "y"]),
    });
    run(&mut s, &mut kv, 20, &create).expect("create");
    let slots = |s: &super::ClusterState| -> Vec<(u32, String)> {
        let r = s.vms().by_name("a").expect("a");
        r.def
            .disk_slots()
            .into_iter()
            .map(|(n, d)| (n, d.to_string()))
            .collect()
    };
    assert_eq!(slots(&s), vec![(0, "x".into()), (1, "y".into())]);
    run(&mut s, &mut kv, 21, &set_disk("a", "x", false)).expect("remove x");
    run(&mut s, &mut kv, 22, &set_disk("a", "x", false)).expect("a retry is a no-op");
    run(&mut s, &mut kv, 23, &set_disk("a", "z", true)).expect("add z");
    run(&mut s, &mut kv, 24, &set_disk("a", "w", true)).expect("add w");
    assert_eq!(
        slots(&s),
        vec![(1, "y".into()), (0, "z".into()), (2, "w".into())],
        "y stays in slot 1; new disks take the lowest free slots"
    );
    assert_eq!(
        code(run(&mut s, &mut kv, 25, &set_disk("a", "nope", true))),
        Some(ErrorCode::NotFound)
    );
    let other = vm(VmCommand::Create {
        def: def("b", &["x"]),
    });
    run(&mut s, &mut kv, 26, &other).expect("b");
    assert_eq!(
        code(run(&mut s, &mut kv, 27, &set_disk("a", "x", true))),
        Some(ErrorCode::InvalidState),
        "x is b's disk"
    );
    // Not while migrating.
    run(&mut s, &mut kv, 28, &start("a", Some(2))).expect("start");
    let running = super::vm_tests::report("a", 2, 1, VmState::Running, false);
    run(&mut s, &mut kv, 29, &running).expect("report");
    let away = vm(VmCommand::Migrate {
        name: "a".into(),
        to: Some(NodeId(1)),
        kind: MigrationKind::Live,
        started_unix_ms: 5,
    });
    run(&mut s, &mut kv, 30, &away).expect("migrate");
    assert_eq!(
        code(run(&mut s, &mut kv, 31, &set_disk("a", "y", false))),
        Some(ErrorCode::Busy)
    );
}
