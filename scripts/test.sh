#!/usr/bin/env bash
# scripts/test.sh — set the machine up and run every test. This is the README's
# test command and what CI runs (through .ci/run).
#
# Phases, each printed with its elapsed time. setup and build failures stop the
# run at once; fmt, test and loom failures are recorded, the remaining phases
# still run (one CI run shows every problem), and the script exits non-zero at
# the end naming each failed phase:
#   setup   scripts/setup.sh (idempotent; a few seconds when already set up)
#   fmt     cargo fmt --all -- --check
#   build   cargo build --workspace --all-targets [--locked]
#   test    cargo test --workspace [--locked] --no-fail-fast
#   loom    RUSTFLAGS="--cfg loom" cargo test -p shm-abi --test loom --release
#           (only when shm-abi/tests/loom.rs exists; own target dir target/loom
#           so the cfg change does not rebuild the main target dir)
#
# Environment
#   AETHERLESS_SKIP_SETUP=1   skip the setup phase (the machine is known good)
#
# Needs root: setup installs packages, and the tests use CRIU, network
# namespaces, cgroups and BPF.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# criu lives in /usr/local/sbin and cargo in ~/.cargo/bin; make sure both are
# found even under a minimal PATH.
for dir in "$HOME/.cargo/bin" /usr/local/sbin; do
    case ":$PATH:" in
        *":$dir:"*) ;;
        *) [[ -d $dir ]] && PATH="$dir:$PATH" ;;
    esac
done
export PATH
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
if [[ "${CI:-}" == true ]]; then
    # One-shot builds: incremental artefacts only cost time and disk.
    export CARGO_INCREMENTAL=0
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
fi

RUN_START=$(date +%s)
SUMMARY=()
FAILED=()

# run_phase MODE NAME COMMAND...: run COMMAND and print its time. On failure,
# MODE "stop" ends the run now; MODE "go-on" records it and carries on.
run_phase() {
    local mode=$1 name=$2
    shift 2
    local start rc=0
    start=$(date +%s)
    printf '[test] ==> %s: %s\n' "$name" "$*"
    "$@" || rc=$?
    local secs=$(( $(date +%s) - start ))
    if ((rc == 0)); then
        printf '[test] <== %s ok in %ds\n' "$name" "$secs"
        SUMMARY+=("$(printf '%-6s ok      %4ds' "$name" "$secs")")
        return
    fi
    printf '[test] FAILED: phase "%s" exited %d after %ds: %s\n' "$name" "$rc" "$secs" "$*" >&2
    printf '[test]   -> the output above shows what failed; re-run this phase with the command shown\n' >&2
    SUMMARY+=("$(printf '%-6s FAILED  %4ds' "$name" "$secs")")
    FAILED+=("$name")
    if [[ $mode == stop ]]; then
        finish
    fi
}
phase() { run_phase stop "$@"; }
check() { run_phase go-on "$@"; }

# Print the summary and exit: 0 when every phase passed, 1 otherwise.
finish() {
    local line
    printf '[test] ---- summary ----\n'
    for line in "${SUMMARY[@]}"; do printf '[test]   %s\n' "$line"; done
    printf '[test]   total  %14ds\n' "$(( $(date +%s) - RUN_START ))"
    if ((${#FAILED[@]} > 0)); then
        printf '[test] FAILED phases: %s\n' "${FAILED[*]}" >&2
        exit 1
    fi
    printf '[test] all phases passed\n'
    exit 0
}

if [[ "${AETHERLESS_SKIP_SETUP:-0}" == 1 ]]; then
    printf '[test] skipping setup (AETHERLESS_SKIP_SETUP=1)\n'
elif [[ $(id -u) -eq 0 ]]; then
    phase setup scripts/setup.sh
elif command -v sudo >/dev/null; then
    phase setup sudo scripts/setup.sh
else
    printf '[test] FAILED: setup needs root and sudo is not available; run as root\n' >&2
    exit 1
fi

locked=()
if [[ -f Cargo.lock ]]; then
    locked=(--locked)
fi

fmt_color=auto
[[ -t 1 ]] || fmt_color=never
check fmt cargo fmt --all -- --check --color "$fmt_color"
phase build cargo build --workspace --all-targets "${locked[@]}"
check test cargo test --workspace "${locked[@]}" --no-fail-fast

if [[ -f shm-abi/tests/loom.rs ]]; then
    check loom env RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$REPO/target/loom" \
        cargo test -p shm-abi --test loom --release "${locked[@]}"
else
    printf '[test] SKIP loom: shm-abi/tests/loom.rs does not exist yet\n'
fi

finish
