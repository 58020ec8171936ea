//! The gateway benchmark (binary `gateway`): what the aetherd hop costs.
//!
//! One run measures the same native handler (`hello-native`, from
//! `examples/native-hello`) three ways, with the same load generator
//! ([`loadgen`]) and the same request (`GET /bench`, HTTP/1.1 keep-alive):
//!
//! 1. **direct**: the handler itself on `127.0.0.1:PORT` (no handshake,
//!    `--threads` = the allowed cpus);
//! 2. **nginx**: Debian's nginx as a reverse proxy in front of that same
//!    handler process (1 worker, upstream `keepalive 64`, see [`nginx`]);
//! 3. **aetherd**: `aetherctl up` with a generated configuration whose
//!    function runs the same binary (see [`aetherd`]); `aetherctl down` after.
//!
//! Per mode: latency with 1 connection (warm-up, then N sequential requests
//! into an hdrhistogram → p50/p99/p999 µs) and throughput with 32 connections
//! over 2 client threads for a fixed window (complete `200`s per second).
//! Added latency = mode − direct, from the same run. The three set-ups run
//! side by side and are measured in alternating rounds (10 latency rounds,
//! 5 throughput rounds, 2 in a smoke run), so a noisy neighbour on the machine
//! hits them alike instead of whichever ran at the wrong moment. Because an
//! idle aetherd that spun would slow the other two, its idle cpu use is
//! measured and reported (`aetherd_idle_cpu_pct`).
//!
//! The latency rounds run twice: as the machine is (the headline numbers and
//! the targets), and with a `SCHED_IDLE` spinner on every cpu so no cpu sits
//! in an idle state (`*_awake_*`). On a VM, waking a halted cpu costs an exit
//! and an IPI through the hypervisor, once per hop; the awake numbers show the
//! software path without that, the difference shows what idle states cost.
//!
//! **Shared cpus.** Our machines have 2 cores. Nothing is pinned: client
//! threads, nginx's worker or aetherd's executors, and the handler's threads
//! all share both cores, as they would on a small host. The numbers are thus
//! "per 2-core box", and each proxy's own cpu use shows up as lost throughput.
//!
//! Everything is loopback, bounded (request counts, windows, timeouts, an
//! error budget), and every child is stopped by a guard, also on error paths
//! and on Ctrl-C/SIGTERM ([`interrupt`]). A mode that cannot run (nginx not
//! installed, aetherd not built or not serving) is `null` in the JSON with an
//! explanation in `results.errors`, and the process exits non-zero unless the
//! mode was named in `--allow-missing`. The direct mode must always work.

pub mod aetherd;
pub mod http;
pub mod interrupt;
pub mod loadgen;
pub mod nginx;
pub mod process;

use crate::aetherd::{BinArgs, Site};
use crate::affinity::IdleSpinner;
use crate::cli::CommonArgs;
use crate::clock::{timer_overhead_ns, utc_timestamp};
use crate::histogram::Percentiles;
use crate::machine::Machine;
use crate::report::{git_revision, Report, ReportError, Target};
use aetherd::FunctionShape;
use loadgen::{LatencyProbe, LoadError};
use nginx::Nginx;
use process::{free_port, wait_until_serving, ChildGuard, ProcessError};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use thiserror::Error;

/// The path every request asks for.
pub const REQUEST_PATH: &str = "/bench";

/// The body the native handler answers to [`REQUEST_PATH`] (checked before
/// each mode is measured, so a proxy that answers something else is caught).
#[must_use]
pub fn expected_body() -> Vec<u8> {
    format!(r#"{{"message": "Hello from Aetherless!", "path": "{REQUEST_PATH}"}}"#).into_bytes()
}

/// A mode that may be reported as unavailable with `--allow-missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Optional {
    Nginx,
    Aetherd,
}

