//! The cold-start benchmark (binary `coldstart`): how fast a function with
//! no running instance answers, for the quickstart's Python handler
//! (`examples/hello.py`, unchanged).
//!
//! One run measures, with the same number of starts each (50, 10 with
//! `--smoke`):
//!
//! - **baselines** ([`baseline`], no aetherd), run first and interleaved so
//!   noise hits them alike: a fresh spawn (`instance::start` → `READY`, and
//!   → first answer byte) against `criu restore` of a snapshot of the same
//!   handler by the command line (→ first answer byte of the restored copy;
//!   CRIU's own wall time beside it); then restores per second with 2 and 4
//!   workers restoring at once on the machine's two cores;
//! - **aetherd cold** ([`daemon`]): a request arriving while the function has
//!   zero instances, connect → first answer byte, through `aetherctl up`
//!   with `min_instances: 0`; `aether_instance_starts_total` says whether
//!   each start was a restore or a spawn, and aetherd's own restore time and
//!   the request's queue wait come from its histograms; the same request
//!   again while the instance runs gives the floor (`*_running_*`). Then the snapshot
//!   aetherd made is restored by the same `criu` command line, aetherd
//!   stopped (`criu_cli_aetherd_images_*`): the same images, without aetherd;
//! - **aetherd warm pool**: the same with `aetherctl up --warm-pool`, where a
//!   start should thaw a frozen restored instance (`source="warm"`).
//!
//! The JSON's `results` carry `aetherd_cold_p50_ms`, `aetherd_cold_p99_ms`,
//! `warm_pool_p50_us`, `criu_cli_p50_ms`, `spawn_p50_ms` and `restores_per_s`
//! (the names) and the numbers behind them; `targets` hold the
//! issue's: cold p50 ≤ 5 ms, p99 ≤ 15 ms, warm p50 ≤ 300 µs, ≥ 200
//! restores/s. Needs root and CRIU (`/usr/local/sbin/criu`); without them the
//! run fails saying so. An aetherd mode that cannot run (aetherd not built,
//! not scaling to zero, no snapshot, no warm pool) is `null` with its reason
//! in `results.errors`, and the process exits non-zero unless
//! `--allow-missing-aetherd`.

pub mod baseline;
pub mod daemon;
pub mod probe;

use crate::aetherd::{BinArgs, Site};
use crate::cli::CommonArgs;
use crate::clock::{duration_ns, utc_timestamp};
use crate::gateway::interrupt;
use crate::histogram::{HistogramError, LatencyHistogram, Percentiles};
use crate::machine::Machine;
use crate::report::{git_revision, Report, ReportError, Target};
use baseline::{BaselineError, Lab, Throughput};
use daemon::{ColdRun, Daemon, DaemonError, DaemonSetup};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Command line of the `coldstart` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "coldstart",
    about = "Cold starts of the quickstart's hello.py: through aetherd (scale to zero, warm pool) against criu restore and a fresh spawn"
)]
pub struct ColdstartArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Starts per mode [default: 50, smoke 10].
    #[arg(long)]
    pub samples: Option<usize>,

    /// Concurrent restore workers of the restores-per-second runs (one run each).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub workers: Vec<usize>,

    /// Window of each restores-per-second run, seconds [default: 10, smoke 2].
    #[arg(long)]
    pub restore_window_s: Option<f64>,

    /// The criu binary.
    #[arg(long, default_value = dataplane::criu::DEFAULT_CRIU_PATH)]
    pub criu: PathBuf,

    /// The handler [default: the quickstart's examples/hello.py in this workspace].
    #[arg(long)]
    pub handler: Option<PathBuf>,

    /// `idle_timeout_ms` of the function under aetherd.
    #[arg(long, default_value_t = 200)]
    pub idle_timeout_ms: u64,

    /// `stable_window_ms` of the function under aetherd (aetherd's minimum; it
    /// sets how long scale-down to zero takes, i.e. the wait between samples).
    #[arg(long, default_value_t = 1000)]
    pub stable_window_ms: u64,

    /// `warm_pool_size` of the warm-pool run.
    #[arg(long, default_value_t = 2)]
    pub warm_pool_size: u32,

    /// `--bin-dir` (aetherd, aetherctl) and `--no-build`
    /// (`cargo build --release -p dataplane -p control`).
    #[command(flatten)]
    pub bins: BinArgs,

    /// Skip the aetherd modes (only the baselines; exits non-zero unless
    /// --allow-missing-aetherd).
    #[arg(long)]
    pub skip_aetherd: bool,

    /// Report the aetherd modes as null instead of failing when they cannot run.
    #[arg(long)]
    pub allow_missing_aetherd: bool,

    /// Keep the run dirs (aetherd configs and logs, criu logs) and print their paths.
    #[arg(long)]
    pub keep_run_dir: bool,
}

