//! Runs the `ring` benchmark binary end to end (two real processes, real
//! rings, tiny sample counts) and checks the JSON it writes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use serde_json::Value;
use std::process::Command;

#[test]
fn ring_benchmark_writes_complete_json() {
    let allowed = bench::affinity::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        eprintln!("SKIP: the ring benchmark needs two cpus, this process may use {allowed:?}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ring-smoke-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_ring"))
        .args(["--smoke", "--samples-divisor", "50", "--output-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ring failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ring.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(doc["benchmark"], "ring");
    assert_eq!(doc["smoke"], true);
    let cores = doc["machine"]["cores_used"].as_array().unwrap();
    assert_eq!(cores.len(), 2);
    assert_ne!(cores[0], cores[1]);

    let r = &doc["results"];
    for key in [
        "one_way_p50_ns_64b",
        "one_way_p99_ns_64b",
        "one_way_p999_ns_64b",
        "one_way_p50_ns_1k",
        "rtt_p50_ns_64b",
        "floor_one_way_p50_ns",
        "floor_rtt_p50_ns",
        "throughput_64b_records_per_s",
        "throughput_64b_gb_per_s",
        "throughput_1k_records_per_s",
        "wakeup_p50_ns",
        "wakeup_p99_ns",
        "wakeup_floor_futex_p50_ns",
        "ratio_one_way_to_floor",
    ] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    let f = |k: &str| r[k].as_f64().unwrap();
    // Internal consistency of numbers from one run.
    assert!(f("one_way_p50_ns_64b") <= f("one_way_p99_ns_64b"));
    assert!((f("floor_one_way_p50_ns") - f("floor_rtt_p50_ns") / 2.0).abs() < 1e-9);
    assert!(
        (f("ratio_one_way_to_floor") - f("one_way_p50_ns_64b") / f("floor_one_way_p50_ns")).abs()
            < 1e-9
    );
    let gb = f("throughput_64b_records_per_s") * 64.0 / 1e9;
    assert!((gb - f("throughput_64b_gb_per_s")).abs() < 1e-9);
    // The consumer really slept: about one voluntary switch per record.
    assert!(f("wakeup_voluntary_switches_per_record") >= 0.9);

    let t = &doc["targets"];
    for (key, metric) in [
        ("one_way_p50_vs_floor", "ratio_one_way_to_floor"),
        ("throughput_64b", "throughput_64b_records_per_s"),
        ("wakeup_p50", "wakeup_p50_ns"),
    ] {
        let target = &t[key];
        assert_eq!(target["measured"].as_f64().unwrap(), f(metric), "{key}");
        let limit = target["limit"].as_f64().unwrap();
        let expect = if target["comparison"] == "at_most" {
            f(metric) <= limit
        } else {
            f(metric) >= limit
        };
        assert_eq!(target["pass"].as_bool().unwrap(), expect, "{key}");
    }
}
