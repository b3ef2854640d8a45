//! The node's side of the cluster volume (docs/design/040): the `[volume]` config section
//! (the LUN path: a file or block device, or an `nbd://` / `nbd+unix://` SAN target), the
//! open LUN, the superblock check against the cluster's volume record (at start and when
//! the record appears), `volume format` and `volume status`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use csv_api::admin::{self as api, Response};
use csv_api::error::ApiError;
use csv_api::{ErrorCode, VolumeId};
use serde::Deserialize;
use volume::{FileOptions, FilePath, Layout, LunPath, NbdOptions, NbdPath, NbdTarget, Superblock};

use super::config::Dur;
use super::handlers::{propose, query};
use super::{Daemon, convert};
use crate::state::types::{Command, Query, QueryReply, Reply, VolumeRecord};

/// How often a node whose volume is not checked yet looks again.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `[volume]`: this node's path to the shared LUN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSection {
    /// The LUN: a file or block device path, or `nbd://host[:port]/export`,
    /// `nbd+unix:///export?socket=PATH` for a SAN target.
    pub lun: String,
    /// Open the LUN with O_DIRECT. Unset: on for a block device (nodes on different
    /// hosts must not read each other's data from their own page cache), off for a
    /// regular file (one host's page cache is coherent among its nodes; set it for a
    /// file on a shared network file system).
    #[serde(default)]
    pub direct: Option<bool>,
    /// Bound of one LUN call, from its fence check to its answer. Unset: half the
    /// lease's margin (the lease's io_timeout: 0.93 s at the default 8 s budget); a value
    /// above that is refused (docs/design/042 §4).
    #[serde(default)]
    pub io_timeout: Option<Dur>,
    /// Connections to an NBD target (1–16).
    #[serde(default = "default_connections")]
    pub nbd_connections: usize,
    /// How long a write waits for a closed fence before it fails with EIO.
    #[serde(default = "default_fence_wait")]
    pub fence_wait: Dur,
    /// NBD exports also listen on this TCP address (the Unix socket
    /// `<data_dir>/nbd.sock` always).
    #[serde(default)]
    pub nbd_listen: Option<std::net::SocketAddr>,
    /// The NBD Unix socket (default `<data_dir>/nbd.sock`).
    #[serde(default)]
    pub nbd_socket: Option<std::path::PathBuf>,
}

fn default_connections() -> usize {
    4
}
fn default_fence_wait() -> Dur {
    Dur(volume::DEFAULT_FENCE_WAIT)
}