/// Errors that end the benchmark.
#[derive(Debug, Error)]
pub enum ColdstartError {
    #[error("baseline: {0}")]
    Baseline(#[from] BaselineError),
    #[error("no handler: {0} does not exist; pass --handler PATH")]
    Handler(PathBuf),
    #[error("cannot create a temp dir for the run: {0}")]
    TempDir(std::io::Error),
    /// aetherd's snapshot could not be found for the command-line restores.
    #[error("aetherd's images: {0}")]
    AetherdImages(String),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
    /// aetherd modes that could not run.
    #[error("unavailable (results are null, see results.errors in {json}): {modes}; pass --allow-missing-aetherd to accept that")]
    Unavailable { modes: String, json: PathBuf },
    #[error("interrupted by a signal")]
    Interrupted,
}

fn ms(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
    let ns = ns as f64;
    ns / 1e6
}

fn us(ns: u64) -> f64 {
    ms(ns) * 1e3
}

/// Runs the benchmark; returns the JSON's path.
///
/// # Errors
/// [`ColdstartError`]: a failed baseline, an aetherd mode unavailable
/// without `--allow-missing-aetherd` (the JSON is still written), a write
/// error, a signal.
pub fn run(args: &ColdstartArgs) -> Result<PathBuf, ColdstartError> {
    interrupt::install();
    let smoke = args.common.smoke;
    let samples = args.samples.unwrap_or(if smoke { 10 } else { 50 }).max(1);
    let window = Duration::from_secs_f64(
        args.restore_window_s
            .unwrap_or(if smoke { 2.0 } else { 10.0 })
            .max(0.1),
    );
    let handler = args
        .handler
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello.py"));
    let handler = handler
        .canonicalize()
        .map_err(|_| ColdstartError::Handler(handler.clone()))?;
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let mut r = Map::new();

    // (c) the baselines: they must work.
    eprintln!("coldstart: baselines with {}", args.criu.display());
    let mut lab = Lab::new(&args.criu, &handler)?;
    let dump = lab.snapshot()?;
    eprintln!(
        "coldstart: criu dump of hello.py: {:.1} ms, {} KiB of images",
        dump.duration.as_secs_f64() * 1e3,
        dump.images_bytes >> 10
    );
    let (spawn, criu_cli) = baselines(&lab, samples)?;
    let mut throughput: Vec<Throughput> = Vec::new();
    for &w in &args.workers {
        eprintln!("coldstart: restores per second, {w} workers at once for {window:?}");
        let t = lab.restores_per_s(w, window)?;
        eprintln!(
            "coldstart:   {} restores in {:.2} s = {:.1} /s (each {:.1} ms p50 from netns to first byte)",
            t.restores,
            t.window.as_secs_f64(),
            t.per_s(),
            ms(t.latency.summary().p50_ns)
        );
        throughput.push(t);
    }
    if args.keep_run_dir {
        eprintln!(
            "coldstart: baseline run dir kept: {}",
            lab.keep_run_dir().display()
        );
    }
    let restore_command = lab.restore_command();
    let python = lab.python_version();

    // (a) and (b) through aetherd.
    let bin_dir = args.bins.dir();
    let run_dir = tempfile::Builder::new()
        .prefix("aether-coldstart.")
        .tempdir()
        .map_err(ColdstartError::TempDir)?;
    let (mut cold, mut warm, mut cli_aetherd_images) = (None, None, None);
    if args.skip_aetherd {
        errors.insert("aetherd".into(), "skipped (--skip-aetherd)".into());
    } else if let Err(why) = args.bins.build("coldstart", &["dataplane", "control"]) {
        errors.insert(
            "aetherd".into(),
            format!("build of dataplane/control failed: {why}"),
        );
    } else {
        for (mode, pool) in [
            ("aetherd_cold", None),
            ("warm_pool", Some(args.warm_pool_size)),
        ] {
            match measure_daemon(
                args,
                &bin_dir,
                &handler,
                run_dir.path(),
                mode,
                pool,
                samples,
            ) {
                Ok((run, _)) if pool.is_some() => warm = Some(run),
                Ok((run, port)) => {
                    cold = Some(run);
                    // The same images by the command line, aetherd stopped.
                    let snapshots = run_dir.path().join(mode).join("snapshots");
                    match aetherd_images_cli(&lab, &snapshots, port, samples) {
                        Ok(run) => cli_aetherd_images = Some(run),
                        Err(ColdstartError::Interrupted) => {
                            return Err(ColdstartError::Interrupted)
                        }
                        Err(e) => {
                            eprintln!("coldstart: criu restore of aetherd's images failed: {e}");
                            errors.insert("criu_cli_aetherd_images".into(), e.to_string());
                        }
                    }
                }
                Err(DaemonError::Interrupted) => return Err(ColdstartError::Interrupted),
                Err(e) => {
                    eprintln!("coldstart: {mode} failed: {e}");
                    errors.insert(mode.into(), e.to_string());
                }
            }
        }
    }

    let spawn_s = spawn.first_byte.summary();
    let criu_s = criu_cli.first_byte.summary();
    put_percentiles(&mut r, "spawn", "ms", Some(&spawn_s));
    put_percentiles(&mut r, "spawn_ready", "ms", Some(&spawn.ready.summary()));
    put_percentiles(&mut r, "criu_cli", "ms", Some(&criu_s));
    put_percentiles(
        &mut r,
        "criu_cli_criu",
        "ms",
        Some(&criu_cli.criu.summary()),
    );
    let foreign = cli_aetherd_images.as_ref();
    put_percentiles(
        &mut r,
        "criu_cli_aetherd_images",
        "ms",
        foreign.map(|c| c.first_byte.summary()).as_ref(),
    );
    put_percentiles(
        &mut r,
        "criu_cli_aetherd_images_criu",
        "ms",
        foreign.map(|c| c.criu.summary()).as_ref(),
    );
    r.insert(
        "criu_dump_ms".into(),
        json!(dump.duration.as_secs_f64() * 1e3),
    );
    r.insert("criu_images_kib".into(), json!(dump.images_bytes >> 10));
    #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
    let spawn_over_criu = spawn_s.p50_ns as f64 / criu_s.p50_ns.max(1) as f64;
    r.insert("spawn_over_criu_cli_p50".into(), json!(spawn_over_criu));
    put_throughput(&mut r, &throughput);
    put_cold(&mut r, "aetherd_cold", "ms", cold.as_ref());
    put_cold(&mut r, "warm_pool", "us", warm.as_ref());
    let criu_over = |run: Option<&ColdRun>| {
        #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
        run.map(|c| criu_s.p50_ns as f64 / c.latency.summary().p50_ns.max(1) as f64)
    };
    r.insert(
        "criu_cli_over_aetherd_cold_p50".into(),
        json!(criu_over(cold.as_ref())),
    );
    r.insert(
        "criu_cli_over_warm_pool_p50".into(),
        json!(criu_over(warm.as_ref())),
    );
    r.insert("errors".into(), json!(errors));
    let targets = targets(&r);

    let allowed = crate::affinity::allowed_cpus().unwrap_or_default();
    let (git_rev, git_dirty) = git_revision();
    let report = Report {
        benchmark: "coldstart".to_owned(),
        timestamp: utc_timestamp(),
        git_rev,
        git_dirty,
        machine: Machine::detect(&allowed),
        smoke,
        parameters: json!({
            "handler": handler.display().to_string(),
            "python": python,
            "samples_per_mode": samples,
            "request": format!("GET {} HTTP/1.1, Connection: close, on a new connection; timed from before connect (aetherd) or from the start of criu restore / instance start (baselines) to the first answer byte", probe::PATH),
            "spawn": "dataplane::instance::start (pid 1 of a new pid namespace, pre-made netns, own memory cgroup, READY on AETHER_SOCKET) → READY and port listening (spawn_ready_*), → first answer byte (spawn_*); netns made before the clock",
            "criu_dump": "after READY, no request (warmup_requests 0); --leave-running, --external net[INODE]:KEY, --network-lock skip",
            "criu_restore": restore_command,
            "criu_cli_aetherd_images": "criu_cli_aetherd_images_*: the snapshot aetherd made in the aetherd_cold run, restored by the same command line after aetherd stopped, with aetherd's restore options (its netns key, its log file handed in as a fresh file, --tcp-established)",
            "criu_cli_schedule": "spawn and criu restore samples alternate; netns and cgroup made before the clock",
            "restores_workers": args.workers,
            "restores_window_s": window.as_secs_f64(),
            "restores_schedule": "each worker loops: make netns + memory cgroup, criu restore (own work dir), GET in the netns, SIGKILL + reap, remove cgroup; restores completed in the window / window",
            "aetherd_function": {
                "min_instances": 0,
                "concurrency": 1,
                "idle_timeout_ms": args.idle_timeout_ms,
                "stable_window_ms": args.stable_window_ms,
                "egress": false,
                "memory_limit_mb": 128,
            },
            "aetherd_warm_pool_size": args.warm_pool_size,
            "aetherd_schedule": format!(
                "per sample: wait until sum(aether_instances{{function=\"hello\"}}) == 0 (warm pool: and aether_warm_pool_instances back at its level), still zero {} ms later with no start in between (else counted in *_unsettled_zeros and waited for again), one request; the starts it caused from the aether_instance_starts_total delta once it held still; then the same request again while the instance runs (*_running_*)",
                daemon::SETTLE.as_millis()
            ),
            "bin_dir": bin_dir.display().to_string(),
        }),
        results: Value::Object(r),
        targets,
    };
    let path = report.write_to(&args.common.output_dir)?;
    if args.keep_run_dir {
        eprintln!("coldstart: run dir kept: {}", run_dir.keep().display());
    }
    let missing: Vec<&str> = [
        ("aetherd_cold", cold.is_none()),
        ("warm_pool", warm.is_none()),
    ]
    .into_iter()
    .filter(|(_, absent)| *absent)
    .map(|(m, _)| m)
    .collect();
    if !missing.is_empty() && !args.allow_missing_aetherd {
        return Err(ColdstartError::Unavailable {
            modes: missing.join(", "),
            json: path,
        });
    }
    Ok(path)
}

/// The spawn and the criu-restore samples.
struct SpawnRun {
    ready: LatencyHistogram,
    first_byte: LatencyHistogram,
}

struct CriuRun {
    first_byte: LatencyHistogram,
    criu: LatencyHistogram,
}

/// `samples` spawns and `samples` restores, alternating.
fn baselines(lab: &Lab, samples: usize) -> Result<(SpawnRun, CriuRun), ColdstartError> {
    let mut spawn = SpawnRun {
        ready: LatencyHistogram::new()?,
        first_byte: LatencyHistogram::new()?,
    };
    let mut criu = CriuRun {
        first_byte: LatencyHistogram::new()?,
        criu: LatencyHistogram::new()?,
    };
    eprintln!("coldstart: {samples} spawns and {samples} criu restores, alternating");
    for i in 0..samples {
        if interrupt::interrupted() {
            return Err(ColdstartError::Interrupted);
        }
        let s = lab.spawn_once()?;
        spawn.ready.record(duration_ns(s.ready));
        spawn.first_byte.record(duration_ns(s.first_byte));
        let c = lab.restore_once()?;
        criu.first_byte.record(duration_ns(c.first_byte));
        criu.criu.record(duration_ns(c.criu));
        eprintln!(
            "coldstart: baseline {}/{samples}: spawn {:7.1} ms (READY {:7.1} ms)   criu restore {:6.1} ms (criu {:6.1} ms)",
            i + 1,
            s.first_byte.as_secs_f64() * 1e3,
            s.ready.as_secs_f64() * 1e3,
            c.first_byte.as_secs_f64() * 1e3,
            c.criu.as_secs_f64() * 1e3
        );
    }
    Ok((spawn, criu))
}

/// `samples` restores of the snapshot aetherd made under `snapshots` (one
/// directory per function, one per identity inside) by the command line.
fn aetherd_images_cli(
    lab: &Lab,
    snapshots: &Path,
    port: u16,
    samples: usize,
) -> Result<CriuRun, ColdstartError> {
    let fdir = snapshots.join(daemon::FUNCTION);
    let images = std::fs::read_dir(&fdir)
        .map_err(|e| ColdstartError::AetherdImages(format!("{}: {e}", fdir.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("inventory.img").is_file())
        .ok_or_else(|| {
            ColdstartError::AetherdImages(format!(
                "no image set (inventory.img) under {}",
                fdir.display()
            ))
        })?;
    eprintln!(
        "coldstart: {samples} criu restores of aetherd's own images {}",
        images.display()
    );
    let mut run = CriuRun {
        first_byte: LatencyHistogram::new()?,
        criu: LatencyHistogram::new()?,
    };
    for _ in 0..samples {
        if interrupt::interrupted() {
            return Err(ColdstartError::Interrupted);
        }
        let c = lab.restore_aetherd_images_once(&images, port)?;
        run.first_byte.record(duration_ns(c.first_byte));
        run.criu.record(duration_ns(c.criu));
    }
    eprintln!(
        "coldstart:   p50 {:.1} ms to the first answer byte (criu {:.1} ms)",
        ms(run.first_byte.summary().p50_ns),
        ms(run.criu.summary().p50_ns)
    );
    Ok(run)
}

/// One aetherd run: up, snapshot, (warm pool), `samples` cold requests, down.
fn measure_daemon(
    args: &ColdstartArgs,
    bin_dir: &Path,
    handler: &Path,
    run_dir: &Path,
    mode: &str,
    warm_pool: Option<u32>,
    samples: usize,
) -> Result<(ColdRun, u16), DaemonError> {
    let setup = DaemonSetup {
        site: Site::new(bin_dir, handler, run_dir.join(mode))?,
        idle_timeout_ms: args.idle_timeout_ms,
        stable_window_ms: args.stable_window_ms,
        warm_pool,
    };
    eprintln!(
        "coldstart: {mode}: aetherctl up{} (config {})",
        if warm_pool.is_some() {
            " --warm-pool"
        } else {
            ""
        },
        setup.site.dir.join(crate::aetherd::CONFIG_FILE).display()
    );
    let mut d = Daemon::start(setup)?;
    let snaps = d.await_snapshot()?;
    eprintln!("coldstart: {mode}: snapshot taken ({snaps} ok)");
    let level = match warm_pool {
        Some(size) => {
            let lvl = d.await_warm_pool(size)?;
            eprintln!("coldstart: {mode}: warm pool holds {lvl} frozen instance(s)");
            Some(lvl)
        }
        None => None,
    };
    let run = d.cold_requests(samples, level, mode)?;
    d.stop()?;
    Ok((run, d.addr().port()))
}

/// Picks one number out of a summary.
type Pick = fn(&Percentiles) -> u64;

/// `<prefix>_{p50,p99,max,mean,min}_<unit>` and `<prefix>_samples`.
fn put_percentiles(r: &mut Map<String, Value>, prefix: &str, unit: &str, p: Option<&Percentiles>) {
    let conv = |ns: u64| if unit == "us" { us(ns) } else { ms(ns) };
    let fields: [(&str, Pick); 4] = [
        ("p50", |p| p.p50_ns),
        ("p99", |p| p.p99_ns),
        ("min", |p| p.min_ns),
        ("max", |p| p.max_ns),
    ];
    for (name, f) in fields {
        r.insert(
            format!("{prefix}_{name}_{unit}"),
            json!(p.map(|p| conv(f(p)))),
        );
    }
    let mean = p.map(|p| {
        if unit == "us" {
            p.mean_ns / 1e3
        } else {
            p.mean_ns / 1e6
        }
    });
    r.insert(format!("{prefix}_mean_{unit}"), json!(mean));
    r.insert(format!("{prefix}_samples"), json!(p.map(|p| p.count)));
}

/// An aetherd mode's numbers (all null when it did not run).
fn put_cold(r: &mut Map<String, Value>, prefix: &str, unit: &str, run: Option<&ColdRun>) {
    let summary = run.map(|c| c.latency.summary());
    put_percentiles(r, prefix, unit, summary.as_ref());
    let running = run.map(|c| c.running.summary());
    put_percentiles(r, &format!("{prefix}_running"), "us", running.as_ref());
    for source in daemon::SOURCES {
        r.insert(
            format!("{prefix}_starts_{source}"),
            json!(run.map(|c| c.starts.get(source).copied().unwrap_or(0))),
        );
        // Latency of the samples whose request started this source.
        let p50 = run
            .and_then(|c| with_source(c, source))
            .map(|h| h.summary().p50_ns);
        let conv = |ns: u64| if unit == "us" { us(ns) } else { ms(ns) };
        r.insert(
            format!("{prefix}_{source}_p50_{unit}"),
            json!(p50.map(conv)),
        );
    }
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let per_request =
        run.map(|c| c.starts.values().sum::<u64>() as f64 / c.latency.len().max(1) as f64);
    r.insert(format!("{prefix}_starts_per_request"), json!(per_request));
    let served_by: Option<BTreeMap<&str, u64>> = run.map(|c| {
        c.by_source
            .iter()
            .map(|(k, h)| (k.as_str(), h.len()))
            .collect()
    });
    r.insert(
        format!("{prefix}_samples_by_start_source"),
        json!(served_by),
    );
    r.insert(
        format!("{prefix}_starts_metric_exported"),
        json!(run.map(|c| c.starts_exported)),
    );
    r.insert(
        format!("{prefix}_restore_failures"),
        json!(run.map(|c| c.restore_failures)),
    );
    r.insert(
        format!("{prefix}_zero_wait_p50_s"),
        json!(run.map(|c| c.zero_wait_p50.as_secs_f64())),
    );
    for (name, h) in [
        ("aetherd_restore", run.and_then(|c| c.aetherd_restore)),
        ("queue_wait", run.and_then(|c| c.queue_wait)),
    ] {
        r.insert(
            format!("{prefix}_{name}_mean_ms"),
            json!(h.map(|h| h.mean.as_secs_f64() * 1e3)),
        );
        r.insert(format!("{prefix}_{name}_count"), json!(h.map(|h| h.count)));
    }
    r.insert(
        format!("{prefix}_unsettled_zeros"),
        json!(run.map(|c| c.unsettled_zeros)),
    );
    r.insert(
        format!("{prefix}_snapshots_ok"),
        json!(run.map(|c| c.snapshots_ok)),
    );
    if prefix == "warm_pool" {
        r.insert(
            "warm_pool_level".into(),
            json!(run.and_then(|c| c.warm_level)),
        );
    }
}

/// The samples whose request started `source` (alone or with others).
fn with_source(run: &ColdRun, source: &str) -> Option<LatencyHistogram> {
    let mut merged: Option<LatencyHistogram> = None;
    for (key, h) in &run.by_source {
        if key.split('+').any(|s| s == source) {
            match &mut merged {
                Some(m) => m.merge(h).ok()?,
                None => merged = Some(h.clone()),
            }
        }
    }
    merged
}

/// `restores_per_s` (the best worker count) and each run's numbers.
fn put_throughput(r: &mut Map<String, Value>, runs: &[Throughput]) {
    let best = runs.iter().max_by(|a, b| a.per_s().total_cmp(&b.per_s()));
    r.insert("restores_per_s".into(), json!(best.map(Throughput::per_s)));
    r.insert(
        "restores_best_workers".into(),
        json!(best.map(|t| t.workers)),
    );
    for t in runs {
        let w = t.workers;
        let s = t.latency.summary();
        r.insert(format!("restores_per_s_w{w}"), json!(t.per_s()));
        r.insert(format!("restores_total_w{w}"), json!(t.restores));
        r.insert(
            format!("restores_window_s_w{w}"),
            json!(t.window.as_secs_f64()),
        );
        r.insert(format!("restores_latency_p50_ms_w{w}"), json!(ms(s.p50_ns)));
        r.insert(format!("restores_latency_p99_ms_w{w}"), json!(ms(s.p99_ns)));
    }
}

/// The targets, for the numbers that were measured.
fn targets(r: &Map<String, Value>) -> BTreeMap<String, Target> {
    let specs: [(&str, &str, bool, f64); 4] = [
        (
            "aetherd_cold_p50_ms",
            "cold start through aetherd (zero instances → first answer byte), p50, ms",
            true,
            5.0,
        ),
        (
            "aetherd_cold_p99_ms",
            "cold start through aetherd (zero instances → first answer byte), p99, ms",
            true,
            15.0,
        ),
        (
            "warm_pool_p50_us",
            "warm-pool start through aetherd (a frozen instance thawed → first answer byte), p50, µs",
            true,
            300.0,
        ),
        (
            "restores_per_s",
            "restores of one snapshot per second on the node (2 cores), each serving one request",
            false,
            200.0,
        ),
    ];
    specs
        .into_iter()
        .filter_map(|(key, what, at_most, limit)| {
            let v = r.get(key)?.as_f64()?;
            let t = if at_most {
                Target::at_most(what, limit, v)
            } else {
                Target::at_least(what, limit, v)
            };
            Some((key.to_owned(), t))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn targets_only_for_measured_numbers() {
        let mut r = Map::new();
        r.insert("aetherd_cold_p50_ms".into(), json!(4.0));
        r.insert("aetherd_cold_p99_ms".into(), json!(16.0));
        r.insert("warm_pool_p50_us".into(), Value::Null);
        r.insert("restores_per_s".into(), json!(250.0));
        let t = targets(&r);
        assert!(t["aetherd_cold_p50_ms"].pass);
        assert!(!t["aetherd_cold_p99_ms"].pass);
        assert!(t["restores_per_s"].pass);
        assert!(!t.contains_key("warm_pool_p50_us"));
    }

    #[test]
    fn per_source_latency_counts_every_request_that_started_it() {
        let h = |ns: &[u64]| {
            let mut h = LatencyHistogram::new().unwrap();
            for &n in ns {
                h.record(n);
            }
            h
        };
        let run = ColdRun {
            latency: h(&[1, 2, 3, 4, 5, 6]),
            by_source: BTreeMap::from([
                ("restore".to_owned(), h(&[1, 2])),
                ("restore+warm".to_owned(), h(&[3])),
                ("warm".to_owned(), h(&[4, 5, 6])),
            ]),
            starts: BTreeMap::from([("restore".to_owned(), 3), ("warm".to_owned(), 4)]),
            restore_failures: 0,
            starts_exported: true,
            zero_wait_p50: Duration::ZERO,
            warm_level: Some(2.0),
            snapshots_ok: 1.0,
            aetherd_restore: None,
            queue_wait: Some(daemon::HistogramDelta {
                mean: Duration::from_millis(40),
                count: 6.0,
            }),
            running: h(&[100_000, 200_000, 300_000]),
            unsettled_zeros: 0,
        };
        assert_eq!(with_source(&run, "warm").unwrap().len(), 4);
        assert_eq!(with_source(&run, "restore").unwrap().len(), 3);
        assert!(with_source(&run, "spawn").is_none());
        let mut r = Map::new();
        put_cold(&mut r, "warm_pool", "us", Some(&run));
        assert_eq!(r["warm_pool_starts_warm"], 4);
        assert_eq!(r["warm_pool_starts_spawn"], 0);
        assert!((r["warm_pool_starts_per_request"].as_f64().unwrap() - 7.0 / 6.0).abs() < 1e-9);
        assert_eq!(r["warm_pool_samples_by_start_source"]["restore+warm"], 1);
        assert!((r["warm_pool_queue_wait_mean_ms"].as_f64().unwrap() - 40.0).abs() < 1e-9);
        assert_eq!(r["warm_pool_aetherd_restore_mean_ms"], Value::Null);
        assert!((r["warm_pool_running_p50_us"].as_f64().unwrap() - 200.0).abs() < 0.5);
        assert_eq!(r["warm_pool_running_samples"], 3);
    }

    #[test]
    fn missing_modes_are_null_with_their_names() {
        let mut r = Map::new();
        put_cold(&mut r, "warm_pool", "us", None);
        for key in [
            "warm_pool_p50_us",
            "warm_pool_p99_us",
            "warm_pool_starts_warm",
            "warm_pool_warm_p50_us",
        ] {
            assert_eq!(r[key], Value::Null, "{key}");
        }
        let mut h = LatencyHistogram::new().unwrap();
        h.record(2_000_000);
        h.record(4_000_000);
        put_percentiles(&mut r, "spawn", "ms", Some(&h.summary()));
        assert!((r["spawn_max_ms"].as_f64().unwrap() - 4.0).abs() < 0.01);
        assert_eq!(r["spawn_samples"], 2);
    }
}
