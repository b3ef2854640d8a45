//! The clocks of the lease machinery: `CLOCK_BOOTTIME` (keeps counting across a host
//! suspend, design 030 §2 A2) for every decision, the wall clock only for records.

use std::time::Duration;

use lock_manager::Time;

use crate::meta::now_unix_ms;

/// A reading of `CLOCK_BOOTTIME`.
pub fn boottime() -> Time {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Time::from_nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// The wall-clock time (Unix ms) at which the local clock read (or will read) `t`.
pub fn wall_ms_of(t: Time) -> u64 {
    let now = boottime();
    let wall = now_unix_ms();
    if t <= now {
        wall.saturating_sub(millis(now.saturating_since(t)))
    } else {
        wall.saturating_add(millis(t.saturating_since(now)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_of_a_clock_reading() {
        let now = boottime();
        let wall = now_unix_ms();
        let past = Time::from_nanos(now.as_nanos().saturating_sub(2_000_000_000));
        let w = wall_ms_of(past);
        assert!(w + 2_000 >= wall && w + 1_900 <= wall, "{w} vs {wall}");
    }
}
