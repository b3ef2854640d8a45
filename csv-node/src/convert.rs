//! Conversions between the state machine's records and the admin wire messages.

use csv_api::admin as api;
use csv_api::error::ApiError;
use csv_api::{ErrorCode, NodeId, VhdId, VolumeId};

use crate::state::types::{Run, SpaceInfo, VhdKind, VhdRecord, VhdState, VolumeRecord};

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidArgument, m)
}

pub(super) fn run_to_api(r: &Run) -> api::ExtentRun {
    api::ExtentRun {
        start: r.start,
        count: r.count,
    }
}

pub(super) fn kind_from_api(k: i32) -> Result<VhdKind, ApiError> {
    match api::VhdKind::try_from(k) {
        Ok(api::VhdKind::Fixed) => Ok(VhdKind::Fixed),
        Ok(api::VhdKind::Dynamic) => Ok(VhdKind::Dynamic),
        Ok(api::VhdKind::Differencing) => Ok(VhdKind::Differencing),
        _ => Err(bad(format!(
            "VHD type {k} (fixed, dynamic or differencing)"
        ))),
    }
}

pub(super) fn vhd_to_api(v: &VhdRecord) -> api::Vhd {
    api::Vhd {
        id: v.id.0,
        name: v.name.clone(),
        kind: match v.kind {
            VhdKind::Fixed => api::VhdKind::Fixed,
            VhdKind::Dynamic => api::VhdKind::Dynamic,
            VhdKind::Differencing => api::VhdKind::Differencing,
        } as i32,
        virtual_size: v.virtual_size,
        parent: v.parent.map_or(0, |p| p.0),
        runs: v.runs.iter().map(run_to_api).collect(),
        length: v.length,
        state: match v.state {
            VhdState::Creating => api::VhdState::Creating,
            VhdState::Ready => api::VhdState::Ready,
            VhdState::Deleting => api::VhdState::Deleting,
        } as i32,
        created_index: v.created_index,
    }
}

pub(super) fn volume_to_api(v: &VolumeRecord) -> api::Volume {
    api::Volume {
        volume_id: v.id.to_string(),
        lun: v.lun.clone(),
        description: v.description.clone(),
        size: v.size,
        extent_size: v.extent_size,
        extent_count: v.extent_count,
        data_offset: v.data_offset,
    }
}

pub(super) fn volume_from_api(v: &api::Volume) -> Result<VolumeRecord, ApiError> {
    Ok(VolumeRecord {
        id: v
            .volume_id
            .parse::<VolumeId>()
            .map_err(|e| bad(e.to_string()))?,
        lun: v.lun.clone(),
        description: v.description.clone(),
        size: v.size,
        extent_size: v.extent_size,
        extent_count: v.extent_count,
        data_offset: v.data_offset,
    })
}

pub(super) fn space_to_api(s: &SpaceInfo) -> api::Space {
    api::Space {
        extent_count: s.extent_count,
        free_extents: s.free_extents,
        free_runs: s.free_runs,
        largest_free_run: s.largest_free_run,
        mapped_extents: s.mapped_extents,
        reservations: s
            .reservations
            .iter()
            .map(|(n, runs)| api::Reservation {
                node: n.0,
                extents: runs.iter().map(|r| r.count).sum(),
                runs: runs.iter().map(run_to_api).collect(),
            })
            .collect(),
    }
}

pub(super) fn node(id: u64) -> Result<NodeId, ApiError> {
    if id == 0 {
        return Err(bad("node id 0"));
    }
    Ok(NodeId(id))
}

pub(super) fn vhd(id: u64) -> Result<VhdId, ApiError> {
    if id == 0 {
        return Err(bad("VHD id 0"));
    }
    Ok(VhdId(id))
}
