//! Waiting out the late-write bound (docs/design/042 §4): before a node lets another
//! writer at bytes it wrote, every write it issued must have landed or be past the
//! instant after which it cannot land.

use std::time::{Duration, Instant};

use super::LunPath;

/// Longest single sleep between two looks at [`LunPath::quiet_at`].
const POLL: Duration = Duration::from_millis(50);

/// Blocks until `path` has no write in doubt, at most `limit`; true when it is quiet.
pub fn wait_quiet(path: &dyn LunPath, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let now = Instant::now();
        let until = match path.quiet_at() {
            None => return true,
            Some(t) if t <= now => return true,
            Some(t) => t,
        };
        let waited = now.duration_since(start);
        if waited >= limit {
            return false;
        }
        std::thread::sleep((until - now).min(POLL).min(limit - waited));
    }
}
