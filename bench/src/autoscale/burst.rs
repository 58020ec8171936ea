//! One burst: `clients` keep-alive connections start requesting at the same
//! instant and loop for a fixed window, while the main thread polls aetherd's
//! metrics every `poll_every` to see the instances come up.
//!
//! Timeline of a burst:
//!
//! ```text
//!  connect all clients ─┐ (connections are open before the burst: it is a
//!                       │  burst of requests, not of TCP handshakes)
//!              t0 ──────┼── barrier released: every client writes its first request
//!                       │   poller: scrape /metrics, note (time of the answer,
//!                       │           ready, all, desired, panic); sleep to the next tick
//!   t_capacity ─────────┼── first answered scrape with ready ≥ capacity
//!                       │
//!  t0 + window ─────────┴── clients stop after their request in flight
//! ```
//!
//! A request *fails* when it is answered with anything but `200`, or its
//! connection breaks (the client then reconnects and keeps going); every
//! failure is counted, the first few are kept with their reason.

use super::daemon::FUNCTION_ID;
use super::metrics::{Metrics, ScrapeError};
use crate::gateway::interrupt::interrupted;
use crate::gateway::loadgen::Client;
use crate::histogram::{HistogramError, LatencyHistogram};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Failure reasons kept per burst (all are counted).
const KEEP_FAILURES: usize = 10;

/// Errors that make a burst no measurement.
#[derive(Debug, Error)]
pub enum BurstError {
    #[error("client thread: {0}")]
    Thread(String),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
    #[error("interrupted by a signal")]
    Interrupted,
}

/// What a burst does.
#[derive(Debug, Clone, Copy)]
pub struct BurstPlan {
    pub clients: usize,
    pub window: Duration,
    pub poll_every: Duration,
    /// Ready instances that count as full capacity.
    pub capacity: u32,
}

/// One metrics poll during a burst.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Poll {
    /// When the scrape's answer arrived, since t0.
    pub at_ms: f64,
    /// Instances in every state.
    pub total: u32,
    /// Instances in a serving state (`ready`, `serving`, `idle`).
    pub ready: u32,
    pub desired: Option<u32>,
    pub panic: Option<bool>,
}

impl Poll {
    /// The function's instance counts in `m`, stamped `at`.
    #[must_use]
    pub fn read(m: &Metrics, at: Duration) -> Self {
        let f = ("function", FUNCTION_ID);
        let total = m.sum("aether_instances", &[f]).unwrap_or(0.0);
        let ready: f64 = ["ready", "serving", "idle"]
            .iter()
            .filter_map(|s| m.sum("aether_instances", &[f, ("state", s)]))
            .sum();
        Self {
            at_ms: at.as_secs_f64() * 1e3,
            total: count(total),
            ready: count(ready),
            desired: m.sum("aether_autoscale_desired_instances", &[f]).map(count),
            panic: m.sum("aether_autoscale_panic", &[f]).map(|v| v > 0.5),
        }
    }
}

/// A gauge value as a count (gauges here are small non-negative integers).
#[must_use]
pub fn count(v: f64) -> u32 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to [0, 1e6]
    let n = v.clamp(0.0, 1e6).round() as u32;
    n
}

/// What one burst measured.
#[derive(Debug)]
pub struct BurstOutcome {
    pub ok: u64,
    pub failed: u64,
    /// The first [`KEEP_FAILURES`] failures, with client number and reason.
    pub failures: Vec<String>,
    /// Client-side time from writing a request to its complete response, of
    /// every `200`.
    pub latency: LatencyHistogram,
    /// Per client, time from t0 to its first complete `200` (None: never).
    pub first_ok: Vec<Option<Duration>>,
    pub polls: Vec<Poll>,
    pub scrape_errors: u64,
    pub last_scrape_error: Option<String>,
    /// t0 to the first poll with `ready ≥ capacity`.
    pub to_capacity: Option<Duration>,
    /// t0 to the last client's end.
    pub elapsed: Duration,
}

/// One client's tally.
#[derive(Debug)]
struct Tally {
    ok: u64,
    failed: u64,
    failures: Vec<String>,
    latency: LatencyHistogram,
    first_ok: Option<Instant>,
}

