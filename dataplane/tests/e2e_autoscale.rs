//! End-to-end autoscaling (issue 6, item 6): the real `aetherd`, the real
//! autoscaler, real handler processes, load over loopback.
//!
//! Run: `cargo build -p control && cargo test -p dataplane --test e2e_autoscale -- --nocapture`
//! (as root; without root each test prints `SKIP <test>: <reason>`).
//!
//! The handler is `examples/test-e2e-handler.py` (`GET /slow?ms=N` sleeps N ms
//! and answers 200). While a test runs, a sampler thread scrapes the metrics
//! endpoint every [`SAMPLE_EVERY`] and counts the daemon's handler processes
//! (by their `E2E_TAG`), so the assertions are about what was observed, not
//! about timing goals: every wait is a generous bound.
//!
//! Instances are `aether_instances{function}` summed over cores and states;
//! *ready* ones are those in a serving state (`ready`, `serving`, `idle`).
//! Desired is `aether_autoscale_desired_instances{function}`.
//!
//! | test | proves |
//! |---|---|
//! | ramp | after deploy the function scales to 0 (no handler process left); 6 clients ramped in one by one from 0 instances, each looping 150 ms requests: every request answers 200 (also those that arrived at 0 instances and were queued); desired reaches `max_instances` and ready instances reach desired; instances and handler processes never exceed `max_instances`; when the load stops a 5 s request started at once answers 200 while the instance count drops (scale-down spares an instance in the middle of a request); then the function returns to 0 instances and 0 processes; scale events up and down were counted |
//! | queue full | `max_instances: 1`, `concurrency: 1`, `queue_size: 2`: 8 simultaneous 1.5 s requests get only `200` or `503`; every `503` has `Retry-After: 1`; exactly 1 + 2 answer `200` (the slot and the queue) |
//! | min instances | with `min_instances: 1` the function settles at 1 (from one per core), never goes below 1 while idle, serves a 3-client burst with all 200s, and settles back at 1, not 0 |

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::{self, Conn};
use common::{metric_where, require_root, wait_for, Daemon, FunctionSpec};

/// Function id used by every test here.
const FN: &str = "scaler";
/// How often the sampler scrapes metrics and counts processes.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Generous bound of every "eventually" in these tests.
const SETTLE: Duration = Duration::from_secs(40);

/// Autoscaling fields added to the function's YAML.
#[derive(Debug, Clone, Copy)]
struct Scaling {
    min: u32,
    max: u32,
    idle_timeout_ms: u64,
    stable_window_ms: u64,
    queue_size: u32,
}

impl Scaling {
    fn yaml(&self) -> String {
        format!(
            "    min_instances: {}\n    max_instances: {}\n    idle_timeout_ms: {}\n    stable_window_ms: {}\n    panic_window_pct: 10\n    target_utilization: 0.7\n    queue_size: {}\n",
            self.min, self.max, self.idle_timeout_ms, self.stable_window_ms, self.queue_size
        )
    }
}

/// Start aetherd with one function of concurrency 1 running the test handler,
/// the autoscaling fields of `scaling`, and a snapshot dir in the test's temp dir.
fn start(test: &str, scaling: Scaling) -> Daemon {
    let spec = FunctionSpec::new(FN).timeout_ms(20_000);
    let d = Daemon::configure(test, vec![spec]);
    // The harness puts snapshot_dir in the test's temp dir.
    let d = d.with_orchestrator("127.0.0.1", "");
    // The harness writes the common fields; the scaling ones go right under
    // the function's `id` line (key order does not matter in a YAML map).
    let id_line = format!("  - id: {FN}\n");
    let yaml = d
        .yaml(&d.functions)
        .replacen(&id_line, &format!("{id_line}{}", scaling.yaml()), 1);
    assert!(
        yaml.contains("max_instances"),
        "scaling fields not inserted:\n{yaml}"
    );
    std::fs::write(&d.config, &yaml).expect("write config");
    d.up().unwrap_or_else(|e| panic!("[{test}] {e}"))
}

