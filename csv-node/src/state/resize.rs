//! `SetVirtualSize`: records a VHD's new virtual size after `vhd expand` wrote it into the
//! image (the catalog mirrors the footer for listings and differencing checks). Legal for
//! the VHD's valid writer, on an existing VHD that is not being deleted, a size in
//! 1 B–2040 GiB not below the recorded one, and no VHD naming it as parent (children
//! keep their parent's size).

use csv_api::{ErrorCode, Generation, NodeId, VhdId};
use meta_store::KvWrite;

use super::cluster::ClusterState;
use super::types::*;
use super::{MAX_VIRTUAL_SIZE, err};

impl ClusterState {
    pub(super) fn set_virtual_size(
        &mut self,
        vhd: VhdId,
        virtual_size: u64,
        node: NodeId,
        generation: Generation,
        w: &mut dyn KvWrite,
    ) -> ApplyResult {
        let Some(cur) = self.vhds.get(vhd) else {
            return Err(err(ErrorCode::NotFound, format!("{vhd} does not exist")));
        };
        self.check_writer(vhd, node, generation)?;
        if cur.state == VhdState::Deleting {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} is being deleted"),
            ));
        }
        if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || virtual_size < cur.virtual_size {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "virtual size {virtual_size}: from {} to 2040 GiB",
                    cur.virtual_size
                ),
            ));
        }
        if self.vhds.children(vhd) > 0 {
            return Err(err(
                ErrorCode::InvalidState,
                format!("{vhd} has children: a parent keeps its size"),
            ));
        }
        let mut rec = cur.clone();
        rec.virtual_size = virtual_size;
        self.vhds.replace(rec.clone(), w);
        Ok(Reply::Vhd(rec))
    }
}