impl Tally {
    fn fail(&mut self, n: usize, what: String) {
        self.failed += 1;
        if self.failures.len() < KEEP_FAILURES {
            self.failures.push(format!("client {n}: {what}"));
        }
    }
}

/// One client: connect, wait for the barrier, loop `request` until the window ends.
fn client(
    n: usize,
    addr: SocketAddr,
    request: &[u8],
    window: Duration,
    barrier: &Barrier,
) -> Result<Tally, BurstError> {
    let mut tally = Tally {
        ok: 0,
        failed: 0,
        failures: Vec::new(),
        latency: LatencyHistogram::new()?,
        first_ok: None,
    };
    let mut conn = Client::connect(addr)
        .map_err(|e| tally.fail(n, format!("connect: {e}")))
        .ok();
    barrier.wait();
    let end = Instant::now() + window;
    while Instant::now() < end && !interrupted() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tally.fail(n, format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let t = Instant::now();
        match c.round_trip(request) {
            Ok(200) => {
                let done = Instant::now();
                tally.ok += 1;
                tally.latency.record(crate::clock::duration_ns(done - t));
                tally.first_ok.get_or_insert(done);
            }
            Ok(status) => {
                tally.fail(n, format!("status {status} after {:?}", t.elapsed()));
            }
            Err(e) => {
                tally.fail(n, format!("{e} after {:?}", t.elapsed()));
                conn = None;
            }
        }
    }
    Ok(tally)
}

/// Runs one burst against `addr`, polling `metrics` (see the module docs).
///
/// # Errors
/// [`BurstError`] when a client thread could not run, or on a signal.
pub fn run(
    addr: SocketAddr,
    metrics: SocketAddr,
    request: &[u8],
    plan: BurstPlan,
) -> Result<BurstOutcome, BurstError> {
    let barrier = Arc::new(Barrier::new(plan.clients + 1));
    let mut handles = Vec::with_capacity(plan.clients);
    for n in 0..plan.clients {
        let (barrier, request) = (Arc::clone(&barrier), request.to_vec());
        let h = std::thread::Builder::new()
            .name(format!("burst-{n}"))
            .spawn(move || client(n, addr, &request, plan.window, &barrier))
            .map_err(|e| BurstError::Thread(e.to_string()));
        match h {
            Ok(h) => handles.push(h),
            // The clients already started stay parked on the barrier; the
            // benchmark exits on this error, which ends them.
            Err(e) => return Err(e),
        }
    }
    let t0 = Instant::now();
    barrier.wait();
    let mut polls = Vec::new();
    let (mut scrape_errors, mut last_scrape_error) = (0, None);
    let mut to_capacity = None;
    let mut next = t0;
    while !handles.iter().all(std::thread::JoinHandle::is_finished) {
        match Metrics::scrape(metrics) {
            Ok(m) => {
                let p = Poll::read(&m, t0.elapsed());
                if to_capacity.is_none() && p.ready >= plan.capacity {
                    to_capacity = Some(t0.elapsed());
                }
                polls.push(p);
            }
            Err(e) => {
                scrape_errors += 1;
                last_scrape_error = Some(ScrapeError::to_string(&e));
            }
        }
        next += plan.poll_every;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    let elapsed = t0.elapsed();
    let mut out = BurstOutcome {
        ok: 0,
        failed: 0,
        failures: Vec::new(),
        latency: LatencyHistogram::new()?,
        first_ok: Vec::new(),
        polls,
        scrape_errors,
        last_scrape_error,
        to_capacity,
        elapsed,
    };
    for h in handles {
        let tally = h
            .join()
            .map_err(|_| BurstError::Thread("a client thread panicked".into()))??;
        out.ok += tally.ok;
        out.failed += tally.failed;
        out.failures.extend(
            tally
                .failures
                .into_iter()
                .take(KEEP_FAILURES.saturating_sub(out.failures.len())),
        );
        out.latency.merge(&tally.latency)?;
        out.first_ok
            .push(tally.first_ok.map(|t| t.saturating_duration_since(t0)));
    }
    if interrupted() {
        return Err(BurstError::Interrupted);
    }
    Ok(out)
}
