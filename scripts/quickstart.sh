#!/usr/bin/env bash
# Set the machine up, build Aetherless, and run the original project's
# quickstart unchanged: examples/hello.py behind examples/hello.yaml,
# answered through aetherd on http://localhost:8080/test.
#
#   scripts/quickstart.sh [CONFIG]     (default: examples/hello.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[quickstart] %s\n' "$*"; }

scripts/setup.sh
say "building aetherd and aetherctl (release)"
cargo build --release --locked -p dataplane -p control
export PATH="$PWD/target/release:$PATH"

config=${1:-examples/hello.yaml}
say "aetherctl validate $config"
aetherctl validate "$config"
say "aetherctl -c $config up"
aetherctl -c "$config" up
trap 'say "aetherctl -c $config down"; aetherctl -c "$config" down' EXIT

port=$(sed -n 's/^[[:space:]]*trigger_port:[[:space:]]*\([0-9]*\).*/\1/p' "$config" | head -n 1)
say "curl http://localhost:${port}/test"
curl -sS --max-time 10 "http://localhost:${port}/test"
echo
say "aetherctl list"
aetherctl -c "$config" list
say "aetherctl stats"
aetherctl -c "$config" stats
