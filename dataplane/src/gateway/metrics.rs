//! Gateway metrics of one core.
//!
//! Each core owns a [`CoreMetrics`]; at startup it registers its metric
//! families in the shared prometheus [`Registry`] under the label
//! `core="N"`, so the metrics endpoint reads every core's values while no two
//! cores ever write the same cell. The request path of a function uses a
//! [`FunctionMetrics`] that holds its own handles (no label lookups, no family
//! lock per request).
//!
//! Exported (with the caller's prefix, if any):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `requests_total` | counter | core, function, status |
//! | `request_duration_seconds` | histogram | core, function |
//! | `in_flight` | gauge | core, function |
//! | `queue_depth` | gauge | core, function |
//! | `upstream_connects_total` | counter | core |
//! | `retries_total` | counter | core |
//!
//! Besides, each core keeps an HDR histogram of request latency in
//! microseconds per function for `aetherctl stats`
//! ([`CoreMetrics::latency_snapshot`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Highest latency the HDR histograms track (values above are clamped): 1 h.
const HDR_MAX_US: u64 = 3_600_000_000;

/// Labels of `requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Function id.
    pub function: String,
    /// HTTP status sent to the client (499: the client went away first).
    pub status: u16,
}

/// Labels of per-function metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// Function id.
    pub function: String,
}

fn duration_histogram() -> Histogram {
    // 25 µs .. ~52 s.
    Histogram::new(exponential_buckets(25e-6, 2.0, 22))
}

fn queue_wait_histogram() -> Histogram {
    // 0 (free slot) and 50 µs .. ~105 s.
    Histogram::new(std::iter::once(0.0).chain(exponential_buckets(50e-6, 2.0, 22)))
}

/// The gateway metrics of one core. `Send` so it can be built (and
/// registered) before its executor starts; then used from that core only.
#[derive(Debug)]
pub struct CoreMetrics {
    core: usize,
    requests: Family<RequestLabels, Counter>,
    duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<FunctionLabels, Gauge>,
    queue_depth: Family<FunctionLabels, Gauge>,
    queue_wait: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    upstream_connects: Counter,
    retries: Counter,
    latency: RefCell<Vec<(String, Hdr<u64>)>>,
    /// Every (function, status) pair answered so far, for `status_counts`.
    seen_statuses: RefCell<Vec<(String, u16)>>,
}

/// A copy of one function's latency histogram on one core.
#[derive(Debug, Clone)]
pub struct LatencySnapshot {
    /// Function id.
    pub function: String,
    /// Core number.
    pub core: usize,
    /// Request latency in microseconds.
    pub histogram: Hdr<u64>,
}

impl CoreMetrics {
    /// Creates the metrics of core `core` and registers them in `registry`
    /// labelled `core="N"`.
    pub fn register(registry: &mut Registry, core: usize) -> Self {
        let this = Self::unregistered(core);
        let sub = registry.sub_registry_with_label(("core".into(), core.to_string().into()));
        sub.register(
            "requests",
            "HTTP requests answered by the gateway",
            this.requests.clone(),
        );
        sub.register(
            "request_duration_seconds",
            "Time from request head to the end of the response",
            this.duration.clone(),
        );
        sub.register("in_flight", "Requests being served", this.in_flight.clone());
        sub.register(
            "queue_depth",
            "Requests waiting for an instance slot",
            this.queue_depth.clone(),
        );
        sub.register(
            "queue_wait_seconds",
            "Time a request waited for an instance slot (0 when one was free)",
            this.queue_wait.clone(),
        );
        sub.register(
            "upstream_connects",
            "Connections opened to handler instances",
            this.upstream_connects.clone(),
        );
        sub.register(
            "retries",
            "Requests retried on another connection or instance",
            this.retries.clone(),
        );
        this
    }

    /// Metrics not exported anywhere (tests, tools).
    #[must_use]
    pub fn unregistered(core: usize) -> Self {
        Self {
            core,
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(queue_wait_histogram),
            upstream_connects: Counter::default(),
            retries: Counter::default(),
            latency: RefCell::new(Vec::new()),
            seen_statuses: RefCell::new(Vec::new()),
        }
    }

    /// The core these metrics belong to.
    #[must_use]
    pub fn core(&self) -> usize {
        self.core
    }

