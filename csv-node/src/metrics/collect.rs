//! The gauges that mirror state, set from that state at each scrape: the metadata
//! store's status (term, commit, applied, leadership), this replica's space summary
//! and VM table, and the data path's mode, attachments and redirected bytes. Reads the
//! local replica only (no leader round trip), each under a deadline.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::data::Data;
use crate::meta::{Member, Meta};
use crate::state::types::{Query, QueryReply};
use crate::state::vms::VmState;

use super::{Metrics, NodeLabel, StateLabel};

/// Longest one scrape's reads of the metadata store may take (a stuck store leaves the
/// Raft and replica gauges at their last values).
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// Path modes, as `redirector::health::Mode::as_str` names them.
const PATH_STATES: [&str; 5] = [
    "direct",
    "quiescing",
    "redirected",
    "paused",
    "failing_back",
];

const VM_STATES: [VmState; 6] = [
    VmState::Stopped,
    VmState::Starting,
    VmState::Running,
    VmState::Paused,
    VmState::Stopping,
    VmState::Failed,
];

/// Sets the state gauges of one node's [`Metrics`] before each encoding.
#[derive(Debug)]
pub struct StateCollector {
    metrics: Arc<Metrics>,
    meta: Arc<Meta>,
    data: Arc<Data>,
    /// Nodes that held a reservation at some scrape.
    reserving: Mutex<BTreeSet<u64>>,
}

impl StateCollector {
    pub fn new(metrics: Arc<Metrics>, meta: Arc<Meta>, data: Arc<Data>) -> Self {
        StateCollector {
            metrics,
            meta,
            data,
            reserving: Mutex::default(),
        }
    }

    /// The metrics this collector refreshes.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Reads the state and sets the gauges.
    pub async fn refresh(&self) {
        self.refresh_data();
        if let Some(m) = self.meta.try_member().await {
            let _ = tokio::time::timeout(READ_DEADLINE, self.refresh_member(&m)).await;
        }
    }

    fn refresh_data(&self) {
        let d = &self.metrics.data;
        let mode = self.data.path_mode();
        for s in PATH_STATES {
            let v = i64::from(mode == s);
            d.path_state.get_or_create(&StateLabel { state: s }).set(v);
        }
        d.redirected_bytes.inner().store(
            self.data.redirected_bytes(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let n = self.data.attachments_list().len();
        d.vhds_attached.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    async fn refresh_member(&self, m: &Member) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if let Ok(s) = m.meta.status().await {
            let r = &self.metrics.raft;
            r.term.set(g(s.term));
            r.commit_index.set(g(s.commit));
            r.applied_index.set(g(s.applied));
            r.apply_lag.set(g(s.commit.saturating_sub(s.applied)));
            r.is_leader
                .set(i64::from(s.role == meta_store::Role::Leader));
        }
        if let Ok(QueryReply::Space(s)) = m.query_local(Query::Space).await {
            let d = &self.metrics.data;
            let reserved: u64 = s
                .reservations
                .iter()
                .map(|(_, runs)| runs.iter().map(|r| r.count).sum::<u64>())
                .sum();
            for (state, v) in [
                ("all", s.extent_count),
                ("free", s.free_extents),
                ("mapped", s.mapped_extents),
                ("reserved", reserved),
            ] {
                d.extents.get_or_create(&StateLabel { state }).set(g(v));
            }
            // A node whose reservation ended reads 0 (its series does not vanish).
            let mut seen = crate::sync::lock(&self.reserving);
            for node in seen.iter() {
                d.extents_reserved
                    .get_or_create(&NodeLabel { node: *node })
                    .set(0);
            }
            for (node, runs) in &s.reservations {
                let n: u64 = runs.iter().map(|r| r.count).sum();
                d.extents_reserved
                    .get_or_create(&NodeLabel { node: node.0 })
                    .set(g(n));
                seen.insert(node.0);
            }
        }
        if let Ok(QueryReply::Vms { vms, .. }) = m.query_local(Query::Vms).await {
            let me = self.meta.id();
            let mut counts = [0i64; VM_STATES.len()];
            for v in vms.iter().filter(|v| v.node.is_some_and(|n| n.0 == me)) {
                if let Some(i) = VM_STATES.iter().position(|s| *s == v.state) {
                    counts[i] += 1;
                }
            }
            for (s, n) in VM_STATES.iter().zip(counts) {
                self.metrics
                    .vm
                    .vms
                    .get_or_create(&StateLabel { state: s.name() })
                    .set(n);
            }
        }
    }
}
