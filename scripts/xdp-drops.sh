#!/usr/bin/env bash
# Per-port XDP packets, bytes and drops of a running aetherd, every N seconds.
#
#   scripts/xdp-drops.sh [METRICS_ADDR] [SECONDS]   (default 127.0.0.1:9090, 2)
#
# Reads the aether_xdp_* counters that aetherd exports from the XDP program's
# per-CPU stats map (port "0" collects strict-mode drops to unknown ports).
# A bpftrace script cannot read another program's maps, and our kernels have
# no kprobe events to hook the XDP verdict from outside, so the map, through
# the metrics endpoint, is the source of truth.
set -euo pipefail
addr=${1:-127.0.0.1:9090}
every=${2:-2}
while true; do
    date +%T
    curl -sS --max-time 2 "http://$addr/metrics" |
        awk '/^aether_xdp_(packets|bytes|drops)_total/ {print "  " $0}'
    sleep "$every"
done
