//! `RestoreCatalog`: rebuilds the volume record and the VHD catalog of a new cluster from
//! a metadata checkpoint read off the LUN (`csvadm volume recover`, docs/design/040).
//! Legal only on an initialised cluster with no volume and no VHDs; every record is
//! checked (names unique, runs inside the volume and disjoint, parents present) before
//! anything changes.

use std::collections::BTreeSet;

use csv_api::ErrorCode;
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::runs::Run;
use super::types::*;
use super::{MAX_RUNS_PER_VHD, MAX_VHDS, err};

impl ClusterState {
    pub(super) fn restore_catalog(
        &mut self,
        volume: VolumeRecord,
        vhds: Vec<VhdRecord>,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        if self.volume.is_some() || !self.vhds.is_empty() {
            return Err(err(
                ErrorCode::InvalidState,
                "recovery needs a cluster without a volume and without VHDs",
            ));
        }
        if vhds.len() > MAX_VHDS {
            return Err(err(ErrorCode::Limit, format!("at most {MAX_VHDS} VHDs")));
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut used: Vec<Run> = Vec::new();
        for v in &vhds {
            super::nodes::check_name("VHD name", &v.name)?;
            if v.id.0 == 0 || !ids.insert(v.id) || !names.insert(v.name.clone()) {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("duplicate or zero VHD id/name: {} {:?}", v.id, v.name),
                ));
            }
            if v.runs.len() > MAX_RUNS_PER_VHD {
                return Err(err(ErrorCode::Limit, format!("{}: too many runs", v.name)));
            }
            let extents: u64 = v.runs.iter().map(|r| r.count).sum();
            if v.length > extents.saturating_mul(volume.extent_size) {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{}: length {} beyond its extents", v.name, v.length),
                ));
            }
            for r in &v.runs {
                if r.count == 0
                    || r.start
                        .checked_add(r.count)
                        .is_none_or(|e| e > volume.extent_count)
                {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("{}: run {r:?} outside the volume", v.name),
                    ));
                }
                used.push(*r);
            }
        }
        for v in &vhds {
            if let Some(p) = v.parent
                && !ids.contains(&p)
            {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{}: parent {p} is not in the checkpoint", v.name),
                ));
            }
        }
        used.sort_by_key(|r| r.start);
        for pair in used.windows(2) {
            if pair[0].start + pair[0].count > pair[1].start {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("runs {:?} and {:?} overlap", pair[0], pair[1]),
                ));
            }
        }
        // The volume first (all extents free), then every VHD takes its runs.
        self.set_volume(volume, w)?;
        for r in &used {
            self.alloc.take(*r);
        }
        self.vhds.restore(vhds, w);
        match &self.volume {
            Some(v) => Ok(Reply::Volume(v.clone())),
            None => Err(err(ErrorCode::Internal, "volume vanished")),
        }
    }
}