/// One observation of the function.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Since the sampler started.
    at: Duration,
    /// All instances (every state, every core).
    total: u32,
    /// Instances in a serving state.
    ready: u32,
    /// `aether_autoscale_desired_instances`, if exported.
    desired: Option<u32>,
    /// Live handler processes of this daemon.
    processes: u32,
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small gauges
fn count(v: f64) -> u32 {
    v.max(0.0).round() as u32
}

/// The function's instance counts from one metrics text.
fn counts(text: &str) -> (u32, u32, Option<u32>) {
    let f = ("function", FN);
    let total = metric_where(text, "aether_instances", &[f]).unwrap_or(0.0);
    let ready: f64 = ["ready", "serving", "idle"]
        .iter()
        .filter_map(|s| metric_where(text, "aether_instances", &[f, ("state", s)]))
        .sum();
    let desired = metric_where(text, "aether_autoscale_desired_instances", &[f]).map(count);
    (count(total), count(ready), desired)
}

/// The metrics endpoint of `d`, read once from its log.
fn metrics_addr(d: &Daemon) -> SocketAddr {
    let mut addr = None;
    wait_for(Duration::from_secs(10), || {
        addr = d.metrics_addr();
        addr.is_some()
    });
    let addr = addr.unwrap_or_else(|| panic!("no metrics address in the log\n{}", d.log_report()));
    assert!(addr.ip().is_loopback(), "metrics on {addr}, not loopback");
    addr
}

fn scrape(addr: SocketAddr) -> Result<String, String> {
    let r = http::get(addr.port(), "/metrics", Duration::from_secs(5))
        .map_err(|e| format!("GET {addr}/metrics: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {addr}/metrics: status {}", r.status));
    }
    Ok(r.text())
}

/// Observe the function once (metrics and handler processes).
fn observe(d: &Daemon, addr: SocketAddr, since: Instant) -> Sample {
    let text = scrape(addr).unwrap_or_else(|e| panic!("{e}\n{}", d.log_report()));
    let (total, ready, desired) = counts(&text);
    Sample {
        at: since.elapsed(),
        total,
        ready,
        desired,
        processes: u32::try_from(d.handler_pids().len()).unwrap_or(u32::MAX),
    }
}

/// Samples taken by a background thread until `stop` is set.
#[derive(Debug, Default)]
struct Timeline {
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

impl Timeline {
    fn run(&self, d: &Daemon, addr: SocketAddr, since: Instant) {
        // SYNC: a lone flag; the samples go through the mutex.
        while !self.stop.load(Ordering::Relaxed) {
            let s = observe(d, addr, since);
            self.samples.lock().unwrap().push(s);
            std::thread::sleep(SAMPLE_EVERY);
        }
    }

    fn last(&self) -> Option<Sample> {
        self.samples.lock().unwrap().last().copied()
    }

