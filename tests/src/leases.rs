//! Lease fixtures shared by the lease process tests and `bench-locks`: clusters with a
//! chosen outage budget, waiting for every node's lease, and acquiring in a loop (a
//! takeover succeeds once the coordinator expired the old owner).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use csv_api::admin::{Client, ClientError, HoldInfo, LivenessInfo, vhd_ref};

use crate::{Cluster, Options, PATIENCE};

/// Pause between acquire attempts while waiting for a takeover.
pub const ACQUIRE_POLL: Duration = Duration::from_millis(20);

/// Milliseconds since the Unix epoch (this machine's wall clock, shared by every node
/// of a loopback or namespaced cluster).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Options for a cluster whose nodes use outage budget `budget` (e.g. "6s").
pub fn lease_options(budget: &str, netns: bool) -> Options {
    Options {
        netns,
        extra_config: format!("[lease]\noutage_budget = \"{budget}\"\n"),
        ..Options::default()
    }
}

/// The liveness answer of node `id`.
pub fn liveness(c: &Cluster, id: u64) -> Result<LivenessInfo, ClientError> {
    let mut cl = Client::connect(&c.nodes[&id].admin)?;
    cl.set_timeout(Duration::from_secs(10))?;
    cl.node_liveness()
}

/// Waits until every node of `ids` is registered with a valid lease.
pub fn wait_leases(c: &Cluster, ids: &[u64]) {
    let start = Instant::now();
    loop {
        let ok = ids.iter().all(|id| {
            liveness(c, *id)
                .ok()
                .and_then(|l| l.local_fence)
                .is_some_and(|f| f.epoch > 0 && f.lease_valid)
        });
        if ok {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "leases of {ids:?} not valid: {:?}",
            ids.iter()
                .map(|id| liveness(c, *id).map(|l| l.local_fence))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bootstraps `n` nodes with budget `budget`, sets a volume, creates `vhds` VHDs named
/// `d0`, `d1`, … and waits for every lease. Returns the cluster and the VHD ids.
pub fn lease_cluster(n: u64, budget: &str, netns: bool, vhds: usize) -> (Cluster, Vec<u64>) {
    lease_cluster_with(n, lease_options(budget, netns), vhds)
}

/// [`lease_cluster`] with the nodes' options given.
pub fn lease_cluster_with(n: u64, opts: Options, vhds: usize) -> (Cluster, Vec<u64>) {
    let mut c = Cluster::new(n, opts);
    c.bootstrap();
    let leader = c.wait_leader();
    c.set_volume(leader, 4096.max(vhds as u64 + 16));
    let mut ids = Vec::new();
    let mut cl = c.client(leader);
    for i in 0..vhds {
        ids.push(crate::create_retry(&mut cl, &format!("d{i}"), PATIENCE).expect("create VHD"));
    }
    let all: Vec<u64> = (1..=n).collect();
    wait_leases(&c, &all);
    (c, ids)
}

/// One successful acquire after retries: when the successful attempt was sent (wall ms
/// and `Instant`), the hold, and how many attempts were refused before.
#[derive(Debug)]
pub struct Acquired {
    /// Wall time (Unix ms) at which the successful attempt was sent: the grant
    /// committed after it.
    pub sent_unix_ms: u64,
    /// The same instant on the monotonic clock.
    pub sent: Instant,
    /// When the answer arrived.
    pub answered: Instant,
    /// The hold.
    pub hold: HoldInfo,
    /// Refused attempts before it.
    pub refused: u32,
}

/// Acquires `vhd` for write on node `id`, retrying refusals (a live owner, no
/// coordinator) every [`ACQUIRE_POLL`] until `timeout`.
pub fn acquire_until(c: &Cluster, id: u64, vhd: u64, timeout: Duration) -> Acquired {
    let start = Instant::now();
    let mut cl = c.client(id);
    cl.set_timeout(Duration::from_secs(20)).expect("timeout");
    let mut refused = 0;
    loop {
        let sent_unix_ms = unix_ms();
        let sent = Instant::now();
        match cl.owner_acquire(vhd_ref(&vhd.to_string()), "write") {
            Ok(hold) => {
                return Acquired {
                    sent_unix_ms,
                    sent,
                    answered: Instant::now(),
                    hold,
                    refused,
                };
            }
            Err(e) => {
                refused += 1;
                assert!(
                    start.elapsed() < timeout,
                    "node {id} could not acquire {vhd} within {timeout:?}: {e}"
                );
                if matches!(e, ClientError::Frame(_) | ClientError::Closed) {
                    cl = c.client(id);
                }
            }
        }
        std::thread::sleep(ACQUIRE_POLL);
    }
}

/// The timing a node derived from its budget: (budget, lease, node lease, coordinator
/// wait).
pub fn timing(l: &LivenessInfo) -> [Duration; 4] {
    let ms = |i: usize| Duration::from_millis(l.timing_ms.get(i).copied().unwrap_or(0));
    [ms(0), ms(1), ms(2), ms(3)]
}
