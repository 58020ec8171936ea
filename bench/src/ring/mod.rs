//! The shared-memory ring benchmark (binary `ring`).
//!
//! Two processes, pinned to two different cpus, measure in one run:
//!
//! 1. **floor**: a raw cache-line ping-pong between the same two cpus
//!    ([`floor::cache_line_ping_pong`]); `floor_one_way_p50_ns` is half its
//!    round-trip p50. Floor and ring round trips (2.) run interleaved in
//!    `latency_rounds` rounds (floor, 64 B, 1 KiB, floor, …) and are merged, so
//!    a drift of the machine during the run (on this VM the floor p50 moved
//!    between 45 and 60 ns from run to run, and to ≈ 250 ns when the host
//!    placed the two vCPUs far apart) hits both alike;
//! 2. **one-way latency**, 64 B and 1 KiB records: the parent pushes into ring
//!    `fwd`, the child pops and pushes the bytes into ring `back`, the parent
//!    pops; one-way = round trip / 2 per sample. Halving a round trip timed on
//!    one clock is more honest across cores than comparing timestamps taken
//!    on two (no clock skew, no timestamp cost inside the record path);
//! 3. **throughput**, 64 B and 1 KiB: the child pushes N records as fast as
//!    `try_push` takes them, the parent pops and checksums every byte; only
//!    records consumed are counted, and count and checksum must match. Run in
//!    `throughput_rounds` rounds (64 B, 1 KiB, 64 B, …); the result is total
//!    records over total time, and the slowest and fastest round are reported
//!    too, because the rate is bimodal (see the docs of [`measure`]);
//! 4. **futex floor**: raw `FUTEX_WAIT`/`FUTEX_WAKE` wake-up between the cpus;
//! 5. **wake-up**: the parent sleeps in `wait_pop`, the child pushes a
//!    `CLOCK_MONOTONIC`-stamped record every `--wake-gap-us` (1 ms) and waits
//!    until the parent took it, so the consumer is really asleep for each
//!    (`wakeup_voluntary_switches_per_record` ≈ 1 proves it); delay = wake
//!    time − stamp;
//! 6. 4 and 5 again with a `SCHED_IDLE` spinner on the consumer's cpu
//!    ([`crate::affinity::IdleSpinner`]): the cpu never idles, so the
//!    difference to 4/5 is the cost of waking an idle cpu (on a VM: the `HLT`
//!    exit and the IPI through the hypervisor), not of the ring or the futex.
//!
//! Everything busy-polls through the same spin ([`link::Link::idle`]: one
//! `PAUSE` per poll). Polling without `PAUSE` was tried: the floor gets ≈ 5 ns
//! faster but the ring gets slower (the consumer's loads keep stealing the
//! producer's index line), so both keep the `PAUSE`. Each latency sample
//! includes one `Instant::now()` pair (`timer_overhead_ns` in the results), in
//! the floor and the ring alike.
//!
//! Other work on the same cpus shows up in every tail and in throughput: the
//! JSON records the load average and the nice value the run had.
//!
//! The JSON (`DIR/ring.json`) is a [`crate::report::Report`] with
//! [`RingParameters`] and [`RingResults`]; the targets of issue 2 are checked
//! against the same run.

pub mod floor;
pub mod link;
pub mod measure;

use crate::affinity::{self, AffinityError, IdleSpinner};
use crate::cli::CommonArgs;
use crate::clock::{timer_overhead_ns, utc_timestamp};
use crate::histogram::{HistogramError, LatencyHistogram};
use crate::machine::{steal_ms, Machine};
use crate::report::{git_revision, Report, ReportError, Target};
use crate::shared::{SharedError, SharedFile};
use link::{Control, Link, RunFiles, Side};
use measure::{ChildPair, ParentPair};
use serde::Serialize;
use shm_abi::ring::{PopError, PushError, RingSegment};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use thiserror::Error;