    fn all(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn between(&self, from: Duration, to: Duration) -> Vec<Sample> {
        self.all()
            .into_iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect()
    }

    /// Poll the sampler's latest sample until `cond` holds or `within` passes.
    fn wait(&self, within: Duration, cond: impl Fn(&Sample) -> bool) -> bool {
        wait_for(within, || self.last().is_some_and(|s| cond(&s)))
    }
}

/// Wait until `d`'s function has exactly `n` instances and `n` handler processes.
fn await_instances(d: &Daemon, addr: SocketAddr, n: u32, within: Duration) -> Sample {
    let since = Instant::now();
    let mut last = None;
    let ok = wait_for(within, || {
        let s = observe(d, addr, since);
        last = Some(s);
        s.total == n && s.processes == n
    });
    assert!(
        ok,
        "[{}] {FN} did not settle at {n} instance(s) within {within:?}; last: {last:?}\n{}\n{}",
        d.name,
        scrape(addr).unwrap_or_default(),
        d.log_report()
    );
    last.expect("sampled at least once")
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Outcomes {
    ok: u64,
    /// Non-200 answers and I/O errors, with the client number and when.
    failures: Vec<String>,
    /// Latency of each client's first request.
    first: Vec<Duration>,
}

/// One client: keep-alive `GET path` in a loop until `stop`; a failed
/// connection is recorded and replaced.
fn client(n: usize, port: u16, path: &str, stop: &AtomicBool, out: &Mutex<Outcomes>) {
    let mut conn: Option<Conn> = None;
    let mut first = true;
    // SYNC: a lone flag, nothing published through it.
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.get(path),
            None => Conn::open(port, Duration::from_secs(30)).and_then(|mut c| {
                let r = c.get(path);
                conn = Some(c);
                r
            }),
        };
        let mut o = out.lock().unwrap();
        if first {
            o.first.push(t.elapsed());
            first = false;
        }
        match result {
            Ok(r) if r.status == 200 => {
                o.ok += 1;
                if r.closes() {
                    conn = None;
                }
            }
            Ok(r) => {
                o.failures.push(format!(
                    "client {n}: status {} {:?} after {:?}",
                    r.status,
                    r.text(),
                    t.elapsed()
                ));
                conn = None;
            }
            Err(e) => {
                o.failures
                    .push(format!("client {n}: {e} after {:?}", t.elapsed()));
                conn = None;
            }
        }
    }
}

#[test]
fn ramp_from_zero_follows_desired_respects_max_and_scale_down_spares_a_long_request() {
    const T: &str = "autoscale_ramp";
    const MAX: u32 = 6;
    const CLIENTS: usize = 6;
    if !require_root(T) {
        return;
    }
    let d = start(
        T,
        Scaling {
            min: 0,
            max: MAX,
            idle_timeout_ms: 500,
            stable_window_ms: 2000,
            queue_size: 4096,
        },
    );
    let port = d.port(FN);
    let addr = metrics_addr(&d);

    eprintln!("[{T}] waiting for the deployed instances to scale to zero (no requests)");
    let t = Instant::now();
    await_instances(&d, addr, 0, SETTLE);
    eprintln!(
        "[{T}]   at 0 instances and 0 processes after {:?}",
        t.elapsed()
    );

    let timeline = Timeline::default();
    let stop = AtomicBool::new(false);
    let outcomes = Mutex::new(Outcomes::default());
    let since = Instant::now();
    let mut long: Option<(Duration, Duration, Result<http::Response, String>)> = None;
    let mut peak_at_long_start = 0;
    std::thread::scope(|s| {
        s.spawn(|| timeline.run(&d, addr, since));
        eprintln!("[{T}] ramp 0 -> {CLIENTS} clients (GET /slow?ms=150, one more every 250 ms)");
        let mut clients = Vec::new();
        for n in 0..CLIENTS {
            let (stop, outcomes) = (&stop, &outcomes);
            clients.push(s.spawn(move || client(n, port, "/slow?ms=150", stop, outcomes)));
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("[{T}] holding the load until ready instances reach desired = max_instances");
        let full = timeline.wait(SETTLE, |s| s.ready >= MAX && s.desired == Some(MAX));
        if full {
            // A little longer at full capacity: nothing may grow past max.
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!(
            "[{T}]   full capacity reached: {full}; last sample {:?}",
            timeline.last()
        );
        // SYNC: a lone flag.
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client thread");
        }
        let load_end = since.elapsed();
        eprintln!(
            "[{T}] load stopped at {load_end:?}; one GET /slow?ms=5000 while instances scale down"
        );
        peak_at_long_start = timeline.last().map_or(0, |s| s.total);
        let started = since.elapsed();
        let r =
            http::get(port, "/slow?ms=5000", Duration::from_secs(30)).map_err(|e| e.to_string());
        long = Some((started, since.elapsed(), r));
        eprintln!("[{T}] waiting for the function to return to 0 instances");
        timeline.wait(SETTLE, |s| s.total == 0 && s.processes == 0);
        // SYNC: a lone flag.
        timeline.stop.store(true, Ordering::Relaxed);
    });

    let samples = timeline.all();
    let o = outcomes.into_inner().unwrap();
    let shown: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "{:.2}s total {} ready {} desired {:?} procs {}",
                s.at.as_secs_f64(),
                s.total,
                s.ready,
                s.desired,
                s.processes
            )
        })
        .collect();
    let report = format!("timeline:\n{}\n{}", shown.join("\n"), d.log_report());
    eprintln!(
        "[{T}] {} requests answered 200, {} failed; first request of each client took {:?}",
        o.ok,
        o.failures.len(),
        o.first
    );

    // No request fails, including the first ones that met zero instances.
    assert!(
        o.failures.is_empty(),
        "requests failed while scaling: {:#?}\n{report}",
        o.failures
    );
    assert_eq!(
        o.first.len(),
        CLIENTS,
        "every client completed a first request"
    );
    assert!(o.ok >= CLIENTS as u64, "only {} requests answered", o.ok);

    // Never above max_instances, neither in metrics nor in processes.
    // Processes are compared only when no instance is starting: mid-restore,
    // tasks of the CRIU restore already show the restored environment (seen:
    // 7 tagged processes while 2 instances were starting from 0).
    if let Some(s) = samples.iter().find(|s| {
        s.total > MAX
            || (s.total == s.ready && s.processes > MAX)
            || s.desired.is_some_and(|x| x > MAX)
    }) {
        panic!("above max_instances {MAX}: {s:?}\n{report}");
    }
    // Instances follow desired up to full capacity.
    assert!(
        samples.iter().any(|s| s.desired.is_some()),
        "aether_autoscale_desired_instances{{function=\"{FN}\"}} was never exported\n{report}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.desired == Some(MAX) && s.ready >= MAX),
        "ready instances never reached desired = max_instances {MAX} under {CLIENTS} clients\n{report}"
    );
    let first_up = samples.iter().find(|s| s.ready >= 1).map(|s| s.at);
    eprintln!("[{T}] first ready instance after {first_up:?} of the ramp");

    // The long request survives the scale-down that happens while it runs.
    let (started, ended, r) = long.expect("the long request ran");
    let r = r.unwrap_or_else(|e| panic!("the long request failed: {e}\n{report}"));
    assert_eq!(
        r.status,
        200,
        "the long request: {} {}\n{report}",
        r.status,
        r.text()
    );
    let during = timeline.between(started, ended);
    let lowest = during.iter().map(|s| s.total).min();
    eprintln!(
        "[{T}] long request {:?} .. {:?}: instances {peak_at_long_start} at its start, lowest {lowest:?} while it ran",
        started, ended
    );
    assert!(
        lowest.is_some_and(|l| l < peak_at_long_start),
        "the instance count did not drop while the 5 s request ran (from {peak_at_long_start}, lowest {lowest:?}); \
         scale-down never overlapped it\n{report}"
    );
    assert!(
        during.iter().all(|s| s.total >= 1 && s.processes >= 1),
        "the function reached 0 instances while a request was in flight\n{report}"
    );

    // Back to min_instances (0) after the idle timeout.
    let last = samples.last().copied();
    assert!(
        last.is_some_and(|s| s.total == 0 && s.processes == 0),
        "not back at 0 instances within {SETTLE:?} of the last request: {last:?}\n{report}"
    );
    let text = scrape(addr).unwrap_or_else(|e| panic!("{e}"));
    let events = |dir: &str| {
        metric_where(
            &text,
            "aether_scale_events_total",
            &[("function", FN), ("direction", dir)],
        )
    };
    let (up, down) = (events("up"), events("down"));
    eprintln!("[{T}] scale events: up {up:?}, down {down:?}");
    assert!(up >= Some(1.0), "no scale-up event counted: {up:?}\n{text}");
    assert!(
        down >= Some(1.0),
        "no scale-down event counted: {down:?}\n{text}"
    );
    drop(d);
}

