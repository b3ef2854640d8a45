//! The node's Prometheus metrics (issue 16): one `prometheus_client` registry with every
//! family, the handles the subsystems update on their real code paths, and the encoder.
//! Counters and histograms move where things happen (NBD requests through a per-export
//! [`nbd::server::RequestObserver`], proposals in the metadata client, renewals and fence
//! closures in the lease shell, migrations in the hypervisor); gauges that mirror state
//! (Raft indexes, path state, extents, attachments, VMs) are set from that state at each
//! scrape (`collect.rs`). `http.rs` serves `GET /metrics`. Families: docs/metrics.md.
//!
//! This file is a leaf (the layers below the node import it to update their handles);
//! `collect.rs` reads the layers above, and only `node/` uses it.

pub mod collect;
pub mod histogram;
pub mod http;
pub mod nbd_observer;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use self::histogram::{DurationHistogram, SLOW_BUCKETS};
pub use self::nbd_observer::{NbdFamilies, NbdLabels};

/// The content type of the OpenMetrics text the endpoint serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One label `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// One label `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One label `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// One label `node`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: u64,
}

/// Labels of migrations: `live` or `quick`, `completed` or `aborted`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// Lease shell: renewals, their lag, fence closures.
#[derive(Debug, Clone)]
pub struct LeaseMetrics {
    pub renewals: Family<ResultLabel, Counter>,
    pub renewal_lag: DurationHistogram,
    pub fence_closures: Family<ReasonLabel, Counter>,
}

/// Metadata store: proposals (counted where they are made) and the Raft gauges (set at
/// scrape from the store's status).
#[derive(Debug, Clone)]
pub struct RaftMetrics {
    pub proposals: Family<ResultLabel, Counter>,
    pub proposal_duration: DurationHistogram,
    pub term: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub apply_lag: Gauge,
    pub is_leader: Gauge,
}

/// The data path's state gauges (set at scrape) and redirected bytes.
#[derive(Debug, Clone)]
pub struct DataMetrics {
    pub path_state: Family<StateLabel, Gauge>,
    /// Mirrors the switch's own monotonic byte count (set at scrape).
    pub redirected_bytes: Counter,
    pub extents: Family<StateLabel, Gauge>,
    pub extents_reserved: Family<NodeLabel, Gauge>,
    pub vhds_attached: Gauge,
}

/// VMs on this node and their migrations.
#[derive(Debug, Clone)]
pub struct VmMetrics {
    pub vms: Family<StateLabel, Gauge>,
    pub migrations: Family<MigrationLabels, Counter>,
    pub migration_downtime: DurationHistogram,
}

