//! The node configuration file (TOML): one struct tree with units in the types
//! (durations are strings such as "100ms" or "5s", sizes are `_bytes` integers), defaults
//! for everything but the node id, the addresses and the data directory, and `validate()`
//! with typed errors. Documented example: `csv-node/node.example.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lock_manager::LeaseTiming;
use serde::{Deserialize, Deserializer};
use volume::NbdTarget;

mod tls;
pub use tls::{LoadedTls, NbdTls, TlsSection};
mod metrics;
pub use metrics::MetricsSection;

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this structure.
    #[error("parse config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (names the line and field).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A duration written with a unit: `ms`, `s`, `m` or `h` (e.g. "100ms", "5s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} has no unit (ms, s, m, h)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?} does not start with a number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "duration {s:?}: unknown unit {unit:?} (ms, s, m, h)"
                ));
            }
        };
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[cluster]`.
    pub cluster: ClusterSection,
    /// `[paths]`.
    pub paths: PathsSection,
    /// `[raft]`.
    #[serde(default)]
    pub raft: RaftSection,
    /// `[admin]`.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[limits]`.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[lease]` (issue 5).
    #[serde(default)]
    pub lease: LeaseSection,
    /// `[volume]`: the shared LUN (none: the node serves no VHDs).
    #[serde(default)]
    pub volume: Option<VolumeSection>,
    /// `[redirect]`: redirected I/O when the node loses its LUN path (issue 13).
    #[serde(default)]
    pub redirect: RedirectSection,
    /// `[hypervisor]`: the VMs this node runs (issue 14).
    #[serde(default)]
    pub hypervisor: HypervisorSection,
    /// `[tls]`: mutual TLS between nodes, TLS on NBD over TCP (issue 16).
    #[serde(default)]
    pub tls: TlsSection,
    /// What `[tls]` names, read and checked by [`NodeConfig::load`] (plaintext until then).
    #[serde(skip)]
    pub loaded_tls: LoadedTls,
    /// `[metrics]`: the Prometheus endpoint (issue 16; off unless `listen` is set).
    #[serde(default)]
    pub metrics: MetricsSection,
}

/// `[hypervisor]` of the node configuration (docs/design/080).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HypervisorSection {
    /// Run the VMs placed on this node (off: the node never starts a QEMU; VMs are
    /// not placed on it by hand either, since it reports nothing).
    pub enabled: bool,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// `kvm`, `tcg`, or `auto` (KVM when /dev/kvm opens read-write, else TCG).
    pub accel: String,
    /// QEMU's machine type (the same on every node: migration needs it).
    pub machine: String,
    /// Where each VM's QEMU keeps its QMP socket, pidfile and console log (default
    /// `<data_dir>/vms`).
    pub vm_dir: Option<PathBuf>,
    /// How long a guest may take to power off when asked before QEMU is quit.
    pub stop_timeout: Dur,
    /// How long QEMU's NBD client retries a lost connection to this node's agent
    /// before failing requests (which pause the guest: `werror=stop`).
    pub reconnect_delay: Dur,
    /// How often a guest paused by an I/O error is resumed once the error is gone.
    pub resume_interval: Dur,
}

impl Default for HypervisorSection {
    fn default() -> Self {
        HypervisorSection {
            enabled: true,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: "auto".into(),
            machine: "q35".into(),
            vm_dir: None,
            stop_timeout: Dur(Duration::from_secs(60)),
            reconnect_delay: Dur(Duration::from_secs(30)),
            resume_interval: Dur(Duration::from_secs(2)),
        }
    }
}

impl HypervisorSection {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let s = Duration::from_secs;
        if !matches!(self.accel.as_str(), "auto" | "kvm" | "tcg") {
            return Err(("hypervisor.accel", "auto, kvm or tcg".into()));
        }
        if self.machine.is_empty() || self.machine.contains([',', ' ']) {
            return Err(("hypervisor.machine", "a QEMU machine type".into()));
        }
        if self.qemu.as_os_str().is_empty() {
            return Err(("hypervisor.qemu", "empty".into()));
        }
        if !(s(1)..=s(3600)).contains(&self.stop_timeout.0) {
            return Err(("hypervisor.stop_timeout", "1s to 1h".into()));
        }
        if !(s(1)..=s(3600)).contains(&self.reconnect_delay.0) {
            return Err(("hypervisor.reconnect_delay", "1s to 1h".into()));
        }
        if !(Duration::from_millis(100)..=s(600)).contains(&self.resume_interval.0) {
            return Err(("hypervisor.resume_interval", "100ms to 10m".into()));
        }
        Ok(())
    }
}

/// `[redirect]` of the node configuration (docs/design/070).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectSection {
    /// Redirect LUN calls through a peer when the node's own path fails (off: path
    /// failures reach the VMs as I/O errors, as without redirection).
    pub enabled: bool,
    /// The node-to-node data transport listens here (default: the cluster address's
    /// IP, any free port; the address is published in the replicated path state).
    pub listen: Option<SocketAddr>,
    /// Heartbeat probe period of the node's own path.
    pub probe_interval: Dur,
    /// Path errors within `error_window` that mean the path is lost.
    pub error_threshold: u32,
    pub error_window: Dur,
    /// How long the path must be healthy before failing back (doubles on flaps).
    pub settle_time: Dur,
    /// A loss this soon after a return is a flap: it doubles the settle time (up to
    /// 5 minutes).
    pub flap_window: Dur,
    /// Longest a call waits with no path and no peer before it fails with EIO.
    pub pause_limit: Dur,
    /// A peer closes a session it has not heard from for this long.
    pub session_ttl: Dur,
}

impl Default for RedirectSection {
    fn default() -> Self {
        RedirectSection {
            enabled: true,
            listen: None,
            probe_interval: Dur(Duration::from_secs(1)),
            error_threshold: 3,
            error_window: Dur(Duration::from_secs(5)),
            settle_time: Dur(Duration::from_secs(10)),
            flap_window: Dur(Duration::from_secs(60)),
            pause_limit: Dur(Duration::from_secs(60)),
            session_ttl: Dur(Duration::from_secs(2)),
        }
    }
}

impl RedirectSection {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let within = |v: Duration, lo: Duration, hi: Duration| (lo..=hi).contains(&v);
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        if !within(self.probe_interval.0, ms(100), s(60)) {
            return Err(("redirect.probe_interval", "100ms to 60s".into()));
        }
        if !(1..=1000).contains(&self.error_threshold) {
            return Err(("redirect.error_threshold", "1 to 1000".into()));
        }
        if !within(self.error_window.0, ms(100), s(600)) {
            return Err(("redirect.error_window", "100ms to 10m".into()));
        }
        if !within(self.settle_time.0, ms(100), s(3600)) {
            return Err(("redirect.settle_time", "100ms to 1h".into()));
        }
        if self.flap_window.0 > s(3600) {
            return Err(("redirect.flap_window", "at most 1h".into()));
        }
        if !within(self.pause_limit.0, s(1), s(3600)) {
            return Err(("redirect.pause_limit", "1s to 1h".into()));
        }
        if !within(self.session_ttl.0, ms(200), s(60)) {
            return Err(("redirect.session_ttl", "200ms to 60s".into()));
        }
        Ok(())
    }
}

/// `[lease]` of the node configuration.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseSection {
    /// Longest a crashed owner's VHDs stay unwritable (6 s to 300 s, default 8 s); every
    /// other lease timeout is derived from it (design note 030 §8).
    pub outage_budget: Dur,
    /// Run the lease watchdog (`crate::lease::watchdog`): a separate process that SIGKILLs this
    /// node when it holds a write hold and its lease ends without a confirmed renewal
    /// (paused, stuck, or cut off), so no write checked before the deadline can be
    /// submitted after it.
    pub watchdog: bool,
}

impl Default for LeaseSection {
    fn default() -> Self {
        LeaseSection {
            outage_budget: Dur(lock_manager::timing::DEFAULT_OUTAGE_BUDGET),
            watchdog: false,
        }
    }
}

impl LeaseSection {
    /// The derived timings, or why the budget is refused.
    pub fn timing(&self) -> Result<LeaseTiming, lock_manager::TimingError> {
        LeaseTiming::from_budget(self.outage_budget.0)
    }
}

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
}

/// `[node]`: identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node id, unique in the cluster, never reused after a removal (1–2^63).
    pub id: u64,
}

/// `[cluster]`: node-to-node networking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Address the node-to-node listener binds.
    pub listen: SocketAddr,
    /// Address the other nodes dial (default: `listen`, which must then be specific).
    pub advertise: Option<String>,
    /// Only join the cluster with this id (default: the first leader that adds this node).
    pub join_cluster_id: Option<String>,
}

/// `[paths]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsSection {
    /// Everything the node writes lives here.
    pub data_dir: PathBuf,
    /// Admin socket (default `<data_dir>/admin.sock`).
    pub admin_socket: Option<PathBuf>,
}

