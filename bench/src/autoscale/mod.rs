//! The autoscaling benchmark (binary `autoscale`): how fast a function at
//! zero instances gets to full capacity under a sudden burst, how long
//! requests wait meanwhile, and whether any fails (issue 6, item 7).
//!
//! # Set-up
//!
//! aetherd ([`daemon`]) runs one function with `min_instances: 0`. By
//! default its handler is `dataplane/tests/autoscale_support/slow.py` and
//! every request is `GET /sleep/50` (`--service-ms`): 50 ms of handler time
//! per request (one thread per connection, and a listen backlog large enough
//! for `concurrency` connections opened at once), so
//! the 50 clients really keep about 50 requests inside aetherd (in flight or
//! queued), which is what the autoscaler samples, while the handlers use
//! little cpu (about 1000 requests/s in all). With `--service-ms 0` the
//! handler is `hello-native` (the gateway benchmark's compiled handler, a few
//! µs per request) asked for `GET /bench`: the clients then spend much of
//! their time in their own loop and the kernel, on the same 2 cpus, so aetherd
//! sees a lower and noisier concurrency. After `aetherctl up` the benchmark
//! waits for one answer, for the function's first snapshot
//! (`aether_snapshots_total{outcome="ok"}` ≥ 1: new instances are then CRIU
//! restores) and until it has scaled to zero.
//!
//! **Why `concurrency: 8`, `max_instances: 8`.** 50 closed-loop clients keep
//! up to 50 requests in flight or queued. With `target_utilization: 0.7` an
//! instance is meant to carry 8 × 0.7 = 5.6 of them, so for the full 50 the
//! autoscaler wants ⌈50 / 5.6⌉ = 9 instances, clamped to `max_instances` = 8
//! (the *planned* capacity, `min(max_instances, ⌈clients / (concurrency ×
//! target_utilization)⌉)`); 8 × 8 = 64 slots ≥ 50, so at that size nothing
//! queues any more. On a 2-core machine (4 instances per core, one handler
//! thread each) that is the most that makes sense. Because the concurrency
//! aetherd samples may stay below 50 (always with `--service-ms 0`), the
//! **full capacity of a burst** is the peak
//! of `aether_autoscale_desired_instances` during it (at most
//! `max_instances`; the planned capacity if the gauge is missing).
//!
//! # A round
//!
//! 1. Wait until a whole `stable_window_ms` has passed since the previous
//!    round's last burst (so the autoscaler's windows hold no earlier load:
//!    otherwise it sizes the burst from that history) and the function has
//!    0 instances (every state, every core).
//! 2. **Cold burst** ([`burst`]): `clients` keep-alive connections (opened
//!    beforehand) all start requesting at t0 and loop for the
//!    window; the main thread scrapes `/metrics` every 10 ms.
//! 3. **Warm burst** (the same-run baseline): the same burst again at once,
//!    while the instances of the cold burst are still up.
//!
//! Full runs do 5 rounds with a 3 s window, smoke runs 1 round of 1 s.
//!
//! # Results (`results`)
//!
//! - `burst_to_capacity_ms`: the worst round's time from t0 until the first
//!   metrics scrape, *answered* after t0, that shows `ready ≥` the burst's
//!   full capacity (ready = `aether_instances{function,state∈ready|serving|idle}`
//!   summed over cores). Polling every 10 ms (plus the scrape's own time,
//!   `poll_interval_ms`: per-round mean, median over rounds; longer when 50 clients saturate the cpus) makes
//!   it an upper bound by at most one poll interval (during a burst aetherd
//!   takes ~35 ms to answer a scrape, ~1 ms when idle, so the resolution is
//!   about that: `poll_interval_ms`). `null`
//!   when a round never got there within its window. `burst_to_capacity_ms_median`,
//!   `burst_to_capacity_ms_rounds` and `capacity_instances_rounds` give the
//!   rest; `burst_to_planned_capacity_ms_rounds` the same for the planned
//!   capacity (`null` where it was not reached).
//! - `queue_wait_p99_ms`: p99 of aetherd's own `aether_queue_wait_seconds`
//!   histogram (time a request waited for an instance slot; requests that did
//!   not wait are observed as 0), over the cold bursts only: the difference of
//!   the cumulative buckets scraped before and after each cold burst, summed
//!   over cores and rounds, estimated like Prometheus' `histogram_quantile`
//!   (linear inside the bucket; resolution is the bucket layout). `null` when
//!   aetherd does not export the histogram. Its first bucket is exactly 0 s,
//!   so `queue_waited_requests` counts the requests that waited at all and
//!   `queue_wait_p{50,99}_of_waiting_ms` describe only those (in a closed
//!   loop most requests come after capacity is there and wait 0, which is
//!   what the plain p99 says). `warm_queue_wait_p99_ms`: the same over the
//!   warm bursts.
//! - `failed_requests`: non-`200` answers and broken connections, cold and
//!   warm bursts, all rounds.
//! - Client side: `cold_latency_*_ms` / `warm_latency_*_ms` (write of a
//!   request to its complete response, `200`s only) and their p99 ratio;
//!   `first_response_ms_max` (t0 to a client's first `200`, worst client);
//!   `instance_starts_{restore,spawn,warm}` during cold bursts; the peaks of
//!   desired and ready instances; `polls_over_max_instances`, the polls
//!   (of `polls`) that saw more instances, in any state, than `max_instances`.
//!
//! Targets (issue 6): zero failed requests; full capacity within 1000 ms of
//! the burst with snapshots available.

