//! The metadata checkpoint on the LUN (docs/design/040 §5, 042 §6): the coordinator
//! writes the volume record and the VHD catalog, one snapshot of its replica, into the
//! two-slot checkpoint region whenever the catalog changed (a burst of changes costs one
//! write: each write covers everything applied before it started), reads it back, and
//! records `CheckpointWritten` through the log. A flush that changed a VHD's map waits for
//! that record (`extents::wait_checkpoint`), so `volume recover`, which rebuilds a new
//! cluster's catalog from the newest valid slot, never loses an acknowledged growth.

use std::sync::Arc;
use std::time::Duration;

use csv_api::admin::volume::VolumeRecover;
use csv_api::admin::{self as api};
use serde::{Deserialize, Serialize};

use super::core::Data;
use super::error::DataError;
use super::lun::Check;
use crate::config::VolumeSection;
use crate::meta::Phase;
use crate::meta::unexpected;
use crate::state::types::{
    CheckpointState, Command, Query, QueryReply, Reply, VhdRecord, VhdState, VolumeRecord,
};
use crate::sync::lock;

/// Longest pause between two looks for catalog changes to checkpoint (a wake-up comes
/// with every applied change; this only bounds a missed one).
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);
/// After a failed write or record, the pause before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Payload format written by this build.
const PAYLOAD_FORMAT: u32 = 1;

/// What a checkpoint slot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Payload {
    format: u32,
    raft_index: u64,
    volume: VolumeRecord,
    vhds: Vec<VhdRecord>,
}

async fn local(d: &Data, q: Query) -> Result<QueryReply, DataError> {
    Ok(d.member().await?.query_local(q).await?)
}

/// The catalog as this replica applied it, one snapshot.
async fn catalog(d: &Data) -> Result<Option<Payload>, DataError> {
    match local(d, Query::Catalog).await? {
        QueryReply::Catalog {
            volume: Some(volume),
            vhds,
            checkpoint,
        } => Ok(Some(Payload {
            format: PAYLOAD_FORMAT,
            raft_index: checkpoint.catalog_index,
            volume,
            vhds,
        })),
        QueryReply::Catalog { volume: None, .. } => Ok(None),
        _ => unexpected("a catalog query"),
    }
}

/// The coordinator's checkpoint writer; ends when the node stops.
pub(crate) async fn run(d: Arc<Data>) {
    if d.cfg.volume.is_none() {
        return;
    }
    let mut w = Writer::default();
    loop {
        // Armed before looking, so a change applied meanwhile wakes the wait below.
        let notified = d.meta.events().catalog_changed().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match w.step(&d).await {
            Some(pause) => {
                let _ = tokio::time::timeout(pause, notified).await;
            }
            None if matches!(*d.meta.phase().await, Phase::Stopping | Phase::Removed(_)) => {
                return;
            }
            None => {}
        }
    }
}

/// The writer's memory between steps.
#[derive(Default)]
struct Writer {
    /// The sequence this coordinator wrote last (re-read from the LUN when unknown).
    sequence: Option<u64>,
    /// Written but not yet recorded: sequence, catalog index, when.
    written: Option<(u64, u64, tokio::time::Instant)>,
}

impl Writer {
    /// One look: writes or records what is due. `Some(pause)` to wait (woken earlier by
    /// a catalog change), `None` to look again at once.
    async fn step(&mut self, d: &Data) -> Option<Duration> {
        let Some(m) = d.meta.try_member().await else {
            return Some(CHECKPOINT_POLL);
        };
        if !m.meta.leadership().borrow().is_self {
            *self = Writer::default();
            return Some(CHECKPOINT_POLL);
        }
        let Ok(QueryReply::Checkpoint(c)) = local(d, Query::Checkpoint).await else {
            return Some(CHECKPOINT_POLL);
        };
        if c.catalog_index <= c.checkpoint_index {
            return Some(CHECKPOINT_POLL);
        }
        // Written already: record it (again, if the first proposal got lost).
        if let Some((seq, idx, at)) = self.written
            && idx >= c.catalog_index
        {
            if at.elapsed() < RETRY_PAUSE {
                return Some(RETRY_PAUSE - at.elapsed());
            }
            record(&m, seq, idx).await;
            self.written = Some((seq, idx, tokio::time::Instant::now()));
            return Some(RETRY_PAUSE);
        }
        match write_once(d, self.sequence).await {
            Ok(Some((seq, idx))) => {
                self.sequence = Some(seq);
                record(&m, seq, idx).await;
                self.written = Some((seq, idx, tokio::time::Instant::now()));
                None
            }
            // The volume is not checked yet.
            Ok(None) => Some(CHECKPOINT_POLL),
            Err(e) => {
                // Another coordinator may have written meanwhile: re-read the sequence.
                tracing::warn!("checkpoint: {e}");
                self.sequence = None;
                Some(RETRY_PAUSE)
            }
        }
    }
}

