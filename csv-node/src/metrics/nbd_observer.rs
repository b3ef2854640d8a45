//! The per-export NBD request observer: each request kind's series resolved once (on
//! its first request), then one atomic add per counter and a lock-free histogram.

use std::sync::OnceLock;
use std::time::Duration;

use nbd::server::{RequestKind, RequestObserver};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::histogram::{DurationHistogram, LATENCY_BUCKETS};

/// Labels of the NBD families: the export (a VHD name) and the request kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NbdLabels {
    pub export: String,
    pub op: &'static str,
}

fn latency_histogram() -> DurationHistogram {
    DurationHistogram::new(LATENCY_BUCKETS)
}

/// The NBD families (the observer of each export resolves its series once).
#[derive(Debug, Clone)]
pub struct NbdFamilies {
    pub requests: Family<NbdLabels, Counter>,
    pub errors: Family<NbdLabels, Counter>,
    pub bytes: Family<NbdLabels, Counter>,
    pub duration: Family<NbdLabels, DurationHistogram, fn() -> DurationHistogram>,
}

impl Default for NbdFamilies {
    fn default() -> Self {
        NbdFamilies {
            requests: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            duration: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl NbdFamilies {
    /// The observer of one export's requests.
    pub fn observer(&self, export: &str) -> ExportObserver {
        ExportObserver::new(self.clone(), export)
    }
}

/// One kind's series of one export.
#[derive(Debug)]
struct Series {
    requests: Counter,
    errors: Counter,
    bytes: Counter,
    duration: DurationHistogram,
}

#[derive(Debug)]
pub struct ExportObserver {
    families: NbdFamilies,
    export: String,
    series: [OnceLock<Series>; RequestKind::ALL.len()],
}

impl ExportObserver {
    fn new(families: NbdFamilies, export: &str) -> Self {
        ExportObserver {
            families,
            export: export.to_string(),
            series: Default::default(),
        }
    }

    fn series(&self, kind: RequestKind) -> Option<&Series> {
        let cell = self.series.get(kind.index())?;
        Some(cell.get_or_init(|| {
            let l = NbdLabels {
                export: self.export.clone(),
                op: kind.as_str(),
            };
            let f = &self.families;
            Series {
                requests: f.requests.get_or_create_owned(&l),
                errors: f.errors.get_or_create_owned(&l),
                bytes: f.bytes.get_or_create_owned(&l),
                duration: f.duration.get_or_create_owned(&l),
            }
        }))
    }
}

impl RequestObserver for ExportObserver {
    fn completed(&self, kind: RequestKind, bytes: u64, elapsed: Duration, ok: bool) {
        let Some(s) = self.series(kind) else { return };
        s.requests.inc();
        if !ok {
            s.errors.inc();
        }
        if bytes > 0 {
            s.bytes.inc_by(bytes);
        }
        s.duration.observe(elapsed);
    }
}