pub mod burst;
pub mod daemon;
pub mod metrics;

use crate::aetherd::{Aetherd, AetherdError, BinArgs, Site};
use crate::cli::CommonArgs;
use crate::clock::utc_timestamp;
use crate::gateway::interrupt::{self, interrupted};
use crate::gateway::process::ProcessError;
use crate::gateway::{expected_body, http::get_request, REQUEST_PATH};
use crate::histogram::{HistogramError, LatencyHistogram};
use crate::machine::Machine;
use crate::report::{git_revision, Report, ReportError, Target};
use burst::{BurstError, BurstOutcome, BurstPlan, Poll};
use daemon::{Scaling, FUNCTION_ID};
use metrics::{Buckets, Metrics};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The full-capacity target of issue 6, ms.
pub const CAPACITY_TARGET_MS: f64 = 1000.0;
/// How long the function may take to scale to zero, or to be snapshotted.
const SETTLE: Duration = Duration::from_secs(60);

/// Command line of the `autoscale` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "autoscale",
    about = "A 0 → N clients burst against a function at zero instances: time to full capacity, queue wait, failed requests"
)]
pub struct AutoscaleArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Concurrent clients of the burst.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,

    /// Window of each burst, seconds [default: 3, smoke 1].
    #[arg(long)]
    pub window_s: Option<f64>,

    /// Rounds (cold burst from zero, then warm burst) [default: 5, smoke 1].
    #[arg(long)]
    pub rounds: Option<u32>,

    /// `concurrency` of the function (in-flight requests per instance).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u32,

    /// `max_instances` of the function (total over cores).
    #[arg(long, default_value_t = 8)]
    pub max_instances: u32,

    /// `target_utilization` of the function.
    #[arg(long, default_value_t = 0.7)]
    pub target_utilization: f64,

    /// `idle_timeout_ms`: how soon the function scales back to zero between rounds.
    #[arg(long, default_value_t = 1000)]
    pub idle_timeout_ms: u64,

    /// `stable_window_ms` (the panic window is 10 % of it).
    #[arg(long, default_value_t = 10_000)]
    pub stable_window_ms: u64,

    /// Metrics poll interval during a burst, ms.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,

    /// Handler time per request, ms: `GET /sleep/N` to
    /// `dataplane/tests/autoscale_support/slow.py`; 0 = `GET /bench` to `hello-native`.
    #[arg(long, default_value_t = 50)]
    pub service_ms: u64,

    /// `--bin-dir` (hello-native, aetherd, aetherctl) and `--no-build`
    /// (`cargo build --release -p native-hello -p dataplane -p control`).
    #[command(flatten)]
    pub bins: BinArgs,

    /// Keep the run's temp dir (config, aetherd log, snapshots) and print its path.
    #[arg(long)]
    pub keep_run_dir: bool,
}

