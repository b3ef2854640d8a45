//! The transitions of `LockState`: one function per command, each checking legality
//! first and mutating only once nothing can fail, so a refused command changes nothing.

use crate::command::{Command, Mode, NodeStatus, Outcome};
use crate::error::{ConflictReason, LockError};
use crate::ids::{Epoch, Generation, NodeId, VhdId};
use crate::state::{LockState, MAX_NODES, MAX_RECORDS, NodeRecord, ReadHold, VhdRecord, Writer};

impl LockState {
    /// Applies one committed command. Deterministic: the same state and command give the
    /// same result and the same new state on every replica. On `Err` nothing changed.
    pub fn apply(&mut self, cmd: &Command) -> Result<Outcome, LockError> {
        match *cmd {
            Command::Register { node } => self.register(node),
            Command::Renew { node, epoch } => self.renew(node, epoch),
            Command::ExpireNode {
                node,
                epoch,
                renewals,
            } => self.expire(node, epoch, renewals),
            Command::Leave { node, epoch } => self.leave(node, epoch),
            Command::Acquire {
                vhd,
                node,
                epoch,
                mode,
            } => match mode {
                Mode::Write => self.acquire_write(vhd, node, epoch),
                Mode::Read | Mode::ReadDenyWrite => self.acquire_read(vhd, node, epoch, mode),
            },
            Command::Release {
                vhd,
                node,
                epoch,
                generation,
            } => self.release(vhd, node, epoch, generation),
            Command::Transfer {
                vhd,
                from,
                from_epoch,
                to,
                to_epoch,
                expected_generation,
            } => self.transfer(vhd, from, from_epoch, to, to_epoch, expected_generation),
            Command::Reclaim {
                vhd,
                node,
                epoch,
                expected_generation,
            } => self.reclaim(vhd, node, epoch, expected_generation),
            Command::Takeover {
                vhd,
                node,
                epoch,
                expected_generation,
            } => self.takeover(vhd, node, epoch, expected_generation),
            Command::RequestTransfer {
                vhd,
                from,
                to,
                expected_generation,
            } => self.request_transfer(vhd, from, to, expected_generation),
        }
    }

    /// The node's record if `epoch` is its current epoch (any status).
    fn at_epoch(&self, node: NodeId, epoch: Epoch) -> Result<NodeRecord, LockError> {
        let rec = *self
            .nodes
            .get(&node)
            .ok_or(LockError::UnknownNode { node })?;
        if rec.epoch != epoch {
            return Err(LockError::StaleEpoch {
                node,
                given: epoch,
                current: rec.epoch,
            });
        }
        Ok(rec)
    }

    /// The node's record if it is `Live` at `epoch`.
    fn live_at(&self, node: NodeId, epoch: Epoch) -> Result<NodeRecord, LockError> {
        let rec = self.at_epoch(node, epoch)?;
        if rec.status != NodeStatus::Live {
            return Err(LockError::NodeNotLive { node });
        }
        Ok(rec)
    }

    /// Checks there is room for a record for `vhd` (an existing one always has room).
    fn room_for(&self, vhd: VhdId) -> Result<(), LockError> {
        if !self.vhds.contains_key(&vhd) && self.vhds.len() >= MAX_RECORDS {
            return Err(LockError::Limit {
                what: "ownership records".into(),
                max: MAX_RECORDS as u64,
            });
        }
        Ok(())
    }

    /// Takes the next grant number. Call only once the command can no longer fail.
    fn take_generation(&mut self) -> Result<Generation, LockError> {
        let g = self.next_generation;
        self.next_generation = g.checked_add(1).ok_or(LockError::Limit {
            what: "generations".into(),
            max: u64::MAX,
        })?;
        Ok(Generation(g))
    }

    fn next_epoch(e: Epoch) -> Result<Epoch, LockError> {
        e.0.checked_add(1).map(Epoch).ok_or(LockError::Limit {
            what: "epochs".into(),
            max: u64::MAX,
        })
    }