/// Command line of the `gateway` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "gateway",
    about = "Latency (1 connection) and throughput (32 connections) of the native handler: direct, behind nginx, behind aetherd"
)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Latency samples per mode [default: 100000, smoke 10000].
    #[arg(long)]
    pub samples: Option<u64>,

    /// Warm-up requests before the latency samples [default: samples / 10].
    #[arg(long)]
    pub warmup: Option<u64>,

    /// Throughput window per mode, seconds [default: 10, smoke 2].
    #[arg(long)]
    pub duration_s: Option<f64>,

    /// Connections of the throughput run.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,

    /// Client threads of the throughput run (connections are spread over them).
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,

    /// Worker threads of the directly run handler [default: number of allowed cpus].
    #[arg(long)]
    pub handler_threads: Option<usize>,

    /// `min_instances` = `max_instances` of the function under aetherd. aetherd
    /// keeps that many on each executor core (one per cpu), each instance
    /// pinned to its core, so the default 1 gives the handler as many threads
    /// as the direct run's `--handler-threads` default.
    #[arg(long, default_value_t = 1)]
    pub aetherd_instances: u32,

    /// `concurrency` (in-flight requests per instance) of the function under aetherd.
    #[arg(long, default_value_t = 64)]
    pub aetherd_concurrency: u32,

    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: PathBuf,

    /// `--bin-dir` (hello-native, aetherd, aetherctl) and `--no-build`
    /// (`cargo build --release -p native-hello -p dataplane -p control`).
    #[command(flatten)]
    pub bins: BinArgs,

    /// Keep the run's temp dir (configs, nginx and aetherd logs) and print its path.
    #[arg(long)]
    pub keep_run_dir: bool,

    /// Report this mode as unavailable (null) instead of failing when it cannot run.
    #[arg(long, value_enum)]
    pub allow_missing: Vec<Optional>,
}

/// Errors that end the benchmark.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// The handler binary is missing (and could not be built).
    #[error("{path} is missing{why}; build it with `cargo build --release -p native-hello` or pass --bin-dir")]
    HandlerMissing { path: PathBuf, why: String },
    /// The run directory could not be created.
    #[error("cannot create a temp dir for the run: {0}")]
    TempDir(std::io::Error),
    /// The directly run handler failed to start.
    #[error("direct handler: {0}")]
    Direct(#[from] ProcessError),
    /// Measuring a mode that must work failed.
    #[error("measuring {mode}: {source}")]
    Measure {
        mode: &'static str,
        source: LoadError,
    },
    /// Modes that could not run and were not allowed to be missing.
    #[error("unavailable (results are null, see results.errors in {json}): {modes}; pass --allow-missing MODE to accept that")]
    Unavailable { modes: String, json: PathBuf },
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("interrupted by a signal; children stopped")]
    Interrupted,
}

/// What was run (the JSON's `parameters`).
#[derive(Debug, Clone, Serialize)]
pub struct GatewayParameters {
    pub request: String,
    pub latency_connections: u32,
    pub latency_warmup: u64,
    pub latency_samples: u64,
    pub latency_rounds: u64,
    pub throughput_connections: usize,
    pub throughput_client_threads: usize,
    pub throughput_rounds: u32,
    pub throughput_round_warmup_s: f64,
    /// Total measured window per mode (summed over its rounds).
    pub throughput_window_s: f64,
    pub handler: String,
    pub handler_threads: usize,
    pub nginx: String,
    pub nginx_config: String,
    /// `min_instances` = `max_instances` in the generated configuration
    /// (aetherd keeps that many per executor core).
    pub aetherd_instances: u32,
    pub aetherd_concurrency: u32,
    pub schedule: String,
    pub pinning: String,
    pub error_budget_per_run: u64,
}

/// One mode's numbers.
#[derive(Debug, Clone)]
struct ModeResult {
    latency: Percentiles,
    awake: Option<Percentiles>,
    rps: f64,
    errors: u64,
    ok_per_thread: Vec<u64>,
}

/// A set-up under measurement: its address, latency probe and throughput tally.
#[derive(Debug)]
struct Mode {
    name: &'static str,
    addr: SocketAddr,
    probe: Option<LatencyProbe>,
    /// The same, measured while idle-class spinners keep every cpu awake.
    awake: Option<LatencyProbe>,
    ok: u64,
    errors: u64,
    window: Duration,
    ok_per_thread: Vec<u64>,
    failure: Option<String>,
}

impl Mode {
    fn new(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            probe: None,
            awake: None,
            ok: 0,
            errors: 0,
            window: Duration::ZERO,
            ok_per_thread: Vec::new(),
            failure: None,
        }
    }

    /// Records a failed step. The direct mode is the baseline: its failure,
    /// and a signal, end the run.
    fn fail(&mut self, e: LoadError) -> Result<(), GatewayError> {
        match e {
            LoadError::Interrupted => Err(GatewayError::Interrupted),
            source if self.name == "direct" => Err(GatewayError::Measure {
                mode: "direct",
                source,
            }),
            e => {
                eprintln!("gateway: {}: measurement failed: {e}", self.name);
                self.failure = Some(e.to_string());
                Ok(())
            }
        }
    }

    fn active(&self) -> bool {
        self.failure.is_none()
    }

    fn result(&self) -> Option<ModeResult> {
        let probe = self.probe.as_ref().filter(|_| self.active())?;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let rps = self.ok as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE);
        Some(ModeResult {
            latency: probe.histogram().summary(),
            awake: self.awake.as_ref().map(|p| p.histogram().summary()),
            rps,
            errors: probe.errors()
                + self.awake.as_ref().map_or(0, LatencyProbe::errors)
                + self.errors,
            ok_per_thread: self.ok_per_thread.clone(),
        })
    }
}