#[test]
fn min_instances_one_never_scales_to_zero() {
    const T: &str = "autoscale_min_one";
    if !require_root(T) {
        return;
    }
    let d = start(
        T,
        Scaling {
            min: 1,
            max: 3,
            idle_timeout_ms: 500,
            stable_window_ms: 1000,
            queue_size: 4096,
        },
    );
    let port = d.port(FN);
    let addr = metrics_addr(&d);

    eprintln!(
        "[{T}] waiting for the deployed instances (one per core) to settle at min_instances = 1"
    );
    await_instances(&d, addr, 1, SETTLE);

    let idle_watch = |what: &str, d: &Daemon| {
        let since = Instant::now();
        let mut seen = Vec::new();
        while since.elapsed() < Duration::from_secs(3) {
            let s = observe(d, addr, since);
            seen.push(s);
            assert!(
                s.total >= 1 && s.ready >= 1 && s.processes >= 1,
                "[{T}] {what}: below min_instances 1: {s:?} (so far {seen:?})\n{}",
                d.log_report()
            );
            std::thread::sleep(SAMPLE_EVERY);
        }
        eprintln!(
            "[{T}] {what}: {} samples over 3 s, never below 1",
            seen.len()
        );
    };
    idle_watch("idle after deploy", &d);

    eprintln!("[{T}] 3 clients for 2 s (GET /slow?ms=100)");
    let stop = AtomicBool::new(false);
    let outcomes = Mutex::new(Outcomes::default());
    std::thread::scope(|s| {
        for n in 0..3 {
            let (stop, outcomes) = (&stop, &outcomes);
            s.spawn(move || client(n, port, "/slow?ms=100", stop, outcomes));
        }
        std::thread::sleep(Duration::from_secs(2));
        // SYNC: a lone flag.
        stop.store(true, Ordering::Relaxed);
    });
    let o = outcomes.into_inner().unwrap();
    assert!(
        o.failures.is_empty(),
        "requests failed: {:#?}\n{}",
        o.failures,
        d.log_report()
    );
    assert!(o.ok >= 3, "only {} requests answered", o.ok);

    eprintln!("[{T}] load stopped; waiting to settle back at 1 (not 0)");
    await_instances(&d, addr, 1, SETTLE);
    idle_watch("idle after the load", &d);
    drop(d);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    const T: &str = "autoscale_queue_full";
    const QUEUE: u32 = 2;
    const REQUESTS: usize = 8;
    if !require_root(T) {
        return;
    }
    let d = start(
        T,
        Scaling {
            min: 1,
            max: 1,
            idle_timeout_ms: 60_000,
            stable_window_ms: 1000,
            queue_size: QUEUE,
        },
    );
    let port = d.port(FN);
    let addr = metrics_addr(&d);
    eprintln!("[{T}] waiting for the single instance");
    await_instances(&d, addr, 1, SETTLE);

    eprintln!("[{T}] {REQUESTS} simultaneous GET /slow?ms=1500 (1 slot, queue_size {QUEUE})");
    let barrier = std::sync::Barrier::new(REQUESTS);
    let answers: Vec<Result<http::Response, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..REQUESTS)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut c =
                        Conn::open(port, Duration::from_secs(30)).map_err(|e| e.to_string())?;
                    barrier.wait();
                    c.get("/slow?ms=1500").map_err(|e| e.to_string())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let statuses: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(r) => format!("{} retry-after={:?}", r.status, r.header("retry-after")),
            Err(e) => format!("error {e}"),
        })
        .collect();
    eprintln!("[{T}] answers: {statuses:?}");
    let mut ok = 0;
    let mut full = 0;
    for a in &answers {
        let r = a.as_ref().unwrap_or_else(|e| {
            panic!(
                "a request failed outright ({e}); all: {statuses:?}\n{}",
                d.log_report()
            )
        });
        match r.status {
            200 => ok += 1,
            503 => {
                full += 1;
                assert_eq!(
                    r.header("retry-after"),
                    Some("1"),
                    "503 without Retry-After: 1: {:?}",
                    r.headers
                );
            }
            other => panic!(
                "status {other} ({:?}); all: {statuses:?}\n{}",
                r.text(),
                d.log_report()
            ),
        }
    }
    assert!(
        full >= 1,
        "no 503 although {REQUESTS} requests met 1 slot and a queue of {QUEUE}: {statuses:?}"
    );
    // With one instance every core hands its requests to that instance's
    // core, so the slot plus one queue of QUEUE are all that is served.
    assert_eq!(
        ok,
        1 + QUEUE as usize,
        "200s should be exactly the slot plus the queue ({QUEUE}): {statuses:?}"
    );
    drop(d);
}
