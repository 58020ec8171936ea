//! End-to-end tests of instances restored from CRIU snapshots (issue 4):
//! the real `aetherd`, real CRIU, `tests/restore_support/stateful.py`.
//!
//! Every test runs a function with `min_instances: 0` and a short idle
//! timeout: the deploy's first instance is dumped (after its warm-up
//! requests), the function scales to zero, and the next request must be
//! answered by an instance restored from the images — or, when the restore
//! cannot be used, by a spawned one, with the failure counted.
//!
//! | test | proves |
//! |---|---|
//! | state and signal | a restored instance answers with the dumped state (2 warm-ups → count 3), got the restored signal (SIGCONT) once, and a TCP connection it held at dump time still carries data; `instance_starts{source="restore"}` counted it |
//! | over budget | with `restore_timeout_ms: 1` the restore is killed and counted `restore_failures{reason="over_budget"}`; the waiting request is still answered (by a spawned instance) |
//! | corrupt, then missing images | garbage in the images → `restore_failures{reason="failed"}`, the request answered by a spawn, and a new snapshot dumped; then the images removed → the same again |
//! | changed handler | editing the handler file gives the next start a new snapshot identity: the old images are removed and the answer comes from the new code |
//!
//! Needs root and CRIU at `/usr/local/sbin/criu`; prints `SKIP` otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{http, metric_where, require_root, wait_for, Daemon, FunctionSpec};

fn handler() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/restore_support/stateful.py")
}

/// Root and a usable CRIU; a loud SKIP otherwise.
fn require_criu_root(test: &str) -> bool {
    require_root(test) && common::require_criu(test)
}

/// aetherd with function `f` (handler `handler`, 2 warm-up requests,
/// scale to zero after 300 ms idle), a private snapshot dir and the given
/// restore budget.
fn start(test: &str, handler: &Path, env: &[(&str, &str)], restore_timeout_ms: u64) -> Daemon {
    let mut spec = FunctionSpec::new("f").handler(handler.to_path_buf());
    for (k, v) in env {
        spec = spec.env(k, v);
    }
    let d = Daemon::configure(test, vec![spec]);
    // The harness puts snapshot_dir at <temp dir>/snapshots.
    let extra = format!("  restore_timeout_ms: {restore_timeout_ms}\n");
    let d = d.with_orchestrator("127.0.0.1", &extra);
    let yaml = std::fs::read_to_string(d.path("aether.yaml")).unwrap().replacen(
        "  - id: f\n",
        "  - id: f\n    min_instances: 0\n    max_instances: 4\n    idle_timeout_ms: 300\n    stable_window_ms: 1000\n    warmup_requests: 2\n",
        1,
    );
    std::fs::write(d.path("aether.yaml"), yaml).unwrap();
    d.up().unwrap_or_else(|e| panic!("[{test}] {e}"))
}

fn metric(d: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    d.metrics()
        .ok()
        .and_then(|m| metric_where(&m, name, labels))
        .unwrap_or(0.0)
}

fn instances(d: &Daemon) -> f64 {
    metric(d, "aether_instances", &[("function", "f")])
}

/// Wait until `n` snapshots of `f` succeeded and `f` has no instance left.
fn await_snapshot_and_zero(d: &Daemon, test: &str, snapshots: f64) {
    let ok = wait_for(Duration::from_secs(20), || {
        metric(
            d,
            "aether_snapshots_total",
            &[("function", "f"), ("outcome", "ok")],
        ) >= snapshots
            && instances(d) == 0.0
    });
    assert!(
        ok,
        "[{test}] expected {snapshots} snapshot(s) and zero instances; metrics:\n{}\n{}",
        d.metrics().unwrap_or_default(),
        d.log_report()
    );
}

fn get(d: &Daemon, test: &str) -> String {
    let r = http::get(d.port("f"), "/x", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("[{test}] GET: {e}\n{}", d.log_report()));
    assert_eq!(r.status, 200, "[{test}] {}\n{}", r.text(), d.log_report());
    r.text()
}

/// The images directory of `f` (the only identity directory).
fn images_dir(d: &Daemon) -> Option<PathBuf> {
    let dir = d.path("snapshots").join("f");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("COMPLETE").exists())
}