/// Command line of the `ring` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ring",
    about = "Shared-memory SPSC ring: latency, throughput and wake-up between two pinned processes, against the cache-line and futex floors of the same run"
)]
pub struct RingArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The two cpus to pin the processes to, `A,B` (default: the first two
    /// of the allowed cpuset).
    #[arg(long, value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,

    /// Data capacity of each ring in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub ring_capacity: usize,

    /// Pause between records in the wake-up runs, microseconds (long enough
    /// that the consumer has gone to sleep).
    #[arg(long, default_value_t = 1000)]
    pub wake_gap_us: u64,

    /// Divide every sample count by this (for tests that only check the
    /// plumbing; the JSON's `parameters` show the counts actually run).
    #[arg(long, hide = true, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub samples_divisor: u64,

    /// Internal: run as the child of the benchmark whose files have this prefix.
    #[arg(long, hide = true)]
    pub child_of: Option<PathBuf>,

    /// Internal: the cpu the child pins itself to.
    #[arg(long, hide = true)]
    pub child_cpu: Option<usize>,
}

/// Errors of the ring benchmark.
#[derive(Debug, Error)]
pub enum RingBenchError {
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error(transparent)]
    Shared(#[from] SharedError),
    #[error(transparent)]
    Histogram(#[from] HistogramError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("ring segment {path}: {source}")]
    Segment {
        path: PathBuf,
        source: shm_abi::ring::RingError,
    },
    #[error("ring segment {path}: {source}")]
    Claim {
        path: PathBuf,
        source: shm_abi::ring::ClaimError,
    },
    #[error("try_push failed: {0}")]
    Push(PushError),
    #[error("pop failed: {0}")]
    Pop(PopError),
    #[error("cannot find this benchmark's own executable to re-run it as the child: {0}")]
    CurrentExe(std::io::Error),
    #[error("cannot start the child process {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot wait for the child process: {0}")]
    ChildWait(std::io::Error),
    #[error("cannot set the child's parent-death signal: {0}")]
    Prctl(std::io::Error),
    #[error("the child process exited ({status}) at barrier {step}; its stderr above says why")]
    ChildDied { step: u64, status: ExitStatus },
    #[error("the peer process made no progress for {waited:?} after barrier {step}")]
    PeerTimeout { step: u64, waited: Duration },
    #[error(
        "round trip {sent} came back as {echoed:?}: the ring lost, reordered or corrupted a record"
    )]
    EchoMismatch { sent: u64, echoed: Option<u64> },
    #[error("throughput run with {size}-byte records: child pushed {pushed} records (checksum {pushed_sum:#x}), parent popped {popped} ({bytes} bytes, {expected_bytes} expected, checksum {popped_sum:#x})")]
    ChecksumMismatch {
        size: usize,
        pushed: u64,
        popped: u64,
        bytes: u64,
        expected_bytes: u64,
        pushed_sum: u64,
        popped_sum: u64,
    },
    #[error("record {index} is shorter than its 8-byte stamp")]
    ShortRecord { index: u64 },
    #[error("--child-of needs --child-cpu")]
    ChildCpuMissing,
}

/// Record sizes measured.
const SMALL: usize = 64;
const LARGE: usize = 1024;

/// What was run (iteration counts are per measurement, warm-up excluded).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RingParameters {
    pub ring_capacity_bytes: usize,
    pub record_sizes_bytes: [usize; 2],
    pub floor_round_trips: u64,
    /// Floor and ring round trips are measured in this many interleaved
    /// rounds (each 1/rounds of the samples, with its own warm-up).
    pub latency_rounds: u64,
    pub latency_round_trips_64b: u64,
    pub latency_round_trips_1k: u64,
    /// Discarded samples before each latency/wake-up measurement.
    pub warmup_fraction: f64,
    /// Throughput runs in this many rounds (each 1/rounds of the records).
    pub throughput_rounds: u64,
    pub throughput_records_64b: u64,
    pub throughput_records_1k: u64,
    pub wakeup_samples: u64,
    pub wakeup_gap_us: u64,
    /// Nice value the benchmark ran at (other work on the same cpus competes).
    pub nice: i32,
}

impl RingParameters {
    fn new(args: &RingArgs) -> Self {
        let scale = if args.common.smoke { 1 } else { 10 };
        let d = args.samples_divisor;
        Self {
            ring_capacity_bytes: args.ring_capacity,
            record_sizes_bytes: [SMALL, LARGE],
            floor_round_trips: 200_000 * scale / d,
            latency_rounds: 10,
            latency_round_trips_64b: 200_000 * scale / d,
            latency_round_trips_1k: 100_000 * scale / d,
            warmup_fraction: 0.1,
            throughput_rounds: 5,
            throughput_records_64b: 5_000_000 * scale / d,
            throughput_records_1k: 500_000 * scale / d,
            wakeup_samples: 300 * scale / d,
            wakeup_gap_us: args.wake_gap_us,
            nice: current_nice(),
        }
    }

