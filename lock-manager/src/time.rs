//! `Time`: a reading of one machine's monotonic clock, passed in by the caller.
//!
//! The lock manager never reads a clock. Readings of different machines are never
//! compared: a node's fence guard only sees the node's clock, a coordinator's tracker
//! only its own.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Nanoseconds since an arbitrary, per-machine origin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);

    /// A reading of `nanos` nanoseconds since the clock's origin.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// A reading of `millis` milliseconds since the clock's origin.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the end of the clock's range (585 years).
    pub fn saturating_add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(duration_nanos(d)))
    }

    /// How long after `earlier` this reading is; zero if it is not later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0 as f64 / 1e9)
    }
}

/// A duration in nanoseconds, saturating (durations here are seconds to minutes).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