    fn register(&mut self, node: NodeId) -> Result<Outcome, LockError> {
        let created = !self.nodes.contains_key(&node);
        if created && self.nodes.len() >= MAX_NODES {
            return Err(LockError::Limit {
                what: "nodes".into(),
                max: MAX_NODES as u64,
            });
        }
        let rec = self.nodes.entry(node).or_insert(NodeRecord {
            epoch: Epoch::FIRST,
            status: NodeStatus::Live,
            renewals: 0,
        });
        if rec.status == NodeStatus::Left {
            rec.status = NodeStatus::Live;
        }
        Ok(Outcome::Registered {
            node,
            epoch: rec.epoch,
            status: rec.status,
            renewals: rec.renewals,
            created,
        })
    }

    fn renew(&mut self, node: NodeId, epoch: Epoch) -> Result<Outcome, LockError> {
        let rec = self.at_epoch(node, epoch)?;
        if rec.status == NodeStatus::Left {
            return Err(LockError::NodeNotLive { node });
        }
        let renewals = rec.renewals.checked_add(1).ok_or(LockError::Limit {
            what: "renewals".into(),
            max: u64::MAX,
        })?;
        let r = self
            .nodes
            .get_mut(&node)
            .ok_or(LockError::UnknownNode { node })?;
        r.renewals = renewals;
        r.status = NodeStatus::Live;
        Ok(Outcome::Renewed {
            node,
            epoch,
            renewals,
        })
    }

    fn expire(&mut self, node: NodeId, epoch: Epoch, seen: u64) -> Result<Outcome, LockError> {
        let rec = self.live_at(node, epoch)?;
        if rec.renewals != seen {
            return Err(LockError::RenewedSince {
                node,
                seen,
                current: rec.renewals,
            });
        }
        let new_epoch = Self::next_epoch(epoch)?;
        let (mut stale_writes, mut dropped_reads) = (Vec::new(), Vec::new());
        for (&vhd, v) in self.vhds.iter_mut() {
            if v.writer.is_some_and(|w| w.node == node && w.epoch == epoch) {
                stale_writes.push(vhd);
            }
            if v.readers.remove(&node).is_some() {
                dropped_reads.push(vhd);
            }
        }
        self.vhds.retain(|_, v| !v.is_empty());
        let r = self
            .nodes
            .get_mut(&node)
            .ok_or(LockError::UnknownNode { node })?;
        r.epoch = new_epoch;
        r.status = NodeStatus::Expired;
        Ok(Outcome::Expired {
            node,
            epoch: new_epoch,
            stale_writes,
            dropped_reads,
        })
    }

    fn leave(&mut self, node: NodeId, epoch: Epoch) -> Result<Outcome, LockError> {
        self.live_at(node, epoch)?;
        let new_epoch = Self::next_epoch(epoch)?;
        let mut released = Vec::new();
        for (&vhd, v) in self.vhds.iter_mut() {
            let mut held = v.readers.remove(&node).is_some();
            if v.writer.is_some_and(|w| w.node == node) {
                v.writer = None;
                held = true;
            }
            if held {
                released.push(vhd);
            }
        }
        self.vhds.retain(|_, v| !v.is_empty());
        let r = self
            .nodes
            .get_mut(&node)
            .ok_or(LockError::UnknownNode { node })?;
        r.epoch = new_epoch;
        r.status = NodeStatus::Left;
        Ok(Outcome::Left {
            node,
            epoch: new_epoch,
            released,
        })
    }

