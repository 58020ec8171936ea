//! End-to-end test of sk_reuseport steering in aetherd (issue 5 item 3): the
//! real `aetherd` and `aetherctl`, real connections over loopback.
//!
//! Run: `cargo build -p control -p dataplane && cargo test -p dataplane --test e2e_reuseport -- --nocapture`
//! (as root, on at least 2 CPUs). It prints `SKIP <test>: <reason>` and
//! returns without root, with fewer than 2 executor CPUs, or when the kernel
//! refuses to load the sk_reuseport program.
//!
//! ```text
//!  client thread pinned to cpu c ── fresh connection ──► 127.0.0.1:port
//!  loopback: the SYN is processed in softirq on cpu c ──► sk_reuseport program
//!  slot c of the function's REUSEPORT_SOCKARRAY ──► listener of the core on cpu c
//!  which core served it: delta of aether_requests_total{core="<index>",function}
//! ```
//!
//! | phase | proves |
//! |---|---|
//! | steering on (default) | `aether_reuseport_steering{core,function}` is 1 on every core; 100 % of the connections from cpu c are served by the core on cpu c |
//! | replacement (`deploy` of a changed function, same port) | the new version answers and still 100 % locality: the new listeners took the slots (a closed old listener would leave its slot empty → the kernel's hash) |
//! | `undeploy` | the gauge's series are gone |
//! | `AETHER_REUSEPORT_STEERING=0` | the gauge is 0 on every core; every connection is still served (the kernel's hash spreads them); its locality is printed for comparison |

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::Duration;

use common::{cores_from_up, http, pin_to, require_root, wait_for, Daemon, FunctionSpec};

/// Fresh connections per client CPU and phase.
const CONNECTIONS_PER_CPU: usize = 100;
const FUNCTION: &str = "steer";

/// Per-core index samples of `name{core="i",function=FUNCTION,...}`, summed per core.
fn per_core(metrics: &str, name: &str) -> Vec<(usize, f64)> {
    let mut out: Vec<(usize, f64)> = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(labels) = series.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        if !labels.contains(&format!("function=\"{FUNCTION}\"")) {
            continue;
        }
        let core = labels
            .split("core=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|c| c.parse::<usize>().ok());
        let (Some(core), Ok(v)) = (core, value.parse::<f64>()) else {
            continue;
        };
        match out.iter_mut().find(|(c, _)| *c == core) {
            Some((_, sum)) => *sum += v,
            None => out.push((core, v)),
        }
    }
    out.sort_by_key(|(c, _)| *c);
    out
}

fn requests_on(metrics: &str, core: usize) -> f64 {
    per_core(metrics, "aether_requests_total")
        .iter()
        .find(|(c, _)| *c == core)
        .map_or(0.0, |(_, v)| *v)
}

/// For each executor CPU, `CONNECTIONS_PER_CPU` fresh connections (one GET
/// each) from a thread pinned to it; returns, per CPU, (served by that CPU's
/// core, served in total) from the per-core request counters.
fn batches(d: &Daemon, port: u16, cpus: &[u64]) -> Vec<(u64, f64, f64)> {
    // Locality holds while every core has a ready instance of its own (a
    // core without one hands its connections to a core that has one, e.g.
    // while a replacement's first instance is being snapshotted).
    assert!(
        wait_for(Duration::from_secs(20), || {
            let m = d.metrics().unwrap();
            (0..cpus.len()).all(|core| {
                let core = core.to_string();
                let want = [
                    ("core", core.as_str()),
                    ("function", FUNCTION),
                    ("state", "ready"),
                ];
                common::metric_where(&m, "aether_instances", &want).unwrap_or(0.0) >= 1.0
            })
        }),
        "not every core has an instance:\n{}",
        d.metrics().unwrap()
    );
    let mut out = Vec::new();
    for (index, cpu) in cpus.iter().enumerate() {
        let before = d.metrics().unwrap();
        let cpu_usize = usize::try_from(*cpu).unwrap();
        std::thread::spawn(move || {
            pin_to(cpu_usize);
            for i in 0..CONNECTIONS_PER_CPU {
                let r = http::get(port, "/", Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("cpu {cpu_usize}: connection {i}: {e}"));
                assert_eq!(
                    r.status,
                    200,
                    "cpu {cpu_usize}: connection {i}: {}",
                    r.text()
                );
            }
        })
        .join()
        .unwrap();
        let after = d.metrics().unwrap();
        let total: f64 = (0..cpus.len())
            .map(|c| requests_on(&after, c) - requests_on(&before, c))
            .sum();
        let local = requests_on(&after, index) - requests_on(&before, index);
        out.push((*cpu, local, total));
    }
    out
}