/// Every family of one node and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub nbd: NbdFamilies,
    pub lease: LeaseMetrics,
    pub raft: RaftMetrics,
    pub data: DataMetrics,
    pub vm: VmMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family, registered under the `csv_` prefix.
    pub fn new() -> Metrics {
        let mut reg = Registry::with_prefix("csv");
        let nbd = NbdFamilies::default();
        reg.register(
            "nbd_requests",
            "NBD requests answered by the device, per export and op",
            nbd.requests.clone(),
        );
        reg.register(
            "nbd_request_errors",
            "NBD requests that ended in an error, per export and op",
            nbd.errors.clone(),
        );
        reg.register_with_unit(
            "nbd",
            "Bytes covered by NBD requests (read and written payload, trimmed or zeroed range), per export and op",
            Unit::Bytes,
            nbd.bytes.clone(),
        );
        reg.register_with_unit(
            "nbd_request_duration",
            "Time from an NBD request's dispatch to the device's answer",
            Unit::Seconds,
            nbd.duration.clone(),
        );
        let lease = LeaseMetrics {
            renewals: Family::default(),
            renewal_lag: DurationHistogram::new(SLOW_BUCKETS),
            fence_closures: Family::default(),
        };
        reg.register(
            "lease_renewals",
            "Node lease renewals: confirmed, refused by the state machine, or unanswered",
            lease.renewals.clone(),
        );
        reg.register_with_unit(
            "lease_renewal_lag",
            "Time from a renewal's send (which the lease counts from) to its confirmation",
            Unit::Seconds,
            lease.renewal_lag.clone(),
        );
        reg.register(
            "fence_closures",
            "Write fences closed: lease lapse (all at once), ownership lost with the epoch, hold dropped, hand-off refused",
            lease.fence_closures.clone(),
        );
        let raft = RaftMetrics {
            proposals: Family::default(),
            proposal_duration: DurationHistogram::new(SLOW_BUCKETS),
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            apply_lag: Gauge::default(),
            is_leader: Gauge::default(),
        };
        reg.register(
            "raft_proposals",
            "Commands this node proposed: committed (answered by the state machine) or failed (timeout, no leader, stopped)",
            raft.proposals.clone(),
        );
        reg.register_with_unit(
            "raft_proposal_duration",
            "Time from a proposal to its answer",
            Unit::Seconds,
            raft.proposal_duration.clone(),
        );
        reg.register("raft_term", "Current Raft term", raft.term.clone());
        reg.register(
            "raft_commit_index",
            "Raft commit index",
            raft.commit_index.clone(),
        );
        reg.register(
            "raft_applied_index",
            "Raft index applied to the state machine",
            raft.applied_index.clone(),
        );
        reg.register(
            "raft_apply_lag_entries",
            "Committed entries not yet applied (commit index minus applied index)",
            raft.apply_lag.clone(),
        );
        reg.register(
            "raft_is_leader",
            "1 when this node is the Raft leader (the coordinator)",
            raft.is_leader.clone(),
        );
        let data = DataMetrics {
            path_state: Family::default(),
            redirected_bytes: Counter::default(),
            extents: Family::default(),
            extents_reserved: Family::default(),
            vhds_attached: Gauge::default(),
        };
        reg.register(
            "path_state",
            "1 for the mode this node reaches the LUN in (direct, quiescing, redirected, paused, failing_back), else 0",
            data.path_state.clone(),
        );
        reg.register_with_unit(
            "redirected",
            "Bytes of LUN calls sent through a peer",
            Unit::Bytes,
            data.redirected_bytes.clone(),
        );
        reg.register(
            "volume_extents",
            "Extents of the cluster volume: all, free, mapped to VHDs, reserved by nodes (this node's replica)",
            data.extents.clone(),
        );
        reg.register(
            "volume_extents_reserved",
            "Extents reserved per node",
            data.extents_reserved.clone(),
        );
        reg.register(
            "vhds_attached",
            "VHDs attached on this node",
            data.vhds_attached.clone(),
        );
        let vm = VmMetrics {
            vms: Family::default(),
            migrations: Family::default(),
            migration_downtime: DurationHistogram::new(SLOW_BUCKETS),
        };
        reg.register(
            "vms",
            "VMs placed on this node, by reported state",
            vm.vms.clone(),
        );
        reg.register(
            "migrations",
            "Migrations: completed (counted on the source) or aborted (counted on the node whose abort was recorded), by kind",
            vm.migrations.clone(),
        );
        reg.register_with_unit(
            "migration_downtime",
            "Guest downtime of completed migrations away from this node",
            Unit::Seconds,
            vm.migration_downtime.clone(),
        );
        Metrics {
            registry: reg,
            nbd,
            lease,
            raft,
            data,
            vm,
        }
    }

    /// The observer of one export's requests (its series are resolved on the first
    /// request of each kind, then updated with atomics only).
    pub fn nbd_observer(&self, export: &str) -> Arc<dyn nbd::server::RequestObserver> {
        Arc::new(self.nbd.observer(export))
    }

    /// Counts one proposal.
    pub fn proposal(&self, committed: bool, took: std::time::Duration) {
        let result = if committed { "committed" } else { "failed" };
        self.raft
            .proposals
            .get_or_create(&ResultLabel { result })
            .inc();
        self.raft.proposal_duration.observe(took);
    }

    /// Counts one fence closure.
    pub fn fence_closed(&self, reason: &'static str, n: u64) {
        self.lease
            .fence_closures
            .get_or_create(&ReasonLabel { reason })
            .inc_by(n);
    }

    /// The OpenMetrics text of every family (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