impl VolumeSection {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.lun.is_empty() {
            return Err(("volume.lun", "empty".into()));
        }
        if let Some(t) = self.io_timeout {
            volume::path::validate_io_timeout(t.0).map_err(|e| ("volume.io_timeout", e))?;
        }
        if !(1..=16).contains(&self.nbd_connections) {
            return Err(("volume.nbd_connections", "1 to 16".into()));
        }
        if self.fence_wait.0 > Duration::from_secs(600) {
            return Err(("volume.fence_wait", "at most 10m".into()));
        }
        if self.lun.starts_with("nbd") {
            NbdTarget::parse(&self.lun).map_err(|e| ("volume.lun", e))?;
        }
        Ok(())
    }

    /// The bound of one LUN call: as configured, else half of `lease_margin` (the
    /// lease's io_timeout, the time between a fence's close and the end of the lease).
    pub fn io_timeout(&self, lease_margin: Duration) -> Duration {
        self.io_timeout.map_or(lease_margin / 2, |d| d.0)
    }

    /// Opens the LUN path (blocking); every call is bounded by `io_timeout`.
    pub fn open(&self, io_timeout: Duration) -> Result<Arc<dyn LunPath>, String> {
        if self.lun.starts_with("nbd:") || self.lun.starts_with("nbd+") {
            let t = NbdTarget::parse(&self.lun)?;
            let p = NbdPath::connect(
                t,
                NbdOptions {
                    io_timeout,
                    connections: self.nbd_connections,
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(p))
        } else {
            let path = std::path::Path::new(&self.lun);
            let block = is_block_device(path);
            let direct = resolve_direct(self.direct, block);
            if block && !direct {
                tracing::warn!(
                    lun = %self.lun,
                    "block device LUN opened without O_DIRECT: another host's writes may be read stale from this host's page cache"
                );
            }
            let p = FilePath::open(
                path,
                FileOptions {
                    direct,
                    io_timeout,
                    ..FileOptions::default()
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(Arc::new(p))
        }
    }
}

/// Whether `path` is a block device (a symlink such as /dev/mapper/x is followed).
fn is_block_device(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// O_DIRECT as configured, else on exactly for block devices.
fn resolve_direct(configured: Option<bool>, block_device: bool) -> bool {
    configured.unwrap_or(block_device)
}

/// What the node knows about the volume.
#[derive(Debug, Clone)]
pub(crate) enum Check {
    /// Not looked yet, or no record yet.
    Pending(String),
    /// The superblock matches the record.
    Ok(Superblock),
    /// Something is wrong (mismatch, unreadable): attaches are refused.
    Bad(String),
}

/// The open LUN and the check result.
#[derive(Default)]
pub(crate) struct VolumeRt {
    lun: Mutex<Option<Arc<dyn LunPath>>>,
    check: Mutex<Option<Check>>,
}

fn api_err(code: ErrorCode, m: impl Into<String>) -> ApiError {
    ApiError::new(code, m)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A volume record made from a superblock.
pub(crate) fn record_of(sb: &Superblock, lun: &str) -> Result<VolumeRecord, ApiError> {
    Ok(VolumeRecord {
        id: sb
            .uuid
            .to_string()
            .parse::<VolumeId>()
            .map_err(|e| api_err(ErrorCode::Internal, e.to_string()))?,
        lun: lun.chars().take(200).collect(),
        description: sb.label.clone(),
        size: sb.layout.lun_size,
        extent_size: sb.layout.extent_size,
        extent_count: sb.layout.extent_count,
        data_offset: sb.layout.data_offset,
    })
}

fn differs(sb: &Superblock, rec: &VolumeRecord) -> Option<String> {
    if sb.uuid.to_string() != rec.id.to_string() {
        return Some(format!(
            "the LUN holds volume {}, the cluster records volume {}",
            sb.uuid, rec.id
        ));
    }
    let l = &sb.layout;
    if l.extent_size != rec.extent_size
        || l.data_offset != rec.data_offset
        || l.extent_count < rec.extent_count
    {
        return Some(format!(
            "superblock layout (extent size {}, data offset {}, {} extents) differs from the record ({}, {}, {})",
            l.extent_size,
            l.data_offset,
            l.extent_count,
            rec.extent_size,
            rec.data_offset,
            rec.extent_count
        ));
    }
    None
}

impl Daemon {
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

    fn volume_cfg(&self) -> Result<&VolumeSection, ApiError> {
        self.cfg.volume.as_ref().ok_or_else(|| {
            api_err(
                ErrorCode::Config,
                format!(
                    "node {} has no [volume] section in its config (the LUN path)",
                    self.id()
                ),
            )
        })
    }

    /// The check result (the checkpoint writer reads the superblock from it).
    pub(crate) fn vol_check(&self) -> &Mutex<Option<Check>> {
        &self.vol.check
    }

    /// The open LUN (opened on first use).
    pub(crate) async fn lun(&self) -> Result<Arc<dyn LunPath>, ApiError> {
        if let Some(l) = lock(&self.vol.lun).clone() {
            return Ok(l);
        }
        let cfg = self.volume_cfg()?.clone();
        let t = self.io_timeout();
        let l = tokio::task::spawn_blocking(move || cfg.open(t))
            .await
            .map_err(|e| api_err(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| api_err(ErrorCode::Storage, format!("open LUN: {e}")))?;
        let mut g = lock(&self.vol.lun);
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
            Err(e) => return Check::Pending(e.message),
        };
        // A local read: the watch runs on joining nodes too, which must not ask a leader
        // they do not know yet.
        let local = match m.meta.query_local(Query::Volume.encode()).await {
            Ok(b) => crate::state::types::decode_result::<QueryReply>(&b),
            Err(e) => Err(super::meta_err(e)),
        };
        let rec = match local {
            Ok(QueryReply::Volume { volume: Some(v) }) => v,
            Ok(_) => return Check::Pending("no volume yet: run `csvadm volume format`".into()),
            Err(e) => return Check::Pending(format!("volume record: {e}")),
        };
        let lun = match self.lun().await {
            Ok(l) => l,
            Err(e) => return Check::Bad(e.message),
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
    pub(crate) async fn volume_ready(&self) -> Result<(Arc<dyn LunPath>, Layout), ApiError> {
        let cached = lock(&self.vol.check).clone();
        let c = match cached {
            Some(Check::Ok(sb)) => Check::Ok(sb),
            _ => self.check_volume().await,
        };
        match c {
            Check::Ok(sb) => Ok((self.lun().await?, sb.layout)),
            Check::Pending(m) => Err(api_err(ErrorCode::InvalidState, m)),
            Check::Bad(m) => Err(api_err(ErrorCode::Storage, m)),
        }
    }

    /// `volume format`.
    pub(crate) async fn volume_format(
        &self,
        f: api::volume::VolumeFormat,
    ) -> Result<Response, ApiError> {
        let m = self.member().await?;
        if let QueryReply::Volume { volume: Some(v) } = query(&m, Query::Volume).await? {
            return Err(api_err(
                ErrorCode::AlreadyExists,
                format!("the cluster has volume {} already", v.id),
            ));
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
            .await
            .map_err(|e| api_err(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| api_err(ErrorCode::Storage, format!("format: {e}")))?;
        let rec = record_of(&sb, &lun.describe())?;
        match propose(&m, Command::SetVolume { volume: rec }).await? {
            Reply::Volume(_) => {}
            _ => {
                return Err(api_err(
                    ErrorCode::Internal,
                    "unexpected reply to SetVolume",
                ));
            }
        }
        tracing::info!(volume = %sb.uuid, "volume formatted");
        self.check_volume().await;
        self.volume_status().await.map(Response::VolumeStatus)
    }

    /// `volume status`.
    pub(crate) async fn volume_status(&self) -> Result<api::volume::VolumeStatus, ApiError> {
        let m = self.member().await?;
        let volume = match query(&m, Query::Volume).await? {
            QueryReply::Volume { volume } => volume.as_ref().map(convert::volume_to_api),
            _ => None,
        };
        let space = match query(&m, Query::Space).await {
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
        })
    }
}

/// Checks the volume until it is known (the record may appear later), then brings back
/// this node's attachments.
pub(crate) async fn watch_volume(d: Arc<Daemon>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_defaults_to_on_for_block_devices_only() {
        assert!(resolve_direct(None, true));
        assert!(!resolve_direct(None, false));
        assert!(resolve_direct(Some(true), false));
        assert!(!resolve_direct(Some(false), true));
        let f = tempfile::NamedTempFile::new().expect("temp file");
        assert!(!is_block_device(f.path()));
        assert!(!is_block_device(std::path::Path::new("/dev/null")));
        assert!(!is_block_device(std::path::Path::new("/nonexistent/lun")));
        // A block device of this host, where /dev shows one (VMs and hosts do).
        let dev = std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| std::path::Path::new("/dev").join(e.file_name()))
            .find(|p| p.exists());
        if let Some(dev) = dev {
            assert!(is_block_device(&dev), "{}", dev.display());
        }
    }
}
