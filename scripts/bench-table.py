#!/usr/bin/env python3
"""Print the README's benchmark table from bench/results/*.json.

    scripts/bench-table.py [RESULTS_DIR]

Every number comes from the JSON files the benchmark binaries wrote; nothing
here is typed in by hand.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "bench" / "results")


def load(name):
    p = root / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float):
        v = f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    else:
        v = f"{v:,}"
    return f"{v} {unit}".strip()


rows = []
ring = load("ring")
if ring:
    r = ring["results"]
    rows += [
        ("ring", "one-way latency, 64 B, p50 / p99", f"{fmt(r['one_way_p50_ns_64b'], 'ns')} / {fmt(r['one_way_p99_ns_64b'], 'ns')}",
         f"cache-line ping-pong floor {fmt(r['floor_one_way_p50_ns'], 'ns')} (ratio {r['ratio_one_way_to_floor']:.2f}, target ≤ 1.5)"),
        ("ring", "one-way latency, 1 KiB, p50", fmt(r["one_way_p50_ns_1k"], "ns"), ""),
        ("ring", "throughput, 64 B records", fmt(r["throughput_64b_records_per_s"], "rec/s"),
         f"{r['throughput_64b_gb_per_s']:.2f} GB/s (target ≥ 10 M rec/s)"),
        ("ring", "throughput, 1 KiB records", fmt(r["throughput_1k_records_per_s"], "rec/s"), f"{r['throughput_1k_gb_per_s']:.2f} GB/s"),
        ("ring", "sleeping-consumer wake-up, p50 / p99", f"{fmt(r['wakeup_p50_ns'], 'ns')} / {fmt(r['wakeup_p99_ns'], 'ns')}",
         f"raw futex wake floor {fmt(r['wakeup_floor_futex_p50_ns'], 'ns')} (target ≤ 10 µs)"),
    ]
gw = load("gateway")
if gw:
    r = gw["results"]
    rows += [
        ("gateway", "p50 / p99 at 1 connection: direct", f"{fmt(r['direct_p50_us'], 'µs')} / {fmt(r['direct_p99_us'], 'µs')}", "native handler called directly"),
        ("gateway", "p50 / p99 at 1 connection: through aetherd", f"{fmt(r['aetherd_p50_us'], 'µs')} / {fmt(r['aetherd_p99_us'], 'µs')}",
         f"adds {fmt(r['aetherd_added_p50_us'], 'µs')} at p50 (target ≤ 10 µs)"),
        ("gateway", "p50 / p99 at 1 connection: through nginx", f"{fmt(r['nginx_p50_us'], 'µs')} / {fmt(r['nginx_p99_us'], 'µs')}",
         f"adds {fmt(r['nginx_added_p50_us'], 'µs')} at p50"),
        ("gateway", "p50 at 1 connection, every CPU kept awake: direct / aetherd / nginx",
         f"{fmt(r['direct_awake_p50_us'], 'µs')} / {fmt(r['aetherd_awake_p50_us'], 'µs')} / {fmt(r['nginx_awake_p50_us'], 'µs')}",
         f"aetherd adds {fmt(r['aetherd_added_awake_p50_us'], 'µs')}, nginx adds {fmt(r['nginx_added_awake_p50_us'], 'µs')} (idle-priority spinners keep CPUs out of halt)"),
        ("gateway", "requests/s at 32 connections: direct / aetherd / nginx",
         f"{fmt(r['direct_rps_c32'])} / {fmt(r['aetherd_rps_c32'])} / {fmt(r['nginx_rps_c32'])}",
         f"aetherd = {r['aetherd_rps_c32'] / r['nginx_rps_c32']:.2f} × nginx (target ≥ 2)"),
    ]
xdp = load("xdp")
if xdp:
    r = xdp["results"]
    rows += [
        ("xdp", "drop rate, strict mode, veth pair: XDP / nftables", f"{fmt(r['xdp_drop_pps'], 'pps')} / {fmt(r['nftables_drop_pps'], 'pps')}",
         f"ratio {r['xdp_drop_pps'] / r['nftables_drop_pps']:.2f} (target ≥ 3; on veth the skb exists before XDP runs)"),
        ("xdp", "XDP program cost per packet", fmt(r["xdp_ns_per_packet"], "ns"), "BPF_PROG_TEST_RUN, drop and pass frames"),
        ("xdp", "accept locality: sk_reuseport / kernel hash", f"{fmt(r['accept_locality_pct_reuseport'], '%')} / {fmt(r['accept_locality_pct_kernel_hash'], '%')}",
         "target 100 % with sk_reuseport"),
    ]
cold = load("coldstart")
if cold:
    r = cold["results"]
    rows += [
        ("coldstart", "cold start through aetherd (zero instances → first byte), p50 / p99",
         f"{fmt(r['aetherd_cold_p50_ms'], 'ms')} / {fmt(r['aetherd_cold_p99_ms'], 'ms')}",
         f"quickstart hello.py restored from its snapshot; {r.get('aetherd_cold_starts_per_request', 0):.1f} starts per request (target ≤ 5 / ≤ 15 ms)"),
        ("coldstart", "warm-pool start through aetherd (frozen copy thawed → first byte), p50",
         fmt(r["warm_pool_p50_us"], "µs"), "target ≤ 300 µs; a request to a running instance takes " + fmt(r.get("aetherd_cold_running_p50_us"), "µs")),
        ("coldstart", "baselines: `criu restore` by the command line / fresh spawn to first byte, p50",
         f"{fmt(r['criu_cli_p50_ms'], 'ms')} / {fmt(r['spawn_p50_ms'], 'ms')}", "same images, same machine, same run"),
        ("coldstart", "restores per second, one image, 2 cores", fmt(r["restores_per_s"], "/s"), "criu command line, each copy answering one request (target ≥ 200)"),
    ]
auto = load("autoscale")
if auto:
    r = auto["results"]
    rows += [
        ("autoscale", "0 → 50 clients burst: full capacity after", fmt(r["burst_to_capacity_ms"], "ms"), "worst round, snapshots available (target ≤ 1000 ms)"),
        ("autoscale", "queue wait during the burst, p99", fmt(r["queue_wait_p99_ms"], "ms"), ""),
        ("autoscale", "failed requests during the bursts", fmt(r["failed_requests"]), "target 0"),
    ]
print("| benchmark | metric | measured | context |")
print("|---|---|---|---|")
for row in rows:
    print("| " + " | ".join(row) + " |")
for name, doc in (("ring", ring), ("gateway", gw), ("xdp", xdp), ("coldstart", cold), ("autoscale", auto)):
    if doc:
        m = doc.get("machine", {})
        print(f"\n`{name}.json`: {doc.get('timestamp', '?')}, {m.get('cpu_model', '?')}, kernel {m.get('kernel', '?')}, "
              f"smoke={doc.get('smoke')}, load average at start {m.get('load_average', '?')}.")
