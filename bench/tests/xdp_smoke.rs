//! Runs the `xdp` benchmark binary end to end (real namespaces, veth, XDP,
//! nftables, sk_reuseport; tiny windows) and checks the JSON it writes and
//! that it removed its namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use serde_json::Value;
use std::process::{Command, Stdio};

#[test]
fn xdp_benchmark_writes_complete_json_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP xdp_benchmark_writes_complete_json_and_cleans_up: not root (BPF, namespaces and AF_PACKET need root)");
        return;
    }
    let allowed = bench::affinity::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        eprintln!("SKIP xdp_benchmark_writes_complete_json_and_cleans_up: needs two cpus, allowed {allowed:?}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("xdp-smoke-test-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_xdp"))
        .args([
            "--smoke",
            "--duration-s",
            "0.5",
            "--warmup-s",
            "0.2",
            "--rounds",
            "1",
            "--test-run-repeat",
            "10000",
            "--connections",
            "20",
            "--output-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "xdp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let leftover = format!("aeth-xdpb-{pid}-");
    assert!(
        !String::from_utf8_lossy(&netns.stdout).contains(&leftover),
        "namespaces {leftover}* left behind"
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("xdp.json")).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(doc["benchmark"], "xdp");
    assert_eq!(doc["smoke"], true);
    let mode = doc["parameters"]["xdp_attach_mode"].as_str().unwrap();
    assert!(mode == "native" || mode == "generic", "{mode}");
    assert!(doc["parameters"]["nftables_hook"].as_str().is_some());
    let r = &doc["results"];
    for key in [
        "xdp_drop_pps",
        "nftables_drop_pps",
        "xdp_ns_per_packet",
        "xdp_ns_per_packet_drop",
        "xdp_ns_per_packet_pass",
        "xdp_sent_pps",
        "nftables_sent_pps",
    ] {
        let v = r[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
        assert!(v.is_finite() && v > 0.0, "{key} = {v}");
    }
    // Every counted drop was sent (allowing 1 % for the midpoint timing of the reads).
    for mode in ["xdp", "nftables"] {
        let dropped = r[format!("{mode}_drop_pps")].as_f64().unwrap();
        let sent = r[format!("{mode}_sent_pps")].as_f64().unwrap();
        assert!(
            dropped <= sent * 1.01,
            "{mode}: {dropped} dropped > {sent} sent"
        );
    }
    assert!((r["accept_locality_pct_reuseport"].as_f64().unwrap() - 100.0).abs() < 1e-9);
    let hash = r["accept_locality_pct_kernel_hash"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&hash), "{hash}");
    for target in ["xdp_drop_rate_vs_nftables", "accept_locality_reuseport"] {
        assert!(doc["targets"][target]["pass"].is_boolean(), "{target}");
    }
}