/// `[raft]`: timing and log compaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub tick: Dur,
    /// Election timeout in ticks (randomised in [n, 2n)).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Deadline of a proposal.
    pub propose_timeout: Dur,
    /// Deadline of a linearizable read.
    pub read_timeout: Dur,
    /// Deadline of one membership change or leader transfer.
    pub admin_timeout: Dur,
    /// Compact the log when more applied entries than this are kept.
    pub compact_threshold: u64,
    /// Applied entries kept after a compaction.
    pub keep_entries: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        let m = meta_store::Config::new(1, "x");
        RaftSection {
            tick: Dur(m.tick_interval),
            election_ticks: m.election_ticks,
            heartbeat_ticks: m.heartbeat_ticks,
            propose_timeout: Dur(m.propose_timeout),
            read_timeout: Dur(m.read_timeout),
            admin_timeout: Dur(m.admin_timeout),
            compact_threshold: m.log.compact_threshold,
            keep_entries: m.log.keep_entries,
        }
    }
}

/// `[admin]`: the admin socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Connections served at once; more are refused with `busy`.
    pub max_connections: usize,
    /// An idle connection is closed after this.
    pub idle_timeout: Dur,
    /// How long `node add` / `node promote` wait for a learner to catch up.
    pub catch_up_timeout: Dur,
    /// A group (name or number) whose members may connect to the admin socket and send
    /// the requests that only read (status, lists, shows, events, progress). Unset: the
    /// socket is the node's user's only (mode 0600); set: mode 0660 with this group.
    pub read_only_group: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            max_connections: 256,
            idle_timeout: Dur(Duration::from_secs(600)),
            catch_up_timeout: Dur(Duration::from_secs(60)),
            read_only_group: None,
        }
    }
}

