//! Cold and warm-pool starts through aetherd.
//!
//! aetherd runs through [`crate::aetherd`] (`aetherctl up [--warm-pool]`,
//! `aetherctl down`) with one function, `hello` (the quickstart's
//! `hello.py`), that may scale to zero: `min_instances: 0` and a short
//! `idle_timeout_ms` / `stable_window_ms`.
//!
//! After deploy, the snapshot is awaited (`aether_snapshots_total{outcome="ok"}`).
//! Then each sample:
//! 1. wait until the function has no instance: the sum of
//!    `aether_instances{function="hello"}` over cores and states is 0 (and,
//!    with the warm pool, `aether_warm_pool_instances` is back to its level),
//!    and still is a short settle later with no start in between (so the
//!    last teardown is not measured, nor a zero aetherd ends on its own);
//! 2. one `GET` on a new connection, timed from before `connect` to the
//!    first answer byte;
//! 3. which starts it caused: the delta of
//!    `aether_instance_starts_total{source=spawn|restore|warm}` (and of
//!    `aether_restore_failures_total`), read once the counts held still;
//!    its queue wait from `aether_queue_wait_seconds` between the scrapes;
//! 4. the same request again while the instance runs (the cost of a request
//!    without a start, `*_running_*`).
//!
//! A daemon that never gets to zero instances, never snapshots, or (warm
//! pool) never holds a frozen instance is an error that says which.

use super::probe::{fetch, ProbeError};
use crate::aetherd::{Aetherd, AetherdError, Function, Launch, Site};
use crate::autoscale::metrics::{Metrics as Scrape, ScrapeError};
use crate::clock::duration_ns;
use crate::gateway::interrupt::interrupted;
use crate::gateway::process::ProcessError;
use crate::histogram::{HistogramError, LatencyHistogram};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The function's id.
pub const FUNCTION: &str = "hello";
/// Sources of `aether_instance_starts_total`.
pub const SOURCES: [&str; 3] = ["spawn", "restore", "warm"];
/// How long the function may take to reach zero instances.
const ZERO_WITHIN: Duration = Duration::from_secs(10);
/// How long the first snapshot may take after deploy.
const SNAPSHOT_WITHIN: Duration = Duration::from_secs(30);
/// How long the warm pool may take to fill.
const WARM_WITHIN: Duration = Duration::from_secs(30);
/// Metrics polling interval while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long the start counters must hold still after a request.
const STARTS_SETTLE: Duration = Duration::from_millis(150);
/// Bound of waiting for the start counters after a request.
const STARTS_WITHIN: Duration = Duration::from_secs(2);
/// How long zero instances must last (seen at both ends, no start in
/// between) before the request.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Errors of the aetherd runs.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Starting or stopping aetherd failed.
    #[error(transparent)]
    Aetherd(#[from] AetherdError),
    /// No free loopback port for the trigger or the metrics.
    #[error(transparent)]
    Port(#[from] ProcessError),
    #[error("{source}{logs}")]
    Metrics {
        source: Box<ScrapeError>,
        logs: String,
    },
    /// A metric the measurement relies on is not exported.
    #[error("aetherd exports no {metric}{hint}{logs}")]
    NoMetric {
        metric: &'static str,
        hint: &'static str,
        logs: String,
    },
    /// The function did not scale to zero.
    #[error("function {FUNCTION} still has {instances} instance(s) {waited:?} after its last request \
             (min_instances 0, idle_timeout_ms {idle_ms}, stable_window_ms {stable_ms}): aetherd does not \
             scale to zero (is the autoscaler wired in this build?){logs}")]
    NotZero {
        instances: f64,
        waited: Duration,
        idle_ms: u64,
        stable_ms: u64,
        logs: String,
    },
    /// Zero instances never lasted the settle.
    #[error("function {FUNCTION} reached zero instances but aetherd started one again within {} ms \
             with no request, {unsettled} time(s) in {waited:?}: no quiet zero to measure a cold start from{logs}", SETTLE.as_millis())]
    ZeroNotLasting {
        waited: Duration,
        unsettled: u64,
        logs: String,
    },
    /// No snapshot was taken.
    #[error(
        "aetherd took no snapshot of {FUNCTION} within {waited:?} after deploy \
             (aether_snapshots_total{{outcome=\"ok\"}} = {ok}, outcome=\"failed\" = {failed}): \
             is the snapshot wiring (#4) in this build?{logs}"
    )]
    NoSnapshot {
        waited: Duration,
        ok: f64,
        failed: f64,
        logs: String,
    },
    /// The warm pool stayed empty.
    #[error("aetherd up --warm-pool (warm_pool_size {size}) held no frozen instance of {FUNCTION} within {waited:?} \
             (aether_warm_pool_instances = {seen}){logs}")]
    NoWarmPool {
        size: u32,
        waited: Duration,
        seen: f64,
        logs: String,
    },
    /// A request did not get the hello answer.
    #[error("cold request {sample}: {source}{logs}")]
    Request {
        sample: usize,
        source: ProbeError,
        logs: String,
    },
    #[error("interrupted by a signal")]
    Interrupted,
    #[error(transparent)]
    Histogram(#[from] HistogramError),
}