fn locality_pct(results: &[(u64, f64, f64)]) -> f64 {
    let local: f64 = results.iter().map(|r| r.1).sum();
    let total: f64 = results.iter().map(|r| r.2).sum();
    100.0 * local / total
}

/// Start aetherd with one function; waits until it answers on every core
/// and the steering gauge is published by every core.
fn start(name: &str) -> (Daemon, u16, Vec<u64>) {
    let d =
        Daemon::start(name, vec![FunctionSpec::new(FUNCTION)]).unwrap_or_else(|e| panic!("{e}"));
    let port = d.port(FUNCTION);
    http::get_until(port, "/", 200, Duration::from_secs(15)).unwrap();
    let cpus = cores_from_up(&d.up_output);
    assert!(
        wait_for(Duration::from_secs(5), || {
            per_core(&d.metrics().unwrap(), "aether_reuseport_steering").len() == cpus.len()
        }),
        "aether_reuseport_steering not published by every core:\n{}",
        d.metrics().unwrap()
    );
    (d, port, cpus)
}

#[test]
fn accepts_stay_on_the_receiving_core() {
    let test = "accepts_stay_on_the_receiving_core";
    if !require_root(test) {
        return;
    }
    if let Err(e) = bpf::ReuseportCpuSelector::load() {
        eprintln!("SKIP {test}: the kernel refuses the sk_reuseport program: {e}");
        return;
    }
    std::env::remove_var("AETHER_REUSEPORT_STEERING");
    let (mut d, port, cpus) = start("reuseport-on");
    if cpus.len() < 2 {
        eprintln!(
            "SKIP {test}: aetherd runs {} executor(s) ({cpus:?}); steering needs 2",
            cpus.len()
        );
        return;
    }
    let gauge = per_core(&d.metrics().unwrap(), "aether_reuseport_steering");
    assert!(
        gauge.iter().all(|(_, v)| *v == 1.0),
        "steering should be on for every core: {gauge:?}\n{}",
        d.log_report()
    );
    let steered = batches(&d, port, &cpus);

    // A replacement (same port, same group): the new listeners take the
    // slots when they start serving; the old ones only drain.
    let mut updated = FunctionSpec::new(FUNCTION).env("E2E_VERSION", "2");
    updated.port = port;
    let file = d.path("updated.yaml");
    d.write_config(&file, std::slice::from_ref(&updated));
    let out = d.ctl_ok(&["deploy", &file.display().to_string()]);
    assert!(
        out.lines().any(|l| l == format!("update {FUNCTION}")),
        "{out:?}"
    );
    let body = http::get(port, "/v", Duration::from_secs(5))
        .unwrap()
        .text();
    assert!(body.contains("\"2\""), "the new version answers: {body}");
    let replaced = batches(&d, port, &cpus);

    // Undeploy: every core's series of the gauge goes.
    d.ctl_ok(&["undeploy", FUNCTION]);
    let left = per_core(&d.metrics().unwrap(), "aether_reuseport_steering");
    assert!(left.is_empty(), "gauge left after undeploy: {left:?}");
    assert!(d.down().ok());

    // Same batches, steering off: the kernel's hash over the group.
    std::env::set_var("AETHER_REUSEPORT_STEERING", "0");
    let (mut k, kport, kcpus) = start("reuseport-off");
    std::env::remove_var("AETHER_REUSEPORT_STEERING");
    let gauge = per_core(&k.metrics().unwrap(), "aether_reuseport_steering");
    assert!(
        gauge.iter().all(|(_, v)| *v == 0.0),
        "AETHER_REUSEPORT_STEERING=0 should turn steering off: {gauge:?}"
    );
    let hashed = batches(&k, kport, &kcpus);
    assert!(k.down().ok());

    let show = |r: &[(u64, f64, f64)]| {
        r.iter()
            .map(|(cpu, local, total)| format!("cpu {cpu}: {local}/{total} on its core"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "accept locality with sk_reuseport: {:.1} % ({}); after a replacement: {:.1} % ({}); \
         kernel hash: {:.1} % ({})",
        locality_pct(&steered),
        show(&steered),
        locality_pct(&replaced),
        show(&replaced),
        locality_pct(&hashed),
        show(&hashed)
    );
    for (cpu, local, total) in steered.iter().chain(&replaced).chain(&hashed) {
        assert_eq!(
            *total, CONNECTIONS_PER_CPU as f64,
            "cpu {cpu}: every connection is served once ({local} local)"
        );
    }
    for (cpu, local, total) in steered.iter().chain(&replaced) {
        assert_eq!(
            local, total,
            "cpu {cpu}: with sk_reuseport every connection is accepted by the core on cpu {cpu}"
        );
    }
}
