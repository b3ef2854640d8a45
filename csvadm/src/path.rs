//! Views of the nodes' LUN path states (`volume status`, `volume events`, `vhd info`):
//! redirected I/O, docs/design/070 §6.

use std::fmt;

use csv_api::admin::volume::{NodePath, PathEvents};
use serde::Serialize;

/// A node's LUN path state.
#[derive(Debug, Clone, Serialize)]
pub struct PathView {
    pub node: u64,
    /// `direct`, `redirected`, `paused`, `quiescing`, `failing_back` (empty: not
    /// published).
    pub path: String,
    pub reason: String,
    /// Since when (RFC 3339, UTC).
    pub since: Option<String>,
    /// The node its LUN I/O goes to.
    pub peer: Option<u64>,
    /// The operator asked for redirected access.
    pub user_request: bool,
    /// Redirected calls it served for others lately.
    pub load: u64,
    /// Its node-to-node data transport address.
    pub data_addr: Option<String>,
}

impl From<&NodePath> for PathView {
    fn from(p: &NodePath) -> PathView {
        PathView {
            node: p.node,
            path: p.path.clone(),
            reason: p.reason.clone(),
            since: (p.since_unix_ms != 0).then(|| rfc3339(p.since_unix_ms)),
            peer: (p.peer != 0).then_some(p.peer),
            user_request: p.user_request,
            load: p.load,
            data_addr: (!p.data_addr.is_empty()).then(|| p.data_addr.clone()),
        }
    }
}

impl fmt::Display for PathView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "-"
        } else {
            &self.path
        };
        let reason = if self.user_request && self.reason != "user_request" {
            format!("{} (+user)", self.reason)
        } else {
            self.reason.clone()
        };
        write!(
            f,
            "{:<6} {:<12} {:<22} {:<6} {:<24} {:>6}",
            self.node,
            path,
            reason,
            self.peer.map_or("-".into(), |p| p.to_string()),
            self.since.as_deref().unwrap_or("-"),
            self.load
        )
    }
}

/// `volume events`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PathEventsView {
    pub events: Vec<PathEventView>,
}

/// One path-state change.
#[derive(Debug, Serialize)]
pub struct PathEventView {
    pub seq: u64,
    /// The log index that recorded it.
    pub index: u64,
    pub node: u64,
    pub path: String,
    pub reason: String,
    pub peer: Option<u64>,
    pub since: String,
}

impl From<&PathEvents> for PathEventsView {
    fn from(e: &PathEvents) -> PathEventsView {
        PathEventsView {
            events: e
                .events
                .iter()
                .map(|e| PathEventView {
                    seq: e.seq,
                    index: e.index,
                    node: e.node,
                    path: e.path.clone(),
                    reason: e.reason.clone(),
                    peer: (e.peer != 0).then_some(e.peer),
                    since: rfc3339(e.since_unix_ms),
                })
                .collect(),
        }
    }
}

impl fmt::Display for PathEventsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<6} {:<24} {:<6} {:<12} {:<22} PEER",
            "SEQ", "SINCE", "NODE", "PATH", "REASON"
        )?;
        for e in &self.events {
            write!(
                f,
                "\n{:<6} {:<24} {:<6} {:<12} {:<22} {}",
                e.seq,
                e.since,
                e.node,
                e.path,
                e.reason,
                e.peer.map_or("-".into(), |p| p.to_string())
            )?;
        }
        Ok(())
    }
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (civil-from-days, proleptic
/// Gregorian).
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_796_601_600_000), "2026-12-07T00:00:00.000Z");
    }
}