/// Round counts and sizes derived from the flags.
#[derive(Debug, Clone, Copy)]
struct Plan {
    samples: u64,
    warmup: u64,
    latency_rounds: u64,
    window: Duration,
    throughput_rounds: u32,
    round_warmup: Duration,
}

impl Plan {
    fn new(args: &GatewayArgs) -> Self {
        let smoke = args.common.smoke;
        let samples = args
            .samples
            .unwrap_or(if smoke { 10_000 } else { 100_000 })
            .max(1);
        let window_s = args.duration_s.unwrap_or(if smoke { 2.0 } else { 10.0 });
        Self {
            samples,
            warmup: args.warmup.unwrap_or(samples / 10),
            latency_rounds: 10.min(samples),
            window: Duration::from_secs_f64(window_s.max(0.1)),
            throughput_rounds: if smoke { 2 } else { 5 },
            round_warmup: Duration::from_millis(if smoke { 200 } else { 500 }),
        }
    }
}

fn us(ns: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // latencies far below 2^52 ns
    let ns = ns as f64;
    ns / 1000.0
}

/// Runs the benchmark; returns the JSON's path.
///
/// # Errors
/// [`GatewayError`]: a failed direct mode, a mode unavailable without
/// `--allow-missing` (the JSON is still written), a write error, a signal.
pub fn run(args: &GatewayArgs) -> Result<PathBuf, GatewayError> {
    interrupt::install();
    let plan = Plan::new(args);
    let allowed = crate::affinity::allowed_cpus().unwrap_or_default();
    let ncpu = allowed.len().max(1);
    let handler_threads = args.handler_threads.unwrap_or(ncpu);
    let instances = args.aetherd_instances;

    let bin_dir = args.bins.dir();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    // An explicit --bin-dir is used as it is; otherwise the binaries are
    // (re)built in this workspace, and a failed build is not papered over by
    // stale binaries. Without cargo or the source tree, what is there is used.
    let build = |packages: &[&str]| args.bins.build("gateway", packages);
    if let Err(why) = build(&["native-hello", "dataplane", "control"]) {
        errors.insert(
            "aetherd".into(),
            format!("build of dataplane/control failed: {why}"),
        );
        if let Err(why) = build(&["native-hello"]) {
            return Err(GatewayError::HandlerMissing {
                path: bin_dir.join("hello-native"),
                why: format!(" (its build failed: {why})"),
            });
        }
    }
    let handler = bin_dir.join("hello-native");
    if !handler.is_file() {
        return Err(GatewayError::HandlerMissing {
            path: handler,
            why: String::new(),
        });
    }
    let run_dir = tempfile::Builder::new()
        .prefix("aether-gateway.")
        .tempdir()
        .map_err(GatewayError::TempDir)?;
    let body = expected_body();
    let request = http::get_request(REQUEST_PATH);

    // The three set-ups run side by side and are measured in alternating
    // rounds, so that whatever else the machine does hits them alike.
    // 1. direct: the handler, also nginx's upstream.
    let handler_port = free_port()?;
    let handler_addr = SocketAddr::from(([127, 0, 0, 1], handler_port));
    let mut cmd = Command::new(&handler);
    cmd.args(["--port", &handler_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--threads", &handler_threads.to_string()])
        .env_remove("AETHER_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut direct_handler = ChildGuard::spawn("hello-native", &mut cmd)?;
    wait_until_serving(
        "hello-native",
        handler_addr,
        REQUEST_PATH,
        &body,
        Duration::from_secs(10),
        || direct_handler.check_running(String::new),
    )?;
    let mut modes = vec![Mode::new("direct", handler_addr)];

    // 2. nginx in front of the same handler process.
    let nginx_dir = run_dir.path().join("nginx");
    let nginx = std::fs::create_dir_all(&nginx_dir)
        .map_err(|e| format!("cannot create {}: {e}", nginx_dir.display()))
        .and_then(|()| {
            let listen =
                SocketAddr::from(([127, 0, 0, 1], free_port().map_err(|e| e.to_string())?));
            Nginx::start(
                &args.nginx,
                &nginx_dir,
                listen,
                handler_addr,
                REQUEST_PATH,
                &body,
            )
            .map_err(|e| e.to_string())
        });
    let mut nginx = match nginx {
        Ok(n) => {
            modes.push(Mode::new("nginx", n.addr));
            Some(n)
        }
        Err(e) => {
            errors.insert("nginx".into(), e);
            None
        }
    };

    // 3. aetherd running the same binary.
    let mut aetherd = None;
    let mut aetherd_idle_cpu_pct = None;
    if !errors.contains_key("aetherd") {
        let shape = FunctionShape {
            instances,
            concurrency: args.aetherd_concurrency,
        };
        eprintln!("gateway: starting aetherd (aetherctl up)");
        let started = Site::new(&bin_dir, &handler, run_dir.path().join("aetherd"))
            .map_err(|e| e.to_string())
            .and_then(|site| {
                aetherd::start(&aetherd::launch(site, shape), REQUEST_PATH, &body)
                    .map_err(|e| e.to_string())
            });
        match started {
            Ok(a) => {
                modes.push(Mode::new("aetherd", a.addr));
                aetherd_idle_cpu_pct = a.pid().and_then(idle_cpu_pct);
                if let Some(pct) = aetherd_idle_cpu_pct {
                    eprintln!("gateway: aetherd uses {pct:.1} % of a cpu while idle");
                }
                aetherd = Some(a);
            }
            Err(e) => {
                errors.insert("aetherd".into(), e);
            }
        }
    }

    measure(&mut modes, &plan, args, &request)?;

    if let Some(a) = aetherd.as_mut() {
        eprintln!("gateway: stopping aetherd (aetherctl down)");
        if let Err(e) = a.stop() {
            errors.insert("aetherd_down".into(), e.to_string());
        }
    }
    if let Some(n) = nginx.as_mut() {
        n.stop();
    }
    direct_handler.stop();
    for m in &modes {
        if let Some(f) = &m.failure {
            errors.insert(m.name.to_owned(), f.clone());
        }
    }
    for (mode, why) in &errors {
        eprintln!("gateway: {mode} unavailable: {why}");
    }

    let get = |name: &str| modes.iter().find(|m| m.name == name).and_then(Mode::result);
    let direct = get("direct").ok_or(GatewayError::Interrupted)?;
    let (nginx_r, aetherd_r) = (get("nginx"), get("aetherd"));
    let (git_rev, git_dirty) = git_revision();
    let (mut results, targets) = results(
        &direct,
        nginx_r.as_ref(),
        aetherd_r.as_ref(),
        args.connections,
        errors,
    );
    if let Value::Object(r) = &mut results {
        r.insert("aetherd_idle_cpu_pct".into(), json!(aetherd_idle_cpu_pct));
    }
    let report = Report {
        benchmark: "gateway".to_owned(),
        timestamp: utc_timestamp(),
        git_rev,
        git_dirty,
        machine: Machine::detect(&allowed),
        smoke: args.common.smoke,
        parameters: GatewayParameters {
            request: format!("GET {REQUEST_PATH} HTTP/1.1, keep-alive, {} B", request.len()),
            latency_connections: 1,
            latency_warmup: plan.warmup,
            latency_samples: plan.samples,
            latency_rounds: plan.latency_rounds,
            throughput_connections: args.connections,
            throughput_client_threads: args.client_threads,
            throughput_rounds: plan.throughput_rounds,
            throughput_round_warmup_s: plan.round_warmup.as_secs_f64(),
            throughput_window_s: plan.window.as_secs_f64(),
            handler: handler.display().to_string(),
            handler_threads,
            nginx: nginx_version(&args.nginx),
            nginx_config: "1 worker, upstream keepalive 64, proxy_http_version 1.1, Connection \"\", access_log off"
                .to_owned(),
            aetherd_instances: instances,
            aetherd_concurrency: args.aetherd_concurrency,
            schedule: "all set-ups run side by side; latency and throughput are measured in rounds that \
                       alternate direct, nginx, aetherd; latency again with SCHED_IDLE spinners on every cpu (*_awake_*)"
                .to_owned(),
            pinning: format!(
                "none: load-generator threads, proxy (nginx worker / aetherd executors) and handler threads share cpus {allowed:?}"
            ),
            error_budget_per_run: loadgen::ERROR_LIMIT,
        },
        results,
        targets,
    };
    let path = report.write_to(&args.common.output_dir)?;
    if args.keep_run_dir {
        eprintln!("gateway: run dir kept: {}", run_dir.keep().display());
    }
    let missing: Vec<&str> = [
        (Optional::Nginx, "nginx", nginx_r.is_none()),
        (Optional::Aetherd, "aetherd", aetherd_r.is_none()),
    ]
    .into_iter()
    .filter(|(m, _, absent)| *absent && !args.allow_missing.contains(m))
    .map(|(_, name, _)| name)
    .collect();
    if !missing.is_empty() {
        return Err(GatewayError::Unavailable {
            modes: missing.join(", "),
            json: path,
        });
    }
    Ok(path)
}

/// Latency rounds, then throughput rounds, alternating over the active modes.
fn measure(
    modes: &mut [Mode],
    plan: &Plan,
    args: &GatewayArgs,
    request: &[u8],
) -> Result<(), GatewayError> {
    latency_rounds(modes, plan, request, "", |m| &mut m.probe)?;
    // Again with every cpu kept out of its idle states: on a VM, waking an
    // idle cpu (HLT exit, IPI through the hypervisor) costs tens of µs per
    // hop and hides the software path; this run shows the path alone.
    let allowed = crate::affinity::allowed_cpus().unwrap_or_default();
    let spinners: Vec<IdleSpinner> = allowed
        .iter()
        .filter_map(|&cpu| IdleSpinner::start(cpu, &allowed).ok())
        .collect();
    latency_rounds(
        modes,
        plan,
        request,
        &format!(
            " (cpus kept awake by {} idle-class spinners)",
            spinners.len()
        ),
        |m| &mut m.awake,
    )?;
    drop(spinners);
    let round_window = plan.window / plan.throughput_rounds;
    eprintln!(
        "gateway: throughput, {} connections over {} client threads: {} rounds of {:?} warm-up + {round_window:?} per mode",
        args.connections, args.client_threads, plan.throughput_rounds, plan.round_warmup
    );
    for _ in 0..plan.throughput_rounds {
        for m in modes.iter_mut().filter(|m| m.active()) {
            match loadgen::throughput(
                m.addr,
                request,
                args.connections,
                args.client_threads,
                plan.round_warmup,
                round_window,
            ) {
                Ok(t) => {
                    m.ok += t.ok;
                    m.errors += t.errors;
                    m.window += t.window;
                    m.ok_per_thread
                        .resize(t.ok_per_thread.len().max(m.ok_per_thread.len()), 0);
                    for (sum, x) in m.ok_per_thread.iter_mut().zip(&t.ok_per_thread) {
                        *sum += x;
                    }
                }
                Err(e) => m.fail(e)?,
            }
        }
    }
    for m in modes.iter() {
        if let Some(r) = m.result() {
            eprintln!(
                "gateway: {:<7} p50 {:7.1} µs  p99 {:7.1} µs  p999 {:7.1} µs  (awake p50 {:7.1} µs)  {:9.0} req/s  {} errors",
                m.name,
                us(r.latency.p50_ns),
                us(r.latency.p99_ns),
                us(r.latency.p999_ns),
                r.awake.map_or(f64::NAN, |a| us(a.p50_ns)),
                r.rps,
                r.errors
            );
        }
    }
    Ok(())
}

/// Warm-up, then `plan.latency_rounds` rounds alternating over the active
/// modes, into the probe `slot` picks.
fn latency_rounds(
    modes: &mut [Mode],
    plan: &Plan,
    request: &[u8],
    condition: &str,
    slot: fn(&mut Mode) -> &mut Option<LatencyProbe>,
) -> Result<(), GatewayError> {
    let per_round = plan.samples.div_ceil(plan.latency_rounds);
    eprintln!(
        "gateway: latency, 1 connection{condition}: {} warm-up + {} requests per mode in {} rounds",
        plan.warmup,
        per_round * plan.latency_rounds,
        plan.latency_rounds
    );
    for m in modes.iter_mut().filter(|m| m.active()) {
        match LatencyProbe::connect(m.addr, request)
            .and_then(|mut p| p.run(plan.warmup, false).map(|()| p))
        {
            Ok(p) => *slot(m) = Some(p),
            Err(e) => m.fail(e)?,
        }
    }
    for _ in 0..plan.latency_rounds {
        for m in modes.iter_mut().filter(|m| m.active()) {
            if let Some(Err(e)) = slot(m).as_mut().map(|p| p.run(per_round, true)) {
                m.fail(e)?;
            }
        }
    }
    Ok(())
}

/// Percent of one cpu `pid` uses over one idle second.
fn idle_cpu_pct(pid: libc::pid_t) -> Option<f64> {
    let before = process::cpu_time(pid)?;
    std::thread::sleep(Duration::from_secs(1));
    let spent = process::cpu_time(pid)?.checked_sub(before)?;
    Some(spent.as_secs_f64() * 100.0)
}

/// One per-mode entry of `results`, computed from the mode's numbers.
type Field<'a> = dyn Fn(&ModeResult) -> Value + 'a;

/// The flat `results` object and the targets of issue 3.
fn results(
    direct: &ModeResult,
    nginx: Option<&ModeResult>,
    aetherd: Option<&ModeResult>,
    connections: usize,
    errors: BTreeMap<String, String>,
) -> (Value, BTreeMap<String, Target>) {
    let mut r = Map::new();
    for (mode, m) in [
        ("direct", Some(direct)),
        ("nginx", nginx),
        ("aetherd", aetherd),
    ] {
        let awake = |m: &ModeResult, q: fn(&Percentiles) -> u64| m.awake.as_ref().map(|a| us(q(a)));
        let fields: [(&str, &Field); 9] = [
            ("p50_us", &|m| json!(us(m.latency.p50_ns))),
            ("p99_us", &|m| json!(us(m.latency.p99_ns))),
            ("p999_us", &|m| json!(us(m.latency.p999_ns))),
            ("mean_us", &|m| json!(m.latency.mean_ns / 1000.0)),
            ("awake_p50_us", &|m| json!(awake(m, |p| p.p50_ns))),
            ("awake_p99_us", &|m| json!(awake(m, |p| p.p99_ns))),
            (&format!("rps_c{connections}"), &|m| json!(m.rps)),
            ("errors", &|m| json!(m.errors)),
            ("ok_per_client_thread", &|m| json!(m.ok_per_thread)),
        ];
        for (suffix, f) in fields {
            r.insert(format!("{mode}_{suffix}"), m.map_or(Value::Null, f));
        }
    }
    // Added latency: the mode's percentile minus direct's, same condition.
    let added = |m: Option<&ModeResult>, q: fn(&Percentiles) -> u64| {
        m.map_or(Value::Null, |m| {
            json!(us(q(&m.latency)) - us(q(&direct.latency)))
        })
    };
    let added_awake = |m: Option<&ModeResult>| {
        let pair = m.and_then(|m| m.awake.as_ref()).zip(direct.awake.as_ref());
        json!(pair.map(|(a, d)| us(a.p50_ns) - us(d.p50_ns)))
    };
    r.insert("aetherd_added_p50_us".into(), added(aetherd, |p| p.p50_ns));
    r.insert("aetherd_added_p99_us".into(), added(aetherd, |p| p.p99_ns));
    r.insert("aetherd_added_awake_p50_us".into(), added_awake(aetherd));
    r.insert("nginx_added_p50_us".into(), added(nginx, |p| p.p50_ns));
    r.insert("nginx_added_p99_us".into(), added(nginx, |p| p.p99_ns));
    r.insert("nginx_added_awake_p50_us".into(), added_awake(nginx));
    let ratio = match (aetherd, nginx) {
        (Some(a), Some(n)) if n.rps > 0.0 => Some(a.rps / n.rps),
        _ => None,
    };
    r.insert("aetherd_rps_over_nginx".into(), json!(ratio));
    r.insert("timer_overhead_ns".into(), json!(timer_overhead_ns(10_001)));
    r.insert("errors".into(), json!(errors));

    let mut targets = BTreeMap::new();
    if let Some(a) = aetherd {
        targets.insert(
            "aetherd_added_p50_us".to_owned(),
            Target::at_most(
                "latency aetherd adds at p50 with 1 connection (aetherd − direct), µs",
                10.0,
                us(a.latency.p50_ns) - us(direct.latency.p50_ns),
            ),
        );
    }
    if let Some(ratio) = ratio {
        targets.insert(
            "aetherd_rps_over_nginx".to_owned(),
            Target::at_least(
                &format!("aetherd throughput at {connections} connections over nginx's"),
                2.0,
                ratio,
            ),
        );
    }
    (Value::Object(r), targets)
}

/// `nginx -v` output (it prints to stderr), or why it is unknown.
fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|e| format!("{}: {e}", nginx.display()))
}
