//! Latency histograms in nanoseconds and their percentile summary.

use hdrhistogram::Histogram;
use serde::Serialize;
use thiserror::Error;

/// Errors building a histogram.
#[derive(Debug, Error)]
pub enum HistogramError {
    /// hdrhistogram rejected the bounds.
    #[error("cannot create a histogram for 1 ns ..= {max_ns} ns at {sigfig} significant digits: {source}")]
    Create {
        max_ns: u64,
        sigfig: u8,
        source: hdrhistogram::CreationError,
    },
    /// Merging two histograms failed.
    #[error("cannot merge histograms: {0}")]
    Merge(hdrhistogram::AdditionError),
}

/// The largest latency a [`LatencyHistogram`] tracks exactly (60 s); larger
/// samples are clamped to it (and still counted).
pub const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// An hdrhistogram of nanosecond latencies, 3 significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl LatencyHistogram {
    /// An empty histogram tracking 1 ns ..= [`MAX_TRACKED_NS`].
    ///
    /// # Errors
    /// [`HistogramError::Create`] (only if hdrhistogram rejects constant bounds).
    pub fn new() -> Result<Self, HistogramError> {
        let sigfig = 3;
        Histogram::new_with_bounds(1, MAX_TRACKED_NS, sigfig)
            .map(|inner| Self { inner })
            .map_err(|source| HistogramError::Create {
                max_ns: MAX_TRACKED_NS,
                sigfig,
                source,
            })
    }

    /// Records one sample (0 is recorded as 1 ns, above the bound is clamped).
    pub fn record(&mut self, ns: u64) {
        self.inner.saturating_record(ns.max(1));
    }

    /// Adds every sample of `other` to `self`.
    ///
    /// # Errors
    /// [`HistogramError::Merge`] (only if `other` had a value `self` cannot
    /// hold, impossible for two [`LatencyHistogram`]s: same bounds).
    pub fn merge(&mut self, other: &Self) -> Result<(), HistogramError> {
        self.inner.add(&other.inner).map_err(HistogramError::Merge)
    }

    /// Number of samples.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether no sample was recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0.0 ..= 1.0).
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        self.inner.value_at_quantile(q)
    }

    /// p50/p99/p999/min/max/mean/count.
    #[must_use]
    pub fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.inner.len(),
            min_ns: self.inner.min(),
            p50_ns: self.quantile(0.50),
            p99_ns: self.quantile(0.99),
            p999_ns: self.quantile(0.999),
            max_ns: self.inner.max(),
            mean_ns: self.inner.mean(),
        }
    }
}

/// A percentile summary of a [`LatencyHistogram`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: f64,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_samples() {
        let mut h = LatencyHistogram::new().unwrap();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_ns, 1);
        assert_eq!(s.p50_ns, 500);
        assert_eq!(s.p99_ns, 990);
        assert_eq!(s.p999_ns, 999);
        assert_eq!(s.max_ns, 1000);
    }

    #[test]
    fn merge_adds_samples() {
        let mut a = LatencyHistogram::new().unwrap();
        let mut b = LatencyHistogram::new().unwrap();
        a.record(10);
        b.record(30);
        b.record(20);
        a.merge(&b).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.summary().p50_ns, 20);
    }

    #[test]
    fn zero_and_huge_samples_are_kept() {
        let mut h = LatencyHistogram::new().unwrap();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.len(), 2);
        assert_eq!(h.summary().min_ns, 1);
        assert!(h.summary().max_ns >= MAX_TRACKED_NS);
    }
}
