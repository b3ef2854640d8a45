//! Helpers of the state machine's tests: a bootstrapped state and a checked apply.

use csv_api::{ClusterId, ErrorCode, NodeId, VhdId, VolumeId};
use meta_store::StateMachine;

use super::ClusterState;
use super::test_kv::MemKv;
use super::types::*;

pub(super) const MIB: u64 = 1 << 20;

fn cid() -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(7))
}

pub(crate) fn volume(extents: u64) -> VolumeRecord {
    VolumeRecord {
        id: VolumeId(uuid::Uuid::from_u128(9)),
        lun: "lun-1".into(),
        description: String::new(),
        size: 4 * MIB + extents * 64 * MIB,
        extent_size: 64 * MIB,
        extent_count: extents,
        data_offset: 4 * MIB,
    }
}

pub(crate) fn init() -> Command {
    Command::InitCluster {
        id: cid(),
        name: "c".into(),
        created_unix_ms: 1,
        node: NodeId(1),
        address: "127.0.0.1:1".into(),
    }
}

pub(crate) fn vhd(name: &str, kind: VhdKind, parent: Option<u64>, extents: u64) -> Command {
    Command::CreateVhd {
        name: name.into(),
        kind,
        virtual_size: 1 << 30,
        parent: parent.map(VhdId),
        length: extents * 64 * MIB,
    }
}

/// Applies `cmd` through the byte interface, checking that a refused command writes
/// nothing and changes nothing, and that the persisted keys always load back to the
/// same state.
pub(crate) fn run(sm: &mut ClusterState, kv: &mut MemKv, index: u64, cmd: &Command) -> ApplyResult {
    let before = sm.clone();
    let kv_before = kv.clone();
    let r = decode_result::<Reply>(&sm.apply(index, &cmd.encode(), kv));
    if r.is_err() {
        assert_eq!(*sm, before, "refused {cmd:?} changed the state");
        assert_eq!(*kv, kv_before, "refused {cmd:?} wrote keys");
    }
    let mut loaded = ClusterState::new();
    loaded.load(kv).expect("load");
    assert_eq!(loaded, *sm, "persisted state differs after {cmd:?}");
    assert_eq!(loaded.state_hash(), sm.state_hash());
    r
}

pub(crate) fn setup() -> (ClusterState, MemKv) {
    let mut sm = ClusterState::new();
    let mut kv = MemKv::default();
    run(&mut sm, &mut kv, 1, &init()).expect("init");
    run(
        &mut sm,
        &mut kv,
        2,
        &Command::SetVolume {
            volume: volume(100),
        },
    )
    .expect("volume");
    (sm, kv)
}

pub(crate) fn code(r: ApplyResult) -> Option<ErrorCode> {
    r.err().map(|e| e.code())
}
