//! Every lease timeout derived from one setting, the outage budget (design note 030, §8).
//!
//! Rounding always goes in the safe direction: node-side durations down, the
//! coordinator's wait up. Safety needs only `RHO_PPM` and `io_timeout`; the other
//! constants (tick, commit allowance, failover) are liveness assumptions.

use crate::time::duration_nanos;
use serde::Serialize;
use std::time::Duration;

/// Bound on any clock's rate error, in parts per million (ρ = 1e-2).
pub const RHO_PPM: u64 = 10_000;
/// How often the coordinator's tracker looks for expired nodes.
pub const TRACKER_TICK: Duration = Duration::from_millis(100);
/// Assumed upper bound of one Raft commit (liveness only).
pub const COMMIT_ALLOWANCE: Duration = Duration::from_millis(100);
/// Strictness margin: the coordinator waits strictly longer than the lease.
pub const STRICT_MARGIN: Duration = Duration::from_millis(1);
/// Coordinator failover a healthy node must ride through without its fence closing.
pub const REQUIRED_FAILOVER_TOLERANCE: Duration = Duration::from_secs(3);
/// Default outage budget: a crashed owner's VHDs are writable elsewhere within it.
pub const DEFAULT_OUTAGE_BUDGET: Duration = Duration::from_secs(8);
/// Smallest accepted outage budget (see `REQUIRED_FAILOVER_TOLERANCE`).
pub const MIN_OUTAGE_BUDGET: Duration = Duration::from_secs(6);
/// Largest accepted outage budget.
pub const MAX_OUTAGE_BUDGET: Duration = Duration::from_secs(300);
/// Renewals are never rarer than this, whatever the budget.
pub const MAX_RENEW_INTERVAL: Duration = Duration::from_secs(5);

const PPM: u64 = 1_000_000;

/// Why an outage budget was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// Outside `[MIN_OUTAGE_BUDGET, MAX_OUTAGE_BUDGET]`.
    #[error("outage budget {got:?} is outside [{min:?}, {max:?}]")]
    OutOfBounds {
        /// The refused budget.
        got: Duration,
        /// `MIN_OUTAGE_BUDGET`.
        min: Duration,
        /// `MAX_OUTAGE_BUDGET`.
        max: Duration,
    },
}

/// All lease timings, derived from `outage_budget` by [`LeaseTiming::from_budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LeaseTiming {
    /// Longest a crashed owner's VHDs stay unwritable (crash to takeover commit).
    pub outage_budget: Duration,
    /// Lease L in real time: a node's last write lands within L of its renewal's send.
    pub lease: Duration,
    /// Bound from a passed fence check to the write landing (assumption A3).
    pub io_timeout: Duration,
    /// Node-local lease D = (L − io_timeout)(1 − ρ), from the renewal's send time.
    pub node_lease: Duration,
    /// Coordinator-local wait W = L(1 + ρ) + δ after the last renewal it saw.
    pub expiry_wait: Duration,
    /// How often a node renews.
    pub renew_interval: Duration,
    /// How often a node re-sends while its latest renewal is unconfirmed.
    pub renew_retry: Duration,
    /// How often the coordinator checks for expired nodes.
    pub tracker_tick: Duration,
    /// Longest coordinator failover a healthy node survives with its fence open.
    pub failover_tolerance: Duration,
    /// Worst-case crash-to-takeover-commit under the liveness assumptions.
    pub worst_takeover: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self::from_budget(DEFAULT_OUTAGE_BUDGET).expect("the default budget is within bounds")
    }
}

