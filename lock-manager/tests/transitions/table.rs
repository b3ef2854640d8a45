//! The row type of the transition table and the shorthands its row files share.

pub(super) use super::common::*;
use lock_manager::{
    Command, ConflictReason, Epoch, Generation, LockError, Mode, NodeId, Outcome, VhdId,
};

pub(super) struct Row {
    pub(super) name: &'static str,
    pub(super) setup: Vec<Command>,
    pub(super) before: &'static str,
    pub(super) cmd: Command,
    pub(super) expect: Result<Outcome, LockError>,
    pub(super) after: &'static str,
}

pub(super) const N1: NodeId = NodeId(1);
pub(super) const N2: NodeId = NodeId(2);
pub(super) const N3: NodeId = NodeId(3);
pub(super) const V1: VhdId = VhdId(1);

pub(super) fn e(n: u64) -> Epoch {
    Epoch(n)
}
pub(super) fn g(n: u64) -> Generation {
    Generation(n)
}
pub(super) fn granted(
    vhd: VhdId,
    node: NodeId,
    ep: u64,
    mode: Mode,
    gen_: u64,
    prev: Option<NodeId>,
) -> Result<Outcome, LockError> {
    Ok(Outcome::Granted {
        vhd,
        node,
        epoch: e(ep),
        mode,
        generation: g(gen_),
        previous_writer: prev,
    })
}
pub(super) fn stale(node: NodeId, given: u64, current: u64) -> Result<Outcome, LockError> {
    Err(LockError::StaleEpoch {
        node,
        given: e(given),
        current: e(current),
    })
}
pub(super) fn conflict(holder: NodeId, reason: ConflictReason) -> Result<Outcome, LockError> {
    Err(LockError::Conflict {
        vhd: V1,
        holder,
        reason,
    })
}

pub(super) fn req_xfer(v: u64, from: u64, to: u64, gen_: u64) -> Command {
    Command::RequestTransfer {
        vhd: VhdId(v),
        from: NodeId(from),
        to: NodeId(to),
        expected_generation: Generation(gen_),
    }
}

pub(super) fn two() -> Vec<Command> {
    vec![reg(1), reg(2)]
}
pub(super) fn three() -> Vec<Command> {
    vec![reg(1), reg(2), reg(3)]
}
pub(super) fn with(mut base: Vec<Command>, more: &[Command]) -> Vec<Command> {
    base.extend_from_slice(more);
    base
}
