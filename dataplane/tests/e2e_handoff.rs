//! End-to-end test of cross-core connection handoff (issue 6, placement):
//! with `max_instances: 1` on a two-core aetherd, only one core may have an
//! instance, yet clients whose connections land on either core (pinned to
//! CPU 0 and CPU 1: loopback connections are received on the sender's CPU
//! and sk_reuseport steers them to that CPU's executor) are all answered —
//! the core without an instance hands each connection to the core that has
//! one — without the instance moving between cores and never more than one.
//!
//! Needs root and two CPUs; prints `SKIP` otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::{http, metric_where, pin_to, require_root, wait_for, Daemon, FunctionSpec};

fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    d.metrics()
        .ok()
        .and_then(|m| metric_where(&m, name, labels))
        .unwrap_or(0.0)
}

#[test]
fn a_core_without_an_instance_hands_connections_to_one_that_has() {
    const T: &str = "handoff";
    if !require_root(T) {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("SKIP {T}: needs two CPUs");
        return;
    }
    let d = Daemon::configure(T, vec![FunctionSpec::new("f").timeout_ms(5_000)]);
    let d = d.with_orchestrator("127.0.0.1", "");
    let yaml = std::fs::read_to_string(d.path("aether.yaml"))
        .unwrap()
        .replacen(
            "  - id: f\n",
            "  - id: f\n    min_instances: 1\n    max_instances: 1\n    idle_timeout_ms: 60000\n",
            1,
        );
    std::fs::write(d.path("aether.yaml"), yaml).unwrap();
    let d = d.up().unwrap_or_else(|e| panic!("[{T}] {e}"));
    let instances = |d: &Daemon| metric(d, "aether_instances", &[("function", "f")]);
    assert!(
        wait_for(Duration::from_secs(20), || instances(&d) == 1.0),
        "[{T}] never settled at one instance: {}\n{}",
        instances(&d),
        d.log_report()
    );
    let starts_before = metric(&d, "aether_instance_starts_total", &[("function", "f")]);
    let port = d.port("f");
    let stop_at = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..2)
        .map(|cpu| {
            std::thread::spawn(move || {
                pin_to(cpu);
                let (mut ok, mut failed) = (0u32, Vec::new());
                while Instant::now() < stop_at {
                    // A new connection each time: each is accepted anew.
                    match http::get(port, "/", Duration::from_secs(10)) {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("status {}", r.status)),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (cpu, ok, failed)
            })
        })
        .collect();
    let mut peak = 0.0f64;
    while Instant::now() < stop_at {
        peak = peak.max(instances(&d));
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in clients {
        let (cpu, ok, failed) = c.join().unwrap();
        eprintln!(
            "[{T}] client on cpu {cpu}: {ok} answered, {} failed",
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "[{T}] cpu {cpu}: {failed:?}\n{}",
            d.log_report()
        );
        assert!(ok > 0, "[{T}] cpu {cpu} got no answer");
    }
    assert!(peak <= 1.0, "[{T}] {peak} instances with max_instances 1");
    // Both cores accepted connections; one served them all through one
    // instance that never had to move.
    let accepted_on = |core: &str| {
        metric(
            &d,
            "aether_requests_total",
            &[("core", core), ("function", "f")],
        )
    };
    let starts_after = metric(&d, "aether_instance_starts_total", &[("function", "f")]);
    assert_eq!(
        starts_before,
        starts_after,
        "[{T}] instances were started during the run (moved between cores?)\n{}",
        d.log_report()
    );
    eprintln!(
        "[{T}] requests answered by core 0: {}, core 1: {}",
        accepted_on("0"),
        accepted_on("1")
    );
}