impl LeaseTiming {
    /// Derives every timeout from the outage budget (design note 030, §8).
    pub fn from_budget(outage_budget: Duration) -> Result<LeaseTiming, TimingError> {
        if outage_budget < MIN_OUTAGE_BUDGET || outage_budget > MAX_OUTAGE_BUDGET {
            return Err(TimingError::OutOfBounds {
                got: outage_budget,
                min: MIN_OUTAGE_BUDGET,
                max: MAX_OUTAGE_BUDGET,
            });
        }
        let b = duration_nanos(outage_budget);
        let tick = duration_nanos(TRACKER_TICK);
        let c = duration_nanos(COMMIT_ALLOWANCE);
        let delta = duration_nanos(STRICT_MARGIN);
        // The bounds above keep every product below 2^64 (300 s = 3e11 ns, times 1e6).
        let slack = b - tick - 3 * c - 2 * delta;
        let lease = mul_div_floor(slack, PPM - RHO_PPM, PPM + RHO_PPM);
        let io_timeout = lease / 4;
        let node_lease = mul_div_floor(lease - io_timeout, PPM - RHO_PPM, PPM);
        let expiry_wait = mul_div_ceil(lease, PPM + RHO_PPM, PPM) + delta;
        let renew_interval = (lease / 8).min(duration_nanos(MAX_RENEW_INTERVAL));
        let renew_retry = renew_interval / 4;
        let failover_tolerance = node_lease
            .saturating_sub(renew_interval)
            .saturating_sub(renew_retry)
            .saturating_sub(c);
        let worst_takeover = c + mul_div_ceil(expiry_wait, PPM, PPM - RHO_PPM) + tick + 2 * c;
        Ok(LeaseTiming {
            outage_budget,
            lease: Duration::from_nanos(lease),
            io_timeout: Duration::from_nanos(io_timeout),
            node_lease: Duration::from_nanos(node_lease),
            expiry_wait: Duration::from_nanos(expiry_wait),
            renew_interval: Duration::from_nanos(renew_interval),
            renew_retry: Duration::from_nanos(renew_retry),
            tracker_tick: TRACKER_TICK,
            failover_tolerance: Duration::from_nanos(failover_tolerance),
            worst_takeover: Duration::from_nanos(worst_takeover),
        })
    }
}

fn mul_div_floor(x: u64, num: u64, den: u64) -> u64 {
    let r = u128::from(x) * u128::from(num) / u128::from(den);
    u64::try_from(r).unwrap_or(u64::MAX)
}

fn mul_div_ceil(x: u64, num: u64, den: u64) -> u64 {
    let r = (u128::from(x) * u128::from(num)).div_ceil(u128::from(den));
    u64::try_from(r).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn default_matches_the_design_note() {
        let t = LeaseTiming::default();
        assert_eq!(t.outage_budget, Duration::from_secs(8));
        assert_eq!(ms(t.lease), 7447);
        assert_eq!(ms(t.io_timeout), 1861);
        assert_eq!(ms(t.node_lease), 5529);
        assert_eq!(ms(t.expiry_wait), 7523);
        assert_eq!(ms(t.renew_interval), 930);
        assert_eq!(ms(t.renew_retry), 232);
        assert_eq!(ms(t.failover_tolerance), 4266);
        assert!(t.worst_takeover <= t.outage_budget, "{t:?}");
        assert!(t.worst_takeover < Duration::from_secs(10));
    }

    #[test]
    fn bounds_are_enforced() {
        for bad in [
            Duration::ZERO,
            Duration::from_millis(5999),
            Duration::from_secs(301),
        ] {
            assert!(matches!(
                LeaseTiming::from_budget(bad),
                Err(TimingError::OutOfBounds { .. })
            ));
        }
        assert!(LeaseTiming::from_budget(MIN_OUTAGE_BUDGET).is_ok());
        assert!(LeaseTiming::from_budget(MAX_OUTAGE_BUDGET).is_ok());
    }

    /// The safety inequality of §4.1 and the liveness requirements hold over the whole
    /// accepted range, with the rounding the code actually does.
    #[test]
    fn derived_values_are_safe_and_live_over_the_range() {
        let rho = RHO_PPM as f64 / 1e6;
        let mut ms_budget = duration_nanos(MIN_OUTAGE_BUDGET) / 1_000_000;
        while ms_budget <= duration_nanos(MAX_OUTAGE_BUDGET) / 1_000_000 {
            let t = LeaseTiming::from_budget(Duration::from_millis(ms_budget)).expect("in range");
            let l = t.lease.as_secs_f64();
            // Node: fence closes (real) by D/(1-ρ), last write lands io_timeout later.
            let last_landing =
                t.node_lease.as_secs_f64() / (1.0 - rho) + t.io_timeout.as_secs_f64();
            // Coordinator: earliest real expiry W/(1+ρ).
            let earliest_expiry = t.expiry_wait.as_secs_f64() / (1.0 + rho);
            assert!(last_landing <= l + 1e-9, "{t:?}");
            assert!(earliest_expiry > l, "{t:?}");
            assert!(t.worst_takeover <= t.outage_budget, "{t:?}");
            assert!(t.failover_tolerance >= REQUIRED_FAILOVER_TOLERANCE, "{t:?}");
            assert!(t.renew_retry > COMMIT_ALLOWANCE, "{t:?}");
            ms_budget += 997;
        }
    }
}
