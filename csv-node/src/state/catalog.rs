//! Transitions of the volume record, the VHD catalog and the extent allocator.

use csv_api::error::ApiError;
use csv_api::{Epoch, ErrorCode, Generation, NodeId, VhdId};
use lock_manager::NodeStatus;
use meta_store::KvWrite;

use super::runs::{Run, RunSet};
use super::types::*;
use super::{
    ClusterState, MAX_DESCRIPTION_BYTES, MAX_NAME_BYTES, MAX_RESERVED_PER_NODE,
    MAX_RUNS_PER_RESERVE, MAX_RUNS_PER_VHD, MAX_VHDS, MAX_VIRTUAL_SIZE, err, nodes::check_name,
    persist,
};

const MIN_EXTENT: u64 = 1 << 20;
const MAX_EXTENT: u64 = 4 << 30;

fn check_volume(v: &VolumeRecord) -> Result<(), ApiError> {
    let bad = |m: String| Err(err(ErrorCode::InvalidArgument, m));
    if v.id.is_nil() {
        return bad("volume id is nil".into());
    }
    if v.lun.is_empty() || v.lun.len() > MAX_NAME_BYTES {
        return bad(format!(
            "LUN identity must have 1 to {MAX_NAME_BYTES} bytes"
        ));
    }
    if v.description.len() > MAX_DESCRIPTION_BYTES {
        return bad(format!("description over {MAX_DESCRIPTION_BYTES} bytes"));
    }
    if !v.extent_size.is_power_of_two() || !(MIN_EXTENT..=MAX_EXTENT).contains(&v.extent_size) {
        return bad(format!(
            "extent size {} is not a power of two in 1 MiB..4 GiB",
            v.extent_size
        ));
    }
    if v.extent_count == 0 || !v.data_offset.is_multiple_of(4096) {
        return bad("no extents, or a data offset not aligned to 4 KiB".into());
    }
    let end = v
        .extent_count
        .checked_mul(v.extent_size)
        .and_then(|b| b.checked_add(v.data_offset));
    if end.is_none_or(|e| e > v.size) {
        return bad(format!(
            "{} extents of {} bytes at offset {} do not fit {} bytes",
            v.extent_count, v.extent_size, v.data_offset, v.size
        ));
    }
    Ok(())
}

fn check_runs(runs: &[Run], limit: u64) -> Result<(), ApiError> {
    for r in runs {
        if r.count == 0 || r.start.checked_add(r.count).is_none_or(|e| e > limit) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("run {r:?} is empty or outside the volume"),
            ));
        }
    }
    Ok(())
}

/// Appends `more` to `runs`, merging a run that continues the last one.
fn append_runs(runs: &mut Vec<Run>, more: &[Run]) {
    for r in more {
        match runs.last_mut() {
            Some(l) if l.end() == r.start => l.count += r.count,
            _ => runs.push(*r),
        }
    }
}

impl ClusterState {
    fn volume_ref(&self) -> Result<&VolumeRecord, ApiError> {
        self.volume.as_ref().ok_or_else(|| {
            err(
                ErrorCode::InvalidState,
                "no volume record: set the volume first",
            )
        })
    }

    fn vhd_ref(&self, vhd: VhdId) -> Result<&VhdRecord, ApiError> {
        self.vhds
            .get(vhd)
            .ok_or_else(|| err(ErrorCode::NotFound, format!("{vhd} does not exist")))
    }

    fn put_vhd(&mut self, rec: VhdRecord, w: &mut dyn KvWrite) {
        self.vhds.replace(rec, w);
    }

