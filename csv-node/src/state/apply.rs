//! The dispatch of commands and queries, and the state machine meta-store runs.

use csv_api::ErrorCode;
use csv_api::error::ApiError;
use meta_store::{KvRead, KvWrite, StateMachine, StoreError};

use super::cluster::ClusterState;
use super::event::{Applied, Pending};
use super::types::*;
use super::{MAX_PAGE, err, persist};

impl ClusterState {
    /// Applies one decoded command (what `StateMachine::apply` does after decoding).
    pub fn execute(&mut self, index: u64, cmd: Command, w: &mut dyn KvWrite) -> ApplyResult {
        // Commands that change the volume or VHD records (the checkpoint's payload);
        // `SetExtents` records its own change (a repeated one changes nothing).
        let catalog = matches!(
            cmd,
            Command::SetVolume { .. }
                | Command::CreateVhd { .. }
                | Command::SetVhdState { .. }
                | Command::DeleteVhd { .. }
                | Command::RestoreCatalog { .. }
                | Command::SetVirtualSize { .. }
        );
        let r = match cmd {
            Command::InitCluster {
                id,
                name,
                created_unix_ms,
                node,
                address,
            } => self.init_cluster(id, name, created_unix_ms, node, address, w),
            Command::AddNode {
                node,
                address,
                role,
            } => self.add_node(node, address, role, w),
            Command::SetNodeRole { node, role } => self.set_node_role(node, role, w),
            Command::RemoveNode { node } => self.remove_node(index, node, w),
            Command::SetPathState { node, update } => self.set_path_state(index, node, update, w),
            Command::SetRedirect { node, on } => self.set_redirect(node, on, w),
            Command::SetVolume { volume } => self.set_volume(volume, w),
            Command::CreateVhd {
                name,
                kind,
                virtual_size,
                parent,
                length,
            } => self.create_vhd(index, name, kind, virtual_size, parent, length, w),
            Command::SetVhdState {
                vhd,
                state,
                node,
                generation,
            } => self.set_vhd_state(vhd, state, node, generation, w),
            Command::DeleteVhd { vhd } => self.delete_vhd(vhd, w),
            Command::ReserveExtents { node, epoch, count } => self.reserve(node, epoch, count),
            Command::SetExtents {
                vhd,
                node,
                generation,
                runs,
                length,
            } => self.set_extents(index, vhd, node, generation, runs, length, w),
            Command::CheckpointWritten { sequence, index: i } => {
                self.checkpoint_written(sequence, i, w)
            }
            Command::Lock { command } => self.lock(index, command, w),
            Command::Remote { command } => self.apply_remote(index, command, w),
            Command::Vm { command } => self.apply_vm(index, command, w),
            Command::RestoreCatalog { volume, vhds } => self.restore_catalog(volume, vhds, w),
            Command::SetVirtualSize {
                vhd,
                virtual_size,
                node,
                generation,
            } => self.set_virtual_size(vhd, virtual_size, node, generation, w),
        };
        if catalog && r.is_ok() {
            self.catalog_changed(index, w);
        }
        self.alloc.flush(w);
        r
    }

    /// Applies one decoded command and derives the events it raises for the shell.
    pub fn apply_command(&mut self, index: u64, cmd: Command, w: &mut dyn KvWrite) -> Applied {
        let pending = Pending::of(&cmd);
        let result = self.execute(index, cmd, w);
        let events = pending.events(&result);
        Applied { result, events }
    }

    /// Answers a decoded query.
    pub fn answer(&self, q: Query) -> Result<QueryReply, ApiError> {
        match q {
            Query::Cluster => Ok(QueryReply::Cluster {
                identity: self.identity.clone(),
                nodes: self.nodes.values().cloned().collect(),
            }),
            Query::Volume => Ok(QueryReply::Volume {
                volume: self.volume.clone(),
            }),
            Query::Vhd { vhd } => self
                .vhds
                .get(vhd)
                .cloned()
                .map(QueryReply::Vhd)
                .ok_or_else(|| err(ErrorCode::NotFound, format!("{vhd} does not exist"))),
            Query::VhdByName { name } => self
                .vhds
                .by_name(&name)
                .cloned()
                .map(QueryReply::Vhd)
                .ok_or_else(|| err(ErrorCode::NotFound, format!("no VHD named {name:?}"))),
            Query::VhdList { after, limit } => {
                if limit == 0 || limit > MAX_PAGE {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("page size {limit} outside 1..={MAX_PAGE}"),
                    ));
                }
                let vhds: Vec<VhdRecord> = self
                    .vhds
                    .after(after)
                    .take(limit as usize)
                    .cloned()
                    .collect();
                let next_after = match vhds.last() {
                    Some(l) if self.vhds.after(l.id.0).next().is_some() => l.id.0,
                    _ => 0,
                };
                Ok(QueryReply::VhdPage {
                    vhds,
                    next_after,
                    total: self.vhds.len() as u64,
                })
            }
            Query::Space => Ok(QueryReply::Space(SpaceInfo {
                extent_count: self.volume.as_ref().map_or(0, |v| v.extent_count),
                free_extents: self.alloc.free().total(),
                free_runs: self.alloc.free().len() as u64,
                largest_free_run: self.alloc.free().largest(),
                mapped_extents: self.vhds.mapped(),
                reservations: self
                    .alloc
                    .reservations()
                    .map(|(n, s)| (*n, s.runs().collect()))
                    .collect(),
            })),
            Query::Owner { vhd } => Ok(QueryReply::Owner {
                owner: self.locks.owner(vhd),
            }),
            Query::Locks(q) => Ok(QueryReply::Locks(self.answer_locks(q))),
            Query::Remote(q) => Ok(QueryReply::Remote(self.answer_remote(q))),
            Query::Catalog => Ok(QueryReply::Catalog {
                volume: self.volume.clone(),
                vhds: self.vhds.records().cloned().collect(),
                checkpoint: self.checkpoint,
            }),
            Query::Checkpoint => Ok(QueryReply::Checkpoint(self.checkpoint)),
            Query::Vms => Ok(QueryReply::Vms {
                vms: self.vms.records().cloned().collect(),
                drained: self.vms.drained().collect(),
            }),
            Query::Vm { name } => self
                .vms
                .by_name(&name)
                .cloned()
                .map(|v| QueryReply::Vm(Box::new(v)))
                .ok_or_else(|| err(ErrorCode::NotFound, format!("no VM named {name:?}"))),
            Query::Paths { after, limit } => {
                if limit > MAX_PAGE {
                    return Err(err(
                        ErrorCode::InvalidArgument,
                        format!("page size {limit} above {MAX_PAGE}"),
                    ));
                }
                Ok(QueryReply::Paths {
                    paths: self.paths.records().cloned().collect(),
                    events: self.paths.events(after, limit as usize),
                })
            }
        }
    }
}

impl StateMachine for ClusterState {
    fn apply(&mut self, index: u64, command: &[u8], w: &mut dyn KvWrite) -> Vec<u8> {
        let r = match Command::decode(command) {
            Ok(cmd) => self.execute(index, cmd, w),
            Err(e) => Err(e),
        };
        encode_result(&r)
    }

    fn load(&mut self, reader: &dyn KvRead) -> Result<(), StoreError> {
        *self = persist::load(reader).map_err(StoreError::StateMachine)?;
        Ok(())
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let r = match serde_json::from_slice::<Query>(query) {
            Ok(q) => self.answer(q),
            Err(e) => Err(err(ErrorCode::Malformed, format!("query: {e}"))),
        };
        encode_result(&r)
    }

    fn state_hash(&self) -> Option<u64> {
        Some(self.hash())
    }
}
