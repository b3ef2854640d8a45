//! Configuration of a metadata node: identity, bootstrap, timing and every bound, with
//! validation. Durations are converted to raft ticks here, so the sans-IO core only counts
//! ticks.

use std::time::Duration;

use crate::error::Error;

/// A member's address as the transport dials it (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Raft node id (never 0).
    pub id: u64,
    /// Address the peer listens on.
    pub addr: String,
}

/// Limits on queues, sizes and windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests (proposals, reads, admin) a node holds at once, local and forwarded.
    pub max_pending_requests: usize,
    /// Largest command a proposal may carry.
    pub max_command_bytes: usize,
    /// Largest snapshot (state-machine data plus peers) the node builds or accepts.
    pub max_snapshot_bytes: usize,
    /// Incoming messages queued for the node; more are dropped (Raft retransmits).
    pub inbox_capacity: usize,
    /// API requests queued for the node before callers wait.
    pub request_queue_capacity: usize,
    /// Inputs drained into one Ready (one fsync) at most.
    pub max_batch: usize,
    /// Raft `max_size_per_msg`: bytes of entries in one append message.
    pub max_msg_bytes: u64,
    /// Raft `max_inflight_msgs`: append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Raft `max_uncommitted_size`: bytes of proposals not yet committed.
    pub max_uncommitted_bytes: u64,
    /// Raft `max_committed_size_per_ready`: bytes of entries applied per Ready.
    pub max_committed_bytes_per_ready: u64,
    /// A learner further behind than this many entries is not promoted.
    pub max_promote_lag: u64,
    /// Recent log entries kept in memory to serve followers without reading the store.
    pub entry_cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending_requests: 16_384,
            max_command_bytes: 1 << 20,
            max_snapshot_bytes: 64 << 20,
            inbox_capacity: 8_192,
            request_queue_capacity: 4_096,
            max_batch: 1_024,
            max_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            max_promote_lag: 1_000,
            entry_cache_entries: 4_096,
        }
    }
}

/// When the applied log is compacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPolicy {
    /// Compact once more than this many applied entries are kept.
    pub compact_threshold: u64,
    /// Applied entries kept after a compaction, so slightly lagging followers catch up from
    /// the log instead of a snapshot.
    pub keep_entries: u64,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            compact_threshold: 20_000,
            keep_entries: 5_000,
        }
    }
}

/// Configuration of one metadata node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This node's Raft id (never 0).
    pub id: u64,
    /// Cluster identity: checked in the transport handshake and stored with the data.
    pub cluster_id: String,
    /// Address book seed: the members this node can dial before the replicated peer list
    /// reaches it (a joining node lists the current members here).
    pub peers: Vec<PeerAddr>,
    /// Voters of a new cluster. When the store is empty and this lists ids, the node
    /// bootstraps with them (every initial node must list the same ids); when it is empty,
    /// the node waits to be added by a membership change.
    pub initial_voters: Vec<u64>,
    /// Length of one Raft tick.
    pub tick_interval: Duration,
    /// Election timeout in ticks (randomised by Raft in [n, 2n)).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Default deadline of a proposal.
    pub propose_timeout: Duration,
    /// Default deadline of a linearizable read.
    pub read_timeout: Duration,
    /// Default deadline of membership changes and leader transfers.
    pub admin_timeout: Duration,
    /// A snapshot not acknowledged within this time is sent again.
    pub snapshot_retry: Duration,
    /// A forwarded request not answered within this time is sent again (to the leader of
    /// the moment; the session table applies it at most once).
    pub forward_retry: Duration,
    /// Queues, sizes, windows.
    pub limits: Limits,
    /// Log compaction.
    pub log: LogPolicy,
}

impl Config {
    /// A configuration with the defaults of every timing and limit.
    ///
    /// Timing: a 100 ms tick, election timeout 10 ticks (Raft randomises it to 1.0-2.0 s),
    /// heartbeat every 2 ticks. A follower notices a dead leader 1.0-2.0 s after its last
    /// heartbeat and the election itself takes two round trips, so the next commit comes
    /// well inside the 3 s failover budget, while a heartbeat interval of 200 ms leaves five
    /// missed heartbeats (fsync stalls, scheduling) before anyone starts an election.
    pub fn new(id: u64, cluster_id: impl Into<String>) -> Self {
        Config {
            id,
            cluster_id: cluster_id.into(),
            peers: Vec::new(),
            initial_voters: Vec::new(),
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            propose_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            admin_timeout: Duration::from_secs(10),
            snapshot_retry: Duration::from_secs(5),
            forward_retry: Duration::from_secs(1),
            limits: Limits::default(),
            log: LogPolicy::default(),
        }
    }

