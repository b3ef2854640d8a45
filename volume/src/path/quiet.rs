//! Waiting out the late-write bound (docs/design/042 §4): before a node lets another
//! writer at bytes it wrote, every write it issued must have landed or be past the
//! instant after which it cannot land.

use std::time::{Duration, Instant};

use super::LunPath;

/// Longest single sleep between two looks at [`LunPath::quiet_at`].
const POLL: Duration = Duration::from_millis(50);

/// One look of a wait for quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuietStep {
    /// No write issued so far can still land.
    Quiet,
    /// Sleep this long, then look again.
    Sleep(Duration),
    /// The limit is reached with writes still in doubt.
    InDoubt,
}

/// One look at `path` having waited `waited` of `limit`: the loop body of
/// [`wait_quiet`] and of async waiters.
pub fn quiet_step(path: &dyn LunPath, waited: Duration, limit: Duration) -> QuietStep {
    let now = Instant::now();
    match path.quiet_at() {
        None => QuietStep::Quiet,
        Some(t) if t <= now => QuietStep::Quiet,
        Some(_) if waited >= limit => QuietStep::InDoubt,
        Some(t) => QuietStep::Sleep((t - now).min(POLL).min(limit - waited)),
    }
}

/// Blocks until `path` has no write in doubt, at most `limit`; true when it is quiet.
pub fn wait_quiet(path: &dyn LunPath, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        match quiet_step(path, start.elapsed(), limit) {
            QuietStep::Quiet => return true,
            QuietStep::Sleep(d) => std::thread::sleep(d),
            QuietStep::InDoubt => return false,
        }
    }
}