    fn warmup(n: u64) -> u64 {
        n / 10
    }
}

/// This process's nice value (-1 is also getpriority's error value; either
/// way it is what gets reported).
fn current_nice() -> i32 {
    // SAFETY: getpriority only reads scheduler state of this process.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

/// The measured numbers (all from this run).
#[derive(Debug, Clone, Serialize)]
pub struct RingResults {
    pub one_way_p50_ns_64b: u64,
    pub one_way_p99_ns_64b: u64,
    pub one_way_p999_ns_64b: u64,
    pub one_way_p50_ns_1k: u64,
    pub one_way_p99_ns_1k: u64,
    pub one_way_p999_ns_1k: u64,
    pub rtt_p50_ns_64b: u64,
    pub rtt_p99_ns_64b: u64,
    pub rtt_p999_ns_64b: u64,
    pub rtt_p50_ns_1k: u64,
    pub rtt_p99_ns_1k: u64,
    pub rtt_p999_ns_1k: u64,
    pub floor_one_way_p50_ns: f64,
    pub floor_rtt_p50_ns: u64,
    pub floor_rtt_p99_ns: u64,
    pub floor_rtt_p999_ns: u64,
    pub ratio_one_way_to_floor: f64,
    pub ratio_one_way_to_floor_1k: f64,
    pub throughput_64b_records_per_s: f64,
    pub throughput_64b_gb_per_s: f64,
    pub throughput_64b_records_per_s_slowest_round: f64,
    pub throughput_64b_records_per_s_fastest_round: f64,
    pub throughput_1k_records_per_s: f64,
    pub throughput_1k_gb_per_s: f64,
    pub throughput_1k_records_per_s_slowest_round: f64,
    pub throughput_1k_records_per_s_fastest_round: f64,
    pub wakeup_p50_ns: u64,
    pub wakeup_p99_ns: u64,
    pub wakeup_max_ns: u64,
    pub wakeup_voluntary_switches_per_record: f64,
    pub wakeup_floor_futex_p50_ns: u64,
    pub wakeup_floor_futex_p99_ns: u64,
    pub wakeup_floor_futex_max_ns: u64,
    pub ratio_wakeup_to_futex_floor: f64,
    pub wakeup_awake_core_p50_ns: u64,
    pub wakeup_awake_core_p99_ns: u64,
    pub wakeup_floor_futex_awake_core_p50_ns: u64,
    pub wakeup_floor_futex_awake_core_p99_ns: u64,
    pub timer_overhead_ns: u64,
    /// Hypervisor steal time on the two cpus during the run (ms; -1 when
    /// `/proc/stat` has none): long stalls in the tails line up with it.
    pub steal_ms: i64,
}

/// Runs the benchmark: as the parent (writes the JSON) or, with
/// `--child-of`, as the child. Returns the path written (parent) or `None`.
///
/// # Errors
/// [`RingBenchError`] when any step fails; the child's failure surfaces in
/// the parent as [`RingBenchError::ChildDied`].
pub fn run(args: &RingArgs) -> Result<Option<PathBuf>, RingBenchError> {
    match &args.child_of {
        Some(prefix) => {
            let cpu = args.child_cpu.ok_or(RingBenchError::ChildCpuMissing)?;
            run_child(args, &RunFiles::from_prefix(prefix), cpu).map(|()| None)
        }
        None => run_parent(args).map(Some),
    }
}

/// Ring files of one run: `fwd`/`back` for round trips, one ring per
/// throughput size, one for wake-ups.
const RINGS: [&str; 5] = ["fwd", "back", "tput64", "tput1k", "wake"];

fn run_parent(args: &RingArgs) -> Result<PathBuf, RingBenchError> {
    let allowed = affinity::allowed_cpus()?;
    let cores = affinity::choose_two(args.cpus.as_deref(), &allowed)?;
    let params = RingParameters::new(args);
    let files = RunFiles::for_this_process();

    let ctl = SharedFile::<Control>::create(&files.file("ctl"))?;
    let mut segments = Vec::with_capacity(RINGS.len());
    for name in RINGS {
        let path = files.file(name);
        let seg = RingSegment::create(&path, args.ring_capacity)
            .map_err(|source| RingBenchError::Segment { path, source })?;
        segments.push(seg);
    }

    let exe = std::env::current_exe().map_err(RingBenchError::CurrentExe)?;
    let mut child_args: Vec<OsString> = std::env::args_os().skip(1).collect();
    child_args.push("--child-of".into());
    child_args.push(files.prefix().as_os_str().to_owned());
    child_args.push("--child-cpu".into());
    child_args.push(cores[1].to_string().into());
    let mut link = Link::parent(ctl, &exe, &child_args)?;
    affinity::pin_current_thread(cores[0], &allowed)?;
    let steal_before = steal_ms(&cores);
    eprintln!(
        "ring: parent on cpu {}, child on cpu {}, ring capacity {} B{}",
        cores[0],
        cores[1],
        args.ring_capacity,
        if args.common.smoke { ", smoke run" } else { "" }
    );

    let [fwd, back, tput64, tput1k, wake] = &segments[..] else {
        unreachable!("RINGS has five names");
    };
    let mut fwd_p = fwd.producer().map_err(seg_err(fwd))?;
    let mut back_c = back.consumer().map_err(seg_err(back))?;
    let mut tput64_c = tput64.consumer().map_err(seg_err(tput64))?;
    let mut tput1k_c = tput1k.consumer().map_err(seg_err(tput1k))?;
    let mut wake_c = wake.consumer().map_err(seg_err(wake))?;

    let w = RingParameters::warmup;
    let rounds = params.latency_rounds;
    eprintln!(
        "ring: floor ping-pong ({}), 64 B ({}) and 1 KiB ({}) round trips, in {rounds} interleaved rounds",
        params.floor_round_trips, params.latency_round_trips_64b, params.latency_round_trips_1k
    );
    let mut floor = LatencyHistogram::new()?;
    let mut lat64 = measure::RoundTrips::new()?;
    let mut lat1k = measure::RoundTrips::new()?;
    for _ in 0..rounds {
        let n = params.floor_round_trips / rounds;
        floor.merge(&floor::cache_line_ping_pong(&mut link, w(n), n)?)?;
        for (acc, size, n) in [
            (&mut lat64, SMALL, params.latency_round_trips_64b / rounds),
            (&mut lat1k, LARGE, params.latency_round_trips_1k / rounds),
        ] {
            let pair = ParentPair {
                fwd: &mut fwd_p,
                back: &mut back_c,
            };
            acc.merge(&measure::round_trips_parent(
                &mut link,
                pair,
                size,
                w(n),
                n,
            )?)?;
        }
    }
    let rounds = params.throughput_rounds;
    eprintln!(
        "ring: throughput, {SMALL} B ({}) and {LARGE} B ({}) records, in {rounds} rounds",
        params.throughput_records_64b, params.throughput_records_1k
    );
    let (mut t64, mut t1k) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let n = params.throughput_records_64b / rounds;
        t64.push(measure::throughput_parent(
            &mut link,
            &mut tput64_c,
            SMALL,
            n,
        )?);
        let n = params.throughput_records_1k / rounds;
        t1k.push(measure::throughput_parent(
            &mut link,
            &mut tput1k_c,
            LARGE,
            n,
        )?);
    }
    let gap = Duration::from_micros(params.wakeup_gap_us);
    let (n, warm) = (params.wakeup_samples, w(params.wakeup_samples));
    eprintln!("ring: futex wake-up floor ({n} samples, {gap:?} apart)");
    let futex = floor::futex_wakeups(&mut link, warm, n, gap)?;
    eprintln!("ring: wait_pop wake-up ({n} samples, {gap:?} apart)");
    let ring = measure::wakeups_parent(&mut link, &mut wake_c, warm, n)?;
    eprintln!(
        "ring: both again with an idle-class spinner keeping cpu {} awake",
        cores[0]
    );
    let spinner = IdleSpinner::start(cores[0], &allowed)?;
    let futex_awake = floor::futex_wakeups(&mut link, warm, n, gap)?;
    let ring_awake = measure::wakeups_parent(&mut link, &mut wake_c, warm, n)?;
    drop(spinner);
    link.sync()?;
    link.finish()?;
    let steal = match (steal_before, steal_ms(&cores)) {
        (Some(a), Some(b)) => i64::try_from(b.saturating_sub(a)).unwrap_or(i64::MAX),
        _ => -1,
    };
    let wake = WakeRuns {
        futex,
        ring,
        futex_awake,
        ring_awake,
    };

    let results = results(&floor, &lat64, &lat1k, &t64, &t1k, &wake, steal);
    let targets = targets(&results);
    let (git_rev, git_dirty) = git_revision();
    let report = Report {
        benchmark: "ring".to_owned(),
        timestamp: utc_timestamp(),
        git_rev,
        git_dirty,
        machine: Machine::detect(&cores),
        smoke: args.common.smoke,
        parameters: params,
        results,
        targets,
    };
    Ok(report.write_to(&args.common.output_dir)?)
}