/// The knobs of one aetherd run.
#[derive(Debug, Clone)]
pub struct DaemonSetup {
    /// Binaries, handler, run dir, ports.
    pub site: Site,
    pub idle_timeout_ms: u64,
    pub stable_window_ms: u64,
    /// `Some(size)`: `up --warm-pool` with `warm_pool_size: size`.
    pub warm_pool: Option<u32>,
}

impl DaemonSetup {
    /// The aetherd run: `concurrency: 1`, `min_instances: 0`, and with a
    /// warm pool `warm_pool_size` and `up --warm-pool`.
    #[must_use]
    pub fn launch(&self) -> Launch {
        Launch {
            benchmark: "coldstart",
            site: self.site.clone(),
            orchestrator: self
                .warm_pool
                .map(|n| ("warm_pool_size", n.to_string()))
                .into_iter()
                .collect(),
            function: Function {
                id: FUNCTION,
                memory_limit_mb: 128,
                settings: vec![
                    ("concurrency", "1".into()),
                    ("min_instances", "0".into()),
                    ("idle_timeout_ms", self.idle_timeout_ms.to_string()),
                    ("stable_window_ms", self.stable_window_ms.to_string()),
                ],
            },
            up_flags: if self.warm_pool.is_some() {
                vec!["--warm-pool"]
            } else {
                Vec::new()
            },
        }
    }
}

/// A running aetherd (`aetherctl down` on drop) and what its measurements
/// need to know of the setup.
#[derive(Debug)]
pub struct Daemon {
    setup: DaemonSetup,
    aetherd: Aetherd,
}

/// What a series of cold requests measured.
#[derive(Debug, Clone)]
pub struct ColdRun {
    /// Connect → first answer byte, every sample.
    pub latency: LatencyHistogram,
    /// The same, by the starts the request caused: the sources whose counter
    /// moved, joined with `+` (`restore`, `restore+warm`, …; `none`).
    pub by_source: BTreeMap<String, LatencyHistogram>,
    /// `aether_instance_starts_total` deltas over the run, per source.
    pub starts: BTreeMap<String, u64>,
    /// `aether_restore_failures_total` delta over the run.
    pub restore_failures: u64,
    /// Whether `aether_instance_starts_total` was exported at all.
    pub starts_exported: bool,
    /// Time waited for zero instances before each sample, median.
    pub zero_wait_p50: Duration,
    /// The warm pool level awaited before each sample (warm runs).
    pub warm_level: Option<f64>,
    /// `aether_snapshots_total{outcome="ok"}` at the end.
    pub snapshots_ok: f64,
    /// aetherd's own `criu restore` wall times during the run
    /// (`aether_restore_duration_seconds`; warm-pool refills included).
    pub aetherd_restore: Option<HistogramDelta>,
    /// Time the cold requests waited for an instance
    /// (`aether_queue_wait_seconds`, between the scrapes around each).
    pub queue_wait: Option<HistogramDelta>,
    /// A second request right after each cold one (an instance runs):
    /// connect → first answer byte.
    pub running: LatencyHistogram,
    /// Times zero instances did not last [`SETTLE`] (aetherd started one
    /// with no request in flight); such a zero is not measured.
    pub unsettled_zeros: u64,
}