/// Errors that end the benchmark.
#[derive(Debug, Error)]
pub enum AutoscaleError {
    /// aetherd needs root (namespaces, cgroups, CRIU).
    #[error("the autoscale benchmark runs aetherd, which needs root; run it as root")]
    NotRoot,
    /// `cargo build` failed.
    #[error("building the binaries failed: {0}")]
    Build(String),
    /// The run directory could not be created.
    #[error("cannot create a temp dir for the run: {0}")]
    TempDir(std::io::Error),
    #[error("aetherd: {0}")]
    Daemon(#[from] AetherdError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The function did not reach the state a round starts from.
    #[error("{what} within {within:?}; last metrics: {last}{log}")]
    Settle {
        what: String,
        within: Duration,
        last: String,
        log: String,
    },
    #[error(transparent)]
    Burst(#[from] BurstError),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("interrupted by a signal; aetherd stopped")]
    Interrupted,
}

/// What was run (the JSON's `parameters`).
#[derive(Debug, Clone, Serialize)]
pub struct AutoscaleParameters {
    pub request: String,
    /// Handler time per request, ms (0: hello-native, a few µs).
    pub service_ms: u64,
    pub handler: String,
    pub clients: usize,
    pub window_s: f64,
    pub rounds: u32,
    pub poll_ms: u64,
    pub scaling: Scaling,
    /// Ready instances that would carry all clients (see the module docs).
    pub planned_capacity_instances: u32,
    pub capacity_rule: String,
    pub burst_to_capacity_definition: String,
    pub queue_wait_method: String,
    pub baseline: String,
}

/// One round's two bursts and what aetherd counted during the cold one.
#[derive(Debug)]
struct Round {
    cold: BurstOutcome,
    warm: BurstOutcome,
    cold_wait: Buckets,
    warm_wait: Buckets,
    starts: BTreeMap<&'static str, f64>,
    restore_failures: f64,
    /// Full capacity of the cold burst (ready instances).
    capacity: u32,
    /// t0 to `capacity` ready, ms.
    to_capacity: Option<f64>,
    /// t0 to the planned capacity ready, ms.
    to_planned: Option<f64>,
    zero_after_ms: f64,
}

/// Ready instances that make full capacity for `clients` (module docs).
#[must_use]
pub fn capacity(clients: usize, s: &Scaling) -> u32 {
    #[allow(clippy::cast_precision_loss)] // client counts are small
    let want = (clients as f64 / (f64::from(s.concurrency) * s.target_utilization)).ceil();
    burst::count(want).clamp(1, s.max_instances.max(1))
}

/// Runs the benchmark; returns the JSON's path.
///
/// # Errors
/// [`AutoscaleError`]: not root, aetherd not starting or serving, the
/// function not settling at zero, a signal, a write error. A missed target
/// is not an error (see the JSON's `targets`).
pub fn run(args: &AutoscaleArgs) -> Result<PathBuf, AutoscaleError> {
    interrupt::install();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(AutoscaleError::NotRoot);
    }
    let smoke = args.common.smoke;
    let window = Duration::from_secs_f64(
        args.window_s
            .unwrap_or(if smoke { 1.0 } else { 3.0 })
            .max(0.1),
    );
    let rounds = args.rounds.unwrap_or(if smoke { 1 } else { 5 }).max(1);
    let scaling = Scaling {
        concurrency: args.concurrency.max(1),
        target_utilization: args.target_utilization,
        max_instances: args.max_instances.max(1),
        idle_timeout_ms: args.idle_timeout_ms,
        stable_window_ms: args.stable_window_ms,
        panic_window_pct: 10.0,
        queue_size: 1024,
    };
    let plan = BurstPlan {
        clients: args.clients.max(1),
        window,
        poll_every: Duration::from_millis(args.poll_ms.max(1)),
    };
    let planned = capacity(plan.clients, &scaling);

    let bin_dir = args.bins.dir();
    args.bins
        .build("autoscale", &["native-hello", "dataplane", "control"])
        .map_err(AutoscaleError::Build)?;
    let work = Workload::new(args.service_ms, &bin_dir)?;
    let handler = work.handler.clone();
    let run_dir = tempfile::Builder::new()
        .prefix("aether-autoscale.")
        .tempdir()
        .map_err(AutoscaleError::TempDir)?;
    let site = Site::new(&bin_dir, &handler, run_dir.path().to_path_buf())?;
    eprintln!("autoscale: starting aetherd (aetherctl up)");
    let mut daemon = Aetherd::start(&daemon::launch(site, scaling))?;
    daemon.await_serving(
        &work.path,
        |body| burst::contains(body, &work.expect),
        Duration::from_secs(30),
    )?;

    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    eprintln!("autoscale: waiting for the function's snapshot");
    let snapshot = settle(
        &daemon,
        "no snapshot of the function",
        Duration::from_secs(30),
        |m| {
            m.sum(
                "aether_snapshots_total",
                &[("function", FUNCTION_ID), ("outcome", "ok")],
            )
            .is_some_and(|n| n >= 1.0)
        },
    );
    let snapshot_available = match snapshot {
        Ok(_) => true,
        Err(AutoscaleError::Interrupted) => return Err(AutoscaleError::Interrupted),
        Err(e) => {
            eprintln!("autoscale: bursting without a snapshot (instances are spawned): {e}");
            errors.insert("snapshot".into(), e.to_string());
            false
        }
    };

    let request = get_request(&work.path);
    let mut done = Vec::new();
    // The autoscaler's stable window still holds the previous burst long
    // after the function is back at zero (it sized the next burst from that
    // history: 0 → 6 at once, then the last two only as the average rose).
    // Each round starts once a whole stable window has passed since the
    // previous burst, so every round is a burst onto a quiet function.
    let quiet = Duration::from_millis(scaling.stable_window_ms);
    let mut last_burst: Option<Instant> = None;
    for r in 1..=rounds {
        if let Some(end) = last_burst {
            let wait = quiet.saturating_sub(end.elapsed());
            eprintln!("autoscale: {wait:?} more for the stable window to forget the last burst");
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if interrupted() {
                    return Err(AutoscaleError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let zero = Instant::now();
        settle(
            &daemon,
            "the function did not scale to zero instances",
            SETTLE,
            |m| {
                m.sum("aether_instances", &[("function", FUNCTION_ID)])
                    .is_some_and(|n| n < 0.5)
            },
        )?;
        let zero_after_ms = zero.elapsed().as_secs_f64() * 1e3;
        let before = scrape(&daemon)?;
        let cold = burst::run(daemon.addr, daemon.metrics, &request, &work.expect, plan)?;
        let mid = scrape(&daemon)?;
        let warm = burst::run(daemon.addr, daemon.metrics, &request, &work.expect, plan)?;
        let after = scrape(&daemon)?;
        last_burst = Some(Instant::now());
        let wait =
            |m: &Metrics| m.buckets("aether_queue_wait_seconds", &[("function", FUNCTION_ID)]);
        let counter = |m: &Metrics, name: &str, label: (&str, &str)| {
            m.sum(name, &[("function", FUNCTION_ID), label])
                .unwrap_or(0.0)
        };
        let mut starts = BTreeMap::new();
        for source in ["restore", "spawn", "warm"] {
            let n = |m: &Metrics| counter(m, "aether_instance_starts_total", ("source", source));
            starts.insert(source, n(&mid) - n(&before));
        }
        let failures = |m: &Metrics| {
            m.sum(
                "aether_restore_failures_total",
                &[("function", FUNCTION_ID)],
            )
            .unwrap_or(0.0)
        };
        let full = cold.full_capacity(scaling.max_instances, planned);
        let ms_of = |d: Duration| d.as_secs_f64() * 1e3;
        let round = Round {
            capacity: full,
            to_capacity: cold.time_to_ready(full).map(ms_of),
            to_planned: cold.time_to_ready(planned).map(ms_of),
            cold_wait: wait(&mid).since(&wait(&before)),
            warm_wait: wait(&after).since(&wait(&mid)),
            restore_failures: failures(&mid) - failures(&before),
            cold,
            warm,
            starts,
            zero_after_ms,
        };
        eprintln!(
            "autoscale: round {r}/{rounds}: capacity ({} ready) after {}, {} + {} ok, {} + {} failed, cold p99 {:.1} ms, warm p99 {:.1} ms, starts {:?}",
            round.capacity,
            round
                .to_capacity
                .map_or("never".to_owned(), |ms| format!("{ms:.0} ms")),
            round.cold.ok,
            round.warm.ok,
            round.cold.failed,
            round.warm.failed,
            ms(round.cold.latency.quantile(0.99)),
            ms(round.warm.latency.quantile(0.99)),
            round.starts,
        );
        for f in round.cold.failures.iter().chain(&round.warm.failures) {
            eprintln!("autoscale:   failed: {f}");
        }
        done.push(round);
        if interrupted() {
            return Err(AutoscaleError::Interrupted);
        }
    }
    eprintln!("autoscale: stopping aetherd (aetherctl down)");
    if let Err(e) = daemon.stop() {
        errors.insert("aetherd_down".into(), e.to_string());
    }

    let (results, targets) = results(&done, scaling.max_instances, snapshot_available, errors)?;
    let (git_rev, git_dirty) = git_revision();
    let allowed = crate::affinity::allowed_cpus().unwrap_or_default();
    let report = Report {
        benchmark: "autoscale".to_owned(),
        timestamp: utc_timestamp(),
        git_rev,
        git_dirty,
        machine: Machine::detect(&allowed),
        smoke,
        parameters: AutoscaleParameters {
            request: format!(
                "GET {} HTTP/1.1, keep-alive, one connection per client, opened before t0; a 200 must contain {:?}",
                work.path,
                String::from_utf8_lossy(&work.expect)
            ),
            service_ms: args.service_ms,
            handler: handler.display().to_string(),
            clients: plan.clients,
            window_s: window.as_secs_f64(),
            rounds,
            poll_ms: args.poll_ms,
            scaling,
            planned_capacity_instances: planned,
            capacity_rule: "full capacity of a burst = min(max_instances, peak aether_autoscale_desired_instances during it); \
                planned = min(max_instances, ceil(clients / (concurrency × target_utilization)))"
                .to_owned(),
            burst_to_capacity_definition: "t0 (all clients released) to the arrival of the first /metrics answer showing \
                ready instances (states ready|serving|idle, summed over cores) ≥ the burst's full capacity; worst round"
                .to_owned(),
            queue_wait_method: "aetherd's aether_queue_wait_seconds histogram: bucket-wise difference across each cold \
                burst, summed over cores and rounds, quantile interpolated linearly inside its bucket"
                .to_owned(),
            baseline: "warm burst: the same burst right after the cold one, with its instances still up".to_owned(),
        },
        results,
        targets,
    };
    let path = report.write_to(&args.common.output_dir)?;
    if args.keep_run_dir {
        eprintln!("autoscale: run dir kept: {}", run_dir.keep().display());
    }
    Ok(path)
}

/// What the function runs and what every request asks for.
#[derive(Debug, Clone)]
struct Workload {
    handler: PathBuf,
    path: String,
    /// Bytes every `200`'s body must contain.
    expect: Vec<u8>,
}

impl Workload {
    fn new(service_ms: u64, bin_dir: &Path) -> Result<Self, AutoscaleError> {
        if service_ms == 0 {
            return Ok(Self {
                handler: bin_dir.join("hello-native"),
                path: REQUEST_PATH.to_owned(),
                expect: expected_body(),
            });
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dataplane/tests/autoscale_support/slow.py");
        let handler = script
            .canonicalize()
            .map_err(|_| AutoscaleError::Daemon(AetherdError::Missing(script)))?;
        let path = format!("/sleep/{service_ms}");
        Ok(Self {
            handler,
            expect: format!(r#""path": "{path}""#).into_bytes(),
            path,
        })
    }
}

/// One scrape of the daemon's metrics, as a settle error on failure.
fn scrape(daemon: &Aetherd) -> Result<Metrics, AutoscaleError> {
    Metrics::scrape(daemon.metrics).map_err(|e| AutoscaleError::Settle {
        what: "the metrics endpoint did not answer".into(),
        within: Duration::ZERO,
        last: e.to_string(),
        log: daemon.log_tail(),
    })
}

/// Polls the metrics every 50 ms until `cond` holds; the metrics that did.
fn settle(
    daemon: &Aetherd,
    what: &str,
    within: Duration,
    cond: impl Fn(&Metrics) -> bool,
) -> Result<Metrics, AutoscaleError> {
    let start = Instant::now();
    let mut last = String::from("no scrape");
    while start.elapsed() < within {
        if interrupted() {
            return Err(AutoscaleError::Interrupted);
        }
        match Metrics::scrape(daemon.metrics) {
            Ok(m) if cond(&m) => return Ok(m),
            Ok(m) => {
                last = format!("{:?}", Poll::read(&m, start.elapsed()));
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(AutoscaleError::Settle {
        what: what.to_owned(),
        within,
        last,
        log: daemon.log_tail(),
    })
}

/// Nanoseconds as milliseconds.
fn ms(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
    let ns = ns as f64;
    ns / 1e6
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The flat `results` object and the targets of issue 6.
fn results(
    rounds: &[Round],
    max_instances: u32,
    snapshot_available: bool,
    errors: BTreeMap<String, String>,
) -> Result<(Value, BTreeMap<String, Target>), AutoscaleError> {
    let mut cold = LatencyHistogram::new()?;
    let mut warm = LatencyHistogram::new()?;
    let (mut cold_wait, mut warm_wait) = (Buckets::default(), Buckets::default());
    let mut starts: BTreeMap<&str, f64> = BTreeMap::new();
    let (mut ok, mut failed, mut scrape_errors, mut restore_failures) = (0, 0, 0, 0.0);
    let mut first_max: Option<Duration> = Some(Duration::ZERO);
    let mut to_capacity: Vec<Option<f64>> = Vec::new();
    let mut polls: Vec<&Poll> = Vec::new();
    for r in rounds {
        cold.merge(&r.cold.latency)?;
        warm.merge(&r.warm.latency)?;
        cold_wait.add(&r.cold_wait);
        warm_wait.add(&r.warm_wait);
        for (k, v) in &r.starts {
            *starts.entry(k).or_default() += v;
        }
        ok += r.cold.ok + r.warm.ok;
        failed += r.cold.failed + r.warm.failed;
        scrape_errors += r.cold.scrape_errors + r.warm.scrape_errors;
        restore_failures += r.restore_failures;
        // A client that never got a 200 makes the worst first response unknown.
        for f in &r.cold.first_ok {
            first_max = first_max.zip(*f).map(|(a, b)| a.max(b));
        }
        to_capacity.push(r.to_capacity);
        polls.extend(&r.cold.polls);
    }
    let reached: Vec<f64> = to_capacity.iter().flatten().copied().collect();
    let worst = if reached.len() == to_capacity.len() {
        reached.iter().copied().reduce(f64::max)
    } else {
        None
    };
    let mut sorted = reached.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |b: &Buckets, q: f64| b.quantile(q).map(|s| s * 1e3);
    let (c, w) = (cold.summary(), warm.summary());
    let mut r = Map::new();
    r.insert("burst_to_capacity_ms".into(), json!(worst));
    r.insert("burst_to_capacity_ms_median".into(), json!(median(&sorted)));
    r.insert("burst_to_capacity_ms_rounds".into(), json!(to_capacity));
    r.insert(
        "capacity_instances_rounds".into(),
        json!(rounds.iter().map(|r| r.capacity).collect::<Vec<_>>()),
    );
    r.insert(
        "burst_to_planned_capacity_ms_rounds".into(),
        json!(rounds.iter().map(|r| r.to_planned).collect::<Vec<_>>()),
    );
    r.insert(
        "poll_interval_ms".into(),
        json!(median(&{
            let mut v: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.cold.poll_interval_ms())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        })),
    );
    r.insert("queue_wait_p99_ms".into(), json!(q(&cold_wait, 0.99)));
    r.insert("queue_wait_p50_ms".into(), json!(q(&cold_wait, 0.5)));
    r.insert("queue_wait_p999_ms".into(), json!(q(&cold_wait, 0.999)));
    r.insert("queue_wait_observations".into(), json!(cold_wait.count()));
    // aetherd's histogram has a bucket at exactly 0 s: requests that found a
    // free slot at once. The rest waited; their own distribution:
    r.insert("queue_waited_requests".into(), json!(cold_wait.above(0.0)));
    let waited = cold_wait.only_above(0.0);
    r.insert(
        "queue_wait_p50_of_waiting_ms".into(),
        json!(q(&waited, 0.5)),
    );
    r.insert(
        "queue_wait_p99_of_waiting_ms".into(),
        json!(q(&waited, 0.99)),
    );
    r.insert(
        "queue_wait_max_bucket_ms".into(),
        json!(cold_wait.max_bound().map(|s| s * 1e3)),
    );
    r.insert("warm_queue_wait_p99_ms".into(), json!(q(&warm_wait, 0.99)));
    r.insert("failed_requests".into(), json!(failed));
    r.insert("ok_requests".into(), json!(ok));
    r.insert("cold_latency_p50_ms".into(), json!(ms(c.p50_ns)));
    r.insert("cold_latency_p99_ms".into(), json!(ms(c.p99_ns)));
    r.insert("cold_latency_max_ms".into(), json!(ms(c.max_ns)));
    r.insert("warm_latency_p50_ms".into(), json!(ms(w.p50_ns)));
    r.insert("warm_latency_p99_ms".into(), json!(ms(w.p99_ns)));
    #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
    let ratio = (w.p99_ns > 0).then(|| c.p99_ns as f64 / w.p99_ns as f64);
    r.insert("cold_over_warm_latency_p99".into(), json!(ratio));
    r.insert(
        "first_response_ms_max".into(),
        json!(first_max.map(|d| d.as_secs_f64() * 1e3)),
    );
    for (k, v) in &starts {
        r.insert(format!("instance_starts_{k}"), json!(v));
    }
    r.insert("restore_failures".into(), json!(restore_failures));
    r.insert(
        "desired_peak".into(),
        json!(polls.iter().filter_map(|p| p.desired).max()),
    );
    r.insert(
        "ready_peak".into(),
        json!(polls.iter().map(|p| p.ready).max()),
    );
    r.insert(
        "total_peak".into(),
        json!(polls.iter().map(|p| p.total).max()),
    );
    // max_instances is a ceiling on instances in every state.
    let over_max: Vec<&&Poll> = polls.iter().filter(|p| p.total > max_instances).collect();
    r.insert("polls_over_max_instances".into(), json!(over_max.len()));
    r.insert("polls".into(), json!(polls.len()));
    r.insert(
        "panic_seen".into(),
        json!(polls.iter().any(|p| p.panic == Some(true))),
    );
    r.insert("snapshot_available".into(), json!(snapshot_available));
    r.insert(
        "scale_to_zero_wait_ms".into(),
        json!(rounds.iter().map(|r| r.zero_after_ms).collect::<Vec<_>>()),
    );
    r.insert("metrics_scrape_errors".into(), json!(scrape_errors));
    r.insert("errors".into(), json!(errors));

    let mut targets = BTreeMap::new();
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let failed_f = failed as f64;
    targets.insert(
        "failed_requests".to_owned(),
        Target::at_most(
            "failed requests during the 0 → N bursts (cold and warm)",
            0.0,
            failed_f,
        ),
    );
    targets.insert(
        "burst_to_capacity_ms".to_owned(),
        Target::at_most(
            &format!(
                "worst round: burst start to full capacity, ms (snapshots available: {snapshot_available}; never reached = infinite)"
            ),
            CAPACITY_TARGET_MS,
            worst.unwrap_or(f64::INFINITY),
        ),
    );
    Ok((Value::Object(r), targets))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    fn scaling(concurrency: u32, max: u32) -> Scaling {
        Scaling {
            concurrency,
            target_utilization: 0.7,
            max_instances: max,
            idle_timeout_ms: 1000,
            stable_window_ms: 10_000,
            panic_window_pct: 10.0,
            queue_size: 1024,
        }
    }

    #[test]
    fn capacity_is_the_autoscalers_want_clamped_to_max() {
        // 50 / (8 × 0.7) = 8.93 → 9, clamped to 8.
        assert_eq!(capacity(50, &scaling(8, 8)), 8);
        assert_eq!(capacity(50, &scaling(8, 16)), 9);
        // 5 / (8 × 0.7) < 1 → 1.
        assert_eq!(capacity(5, &scaling(8, 8)), 1);
        assert_eq!(capacity(50, &scaling(1, 6)), 6);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 9.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 9.0]), Some(3.0));
    }
}
