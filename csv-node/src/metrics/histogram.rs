//! A histogram of durations on atomics: one `fetch_add` per bucket hit, the count and
//! the sum (in nanoseconds), no lock (prometheus-client's own histogram takes a mutex
//! per observation, which the NBD hot path must not). Encoded as an OpenMetrics
//! histogram in seconds (the encoder makes the buckets cumulative).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) for request latencies: 50 µs to 10 s, about ×2.5 apart.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) for slower things (Raft proposals, lease renewals, migration
/// downtimes): 1 ms to 60 s.
pub const SLOW_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug)]
struct Inner {
    /// Upper bounds in nanoseconds, ascending (the +Inf bucket is implicit).
    bounds_ns: Vec<u64>,
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last one is +Inf.
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// A lock-free duration histogram; clones share the same buckets.
#[derive(Debug, Clone)]
pub struct DurationHistogram {
    inner: Arc<Inner>,
}

impl DurationHistogram {
    /// A histogram over `bounds` (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        let bounds_ns = bounds.iter().map(|b| (b * 1e9) as u64).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        DurationHistogram {
            inner: Arc::new(Inner {
                bounds_ns,
                bounds,
                counts,
                count: AtomicU64::new(0),
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let i = &*self.inner;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let b = i.bounds_ns.partition_point(|&ub| ub < ns);
        if let Some(c) = i.counts.get(b) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        i.sum_ns.fetch_add(ns, Ordering::Relaxed);
        i.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// Sum of the observations, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// Per-bucket `(upper bound, count)` pairs ending with +Inf (the encoder makes them
    /// cumulative) and their total. Read bucket by bucket while observations go on, so
    /// the count encoded is that total (the `_count` always equals the +Inf bucket).
    fn buckets(&self) -> (Vec<(f64, u64)>, u64) {
        let i = &*self.inner;
        let mut total = 0u64;
        let mut out = Vec::with_capacity(i.counts.len());
        for (k, c) in i.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            let ub = i.bounds.get(k).copied().unwrap_or(f64::INFINITY);
            out.push((ub, n));
        }
        (out, total)
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (buckets, count) = self.buckets();
        encoder.encode_histogram::<NoLabelSet>(
            self.sum_seconds(),
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_their_range_and_bounds_are_inclusive() {
        let h = DurationHistogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let (b, n) = h.buckets();
        assert_eq!(n, 4);
        assert_eq!(b, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        assert!((h.sum_seconds() - 1.0065).abs() < 1e-9);
        assert_eq!(h.count(), 4);
    }
}