/// Observations of an aetherd histogram between two scrapes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistogramDelta {
    pub mean: Duration,
    pub count: f64,
}

impl HistogramDelta {
    /// Both sets of observations together.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        let count = self.count + other.count;
        let sum = self.mean.as_secs_f64() * self.count + other.mean.as_secs_f64() * other.count;
        Self {
            mean: Duration::from_secs_f64((sum / count.max(1.0)).max(0.0)),
            count,
        }
    }
}

impl Daemon {
    /// Writes the config and runs `aetherctl up [--warm-pool]`.
    ///
    /// # Errors
    /// [`DaemonError::Aetherd`] with aetherctl's output or aetherd's log tail.
    pub fn start(setup: DaemonSetup) -> Result<Self, DaemonError> {
        let aetherd = Aetherd::start(&setup.launch())?;
        Ok(Self { setup, aetherd })
    }

    /// The function's trigger address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.aetherd.addr
    }

    /// `aetherctl down`; on failure the pidfile's process is killed.
    ///
    /// # Errors
    /// [`DaemonError::Aetherd`] when `down` failed (aetherd was killed instead).
    pub fn stop(&mut self) -> Result<(), DaemonError> {
        Ok(self.aetherd.stop()?)
    }

    /// The last lines of aetherd's log, as a suffix for error messages.
    fn log_tail(&self) -> String {
        self.aetherd.log_tail()
    }

    fn scrape(&self) -> Result<Scrape, DaemonError> {
        Scrape::scrape(self.aetherd.metrics).map_err(|source| DaemonError::Metrics {
            source: Box::new(source),
            logs: self.log_tail(),
        })
    }

    /// Instances of the function over all cores and states; an error when
    /// the gauge is missing.
    fn instances(&self, m: &Scrape) -> Result<f64, DaemonError> {
        m.sum("aether_instances", &[("function", FUNCTION)])
            .ok_or_else(|| DaemonError::NoMetric {
                metric: "aether_instances{function=\"hello\"}",
                hint: " (the deploy did not register the function?)",
                logs: self.log_tail(),
            })
    }

    fn starts(m: &Scrape) -> BTreeMap<String, f64> {
        SOURCES
            .iter()
            .map(|s| {
                let n = m
                    .sum(
                        "aether_instance_starts_total",
                        &[("function", FUNCTION), ("source", s)],
                    )
                    .unwrap_or(0.0);
                ((*s).to_owned(), n)
            })
            .collect()
    }

    fn restore_failures(m: &Scrape) -> f64 {
        m.sum("aether_restore_failures_total", &[("function", FUNCTION)])
            .unwrap_or(0.0)
    }

    fn warm(m: &Scrape) -> f64 {
        m.sum("aether_warm_pool_instances", &[("function", FUNCTION)])
            .unwrap_or(0.0)
    }

    /// Waits for aetherd's first snapshot of the function.
    ///
    /// # Errors
    /// [`DaemonError::NoSnapshot`] after [`SNAPSHOT_WITHIN`].
    pub fn await_snapshot(&self) -> Result<f64, DaemonError> {
        let t0 = Instant::now();
        loop {
            let m = self.scrape()?;
            let count = |outcome| {
                m.sum(
                    "aether_snapshots_total",
                    &[("function", FUNCTION), ("outcome", outcome)],
                )
                .unwrap_or(0.0)
            };
            let ok = count("ok");
            if ok >= 1.0 {
                return Ok(ok);
            }
            if t0.elapsed() > SNAPSHOT_WITHIN {
                return Err(DaemonError::NoSnapshot {
                    waited: SNAPSHOT_WITHIN,
                    ok,
                    failed: count("failed"),
                    logs: self.log_tail(),
                });
            }
            self.pause()?;
        }
    }

    /// Waits for the warm pool to fill: the highest level seen once it held
    /// still for a second.
    ///
    /// # Errors
    /// [`DaemonError::NoWarmPool`] when it stays empty for [`WARM_WITHIN`].
    pub fn await_warm_pool(&self, size: u32) -> Result<f64, DaemonError> {
        let t0 = Instant::now();
        let mut best = 0.0_f64;
        let mut since = Instant::now();
        loop {
            let w = Self::warm(&self.scrape()?);
            if w > best {
                best = w;
                since = Instant::now();
            }
            if best >= f64::from(size) || (best >= 1.0 && since.elapsed() > Duration::from_secs(1))
            {
                return Ok(best);
            }
            if t0.elapsed() > WARM_WITHIN {
                return Err(DaemonError::NoWarmPool {
                    size,
                    waited: WARM_WITHIN,
                    seen: best,
                    logs: self.log_tail(),
                });
            }
            self.pause()?;
        }
    }

    fn pause(&self) -> Result<(), DaemonError> {
        if interrupted() {
            return Err(DaemonError::Interrupted);
        }
        std::thread::sleep(POLL);
        Ok(())
    }

    /// Waits until the function has no instance (and the warm pool is back
    /// at `warm_level`) and still has none [`SETTLE`] later with no start in
    /// between; returns that last scrape and how often a zero did not last
    /// (aetherd started an instance on its own within the settle).
    fn await_zero(&self, warm_level: Option<f64>) -> Result<(Scrape, u64), DaemonError> {
        let t0 = Instant::now();
        let mut unsettled = 0;
        let mut zero_since: Option<BTreeMap<String, f64>> = None;
        loop {
            let m = self.scrape()?;
            let n = self.instances(&m)?;
            let warm_ok = warm_level.is_none_or(|lvl| Self::warm(&m) >= lvl);
            if n == 0.0 && warm_ok {
                let starts = Self::starts(&m);
                match zero_since.take() {
                    Some(before) if before == starts => return Ok((m, unsettled)),
                    Some(_) => unsettled += 1,
                    None => {}
                }
                // Look again after the settle: the last instance's teardown
                // is done, and nothing started meanwhile.
                if t0.elapsed() > ZERO_WITHIN {
                    return Err(DaemonError::ZeroNotLasting {
                        waited: ZERO_WITHIN,
                        unsettled,
                        logs: self.log_tail(),
                    });
                }
                zero_since = Some(starts);
                std::thread::sleep(SETTLE);
                continue;
            }
            if zero_since.take().is_some() {
                unsettled += 1;
            }
            if t0.elapsed() > ZERO_WITHIN {
                if n == 0.0 {
                    return Err(DaemonError::NoWarmPool {
                        size: self.setup.warm_pool.unwrap_or(0),
                        waited: ZERO_WITHIN,
                        seen: Self::warm(&m),
                        logs: self.log_tail(),
                    });
                }
                return Err(DaemonError::NotZero {
                    instances: n,
                    waited: ZERO_WITHIN,
                    idle_ms: self.setup.idle_timeout_ms,
                    stable_ms: self.setup.stable_window_ms,
                    logs: self.log_tail(),
                });
            }
            self.pause()?;
        }
    }

    /// One `GET` on a new connection: connect → first answer byte.
    fn timed_get(&self, sample: usize) -> Result<Duration, DaemonError> {
        let t0 = Instant::now();
        let answer = TcpStream::connect(self.addr())
            .map_err(|source| ProbeError::Io {
                step: "connecting to aetherd",
                source,
            })
            .and_then(|s| {
                s.set_nodelay(true).map_err(|source| ProbeError::Io {
                    step: "TCP_NODELAY",
                    source,
                })?;
                fetch(s)
            })
            .map_err(|source| DaemonError::Request {
                sample,
                source,
                logs: self.log_tail(),
            })?;
        Ok(answer.first_byte_at.duration_since(t0))
    }

    /// Polls until `aether_instance_starts_total` moved past `before` and
    /// then held still for [`STARTS_SETTLE`] (bounded by [`STARTS_WITHIN`]);
    /// returns the sources that moved, joined with `+` in [`SOURCES`] order
    /// (`none` when nothing moved), and the last scrape.
    fn starts_caused(
        &self,
        before: &BTreeMap<String, f64>,
        exported: bool,
    ) -> Result<(String, Scrape), DaemonError> {
        let t0 = Instant::now();
        let mut seen = before.clone();
        let mut still_since = Instant::now();
        loop {
            let m = self.scrape()?;
            let now = Self::starts(&m);
            if now != seen {
                seen = now;
                still_since = Instant::now();
            }
            let moved = seen != *before;
            let settled = moved && still_since.elapsed() >= STARTS_SETTLE;
            if settled || !exported || t0.elapsed() >= STARTS_WITHIN {
                let key: Vec<&str> = SOURCES
                    .iter()
                    .copied()
                    .filter(|s| seen.get(*s) > before.get(*s))
                    .collect();
                let key = if key.is_empty() {
                    "none".to_owned()
                } else {
                    key.join("+")
                };
                return Ok((key, m));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `samples` cold requests (see the module docs).
    ///
    /// # Errors
    /// [`DaemonError`].
    pub fn cold_requests(
        &self,
        samples: usize,
        warm_level: Option<f64>,
        label: &str,
    ) -> Result<ColdRun, DaemonError> {
        let mut latency = LatencyHistogram::new()?;
        let mut running = LatencyHistogram::new()?;
        let mut queue_wait = None;
        let mut unsettled_zeros = 0;
        let mut by_source: BTreeMap<String, LatencyHistogram> = BTreeMap::new();
        let mut zero_waits = Vec::with_capacity(samples);
        let first = self.scrape()?;
        let starts_exported = first
            .sum("aether_instance_starts_total", &[("function", FUNCTION)])
            .is_some();
        let starts_at_begin = Self::starts(&first);
        let failures_at_begin = Self::restore_failures(&first);
        let mut last = first.clone();
        for i in 0..samples {
            let w0 = Instant::now();
            let (before, flaps) = self.await_zero(warm_level)?;
            unsettled_zeros += flaps;
            zero_waits.push(w0.elapsed());
            let before_starts = Self::starts(&before);
            let sent_at = time_of_day();
            let took = self.timed_get(i)?;
            latency.record(duration_ns(took));
            // The starts this request caused: the counters that moved, read
            // once they held still for STARTS_SETTLE (the autoscaler may start
            // more than one instance for one request; a later one is counted
            // a little after the first).
            let (source, scrape) = self.starts_caused(&before_starts, starts_exported)?;
            if let Some(d) = Self::mean_between(&before, &scrape, "aether_queue_wait_seconds") {
                queue_wait = Some(queue_wait.map_or(d, |q: HistogramDelta| q.plus(d)));
            }
            // The same request again, now that an instance runs: what a
            // request costs without a start.
            running.record(duration_ns(self.timed_get(i)?));
            last = scrape;
            eprintln!(
                "coldstart: {label} {}/{samples}: {:8.3} ms  (starts: {source}; sent {sent_at} UTC)",
                i + 1,
                took.as_secs_f64() * 1e3
            );
            by_source
                .entry(source)
                .or_insert(LatencyHistogram::new()?)
                .record(duration_ns(took));
        }
        let end = Self::starts(&last);
        let starts = SOURCES
            .iter()
            .map(|s| {
                let d = end.get(*s).copied().unwrap_or(0.0)
                    - starts_at_begin.get(*s).copied().unwrap_or(0.0);
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                // counter deltas: small, ≥ 0
                ((*s).to_owned(), d.max(0.0) as u64)
            })
            .collect();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        // counter delta: small, ≥ 0
        let restore_failures = (Self::restore_failures(&last) - failures_at_begin).max(0.0) as u64;
        zero_waits.sort_unstable();
        let snapshots_ok = last
            .sum(
                "aether_snapshots_total",
                &[("function", FUNCTION), ("outcome", "ok")],
            )
            .unwrap_or(0.0);
        Ok(ColdRun {
            latency,
            by_source,
            starts,
            restore_failures,
            starts_exported,
            zero_wait_p50: zero_waits
                .get(zero_waits.len() / 2)
                .copied()
                .unwrap_or_default(),
            warm_level,
            snapshots_ok,
            aetherd_restore: Self::mean_between(&first, &last, "aether_restore_duration_seconds"),
            queue_wait,
            running,
            unsettled_zeros,
        })
    }

    /// Mean and count of histogram `name`'s observations (over cores) made
    /// between two scrapes, from its `_sum` and `_count`; `None` when it is
    /// not exported or nothing was observed.
    fn mean_between(first: &Scrape, last: &Scrape, name: &str) -> Option<HistogramDelta> {
        let want = [("function", FUNCTION)];
        let delta = |suffix: &str| {
            let series = format!("{name}_{suffix}");
            Some(last.sum(&series, &want)? - first.sum(&series, &want).unwrap_or(0.0))
        };
        let count = delta("count")?;
        (count >= 1.0).then(|| HistogramDelta {
            mean: Duration::from_secs_f64((delta("sum").unwrap_or(0.0) / count).max(0.0)),
            count,
        })
    }
}

/// The UTC time of day with microseconds (`06:15:12.839776`), to find a
/// request in aetherd's log.
fn time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = now.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        now.subsec_micros()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;
    use crate::aetherd::test_site;
    use std::path::Path;

    fn setup(dir: &Path, warm: Option<u32>) -> DaemonSetup {
        DaemonSetup {
            site: test_site(dir, "/w/examples/hello.py"),
            idle_timeout_ms: 200,
            stable_window_ms: 2000,
            warm_pool: warm,
        }
    }

    #[test]
    fn histogram_means_are_deltas_over_cores() {
        let first = Scrape::from_text(
            "aether_queue_wait_seconds_sum{core=\"0\",function=\"hello\"} 1.0\n\
             aether_queue_wait_seconds_count{core=\"0\",function=\"hello\"} 10\n"
                .to_owned(),
        );
        let last = Scrape::from_text(
            "aether_queue_wait_seconds_sum{core=\"0\",function=\"hello\"} 1.05\n\
             aether_queue_wait_seconds_count{core=\"0\",function=\"hello\"} 11\n\
             aether_queue_wait_seconds_sum{core=\"1\",function=\"hello\"} 0.03\n\
             aether_queue_wait_seconds_count{core=\"1\",function=\"hello\"} 1\n\
             aether_queue_wait_seconds_sum{core=\"1\",function=\"other\"} 9\n\
             aether_queue_wait_seconds_count{core=\"1\",function=\"other\"} 1\n"
                .to_owned(),
        );
        let d = Daemon::mean_between(&first, &last, "aether_queue_wait_seconds").unwrap();
        assert!((d.count - 2.0).abs() < 1e-9);
        assert!((d.mean.as_secs_f64() - 0.04).abs() < 1e-9, "{d:?}");
        assert_eq!(
            Daemon::mean_between(&first, &first, "aether_queue_wait_seconds"),
            None
        );
        assert_eq!(Daemon::mean_between(&first, &last, "aether_missing"), None);
    }

    #[test]
    fn config_scales_to_zero_and_stays_in_the_run_dir() {
        let c = setup(Path::new("/tmp/run"), None).launch().config();
        for needle in [
            "state_dir: /tmp/run/state",
            "log_dir: /tmp/run/logs",
            "snapshot_dir: /tmp/run/snapshots",
            "metrics_addr: 127.0.0.1:4343",
            "listen_addr: 127.0.0.1",
            "id: hello",
            "trigger_port: 4242",
            "handler_path: /w/examples/hello.py",
            "min_instances: 0",
            "idle_timeout_ms: 200",
            "stable_window_ms: 2000",
            "egress: false",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in\n{c}");
        }
        assert!(!c.contains("warm_pool_size"));
        let w = setup(Path::new("/tmp/run"), Some(2)).launch();
        assert!(w.config().contains("\n  warm_pool_size: 2\n"), "{w:?}");
        assert_eq!(w.up_flags, ["--warm-pool"]);
        assert!(setup(Path::new("/tmp/run"), None)
            .launch()
            .up_flags
            .is_empty());
    }

    #[test]
    fn aetherctl_validates_the_generated_configs() {
        let dir = tempfile::tempdir().unwrap();
        let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.py");
        for warm in [None, Some(2)] {
            let mut s = setup(dir.path(), warm);
            s.site.handler.clone_from(&hello);
            crate::aetherd::assert_aetherctl_accepts(
                "coldstart aetherctl_validates_the_generated_configs",
                &s.launch().config(),
            );
        }
    }
}