#[test]
fn restored_instance_keeps_state_gets_the_signal_and_its_connection() {
    const T: &str = "restore state";
    if !require_criu_root(T) {
        return;
    }
    let d = start(T, &handler(), &[("HOLD_CONN", "1")], 2_000);
    await_snapshot_and_zero(&d, T, 1.0);
    let body = get(&d, T);
    // Two warm-up requests before the dump, then this one.
    assert!(
        body.starts_with("count=3 restored=1 held=ok "),
        "[{T}] {body}"
    );
    assert!(
        metric(
            &d,
            "aether_instance_starts_total",
            &[("function", "f"), ("source", "restore")]
        ) >= 1.0,
        "[{T}] no restore counted:\n{}",
        d.metrics().unwrap_or_default()
    );
    // The copy logs into its own file, not the dumped instance's.
    let logs: Vec<_> = std::fs::read_dir(d.path("log").join("f"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.len() >= 2, "[{T}] log files: {logs:?}");
}

#[test]
fn restore_over_budget_is_killed_counted_and_the_request_still_served() {
    const T: &str = "restore budget";
    if !require_criu_root(T) {
        return;
    }
    let d = start(T, &handler(), &[], 1);
    await_snapshot_and_zero(&d, T, 1.0);
    let body = get(&d, T);
    assert!(
        body.starts_with("count=1 restored=0 "),
        "[{T}] a spawned instance answers: {body}"
    );
    let over = metric(
        &d,
        "aether_restore_failures_total",
        &[("function", "f"), ("reason", "over_budget")],
    );
    assert!(
        over >= 1.0,
        "[{T}] over-budget restore not counted:\n{}",
        d.metrics().unwrap_or_default()
    );
    assert!(
        d.log().contains("over_budget after"),
        "[{T}] {}",
        d.log_report()
    );
    // The killed restore left no process behind in the function's cgroups.
    assert!(
        wait_for(Duration::from_secs(5), || instances(&d) <= 4.0),
        "[{T}] instances: {}",
        instances(&d)
    );
}

#[test]
fn corrupt_then_missing_images_fall_back_to_spawn_and_are_rebuilt() {
    const T: &str = "restore corrupt";
    if !require_criu_root(T) {
        return;
    }
    let d = start(T, &handler(), &[], 2_000);
    await_snapshot_and_zero(&d, T, 1.0);
    // Garbage over every image file.
    let dir = images_dir(&d).expect("images");
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "img") {
            std::fs::write(e.path(), b"not a criu image").unwrap();
        }
    }
    let body = get(&d, T);
    assert!(
        body.contains("restored=0"),
        "[{T}] a spawned instance answers: {body}"
    );
    let failed = |d: &Daemon| {
        metric(
            d,
            "aether_restore_failures_total",
            &[("function", "f"), ("reason", "failed")],
        )
    };
    assert!(
        failed(&d) >= 1.0,
        "[{T}]\n{}",
        d.metrics().unwrap_or_default()
    );
    // The spawned instance was dumped into new images; then back to zero.
    await_snapshot_and_zero(&d, T, 2.0);
    let body = get(&d, T);
    assert!(
        body.contains("restored=1"),
        "[{T}] restored from the rebuilt images: {body}"
    );
    // Now the images vanish altogether.
    await_snapshot_and_zero(&d, T, 2.0);
    let before = failed(&d);
    std::fs::remove_dir_all(images_dir(&d).expect("images")).unwrap();
    let body = get(&d, T);
    assert!(body.contains("restored=0"), "[{T}] {body}");
    assert!(failed(&d) > before, "[{T}] missing images not counted");
    await_snapshot_and_zero(&d, T, 3.0);
}

#[test]
fn changed_handler_gets_a_new_snapshot() {
    const T: &str = "restore changed handler";
    if !require_criu_root(T) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let h = tmp.path().join("stateful.py");
    std::fs::copy(handler(), &h).unwrap();
    let d = start(T, &h, &[], 2_000);
    await_snapshot_and_zero(&d, T, 1.0);
    let old = images_dir(&d).expect("images");
    // A new version of the handler: its answers say so.
    let code = std::fs::read_to_string(&h)
        .unwrap()
        .replace("count={COUNT}", "v2 count={COUNT}");
    std::fs::write(&h, code).unwrap();
    let body = get(&d, T);
    // Spawned: one fresh instance is held back for its warm-ups and dump,
    // so the answer may come from either (count 1 or 3).
    assert!(
        body.starts_with("v2 count=") && body.contains(" restored=0 "),
        "[{T}] the new code, spawned: {body}"
    );
    await_snapshot_and_zero(&d, T, 2.0);
    let new = images_dir(&d).expect("new images");
    assert_ne!(old, new, "[{T}] same identity after the handler changed");
    assert!(
        !old.exists(),
        "[{T}] stale images left at {}",
        old.display()
    );
    let body = get(&d, T);
    assert!(
        body.starts_with("v2 count=3 restored=1"),
        "[{T}] restored v2: {body}"
    );
}
