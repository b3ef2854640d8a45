//! The node's side of the cluster volume (docs/design/040): the `[volume]` config section
//! (the LUN path: a file or block device, or an `nbd://` / `nbd+unix://` SAN target), the
//! open LUN, the superblock check against the cluster's volume record (at start and when
//! the record appears), `volume format` and `volume status`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use csv_api::admin::{self as api, Response};
use volume::{Layout, LunPath};

use super::core::Data;
use super::error::DataError;
use super::lun::{Check, differs, open_lun, record_of};
use super::redirect::handle::Redirect;
use crate::config::VolumeSection;
use crate::convert;
use crate::meta::unexpected;
use crate::state::types::{Command, Query, QueryReply, Reply};
use crate::sync::lock;

/// How often a node whose volume is not checked yet looks again.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Data {
    /// The bound of one LUN call (042 §4).
    pub(crate) fn io_timeout(&self) -> Duration {
        let margin = self.leases.timing().io_timeout;
        self.cfg
            .volume
            .as_ref()
            .map_or(margin / 2, |v| v.io_timeout(margin))
    }

    /// How long a request waits for a closed fence.
    pub(crate) fn fence_wait(&self) -> Duration {
        self.cfg
            .volume
            .as_ref()
            .map_or(volume::DEFAULT_FENCE_WAIT, |v| v.fence_wait.0)
    }

    /// The longest a write issued through the LUN may stay in doubt (its check plus
    /// twice the call bound), with slack: the bound of a wait for quiet.
    pub(crate) fn quiet_limit(&self) -> Duration {
        self.io_timeout() * 2 + Duration::from_secs(1)
    }

    /// Waits (async) until no write issued through `lun` can still land, at most
    /// [`Self::quiet_limit`]; false when writes are still in doubt then (a call stuck
    /// in the kernel).
    pub(crate) async fn wait_quiet(&self, lun: &Arc<dyn LunPath>) -> bool {
        let start = std::time::Instant::now();
        loop {
            use volume::path::QuietStep;
            match volume::path::quiet_step(&**lun, start.elapsed(), self.quiet_limit()) {
                QuietStep::Quiet => return true,
                QuietStep::Sleep(d) => tokio::time::sleep(d).await,
                QuietStep::InDoubt => return false,
            }
        }
    }

    fn volume_cfg(&self) -> Result<&VolumeSection, DataError> {
        self.cfg
            .volume
            .as_ref()
            .ok_or(DataError::NoVolume { node: self.id() })
    }

    /// The check result (the checkpoint writer reads the superblock from it).
    pub(crate) fn vol_check(&self) -> &Mutex<Option<Check>> {
        &self.vol.check
    }

    /// The open LUN (opened on first use).
    pub(crate) async fn lun(&self) -> Result<Arc<dyn LunPath>, DataError> {
        if let Some(l) = lock(&self.vol.lun).clone() {
            return Ok(l);
        }
        let cfg = self.volume_cfg()?.clone();
        let t = self.io_timeout();
        let redirect = self
            .cfg
            .redirect
            .enabled
            .then_some(self.cfg.redirect.pause_limit.0);
        let (l, r) = tokio::task::spawn_blocking(move || {
            let l = open_lun(&cfg, t)?;
            match redirect {
                Some(pause) => {
                    let (r, switch) =
                        Redirect::wrap(l, pause).map_err(|e| DataError::storage("open LUN", e))?;
                    Ok::<_, DataError>((switch, Some(r)))
                }
                None => Ok((l, None)),
            }
        })
        .await??;
        let mut g = lock(&self.vol.lun);
        if g.is_none()
            && let Some(r) = r
        {
            let _ = self.redir.set(r);
        }
        Ok(g.get_or_insert(l).clone())
    }

    /// Reads the superblock and compares it with the volume record.
    pub(crate) async fn check_volume(&self) -> Check {
        let c = self.check_volume_inner().await;
        match &c {
            Check::Ok(sb) => {
                let was_ok = matches!(*lock(&self.vol.check), Some(Check::Ok(_)));
                if !was_ok {
                    tracing::info!(volume = %sb.uuid, "volume superblock matches the cluster record");
                }
            }
            Check::Bad(m) => tracing::error!("volume check failed: {m}"),
            Check::Pending(_) => {}
        }
        *lock(&self.vol.check) = Some(c.clone());
        c
    }

    async fn check_volume_inner(&self) -> Check {
        let m = match self.member().await {
            Ok(m) => m,
            Err(e) => return Check::Pending(e.to_string()),
        };
        // A local read: the watch runs on joining nodes too, which must not ask a leader
        // they do not know yet.
        let local = m.query_local(Query::Volume).await;
        let rec = match local {
            Ok(QueryReply::Volume { volume: Some(v) }) => v,
            Ok(_) => return Check::Pending("no volume yet: run `csvadm volume format`".into()),
            Err(e) => return Check::Pending(format!("volume record: {e}")),
        };
        let lun = match self.lun().await {
            Ok(l) => l,
            Err(e) => return Check::Bad(e.to_string()),
        };
        let found = tokio::task::spawn_blocking(move || volume::superblock::read(&*lun)).await;
        match found {
            Ok(Ok(f)) => {
                for w in &f.warnings {
                    tracing::warn!("volume: {w}");
                }
                match differs(&f.superblock, &rec) {
                    Some(d) => Check::Bad(d),
                    None => Check::Ok(f.superblock),
                }
            }
            Ok(Err(e)) => Check::Bad(format!("read superblock: {e}")),
            Err(e) => Check::Bad(format!("read superblock: {e}")),
        }
    }

    /// The LUN and its layout, once the superblock is checked.
    pub(crate) async fn volume_ready(&self) -> Result<(Arc<dyn LunPath>, Layout), DataError> {
        let cached = lock(&self.vol.check).clone();
        let c = match cached {
            Some(Check::Ok(sb)) => Check::Ok(sb),
            _ => self.check_volume().await,
        };
        match c {
            Check::Ok(sb) => Ok((self.lun().await?, sb.layout)),
            Check::Pending(m) => Err(DataError::VolumeNotReady(m)),
            Check::Bad(m) => Err(DataError::VolumeBad(m)),
        }
    }

    /// `volume format`.
    pub(crate) async fn volume_format(
        &self,
        f: api::volume::VolumeFormat,
    ) -> Result<Response, DataError> {
        let m = self.member().await?;
        if let QueryReply::Volume { volume: Some(v) } = m.query(Query::Volume).await? {
            return Err(DataError::VolumeExists(v.id.to_string()));
        }
        let lun = self.lun().await?;
        let params = volume::FormatParams {
            extent_size: if f.extent_size == 0 {
                volume::layout::DEFAULT_EXTENT_SIZE
            } else {
                f.extent_size
            },
            label: f.label,
            force: f.force,
            ..volume::FormatParams::default()
        };
        let l2 = lun.clone();
        let sb = tokio::task::spawn_blocking(move || volume::superblock::format(&*l2, &params))
            .await?
            .map_err(|e| DataError::storage("format", e))?;
        let rec = record_of(&sb, &lun.describe())?;
        match m.propose(Command::SetVolume { volume: rec }).await? {
            Reply::Volume(_) => {}
            _ => return unexpected("SetVolume"),
        }
        tracing::info!(volume = %sb.uuid, "volume formatted");
        self.check_volume().await;
        self.volume_status().await.map(Response::VolumeStatus)
    }

    /// `volume status`.
    pub(crate) async fn volume_status(&self) -> Result<api::volume::VolumeStatus, DataError> {
        let m = self.member().await?;
        let volume = match m.query(Query::Volume).await? {
            QueryReply::Volume { volume } => volume.as_ref().map(convert::volume_to_api),
            _ => None,
        };
        let space = match m.query(Query::Space).await {
            Ok(QueryReply::Space(s)) => Some(convert::space_to_api(&s)),
            _ => None,
        };
        let lun = match lock(&self.vol.lun).clone() {
            Some(l) => l.describe(),
            None => self
                .cfg
                .volume
                .as_ref()
                .map(|v| v.lun.clone())
                .unwrap_or_default(),
        };
        let mut checkpoint = (0, 0);
        let (state, message, uuid) = if self.cfg.volume.is_none() {
            (
                "unconfigured",
                "no [volume] section".to_string(),
                String::new(),
            )
        } else {
            match self.check_volume().await {
                Check::Ok(sb) => {
                    if let Ok(l) = self.lun().await {
                        let sb2 = sb.clone();
                        if let Ok(Ok(latest)) = tokio::task::spawn_blocking(move || {
                            volume::checkpoint::read_latest(&*l, &sb2)
                        })
                        .await
                            && let Some(c) = latest.checkpoint
                        {
                            checkpoint = (c.sequence, c.raft_index);
                        }
                    }
                    ("ok", String::new(), sb.uuid.to_string())
                }
                Check::Pending(m) => ("unformatted", m, String::new()),
                Check::Bad(m) => ("error", m, String::new()),
            }
        };
        Ok(api::volume::VolumeStatus {
            node_id: self.id(),
            volume,
            lun,
            state: state.into(),
            message,
            superblock_uuid: uuid,
            space,
            attachments: self.attachments_list(),
            checkpoint_sequence: checkpoint.0,
            checkpoint_index: checkpoint.1,
            paths: self.node_paths(&m).await,
            redirected_bytes: self.redirected_bytes(),
        })
    }
}

/// Checks the volume until it is known (the record may appear later), then brings back
/// this node's attachments.
pub(crate) async fn watch_volume(d: Arc<Data>) {
    if d.cfg.volume.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(CHECK_INTERVAL).await;
        match d.check_volume().await {
            Check::Ok(_) => break,
            Check::Pending(m) => tracing::debug!("volume not checked yet: {m}"),
            Check::Bad(_) => {}
        }
    }
    d.restore_attachments().await;
}