    /// Handles for one function's request path.
    #[must_use]
    pub fn function(self: &Rc<Self>, function: &str) -> FunctionMetrics {
        let labels = FunctionLabels {
            function: function.to_owned(),
        };
        let mut latency = self.latency.borrow_mut();
        let hdr_index = match latency.iter().position(|(f, _)| f == function) {
            Some(i) => i,
            None => {
                // 1 ≤ low, high ≥ 2·low and sigfig 2 ≤ 5: the only ways
                // new_with_bounds can fail are excluded by these constants.
                // Two significant digits (1 %) keep it at ~27 KiB.
                #[allow(clippy::expect_used)]
                let h = Hdr::new_with_bounds(1, HDR_MAX_US, 2).expect("valid constant bounds");
                latency.push((function.to_owned(), h));
                latency.len() - 1
            }
        };
        FunctionMetrics {
            core: Rc::clone(self),
            function: function.to_owned(),
            duration: self.duration.get_or_create_owned(&labels),
            in_flight: self.in_flight.get_or_create_owned(&labels),
            queue_depth: self.queue_depth.get_or_create_owned(&labels),
            queue_wait: self.queue_wait.get_or_create_owned(&labels),
            statuses: RefCell::new(Vec::new()),
            hdr_index,
        }
    }

    /// Counts a new upstream connection.
    pub fn upstream_connect(&self) {
        self.upstream_connects.inc();
    }

    /// Counts a retry.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// Upstream connections opened so far.
    #[must_use]
    pub fn upstream_connects(&self) -> u64 {
        self.upstream_connects.get()
    }

    /// Retries so far.
    #[must_use]
    pub fn retries(&self) -> u64 {
        self.retries.get()
    }

    /// Requests answered with `status` for `function` so far.
    #[must_use]
    pub fn requests(&self, function: &str, status: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                function: function.to_owned(),
                status,
            })
            .get()
    }

    /// Requests answered for `function` on this core, by status, sorted by status.
    #[must_use]
    pub fn status_counts(&self, function: &str) -> Vec<(u16, u64)> {
        let mut out: Vec<(u16, u64)> = self
            .seen_statuses
            .borrow()
            .iter()
            .filter(|(f, _)| f == function)
            .map(|(f, s)| (*s, self.requests(f, *s)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Copies of the latency histograms of every function on this core.
    #[must_use]
    pub fn latency_snapshot(&self) -> Vec<LatencySnapshot> {
        self.latency
            .borrow()
            .iter()
            .map(|(f, h)| LatencySnapshot {
                function: f.clone(),
                core: self.core,
                histogram: h.clone(),
            })
            .collect()
    }
}

/// One function's metric handles on one core.
#[derive(Debug)]
pub struct FunctionMetrics {
    core: Rc<CoreMetrics>,
    function: String,
    duration: Histogram,
    in_flight: Gauge,
    queue_depth: Gauge,
    queue_wait: Histogram,
    statuses: RefCell<Vec<(u16, Counter)>>,
    hdr_index: usize,
}

impl FunctionMetrics {
    /// The core's metrics.
    #[must_use]
    pub fn core(&self) -> &CoreMetrics {
        &self.core
    }

    /// A request started.
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// A request ended with `status` after `elapsed`.
    pub fn request_finished(&self, status: u16, elapsed: Duration) {
        self.in_flight.dec();
        self.duration.observe(elapsed.as_secs_f64());
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some((_, h)) = self.core.latency.borrow_mut().get_mut(self.hdr_index) {
            h.saturating_record(us.clamp(1, HDR_MAX_US));
        }
        let mut statuses = self.statuses.borrow_mut();
        if let Some((_, c)) = statuses.iter().find(|(s, _)| *s == status) {
            c.inc();
            return;
        }
        let c = self.core.requests.get_or_create_owned(&RequestLabels {
            function: self.function.clone(),
            status,
        });
        c.inc();
        statuses.push((status, c));
        let mut seen = self.core.seen_statuses.borrow_mut();
        if !seen
            .iter()
            .any(|(f, s)| *f == self.function && *s == status)
        {
            seen.push((self.function.clone(), status));
        }
    }

    /// A request joined the queue.
    pub fn queued(&self) {
        self.queue_depth.inc();
    }

    /// A request left the queue.
    pub fn dequeued(&self) {
        self.queue_depth.dec();
    }

    /// A request got its instance slot after waiting `waited` (zero when a
    /// slot was free at once).
    pub fn slot_acquired(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn exports_per_core_labels_and_counts() {
        let mut registry = Registry::default();
        let c0 = Rc::new(CoreMetrics::register(&mut registry, 0));
        let c1 = Rc::new(CoreMetrics::register(&mut registry, 1));
        let f0 = c0.function("hello");
        let f1 = c1.function("hello");
        f0.request_started();
        f0.request_finished(200, Duration::from_micros(120));
        f0.request_started();
        f0.request_finished(200, Duration::from_micros(80));
        f1.request_started();
        f1.request_finished(504, Duration::from_millis(3));
        c1.retry();
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"requests_total{core="0",function="hello",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"requests_total{core="1",function="hello",status="504"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"retries_total{core="1"} 1"#), "{text}");
        assert!(
            text.contains(r#"in_flight{core="0",function="hello"} 0"#),
            "{text}"
        );
        let snap = c0.latency_snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].histogram.len(), 2);
        assert!(snap[0].histogram.value_at_quantile(1.0) >= 120);
    }
}