    fn acquire_write(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
    ) -> Result<Outcome, LockError> {
        self.live_at(node, epoch)?;
        let granted = |generation| Outcome::Granted {
            vhd,
            node,
            epoch,
            mode: Mode::Write,
            generation,
            previous_writer: None,
        };
        if let Some(rec) = self.vhds.get(&vhd) {
            if let Some(w) = rec.writer {
                if w.node == node && w.epoch == epoch {
                    return Ok(granted(rec.generation));
                }
                if self.writer_is_valid(&w) {
                    return Err(LockError::Conflict {
                        vhd,
                        holder: w.node,
                        reason: ConflictReason::Writer,
                    });
                }
                return Err(LockError::OwnerExpired {
                    vhd,
                    owner: w.node,
                    generation: rec.generation,
                });
            }
            if let Some((&holder, _)) = rec
                .readers
                .iter()
                .find(|(n, r)| **n != node && r.mode == Mode::ReadDenyWrite)
            {
                return Err(LockError::Conflict {
                    vhd,
                    holder,
                    reason: ConflictReason::DenyWrite,
                });
            }
        }
        self.room_for(vhd)?;
        let generation = self.take_generation()?;
        let rec = self.vhds.entry(vhd).or_default();
        rec.readers.remove(&node);
        rec.writer = Some(Writer { node, epoch });
        rec.generation = generation;
        Ok(granted(generation))
    }

    fn acquire_read(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
        mode: Mode,
    ) -> Result<Outcome, LockError> {
        self.live_at(node, epoch)?;
        let granted = |generation| Outcome::Granted {
            vhd,
            node,
            epoch,
            mode,
            generation,
            previous_writer: None,
        };
        if let Some(rec) = self.vhds.get(&vhd) {
            if let Some(w) = rec.writer {
                if w.node == node {
                    return Err(LockError::Conflict {
                        vhd,
                        holder: node,
                        reason: ConflictReason::AlreadyWriter,
                    });
                }
                if mode == Mode::ReadDenyWrite {
                    return Err(LockError::Conflict {
                        vhd,
                        holder: w.node,
                        reason: ConflictReason::DenyWrite,
                    });
                }
            }
            if let Some(r) = rec.readers.get(&node).filter(|r| r.mode == mode) {
                return Ok(granted(r.generation));
            }
        }
        self.room_for(vhd)?;
        let generation = self.take_generation()?;
        self.vhds.entry(vhd).or_default().readers.insert(
            node,
            ReadHold {
                epoch,
                mode,
                generation,
            },
        );
        Ok(granted(generation))
    }

    fn release(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
        generation: Generation,
    ) -> Result<Outcome, LockError> {
        self.at_epoch(node, epoch)?;
        let rec = self
            .vhds
            .get_mut(&vhd)
            .ok_or(LockError::NotHeld { vhd, node })?;
        let held = if rec.writer.is_some_and(|w| w.node == node) {
            Some(rec.generation)
        } else {
            rec.readers.get(&node).map(|r| r.generation)
        };
        match held {
            None => return Err(LockError::NotHeld { vhd, node }),
            Some(actual) if actual != generation => {
                return Err(LockError::GenerationMismatch {
                    vhd,
                    expected: generation,
                    actual,
                });
            }
            Some(_) => {}
        }
        if rec.writer.is_some_and(|w| w.node == node) {
            rec.writer = None;
        } else {
            rec.readers.remove(&node);
        }
        if rec.is_empty() {
            self.vhds.remove(&vhd);
        }
        Ok(Outcome::Released {
            vhd,
            node,
            generation,
        })
    }

    fn transfer(
        &mut self,
        vhd: VhdId,
        from: NodeId,
        from_epoch: Epoch,
        to: NodeId,
        to_epoch: Epoch,
        expected: Generation,
    ) -> Result<Outcome, LockError> {
        if from == to {
            return Err(LockError::Invalid {
                reason: format!("transfer of {vhd} from {from} to itself"),
            });
        }
        self.at_epoch(from, from_epoch)?;
        let rec = self
            .vhds
            .get(&vhd)
            .ok_or(LockError::NotHeld { vhd, node: from })?;
        if rec.writer
            != Some(Writer {
                node: from,
                epoch: from_epoch,
            })
        {
            return Err(LockError::NotHeld { vhd, node: from });
        }
        if rec.generation != expected {
            return Err(LockError::GenerationMismatch {
                vhd,
                expected,
                actual: rec.generation,
            });
        }
        self.live_at(to, to_epoch)?;
        self.install_writer(vhd, to, to_epoch, Some(from))
    }