fn seg_err(seg: &RingSegment) -> impl Fn(shm_abi::ring::ClaimError) -> RingBenchError + '_ {
    move |source| RingBenchError::Claim {
        path: seg.segment().path().to_path_buf(),
        source,
    }
}

fn run_child(args: &RingArgs, files: &RunFiles, cpu: usize) -> Result<(), RingBenchError> {
    // The parent spawned us before pinning itself: our mask is still the
    // allowed set.
    let allowed = affinity::allowed_cpus()?;
    affinity::pin_current_thread(cpu, &allowed)?;
    let params = RingParameters::new(args);
    let ctl = SharedFile::<Control>::open(&files.file("ctl"))?;
    let mut link = Link::child(ctl)?;
    debug_assert_eq!(link.side(), Side::Child);
    let mut segments = Vec::with_capacity(RINGS.len());
    for name in RINGS {
        let path = files.file(name);
        let seg =
            RingSegment::open(&path).map_err(|source| RingBenchError::Segment { path, source })?;
        segments.push(seg);
    }
    let [fwd, back, tput64, tput1k, wake] = &segments[..] else {
        unreachable!("RINGS has five names");
    };
    let mut fwd_c = fwd.consumer().map_err(seg_err(fwd))?;
    let mut back_p = back.producer().map_err(seg_err(back))?;
    let mut tput64_p = tput64.producer().map_err(seg_err(tput64))?;
    let mut tput1k_p = tput1k.producer().map_err(seg_err(tput1k))?;
    let mut wake_p = wake.producer().map_err(seg_err(wake))?;

    let w = RingParameters::warmup;
    let rounds = params.latency_rounds;
    for _ in 0..rounds {
        let n = params.floor_round_trips / rounds;
        floor::cache_line_ping_pong(&mut link, w(n), n)?;
        for n in [
            params.latency_round_trips_64b / rounds,
            params.latency_round_trips_1k / rounds,
        ] {
            let pair = ChildPair {
                fwd: &mut fwd_c,
                back: &mut back_p,
            };
            measure::round_trips_child(&mut link, pair, w(n), n)?;
        }
    }
    let rounds = params.throughput_rounds;
    for _ in 0..rounds {
        let n = params.throughput_records_64b / rounds;
        measure::throughput_child(&mut link, &mut tput64_p, SMALL, n)?;
        let n = params.throughput_records_1k / rounds;
        measure::throughput_child(&mut link, &mut tput1k_p, LARGE, n)?;
    }
    let gap = Duration::from_micros(params.wakeup_gap_us);
    let (n, warm) = (params.wakeup_samples, w(params.wakeup_samples));
    // Plain, then with the parent's cpu kept awake: the child's part is the same.
    for _ in 0..2 {
        floor::futex_wakeups(&mut link, warm, n, gap)?;
        measure::wakeups_child(&mut link, &mut wake_p, SMALL, warm, n, gap)?;
    }
    link.sync()
}

