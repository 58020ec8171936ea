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
//!   t_capacity ─────────┼── first answered scrape with ready ≥ the burst's
//!                       │   full capacity (see [`BurstOutcome::full_capacity`])
//!                       │
//!  t0 + window ─────────┴── clients stop after their request in flight
//! ```
//!
//! A request *fails* when it is answered with anything but `200` and a body
//! holding the expected bytes, or its connection breaks (the client then reconnects and
//! keeps going); every failure is counted, the first few are kept with their
//! reason.

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
    /// t0 to the last client's end.
    pub elapsed: Duration,
}

impl BurstOutcome {
    /// The highest desired count the autoscaler published during the burst.
    #[must_use]
    pub fn desired_peak(&self) -> Option<u32> {
        self.polls.iter().filter_map(|p| p.desired).max()
    }

    /// Full capacity for this burst: the autoscaler's peak desired count
    /// (what it wanted for this load), at most `max_instances`; `planned`
    /// when aetherd does not export the desired count.
    #[must_use]
    pub fn full_capacity(&self, max_instances: u32, planned: u32) -> u32 {
        self.desired_peak()
            .map_or(planned, |d| d.min(max_instances))
    }

    /// t0 to the arrival of the first scrape with `ready ≥ n`.
    #[must_use]
    pub fn time_to_ready(&self, n: u32) -> Option<Duration> {
        self.polls
            .iter()
            .find(|p| p.ready >= n)
            .map(|p| Duration::from_secs_f64(p.at_ms / 1e3))
    }

    /// Mean time between two polls' answers, ms.
    #[must_use]
    pub fn poll_interval_ms(&self) -> Option<f64> {
        let (first, last) = (self.polls.first()?, self.polls.last()?);
        #[allow(clippy::cast_precision_loss)] // a few hundred polls
        let gaps = self.polls.len().checked_sub(1).filter(|&g| g > 0)? as f64;
        Some((last.at_ms - first.at_ms) / gaps)
    }
}

/// Whether `haystack` contains `needle` (an empty needle always matches).
#[must_use]
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The calling thread at `SCHED_FIFO` priority 1 until dropped (then back
/// to `SCHED_OTHER`); without the privilege it stays as it was.
#[derive(Debug)]
struct Realtime {
    entered: bool,
}

impl Realtime {
    fn enter() -> Self {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid
        // sched_param that outlives the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
        if rc != 0 {
            eprintln!(
                "autoscale: poller stays SCHED_OTHER ({}); polls may come late",
                std::io::Error::last_os_error()
            );
        }
        Self { entered: rc == 0 }
    }
}

impl Drop for Realtime {
    fn drop(&mut self) {
        if self.entered {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as in `enter`.
            unsafe {
                libc::sched_setscheduler(0, libc::SCHED_OTHER, &raw const param);
            }
        }
    }
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
    expect: &[u8],
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
        match c.fetch(request) {
            Ok((200, got)) if !contains(&got, expect) => {
                tally.fail(
                    n,
                    format!(
                        "200 with an unexpected body {:?}",
                        String::from_utf8_lossy(&got)
                    ),
                );
            }
            Ok((200, _)) => {
                let done = Instant::now();
                tally.ok += 1;
                tally.latency.record(crate::clock::duration_ns(done - t));
                tally.first_ok.get_or_insert(done);
            }
            Ok((status, _)) => {
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
    expect: &[u8],
    plan: BurstPlan,
) -> Result<BurstOutcome, BurstError> {
    let barrier = Arc::new(Barrier::new(plan.clients + 1));
    let mut handles = Vec::with_capacity(plan.clients);
    for n in 0..plan.clients {
        let (barrier, request, expect) = (Arc::clone(&barrier), request.to_vec(), expect.to_vec());
        let h = std::thread::Builder::new()
            .name(format!("burst-{n}"))
            .spawn(move || client(n, addr, &request, &expect, plan.window, &barrier))
            .map_err(|e| BurstError::Thread(e.to_string()));
        match h {
            Ok(h) => handles.push(h),
            // The clients already started stay parked on the barrier; the
            // benchmark exits on this error, which ends them.
            Err(e) => return Err(e),
        }
    }
    // 50 busy clients on 2 cpus would starve the poller (a scrape every
    // ~50 ms instead of 10): it runs SCHED_FIFO while the burst lasts.
    let boosted = Realtime::enter();
    let t0 = Instant::now();
    barrier.wait();
    let mut polls = Vec::new();
    let (mut scrape_errors, mut last_scrape_error) = (0, None);
    let mut next = t0;
    while !handles.iter().all(std::thread::JoinHandle::is_finished) {
        match Metrics::scrape(metrics) {
            Ok(m) => {
                polls.push(Poll::read(&m, t0.elapsed()));
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
    drop(boosted);
    let mut out = BurstOutcome {
        ok: 0,
        failed: 0,
        failures: Vec::new(),
        latency: LatencyHistogram::new()?,
        first_ok: Vec::new(),
        polls,
        scrape_errors,
        last_scrape_error,
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