    /// Validates a hand-off request; changes nothing.
    fn request_transfer(
        &self,
        vhd: VhdId,
        from: NodeId,
        to: NodeId,
        expected: Generation,
    ) -> Result<Outcome, LockError> {
        if from == to {
            return Err(LockError::Invalid {
                reason: format!("transfer of {vhd} from {from} to itself"),
            });
        }
        let (node, from_epoch, generation) =
            self.valid_writer(vhd).ok_or(LockError::NoWriter { vhd })?;
        if node != from {
            return Err(LockError::NotHeld { vhd, node: from });
        }
        if generation != expected {
            return Err(LockError::GenerationMismatch {
                vhd,
                expected,
                actual: generation,
            });
        }
        let to_epoch = match self.nodes.get(&to) {
            None => return Err(LockError::UnknownNode { node: to }),
            Some(r) if r.status != NodeStatus::Live => {
                return Err(LockError::NodeNotLive { node: to });
            }
            Some(r) => r.epoch,
        };
        Ok(Outcome::TransferRequested {
            vhd,
            from,
            from_epoch,
            to,
            to_epoch,
            generation,
        })
    }

    fn reclaim(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
        expected: Generation,
    ) -> Result<Outcome, LockError> {
        self.live_at(node, epoch)?;
        let rec = self
            .vhds
            .get(&vhd)
            .ok_or(LockError::NotHeld { vhd, node })?;
        if rec.writer != Some(Writer { node, epoch }) {
            return Err(LockError::NotHeld { vhd, node });
        }
        if rec.generation != expected {
            return Err(LockError::GenerationMismatch {
                vhd,
                expected,
                actual: rec.generation,
            });
        }
        self.install_writer(vhd, node, epoch, Some(node))
    }

    fn takeover(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
        expected: Generation,
    ) -> Result<Outcome, LockError> {
        self.live_at(node, epoch)?;
        let rec = self.vhds.get(&vhd).ok_or(LockError::NoWriter { vhd })?;
        let w = rec.writer.ok_or(LockError::NoWriter { vhd })?;
        if rec.generation != expected {
            return Err(LockError::GenerationMismatch {
                vhd,
                expected,
                actual: rec.generation,
            });
        }
        if self.writer_is_valid(&w) {
            return Err(LockError::OwnerAlive { vhd, owner: w.node });
        }
        self.install_writer(vhd, node, epoch, Some(w.node))
    }

    /// Replaces the writer of an existing record with a fresh grant (transfer, takeover).
    fn install_writer(
        &mut self,
        vhd: VhdId,
        node: NodeId,
        epoch: Epoch,
        previous_writer: Option<NodeId>,
    ) -> Result<Outcome, LockError> {
        let rec = self.vhds.get(&vhd).ok_or(LockError::NoWriter { vhd })?;
        // Unreachable while the invariants hold (a writer excludes deny-write readers),
        // kept so that a corrupt table cannot produce a writer beside one.
        if let Some((&holder, _)) = rec
            .readers
            .iter()
            .find(|(n, r)| **n != node && r.mode == Mode::ReadDenyWrite)
        {
            return Err(LockError::Conflict {
                vhd,
                holder,
                reason: ConflictReason::DenyWrite,
            });
        }
        let generation = self.take_generation()?;
        let rec: &mut VhdRecord = self.vhds.get_mut(&vhd).ok_or(LockError::NoWriter { vhd })?;
        rec.readers.remove(&node);
        rec.writer = Some(Writer { node, epoch });
        rec.generation = generation;
        Ok(Outcome::Granted {
            vhd,
            node,
            epoch,
            mode: Mode::Write,
            generation,
            previous_writer,
        })
    }
}