    /// Checks every field; the node refuses to start with an invalid configuration.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.id == 0 {
            return bad("node id must not be 0".into());
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 128 {
            return bad("cluster id must have 1 to 128 bytes".into());
        }
        for p in &self.peers {
            if p.id == 0 || p.addr.is_empty() {
                return bad(format!("peer {p:?}: id 0 or empty address"));
            }
        }
        if self.initial_voters.contains(&0) {
            return bad("initial voters contain id 0".into());
        }
        if !self.initial_voters.is_empty() && !self.initial_voters.contains(&self.id) {
            return bad(format!(
                "initial voters {:?} do not contain this node {}",
                self.initial_voters, self.id
            ));
        }
        if self.tick_interval < Duration::from_millis(1)
            || self.tick_interval > Duration::from_secs(10)
        {
            return bad(format!(
                "tick interval {:?} outside 1 ms..10 s",
                self.tick_interval
            ));
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return bad(format!(
                "election ticks ({}) must exceed heartbeat ticks ({}) which must be > 0",
                self.election_ticks, self.heartbeat_ticks
            ));
        }
        if self.election_ticks > 1_000 {
            return bad(format!("election ticks {} above 1000", self.election_ticks));
        }
        for (name, d) in [
            ("propose timeout", self.propose_timeout),
            ("read timeout", self.read_timeout),
            ("admin timeout", self.admin_timeout),
            ("snapshot retry", self.snapshot_retry),
            ("forward retry", self.forward_retry),
        ] {
            if d < self.tick_interval || d > Duration::from_secs(3_600) {
                return bad(format!("{name} {d:?} outside one tick..1 h"));
            }
        }
        let l = &self.limits;
        let positive = [
            ("max_pending_requests", l.max_pending_requests as u64),
            ("max_command_bytes", l.max_command_bytes as u64),
            ("max_snapshot_bytes", l.max_snapshot_bytes as u64),
            ("inbox_capacity", l.inbox_capacity as u64),
            ("request_queue_capacity", l.request_queue_capacity as u64),
            ("max_batch", l.max_batch as u64),
            ("max_msg_bytes", l.max_msg_bytes),
            ("max_inflight_msgs", l.max_inflight_msgs as u64),
            ("max_uncommitted_bytes", l.max_uncommitted_bytes),
            (
                "max_committed_bytes_per_ready",
                l.max_committed_bytes_per_ready,
            ),
            ("entry_cache_entries", l.entry_cache_entries as u64),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(format!("limit {name} must be > 0"));
            }
        }
        if l.max_snapshot_bytes > MAX_FRAME_CEILING / 2
            || l.max_command_bytes > MAX_FRAME_CEILING / 4
        {
            return bad(format!(
                "snapshot limit {} or command limit {} too large for one frame",
                l.max_snapshot_bytes, l.max_command_bytes
            ));
        }
        if l.max_uncommitted_bytes < l.max_command_bytes as u64 {
            return bad("max_uncommitted_bytes must be at least max_command_bytes".into());
        }
        if self.log.compact_threshold == 0 || self.log.keep_entries >= self.log.compact_threshold {
            return bad(format!(
                "log policy: keep_entries ({}) must be below compact_threshold ({}) > 0",
                self.log.keep_entries, self.log.compact_threshold
            ));
        }
        Ok(())
    }

    /// The largest frame the transport must accept for this configuration: a snapshot, or
    /// an append message of `max_msg_bytes` plus one maximal command, plus envelope overhead.
    pub fn required_frame_bytes(&self) -> usize {
        let l = &self.limits;
        let append = l.max_msg_bytes as usize + l.max_command_bytes;
        l.max_snapshot_bytes.max(append) + 64 * 1024
    }

    /// A duration in ticks, rounded up, at least one.
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let t = self.tick_interval.as_nanos().max(1);
        (d.as_nanos().div_ceil(t) as u64).max(1)
    }
}

/// No frame is ever larger than this, whatever the configuration (1 GiB).
pub const MAX_FRAME_CEILING: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let mut c = Config::new(1, "c");
        c.initial_voters = vec![1, 2, 3];
        c.validate().expect("defaults are valid");
        assert_eq!(c.ticks(Duration::from_millis(250)), 3);
        assert_eq!(c.ticks(Duration::ZERO), 1);
    }

    #[test]
    fn rejects_bad_values() {
        let base = Config::new(1, "c");
        let mut c = base.clone();
        c.id = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.heartbeat_ticks = 10;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.initial_voters = vec![2, 3];
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.limits.max_batch = 0;
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.log.keep_entries = c.log.compact_threshold;
        assert!(c.validate().is_err());
        let mut c = base;
        c.propose_timeout = Duration::from_millis(1);
        assert!(c.validate().is_err());
    }
}