    pub(super) fn set_volume(&mut self, v: VolumeRecord, w: &mut dyn KvWrite) -> ApplyResult {
        if self.identity.is_none() {
            return Err(err(
                ErrorCode::NotInitialized,
                "the cluster is not initialised",
            ));
        }
        check_volume(&v)?;
        let old_count = match &self.volume {
            None => 0,
            Some(cur) if *cur == v => return Ok(Reply::Volume(v)),
            Some(cur) => {
                if cur.id != v.id
                    || cur.lun != v.lun
                    || cur.extent_size != v.extent_size
                    || cur.data_offset != v.data_offset
                    || v.size < cur.size
                    || v.extent_count < cur.extent_count
                {
                    return Err(err(
                        ErrorCode::InvalidState,
                        "the volume exists: only its size, extent count and description may grow or change",
                    ));
                }
                cur.extent_count
            }
        };
        if v.extent_count > old_count {
            self.alloc.give_back(Run {
                start: old_count,
                count: v.extent_count - old_count,
            });
        }
        persist::put_volume(w, &v);
        self.volume = Some(v.clone());
        Ok(Reply::Volume(v))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_vhd(
        &mut self,
        index: u64,
        name: String,
        kind: VhdKind,
        virtual_size: u64,
        parent: Option<VhdId>,
        length: u64,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let extent_size = self.volume_ref()?.extent_size;
        check_name("VHD name", &name)?;
        if self.vhds.by_name(&name).is_some() {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("a VHD named {name:?} exists"),
            ));
        }
        if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("virtual size {virtual_size} outside 1 B..2040 GiB"),
            ));
        }
        match (kind, parent) {
            (VhdKind::Differencing, Some(p)) => {
                if self.vhd_ref(p)?.state == VhdState::Deleting {
                    return Err(err(
                        ErrorCode::InvalidState,
                        format!("parent {p} is being deleted"),
                    ));
                }
            }
            (VhdKind::Differencing, None) => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "a differencing VHD needs a parent",
                ));
            }
            (_, Some(_)) => {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    "only differencing VHDs have a parent",
                ));
            }
            (_, None) => {}
        }
        if self.vhds.len() >= MAX_VHDS {
            return Err(err(ErrorCode::Limit, format!("at most {MAX_VHDS} VHDs")));
        }
        let extents = length.div_ceil(extent_size);
        let Some(runs) = self.alloc.allocate(extents, MAX_RUNS_PER_VHD) else {
            return Err(err(
                ErrorCode::NoSpace,
                format!(
                    "{extents} extents needed, {} free (largest run {})",
                    self.alloc.free().total(),
                    self.alloc.free().largest()
                ),
            ));
        };
        let id = self.vhds.take_id(w);
        let rec = VhdRecord {
            id,
            name: name.clone(),
            kind,
            virtual_size,
            parent,
            runs,
            length,
            state: VhdState::Creating,
            created_index: index,
        };
        debug_assert_eq!(rec.extents(), extents);
        self.vhds.insert(rec.clone(), w);
        Ok(Reply::Vhd(rec))
    }

    /// Refused (`fenced`) unless `node` is the valid writer of `vhd` at `generation`:
    /// every data-path mutation of the catalog is checked here, each attempt anew.
    pub(super) fn check_writer(
        &self,
        vhd: VhdId,
        node: NodeId,
        generation: Generation,
    ) -> Result<(), ApiError> {
        match self.locks.valid_writer(vhd) {
            Some((n, _, g)) if n == node && g == generation => Ok(()),
            other => Err(err(
                ErrorCode::Fenced,
                format!(
                    "{node} at {generation} is not the valid writer of {vhd} (writer: {})",
                    match other {
                        Some((n, e, g)) => format!("{n} at {e}, {g}"),
                        None => "none".into(),
                    }
                ),
            )),
        }
    }

    pub(super) fn set_vhd_state(
        &mut self,
        vhd: VhdId,
        state: VhdState,
        node: NodeId,
        generation: Generation,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let cur = self.vhd_ref(vhd)?;
        self.check_writer(vhd, node, generation)?;
        use VhdState::*;
        let ok = matches!(
            (cur.state, state),
            (Creating, Ready) | (Creating, Deleting) | (Ready, Deleting)
        ) || cur.state == state;
        if !ok {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} cannot go from {:?} to {state:?}", cur.state),
            ));
        }
        let rec = VhdRecord {
            state,
            ..cur.clone()
        };
        self.put_vhd(rec.clone(), w);
        Ok(Reply::Vhd(rec))
    }

    pub(super) fn delete_vhd(&mut self, vhd: VhdId, w: &mut dyn KvWrite) -> ApplyResult {
        self.vhd_ref(vhd)?;
        let kids = self.vhds.children(vhd);
        if kids > 0 {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} is the parent of {kids} VHD(s)"),
            ));
        }
        if self.locks.vhd_record(vhd).is_some() {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} is held (attached)"),
            ));
        }
        if let Some(vm) = self
            .vhds
            .get(vhd)
            .and_then(|r| self.vms.using_disk(&r.name))
        {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} is a disk of VM {:?}", vm.def.name),
            ));
        }
        let Some(rec) = self.vhds.remove(vhd, w) else {
            return Err(err(ErrorCode::NotFound, format!("{vhd} does not exist")));
        };
        for r in &rec.runs {
            self.alloc.give_back(*r);
        }
        Ok(Reply::Vhd(rec))
    }

    pub(super) fn reserve(&mut self, node: NodeId, epoch: Epoch, count: u64) -> ApplyResult {
        self.volume_ref()?;
        match self.nodes.get(&node).map(|n| n.state) {
            Some(NodeState::Active) => {}
            _ => {
                return Err(err(
                    ErrorCode::InvalidState,
                    format!("{node} is not an active member"),
                ));
            }
        }
        match self.locks.node_record(node) {
            Some(r) if r.epoch == epoch && r.status == NodeStatus::Live => {}
            other => {
                return Err(err(
                    ErrorCode::Fenced,
                    format!(
                        "{node} asked at {epoch} but is {}",
                        match other {
                            Some(r) => format!("{:?} at {}", r.status, r.epoch),
                            None => "not registered".into(),
                        }
                    ),
                ));
            }
        }
        let have = self.alloc.reservation(node).map_or(0, RunSet::total);
        if count == 0 || have.saturating_add(count) > MAX_RESERVED_PER_NODE {
            return Err(err(
                ErrorCode::Limit,
                format!(
                    "{node} holds {have} reserved extents; {count} more exceeds {MAX_RESERVED_PER_NODE} (or is 0)"
                ),
            ));
        }
        let Some(runs) = self.alloc.reserve(node, count, MAX_RUNS_PER_RESERVE) else {
            return Err(err(
                ErrorCode::NoSpace,
                format!("{count} extents asked, {} free", self.alloc.free().total()),
            ));
        };
        Ok(Reply::Runs { runs })
    }

    /// Returns the node's reservation to the free pool; the runs returned.
    pub(super) fn release_reservation(&mut self, node: NodeId) -> Vec<Run> {
        self.alloc.release(node)
    }

    /// `SetExtents` (docs/design/042 §2).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_extents(
        &mut self,
        index: u64,
        vhd: VhdId,
        node: NodeId,
        generation: Generation,
        runs: Vec<Run>,
        length: u64,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let vol = self.volume_ref()?;
        let (extent_size, extent_count) = (vol.extent_size, vol.extent_count);
        let cur = self.vhd_ref(vhd)?;
        if cur.state == VhdState::Deleting {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} is being deleted"),
            ));
        }
        self.check_writer(vhd, node, generation)?;
        if runs.len() > MAX_RUNS_PER_VHD {
            return Err(err(
                ErrorCode::Limit,
                format!("{vhd} would map more than {MAX_RUNS_PER_VHD} runs"),
            ));
        }
        check_runs(&runs, extent_count)?;
        let new_n: u64 = runs.iter().map(|r| r.count).sum();
        if length > new_n.saturating_mul(extent_size) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("length {length} is beyond the {new_n} extents mapped"),
            ));
        }
        // The new map = the first `keep` extents of the current one, then reserved runs.
        let keep = extents(&cur.runs)
            .zip(extents(&runs))
            .take_while(|(a, b)| a == b)
            .count() as u64;
        let added = tail(&runs, keep);
        let freed = tail(&cur.runs, keep);
        let mut res = self.alloc.reservation(node).cloned().unwrap_or_default();
        for r in &added {
            if !res.contains(*r) {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!(
                        "run {r:?} is neither in {vhd}'s map at its place nor in {node}'s reservation"
                    ),
                ));
            }
            res.remove(*r);
        }
        let mut new_runs = Vec::new();
        append_runs(&mut new_runs, &runs);
        let rec = VhdRecord {
            runs: new_runs,
            length,
            ..cur.clone()
        };
        if rec == *cur {
            // Sent again (its answer was lost): the change is in, at or before the last
            // catalog change.
            return Ok(Reply::Extents {
                vhd: rec,
                index: self.checkpoint.catalog_index,
            });
        }
        for r in &freed {
            self.alloc.give_back(*r);
        }
        self.alloc.set_reservation(node, res);
        self.put_vhd(rec.clone(), w);
        self.catalog_changed(index, w);
        Ok(Reply::Extents { vhd: rec, index })
    }

    /// Records that the catalog (volume and VHD records) changed at `index`.
    pub(super) fn catalog_changed(&mut self, index: u64, w: &mut dyn KvWrite) {
        self.checkpoint.catalog_index = index;
        persist::put_checkpoint(w, &self.checkpoint);
    }

    pub(super) fn checkpoint_written(
        &mut self,
        sequence: u64,
        index: u64,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        if index < self.checkpoint.checkpoint_index || index > self.checkpoint.catalog_index {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "checkpoint of index {index}: the recorded one covers {}, the catalog changed last at {}",
                    self.checkpoint.checkpoint_index, self.checkpoint.catalog_index
                ),
            ));
        }
        self.checkpoint.checkpoint_index = index;
        self.checkpoint.sequence = sequence;
        persist::put_checkpoint(w, &self.checkpoint);
        Ok(Reply::Checkpoint(self.checkpoint))
    }
}

/// Extent indexes of a run list, in file order.
fn extents(runs: &[Run]) -> impl Iterator<Item = u64> + '_ {
    runs.iter().flat_map(|r| r.start..r.start + r.count)
}

/// The runs of `runs` after its first `skip` extents.
pub(super) fn tail(runs: &[Run], mut skip: u64) -> Vec<Run> {
    let mut out = Vec::new();
    for r in runs {
        if skip >= r.count {
            skip -= r.count;
            continue;
        }
        out.push(Run {
            start: r.start + skip,
            count: r.count - skip,
        });
        skip = 0;
    }
    out
}