/// Proposes `CheckpointWritten`.
async fn record(m: &crate::meta::Member, sequence: u64, index: u64) {
    match m
        .propose(Command::CheckpointWritten { sequence, index })
        .await
    {
        Ok(Reply::Checkpoint(CheckpointState { .. })) => {
            tracing::debug!(sequence, index, "checkpoint recorded");
        }
        Ok(_) => tracing::warn!("checkpoint: unexpected reply to CheckpointWritten"),
        Err(e) => tracing::debug!("checkpoint not recorded yet: {e}"),
    }
}

/// Writes the newest catalog into the older slot and reads it back; the sequence and
/// catalog index written, `None` when there is nothing to write.
async fn write_once(d: &Data, sequence: Option<u64>) -> Result<Option<(u64, u64)>, DataError> {
    let sb = match lock(d.vol_check()).clone() {
        Some(Check::Ok(sb)) => sb,
        _ => return Ok(None),
    };
    let lun = d.lun().await?;
    let Some(payload) = catalog(d).await? else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| DataError::Internal(format!("encode the checkpoint: {e}")))?;
    let index = payload.raft_index;
    let limit = d.quiet_limit();
    tokio::task::spawn_blocking(move || {
        // An earlier attempt that timed out must not land over this one.
        if !volume::wait_quiet(&*lun, limit) {
            return Err(DataError::storage(
                "checkpoint",
                "writes to the LUN are still in doubt",
            ));
        }
        let next = match sequence {
            Some(s) => s + 1,
            None => volume::checkpoint::read_latest(&*lun, &sb)
                .map_err(|e| DataError::storage("read the checkpoints", e))?
                .checkpoint
                .map_or(1, |c| c.sequence + 1),
        };
        volume::checkpoint::write_checkpoint(&*lun, &sb, next, index, &bytes)
            .map_err(|e| DataError::storage(format!("write checkpoint {next}"), e))?;
        // Another writer (a deposed coordinator) may have written the same slot.
        let back = volume::checkpoint::read_latest(&*lun, &sb)
            .map_err(|e| DataError::storage("read the checkpoint back", e))?;
        match back.checkpoint {
            Some(c) if c.sequence == next && c.raft_index == index => Ok(Some((next, index))),
            _ => Err(DataError::Busy(format!(
                "checkpoint {next} at index {index} was not the newest when read back"
            ))),
        }
    })
    .await?
}

impl Data {
    /// `volume recover`: the newest checkpoint on the LUN becomes this empty cluster's
    /// volume and catalog (VHDs that were being created or deleted are left out: their
    /// extents are free again).
    pub(crate) async fn volume_recover(
        &self,
        r: VolumeRecover,
    ) -> Result<api::Response, DataError> {
        let m = self.member().await?;
        let lun = if r.lun.is_empty() {
            self.lun().await?
        } else {
            let mut cfg: VolumeSection = self.cfg.volume.clone().unwrap_or(VolumeSection {
                lun: String::new(),
                direct: None,
                io_timeout: None,
                nbd_connections: 1,
                fence_wait: crate::config::Dur(volume::DEFAULT_FENCE_WAIT),
                nbd_listen: None,
                nbd_socket: None,
            });
            cfg.lun = r.lun.clone();
            let t = self.io_timeout();
            tokio::task::spawn_blocking(move || super::lun::open_lun(&cfg, t)).await??
        };
        let l2 = lun.clone();
        let (sb, latest) = tokio::task::spawn_blocking(move || {
            let f =
                volume::superblock::read(&*l2).map_err(|e| DataError::storage("superblock", e))?;
            let latest = volume::checkpoint::read_latest(&*l2, &f.superblock)
                .map_err(|e| DataError::storage("checkpoint", e))?;
            Ok::<_, DataError>((f.superblock, latest))
        })
        .await??;
        let Some(cp) = latest.checkpoint else {
            return Err(DataError::NoCheckpoint {
                volume: sb.uuid.to_string(),
                skipped: latest.skipped.len(),
            });
        };
        let p: Payload = serde_json::from_slice(&cp.payload)
            .map_err(|e| DataError::storage("checkpoint payload", e))?;
        if p.format != PAYLOAD_FORMAT || p.volume.id.to_string() != sb.uuid.to_string() {
            return Err(DataError::VolumeBad(format!(
                "checkpoint of format {} for volume {} does not belong to volume {}",
                p.format, p.volume.id, sb.uuid
            )));
        }
        let vhds: Vec<VhdRecord> = p
            .vhds
            .into_iter()
            .filter(|v| v.state == VhdState::Ready)
            .collect();
        tracing::info!(
            volume = %sb.uuid,
            sequence = cp.sequence,
            index = cp.raft_index,
            vhds = vhds.len(),
            "recovering the catalog from the LUN checkpoint"
        );
        match m
            .propose(Command::RestoreCatalog {
                volume: p.volume,
                vhds,
            })
            .await?
        {
            Reply::Volume(_) => {}
            _ => return unexpected("RestoreCatalog"),
        }
        self.check_volume().await;
        self.volume_status().await.map(api::Response::VolumeStatus)
    }
}
