//! systemd integration of `csv-node run` (docs/design/100-operations.md §1–§2): the
//! readiness notification (`READY=1` with a `STATUS=` line once the metadata store runs
//! and the admin socket serves), `STOPPING=1` at shutdown, and the service watchdog
//! (`WATCHDOG=1` every half of `WatchdogSec=` while the runtime answers and the lease
//! does not say the node must be gone).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op. Sends go
//! through the blocking pool: the notification socket is a blocking datagram socket
//! and PID 1 may be slow to read it.

use std::sync::Arc;
use std::time::Duration;

use lock_manager::{LeaseTiming, Time};
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::lease::{Leases, boottime};

/// Below this, `WatchdogSec=` is accepted with a warning: pings every quarter second or
/// more often leave a loaded host little room before systemd kills a healthy node.
pub const MIN_WATCHDOG: Duration = Duration::from_millis(500);

/// The longest `WatchdogSec=` an outage budget allows: the lease's `io_timeout` (a
/// quarter of the lease; 1.86 s at the default 8 s budget, 1.37 s at the 6 s minimum).
/// With pings every half of it, stopped once `now + WatchdogSec` would pass the lease
/// kill time, systemd's kill comes (a) no later than the lease watchdog's would and
/// (b) never before the lease deadline itself has passed (docs/design/100 §2).
pub fn max_watchdog(timing: &LeaseTiming) -> Duration {
    timing.io_timeout
}

/// Checks systemd's watchdog interval (`WATCHDOG_USEC`) against the outage budget.
/// `Ok(Some(warning))` when it is accepted but short; `Err` names the fix.
pub fn check_watchdog(watchdog: Duration, timing: &LeaseTiming) -> Result<Option<String>, String> {
    let max = max_watchdog(timing);
    if watchdog > max {
        return Err(format!(
            "systemd watchdog: WatchdogSec={watchdog:?} (WATCHDOG_USEC={}) is above {:?}, the most \
             [lease] outage_budget = {:?} allows (the lease's io_timeout, docs/design/100 §2): \
             lower WatchdogSec= in the unit (a drop-in) or raise outage_budget",
            watchdog.as_micros(),
            // Rounded down: the value shown is one the check accepts.
            Duration::from_millis(u64::try_from(max.as_millis()).unwrap_or(u64::MAX)),
            timing.outage_budget
        ));
    }
    if watchdog < MIN_WATCHDOG {
        return Ok(Some(format!(
            "systemd watchdog: WatchdogSec={watchdog:?} is below {MIN_WATCHDOG:?}: a busy host may \
             have a healthy node killed"
        )));
    }
    Ok(None)
}

/// Whether a ping sent `now` is allowed: systemd kills at most `watchdog` after the
/// last ping, which must not be later than the lease kill time (`Leases::kill_time`).
pub fn may_ping(now: Time, kill_time: Option<Time>, watchdog: Duration) -> bool {
    kill_time.is_none_or(|k| now.saturating_add(watchdog) <= k)
}

/// One notification.
#[derive(Debug, Clone)]
pub enum Notice {
    /// `READY=1` and `STATUS=`.
    Ready(String),
    /// `STOPPING=1` and `STATUS=`.
    Stopping(String),
    /// `STATUS=` alone.
    Status(String),
    /// `WATCHDOG=1`.
    Ping,
}

/// Sends `n` to the service manager (nothing outside systemd). A failure is logged: the
/// node runs on (without readiness systemd stops it at `TimeoutStartSec=`, without
/// pings at `WatchdogSec=`).
pub async fn notify(n: Notice) {
    let what = match &n {
        Notice::Ready(_) => "READY",
        Notice::Stopping(_) => "STOPPING",
        Notice::Status(_) => "STATUS",
        Notice::Ping => "WATCHDOG",
    };
    let sent = tokio::task::spawn_blocking(move || match &n {
        Notice::Ready(s) => sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(s)]),
        Notice::Stopping(s) => sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status(s)]),
        Notice::Status(s) => sd_notify::notify(&[NotifyState::Status(s)]),
        Notice::Ping => sd_notify::notify(&[NotifyState::Watchdog]),
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(notice = what, "systemd notification failed: {e}"),
        Err(e) => tracing::warn!(notice = what, "systemd notification task failed: {e}"),
    }
}

/// Pings systemd's watchdog every half of `watchdog` until `stop`, as long as the
/// runtime runs this task (a stuck runtime, or a blocking pool that cannot take the
/// send, stops the pings) and [`may_ping`] allows it. A ping is sent only after the
/// previous one returned, so a slow PID 1 cannot pile sends up.
pub async fn watchdog_pings(watchdog: Duration, leases: Arc<Leases>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(watchdog / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held_back = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if may_ping(boottime(), leases.kill_time(), watchdog) {
            if held_back {
                tracing::info!("lease renewed: systemd watchdog pings resume");
                held_back = false;
            }
            notify(Notice::Ping).await;
        } else if !held_back {
            held_back = true;
            tracing::error!(
                ?watchdog,
                "the lease ends with a write hold and no confirmed renewal: systemd watchdog \
                 pings stop (systemd kills this node unless a renewal comes first)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Time {
        Time::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn the_budget_bounds_the_watchdog() {
        let timing = LeaseTiming::default();
        assert_eq!(max_watchdog(&timing).as_millis(), 1861);
        assert_eq!(check_watchdog(Duration::from_secs(1), &timing), Ok(None));
        assert_eq!(
            check_watchdog(Duration::from_millis(1861), &timing),
            Ok(None)
        );
        let e = check_watchdog(Duration::from_secs(2), &timing).expect_err("too long");
        assert!(
            e.contains("WatchdogSec=2s") && e.contains("outage_budget = 8s"),
            "{e}"
        );
        assert!(matches!(
            check_watchdog(Duration::from_millis(200), &timing),
            Ok(Some(_))
        ));
        // The unit's WatchdogSec=1s fits every accepted budget.
        for budget in [
            lock_manager::timing::MIN_OUTAGE_BUDGET,
            lock_manager::timing::MAX_OUTAGE_BUDGET,
        ] {
            let timing = LeaseTiming::from_budget(budget).expect("in range");
            assert_eq!(check_watchdog(Duration::from_secs(1), &timing), Ok(None));
        }
    }

    /// Pings stop once systemd's kill could come after the lease kill time, and the
    /// last ping is late enough that the kill never comes before the lease deadline.
    #[test]
    fn pings_stop_so_the_kill_lands_between_the_deadline_and_the_kill_time() {
        let timing = LeaseTiming::default();
        let w = max_watchdog(&timing);
        assert!(may_ping(t(1_000), None, w), "no write hold: always");
        let deadline = t(10_000);
        let kill = deadline.saturating_add(timing.io_timeout / 2);
        // Ping ticks every w/2 from 0: the last allowed one, and systemd's kill after it.
        let mut last = None;
        let mut now = t(0);
        while now < kill {
            if may_ping(now, Some(kill), w) {
                last = Some(now);
            }
            now = now.saturating_add(w / 2);
        }
        let kill_by_systemd = last.expect("pinged").saturating_add(w);
        assert!(
            kill_by_systemd <= kill,
            "systemd kills after the lease kill time"
        );
        assert!(
            kill_by_systemd >= deadline,
            "systemd kills before the lease deadline"
        );
    }
}