#[allow(clippy::cast_precision_loss)] // nanosecond values far below 2^53
fn ratio(a: u64, b: f64) -> f64 {
    if b > 0.0 {
        a as f64 / b
    } else {
        f64::INFINITY
    }
}

fn results(
    floor: &LatencyHistogram,
    lat64: &measure::RoundTrips,
    lat1k: &measure::RoundTrips,
    t64: &[measure::Throughput],
    t1k: &[measure::Throughput],
    wake: &WakeRuns,
    steal_ms: i64,
) -> RingResults {
    let f = floor.summary();
    #[allow(clippy::cast_precision_loss)] // nanoseconds
    let floor_one_way = f.p50_ns as f64 / 2.0;
    let (tput64, tput1k) = (
        measure::Throughput::total(t64),
        measure::Throughput::total(t1k),
    );
    let (range64, range1k) = (
        measure::Throughput::range(t64),
        measure::Throughput::range(t1k),
    );
    let (o64, r64) = (lat64.one_way.summary(), lat64.rtt.summary());
    let (o1k, r1k) = (lat1k.one_way.summary(), lat1k.rtt.summary());
    let wk = wake.ring.delay.summary();
    let fx = wake.futex.summary();
    let (wk_awake, fx_awake) = (wake.ring_awake.delay.summary(), wake.futex_awake.summary());
    #[allow(clippy::cast_precision_loss)] // nanoseconds
    let futex_p50 = fx.p50_ns as f64;
    RingResults {
        one_way_p50_ns_64b: o64.p50_ns,
        one_way_p99_ns_64b: o64.p99_ns,
        one_way_p999_ns_64b: o64.p999_ns,
        one_way_p50_ns_1k: o1k.p50_ns,
        one_way_p99_ns_1k: o1k.p99_ns,
        one_way_p999_ns_1k: o1k.p999_ns,
        rtt_p50_ns_64b: r64.p50_ns,
        rtt_p99_ns_64b: r64.p99_ns,
        rtt_p999_ns_64b: r64.p999_ns,
        rtt_p50_ns_1k: r1k.p50_ns,
        rtt_p99_ns_1k: r1k.p99_ns,
        rtt_p999_ns_1k: r1k.p999_ns,
        floor_one_way_p50_ns: floor_one_way,
        floor_rtt_p50_ns: f.p50_ns,
        floor_rtt_p99_ns: f.p99_ns,
        floor_rtt_p999_ns: f.p999_ns,
        ratio_one_way_to_floor: ratio(o64.p50_ns, floor_one_way),
        ratio_one_way_to_floor_1k: ratio(o1k.p50_ns, floor_one_way),
        throughput_64b_records_per_s: tput64.records_per_s(),
        throughput_64b_gb_per_s: tput64.gb_per_s(),
        throughput_64b_records_per_s_slowest_round: range64.0,
        throughput_64b_records_per_s_fastest_round: range64.1,
        throughput_1k_records_per_s: tput1k.records_per_s(),
        throughput_1k_gb_per_s: tput1k.gb_per_s(),
        throughput_1k_records_per_s_slowest_round: range1k.0,
        throughput_1k_records_per_s_fastest_round: range1k.1,
        wakeup_p50_ns: wk.p50_ns,
        wakeup_p99_ns: wk.p99_ns,
        wakeup_max_ns: wk.max_ns,
        wakeup_voluntary_switches_per_record: wake.ring.voluntary_switches_per_record,
        wakeup_floor_futex_p50_ns: fx.p50_ns,
        wakeup_floor_futex_p99_ns: fx.p99_ns,
        wakeup_floor_futex_max_ns: fx.max_ns,
        ratio_wakeup_to_futex_floor: ratio(wk.p50_ns, futex_p50),
        wakeup_awake_core_p50_ns: wk_awake.p50_ns,
        wakeup_awake_core_p99_ns: wk_awake.p99_ns,
        wakeup_floor_futex_awake_core_p50_ns: fx_awake.p50_ns,
        wakeup_floor_futex_awake_core_p99_ns: fx_awake.p99_ns,
        timer_overhead_ns: timer_overhead_ns(100_000),
        steal_ms,
    }
}

/// The four wake-up runs: futex floor and ring, plain and with the
/// consumer's cpu kept awake.
#[derive(Debug)]
struct WakeRuns {
    futex: LatencyHistogram,
    ring: measure::Wakeups,
    futex_awake: LatencyHistogram,
    ring_awake: measure::Wakeups,
}

/// The targets of issue 2, checked against this run's numbers.
fn targets(r: &RingResults) -> BTreeMap<String, Target> {
    #[allow(clippy::cast_precision_loss)] // nanoseconds
    let wake = r.wakeup_p50_ns as f64;
    BTreeMap::from([
        (
            "one_way_p50_vs_floor".to_owned(),
            Target::at_most(
                "one-way p50 (64 B) / cache-line ping-pong one-way p50 of the same run",
                1.5,
                r.ratio_one_way_to_floor,
            ),
        ),
        (
            "throughput_64b".to_owned(),
            Target::at_least(
                "64 B records per second",
                10e6,
                r.throughput_64b_records_per_s,
            ),
        ),
        (
            "wakeup_p50".to_owned(),
            Target::at_most("sleeping-consumer wake-up p50, ns", 10_000.0, wake),
        ),
    ])
}
