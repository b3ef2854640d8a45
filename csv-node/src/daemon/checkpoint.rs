//! The metadata checkpoint on the LUN (docs/design/040 §5): the coordinator writes the
//! volume record and the VHD catalog into the two-slot checkpoint region whenever the
//! catalog changed (polled each second, so a burst of changes costs one write; lease
//! renewals move the applied index without changing the catalog and cost nothing), and
//! `volume recover` rebuilds a new cluster's catalog from the newest valid slot.

use std::sync::Arc;
use std::time::Duration;

use csv_api::ErrorCode;
use csv_api::admin::volume::VolumeRecover;
use csv_api::admin::{self as api};
use csv_api::error::ApiError;
use serde::{Deserialize, Serialize};

use super::handlers::propose;
use super::volume::{Check, VolumeSection, lock};
use super::{Daemon, Phase, meta_err};
use crate::state::types::{
    Command, Query, QueryReply, Reply, VhdRecord, VhdState, VolumeRecord, decode_result,
};

/// How often the coordinator looks for catalog changes to checkpoint.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);
/// Catalog page read per local query.
const PAGE: u32 = 1_000;
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

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, e.to_string())
}

async fn local(d: &Daemon, q: Query) -> Result<QueryReply, ApiError> {
    let m = d.member().await?;
    let b = m.meta.query_local(q.encode()).await.map_err(meta_err)?;
    decode_result(&b)
}

/// The catalog as this replica applied it.
async fn catalog(d: &Daemon, raft_index: u64) -> Result<Option<Payload>, ApiError> {
    let QueryReply::Volume {
        volume: Some(volume),
    } = local(d, Query::Volume).await?
    else {
        return Ok(None);
    };
    let mut vhds = Vec::new();
    let mut after = 0;
    loop {
        match local(d, Query::VhdList { after, limit: PAGE }).await? {
            QueryReply::VhdPage {
                vhds: page,
                next_after,
                ..
            } => {
                vhds.extend(page);
                if next_after == 0 {
                    break;
                }
                after = next_after;
            }
            _ => return Err(internal("unexpected list reply")),
        }
    }
    Ok(Some(Payload {
        format: PAYLOAD_FORMAT,
        raft_index,
        volume,
        vhds,
    }))
}

/// The coordinator's checkpoint writer; ends when the node stops.
pub(crate) async fn run(d: Arc<Daemon>) {
    if d.cfg.volume.is_none() {
        return;
    }
    let mut written = 0u64;
    let mut written_hash: Option<u64> = None;
    let mut sequence: Option<u64> = None;
    loop {
        tokio::time::sleep(CHECKPOINT_POLL).await;
        let m = match &*d.phase.read().await {
            Phase::Member(m) => m.clone(),
            Phase::Uninitialized => continue,
            _ => return,
        };
        let Ok(st) = m.meta.status().await else {
            continue;
        };
        if st.leader != Some(d.id()) || st.applied == written {
            continue;
        }
        let sb = match lock(d.vol_check()).clone() {
            Some(Check::Ok(sb)) => sb,
            _ => continue,
        };
        let Ok(lun) = d.lun().await else { continue };
        let payload = match catalog(&d, st.applied).await {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("checkpoint: read the catalog: {e}");
                continue;
            }
        };
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_vec(&(&payload.volume, &payload.vhds))
                .unwrap_or_default()
                .hash(&mut h);
            h.finish()
        };
        if written_hash == Some(hash) {
            written = st.applied;
            continue;
        }
        let bytes = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("checkpoint: encode: {e}");
                continue;
            }
        };
        let seq = sequence;
        let applied = st.applied;
        let r = tokio::task::spawn_blocking(move || {
            let next = match seq {
                Some(s) => s + 1,
                None => volume::checkpoint::read_latest(&*lun, &sb)?
                    .checkpoint
                    .map_or(1, |c| c.sequence + 1),
            };
            volume::checkpoint::write_checkpoint(&*lun, &sb, next, applied, &bytes)
                .map(|slot| (slot, next))
        })
        .await;
        match r {
            Ok(Ok((slot, next))) => {
                tracing::debug!(slot, sequence = next, index = applied, "checkpoint written");
                sequence = Some(next);
                written = applied;
                written_hash = Some(hash);
            }
            Ok(Err(e)) => {
                // Another coordinator may have written meanwhile: re-read the sequence.
                tracing::warn!("checkpoint: {e}");
                sequence = None;
                written_hash = None;
            }
            Err(e) => tracing::error!("checkpoint task: {e}"),
        }
    }
}

impl Daemon {
    /// `volume recover`: the newest checkpoint on the LUN becomes this empty cluster's
    /// volume and catalog (VHDs that were being created or deleted are left out: their
    /// extents are free again).
    pub(crate) async fn volume_recover(&self, r: VolumeRecover) -> Result<api::Response, ApiError> {
        let m = self.member().await?;
        let lun = if r.lun.is_empty() {
            self.lun().await?
        } else {
            let mut cfg: VolumeSection = self.cfg.volume.clone().unwrap_or(VolumeSection {
                lun: String::new(),
                direct: None,
                io_timeout: super::config::Dur(volume::path::DEFAULT_IO_TIMEOUT),
                nbd_connections: 1,
                fence_wait: super::config::Dur(volume::DEFAULT_FENCE_WAIT),
                nbd_listen: None,
                nbd_socket: None,
            });
            cfg.lun = r.lun.clone();
            tokio::task::spawn_blocking(move || cfg.open())
                .await
                .map_err(internal)?
                .map_err(|e| ApiError::new(ErrorCode::Storage, format!("open LUN: {e}")))?
        };
        let l2 = lun.clone();
        let (sb, latest) = tokio::task::spawn_blocking(move || {
            let f = volume::superblock::read(&*l2)
                .map_err(|e| ApiError::new(ErrorCode::Storage, format!("superblock: {e}")))?;
            let latest = volume::checkpoint::read_latest(&*l2, &f.superblock)
                .map_err(|e| ApiError::new(ErrorCode::Storage, format!("checkpoint: {e}")))?;
            Ok::<_, ApiError>((f.superblock, latest))
        })
        .await
        .map_err(internal)??;
        let Some(cp) = latest.checkpoint else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "volume {} holds no valid checkpoint ({} slots skipped)",
                    sb.uuid,
                    latest.skipped.len()
                ),
            ));
        };
        let p: Payload = serde_json::from_slice(&cp.payload)
            .map_err(|e| ApiError::new(ErrorCode::Storage, format!("checkpoint payload: {e}")))?;
        if p.format != PAYLOAD_FORMAT || p.volume.id.to_string() != sb.uuid.to_string() {
            return Err(ApiError::new(
                ErrorCode::Storage,
                format!(
                    "checkpoint of format {} for volume {} does not belong to volume {}",
                    p.format, p.volume.id, sb.uuid
                ),
            ));
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
        match propose(
            &m,
            Command::RestoreCatalog {
                volume: p.volume,
                vhds,
            },
        )
        .await?
        {
            Reply::Volume(_) => {}
            _ => return Err(internal("unexpected reply to RestoreCatalog")),
        }
        self.check_volume().await;
        self.volume_status().await.map(api::Response::VolumeStatus)
    }
}