/// `[limits]`: metadata-store bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Requests a node holds at once.
    pub max_pending_requests: usize,
    /// Largest command.
    pub max_command_bytes: usize,
    /// Largest snapshot.
    pub max_snapshot_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = meta_store::Limits::default();
        LimitsSection {
            max_pending_requests: l.max_pending_requests,
            max_command_bytes: l.max_command_bytes,
            max_snapshot_bytes: l.max_snapshot_bytes,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl NodeConfig {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        let mut cfg = cfg;
        cfg.loaded_tls = cfg.tls.load(cfg.node.id).map_err(|r| invalid("tls", r))?;
        Ok(cfg)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The address other nodes dial.
    pub fn advertise(&self) -> String {
        self.cluster
            .advertise
            .clone()
            .unwrap_or_else(|| self.cluster.listen.to_string())
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.paths
            .admin_socket
            .clone()
            .unwrap_or_else(|| self.paths.data_dir.join("admin.sock"))
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.id == 0 || self.node.id > i64::MAX as u64 {
            return Err(invalid("node.id", "must be 1 to 2^63-1"));
        }
        if self.cluster.advertise.is_none() && self.cluster.listen.ip().is_unspecified() {
            return Err(invalid(
                "cluster.advertise",
                "required when cluster.listen is a wildcard address",
            ));
        }
        if let Some(a) = &self.cluster.advertise {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok || a.len() > 255 {
                return Err(invalid(
                    "cluster.advertise",
                    format!("{a:?} is not host:port"),
                ));
            }
        }
        if self.cluster.listen.port() == 0 {
            return Err(invalid(
                "cluster.listen",
                "needs a fixed port (peers store the address)",
            ));
        }
        self.redirect.validate().map_err(|(f, r)| invalid(f, r))?;
        let nbd_tcp = self.volume.as_ref().is_some_and(|v| v.nbd_listen.is_some());
        self.tls.validate(nbd_tcp).map_err(|(f, r)| invalid(f, r))?;
        self.hypervisor.validate().map_err(|(f, r)| invalid(f, r))?;
        self.metrics.validate().map_err(|(f, r)| invalid(f, r))?;
        if let Some(a) = self.metrics.listen
            && a == self.cluster.listen
        {
            return Err(invalid("metrics.listen", "must differ from cluster.listen"));
        }
        if let Some(v) = &self.volume {
            v.validate().map_err(|(f, r)| invalid(f, r))?;
            // A write must land within the lease's margin of its fence check, twice over
            // (the client's deadline, then the target's handling): 042 §4.
            if let (Some(t), Ok(timing)) = (v.io_timeout, self.lease.timing()) {
                let max = timing.io_timeout / 2;
                if t.0 > max {
                    return Err(invalid(
                        "volume.io_timeout",
                        format!(
                            "{:?} is above {max:?}, half the lease margin of outage_budget {:?}: \
                             raise [lease] outage_budget or lower io_timeout",
                            t.0, timing.outage_budget
                        ),
                    ));
                }
            }
        }
        if let Some(c) = &self.cluster.join_cluster_id {
            c.parse::<csv_api::ClusterId>()
                .map_err(|e| invalid("cluster.join_cluster_id", e.to_string()))?;
        }
        if !self.paths.data_dir.is_absolute() {
            return Err(invalid("paths.data_dir", "must be an absolute path"));
        }
        let sock = self.admin_socket();
        if !sock.is_absolute() || sock.as_os_str().len() > 100 {
            return Err(invalid(
                "paths.admin_socket",
                "must be absolute and at most 100 bytes (Unix socket path limit)",
            ));
        }
        if self.admin.max_connections == 0 || self.admin.max_connections > 65_536 {
            return Err(invalid("admin.max_connections", "must be 1 to 65536"));
        }
        if let Some(g) = &self.admin.read_only_group {
            let ok = !g.is_empty()
                && g.len() <= 32
                && !g.starts_with('-')
                && g.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err(invalid(
                    "admin.read_only_group",
                    format!(
                        "{g:?} is not a group name or number (letters, digits, _ - .; at most 32)"
                    ),
                ));
            }
        }
        for (field, d) in [
            ("admin.idle_timeout", self.admin.idle_timeout),
            ("admin.catch_up_timeout", self.admin.catch_up_timeout),
        ] {
            if d.0 < Duration::from_secs(1) || d.0 > Duration::from_secs(86_400) {
                return Err(invalid(field, "must be 1s to 24h"));
            }
        }
        self.lease
            .timing()
            .map_err(|e| invalid("lease.outage_budget", e.to_string()))?;
        // Everything else is checked by the metadata store's own validation.
        self.meta_config(csv_api::ClusterId::nil(), Vec::new())
            .validate()
            .map_err(|e| invalid("raft/limits", e.to_string()))?;
        Ok(())
    }

    /// The metadata-store configuration for `cluster`.
    pub fn meta_config(
        &self,
        cluster: csv_api::ClusterId,
        initial_voters: Vec<u64>,
    ) -> meta_store::Config {
        let mut c = meta_store::Config::new(self.node.id, cluster.to_string());
        c.initial_voters = initial_voters;
        c.peers = vec![meta_store::PeerAddr {
            id: self.node.id,
            addr: self.advertise(),
        }];
        let r = &self.raft;
        c.tick_interval = r.tick.0;
        c.election_ticks = r.election_ticks;
        c.heartbeat_ticks = r.heartbeat_ticks;
        c.propose_timeout = r.propose_timeout.0;
        c.read_timeout = r.read_timeout.0;
        c.admin_timeout = r.admin_timeout.0;
        c.log.compact_threshold = r.compact_threshold;
        c.log.keep_entries = r.keep_entries;
        let l = &self.limits;
        c.limits.max_pending_requests = l.max_pending_requests;
        c.limits.max_command_bytes = l.max_command_bytes;
        c.limits.max_snapshot_bytes = l.max_snapshot_bytes;
        c
    }
}

#[cfg(test)]
mod tests;
